"""``mesh gateway``: the gRPC ingress and the Envoy edge in front of a mesh on ``MESH_NATS_URL``,
with /livez /readyz /metrics; what a Kubernetes gateway pod runs.

Every setting comes from a flag or, when the flag is absent, from its ``MESH_*`` environment
variable, then the default. A bad value, a taken port or refused NATS credentials is one line
naming the flag or variable, and exit code 2. SIGTERM or SIGINT: /readyz 503, the ingress refuses
new calls and gives in-flight ones ``--grace`` seconds, Envoy stops, NATS drains, exit 0.

The ingress traces as hosts do when the standard ``OTEL_*`` variables (or ``MESH_TRACE_DIR``)
ask for it (``health.tracing``): a server span per call it takes, a client span per call it
forwards, both named ``ingress``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import os
import re
import signal
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from nats.aio.client import Client
from prometheus_client import REGISTRY, CollectorRegistry, Gauge

from gateway.edge import Edge, start_edge
from gateway.envoy import EnvoyError, EnvoyProcess
from gateway.envoy_config import TlsPair
from gateway.ingress import Ingress
from gateway.workers import IngressWorkers, worker_count
from gateway.xds import ConfigRejected
from health.admin import AdminServer
from health.call_log import configure_json_logging
from health.metrics import exposition
from health.transport_metrics import TransportMetrics
from mesh import event_loop, serve
from mesh.config import ConfigError
from mesh.connection import AccessDenied, NatsAccess, connect
from mesh.event_loop import EventLoopError
from mesh.ingress import INGRESS, GatewayError, IngressWorkerSetup, ingress_tracing, start_ingress
from nats_transport import connection_problem

if TYPE_CHECKING:
    from health.trace_pipeline import Tracing

__all__ = ["INGRESS", "GatewayConfig", "GatewayError", "add_arguments", "ingress_tracing", "resolve", "run",
           "start_edge_for", "start_ingress"]

log = logging.getLogger("mesh.gateway")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

# Bound of each readiness check's TCP connect: a probe must answer well within its own timeout.
_PROBE_CONNECT_TIMEOUT = 1.0

def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise ValueError("not a port number") from None
    if not 1 <= port <= 65535:
        raise ValueError("must be 1-65535")
    return port


def _edge_off(text: str) -> bool:
    # MESH_GATEWAY_EDGE says whether Envoy runs; the value kept is "no edge", as --no-edge says.
    lowered = text.lower()
    if lowered in ("off", "false", "no", "0"):
        return True
    if lowered in ("on", "true", "yes", "1"):
        return False
    raise ValueError("must be on or off")


def _from_serve(dest: str, **changes: Any) -> serve.Setting:
    """A setting of ``mesh serve``, same flag, variable and parser (``changes`` override)."""
    setting = next(s for s in serve.SETTINGS if s.dest == dest)
    return replace(setting, **changes)


_FILE = _from_serve("tls_cert").parse
SETTINGS = (
    serve.Setting("--grpc-port", "MESH_GATEWAY_GRPC_PORT", _port, 50051, "gRPC ingress port"),
    serve.Setting("--http-port", "MESH_GATEWAY_HTTP_PORT", _port, 8000,
                  "Envoy port: HTTP/JSON, Server-Sent Events, gRPC-Web and gRPC"),
    serve.Setting("--listen-host", "MESH_GATEWAY_HOST", str, "0.0.0.0",
                  "address the gRPC, HTTP and admin ports listen on"),
    _from_serve("admin_port"),
    serve.Setting("--serve-cert", "MESH_GATEWAY_SERVE_CERT", _FILE, None,
                  "serve TLS to clients (ingress and Envoy) with this certificate chain; it must name "
                  "localhost, the name Envoy checks the ingress by"),
    serve.Setting("--serve-key", "MESH_GATEWAY_SERVE_KEY", _FILE, None, "the private key of --serve-cert"),
    serve.Setting("--no-edge", "MESH_GATEWAY_EDGE", _edge_off, False,
                  "run the gRPC ingress only, no Envoy (variable: on or off)"),
    serve.Setting("--ingress-workers", "MESH_GATEWAY_INGRESS_WORKERS", worker_count, 1,
                  "processes serving the gRPC port, each with its own NATS connection; auto: one per usable core"),
    _from_serve("grace", default=5.0),
    _from_serve("log_level"),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayConfig:
    """What ``mesh gateway`` runs and where.

    Attributes:
        access: how the ingress reaches NATS and who it is there.
        listen_host: the address of the gRPC, HTTP and admin ports.
        grpc_port, http_port: the ingress and Envoy.
        admin_port: /livez /readyz /metrics; None disables, 0 picks a free port.
        serve_tls: TLS for clients on both the ingress and Envoy.
        upstream_ca: with ``serve_tls``, the CA Envoy verifies the ingress against.
        edge: run Envoy in front of the ingress.
        ingress_workers: processes serving the gRPC port (1: this process; ``gateway.workers``).
        grace: seconds in-flight calls get on SIGTERM.
        log_level: of the JSON logs on stderr.
    """

    access: NatsAccess
    listen_host: str = "0.0.0.0"
    grpc_port: int = 50051
    http_port: int = 8000
    admin_port: int | None = 8080
    serve_tls: TlsPair | None = None
    upstream_ca: Path | None = None
    edge: bool = True
    ingress_workers: int = 1
    grace: float = 5.0
    log_level: str = "INFO"

    def listening_ports(self) -> dict[str, int]:
        """Ports this process listens on, by flag (a port the system picks is left out)."""
        ports = {"--grpc-port": self.grpc_port}
        if self.edge:
            ports["--http-port"] = self.http_port
        if self.admin_port:
            ports["--admin-port"] = self.admin_port
        return ports


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``mesh gateway``: the NATS connection ones of ``mesh serve``, then its own."""
    serve.add_connection_arguments(parser)
    for setting in SETTINGS:
        default = "" if setting.default in (None, False) else f", default {setting.default}"
        text = f"{setting.help} (${setting.env}{default})"
        if setting.flag == "--no-edge":
            parser.add_argument(setting.flag, dest=setting.dest, action="store_const", const="off", default=None,
                                help=text)
        else:
            parser.add_argument(setting.flag, dest=setting.dest, default=None, help=text)


def resolve(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> GatewayConfig:
    """The configuration from flags, then the environment, then defaults.

    Raises:
        ConfigError: naming the flag or variable that holds a bad value.
    """
    access = serve.resolve_access(args, environ)
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw, source = getattr(args, setting.dest, None), setting.flag
        if raw is None and setting.env in environ:
            raw, source = environ[setting.env], setting.env
        try:
            values[setting.dest] = setting.default if raw is None else setting.parse(raw)
        except ValueError as exc:
            raise ConfigError(source, f"{raw!r}: {exc}") from None
    cert, key = values["serve_cert"], values["serve_key"]
    if (cert is None) != (key is None):
        missing, given = ("--serve-key", "--serve-cert") if key is None else ("--serve-cert", "--serve-key")
        raise ConfigError(missing, f"required with {given}")
    edge = not values["no_edge"]
    if cert is not None and edge and access.tls_ca is None:
        raise ConfigError("--tls-ca", "required with --serve-cert: Envoy verifies the TLS ingress against it "
                                      "(or give --identity, whose ca.pem is used)")
    config = GatewayConfig(
        access=access, listen_host=values["listen_host"], grpc_port=values["grpc_port"],
        http_port=values["http_port"], admin_port=values["admin_port"],
        serve_tls=None if cert is None else TlsPair(cert=cert, key=key),
        upstream_ca=access.tls_ca if cert is not None else None,
        edge=edge, ingress_workers=values["ingress_workers"], grace=values["grace"], log_level=values["log_level"],
    )
    seen: dict[int, str] = {}
    for flag, port in config.listening_ports().items():
        if port in seen:
            raise ConfigError(flag, f"port {port} is also given to {seen[port]}")
        seen[port] = flag
    return config


# -- the parts `mesh up` shares ------------------------------------------------------------


async def start_edge_for(ingress: Ingress | IngressWorkers, http_port: int, *, http_host: str,
                         tls: TlsPair | None = None, upstream_ca: Path | None = None) -> Edge:
    """Envoy on ``http_host:http_port`` in front of ``ingress``, its routes following the
    ingress's discovery. Call it from the event loop's thread: Envoy exits when the thread that
    started it exits (PR_SET_PDEATHSIG).

    Raises:
        GatewayError: the port cannot be bound (flag ``--http-port``), or Envoy failed.
    """
    assert ingress.port is not None  # bound: start_ingress returns a started ingress
    try:
        edge = await start_edge(dial_host(ingress.host), ingress.port, http_port, http_host=http_host, services=[],
                                tls=tls, upstream_ca=upstream_ca)
    except ConfigRejected as exc:
        # Envoy binds the listener when its configuration arrives, and NACKs it if it cannot.
        taken = re.search(r"cannot bind '[^']*': ([^\n]+)", str(exc))
        if taken:
            raise GatewayError(f"--http-port: cannot listen on {http_host}:{http_port}: {taken.group(1)}",
                               "--http-port") from exc
        raise GatewayError(f"HTTP edge: {exc}") from exc
    except EnvoyError as exc:
        raise GatewayError(f"HTTP edge: {exc}") from exc
    edge.follow(ingress.discovery)
    return edge


def dial_host(listen_host: str) -> str:
    """Where a process on this machine connects to reach a socket bound to ``listen_host``."""
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(listen_host, listen_host)


# -- the command ---------------------------------------------------------------------------


class Gateway:
    """The running parts, for the probes and the drain; each is None until it has started.

    ``tracing``: the ingress's span pipeline; None reads it from the environment at start
    (:func:`ingress_tracing`), and then the gateway shuts it down when it stops.
    """

    def __init__(self, config: GatewayConfig, registry: CollectorRegistry = REGISTRY,
                 tracing: Tracing | None = None) -> None:
        self.config = config
        self.registry = registry
        self.tracing = tracing
        self._owns_tracing = False
        self.nc: Client | None = None
        self.ingress: Ingress | IngressWorkers | None = None
        self.edge: Edge | None = None
        self.admin: AdminServer | None = None
        self.stopping = False
        self._transport_metrics = TransportMetrics(registry)
        self._services = Gauge("mesh_gateway_services", "gRPC services the ingress has discovered.",
                               registry=registry)
        self._envoy_starts = Gauge("mesh_gateway_envoy_starts", "Times Envoy was started (more than 1: restarts).",
                                   registry=registry)
        self._worker_restarts = Gauge("mesh_gateway_ingress_worker_restarts",
                                      "Times an ingress worker process was restarted (--ingress-workers).",
                                      registry=registry)

    async def start(self) -> None:
        """Tracing (a bad ``OTEL_*`` value fails before anything listens), the admin server
        (probes answer while NATS is awaited), then NATS, ingress, Envoy.

        Raises:
            GatewayError: a port is taken, a tracing variable is bad, or Envoy failed.
        """
        config = self.config
        if self.tracing is None:
            self.tracing = ingress_tracing()
            self._owns_tracing = self.tracing is not None
        if config.admin_port is not None:
            self.admin = AdminServer(self.readiness, self.metrics, host=config.listen_host, port=config.admin_port,
                                     liveness=self.liveness)
            try:
                await self.admin.start()
            except OSError as error:
                self.admin = None
                raise GatewayError(f"--admin-port: cannot listen on {config.listen_host}:{config.admin_port}: "
                                   f"{error.strerror or error}", "--admin-port") from error
        self.nc = await self._connect(config.access)
        # Workers connect as this process does, each under a name of its own.
        setup = IngressWorkerSetup(access=config.access, name="mesh:gateway", log_level=config.log_level)
        self.ingress = await start_ingress(self.nc, config.listen_host, config.grpc_port, tls=config.serve_tls,
                                           grace=config.grace, tracing=self.tracing,
                                           workers=config.ingress_workers, worker_setup=setup)
        if config.edge:
            self.edge = await start_edge_for(self.ingress, config.http_port, http_host=config.listen_host,
                                             tls=config.serve_tls, upstream_ca=config.upstream_ca)

    async def _connect(self, access: NatsAccess) -> Client:
        # Reconnect for ever, like `mesh serve`: NATS may start after the gateway, or restart
        # under it; /readyz says 503 meanwhile.
        async def on_error(exc: Exception) -> None:
            log.warning("NATS error", extra={"error": str(exc)})

        async def on_disconnected() -> None:
            if not self.stopping:  # the drain on the way out disconnects too
                log.warning("NATS disconnected; reconnecting")

        async def on_reconnected() -> None:
            log.info("NATS reconnected")

        return await connect(access, name="mesh:gateway", max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                             connect_timeout=5, error_cb=on_error, disconnected_cb=on_disconnected,
                             reconnected_cb=on_reconnected)

    async def readiness(self) -> tuple[bool, str]:
        """Ready when NATS is connected, the ingress accepts connections (with workers: every
        one of them listens) and (with the edge) so does Envoy's HTTP port: Envoy binds it a
        moment after its configuration is pushed."""
        if self.stopping:
            return False, "stopping"
        if self.nc is None or not self.nc.is_connected:
            return False, "NATS not connected"
        host = dial_host(self.config.listen_host)
        if self.ingress is None or self.ingress.port is None or not await accepts_tcp(host, self.ingress.port):
            return False, f"gRPC ingress not accepting on {self.config.listen_host}:{self.config.grpc_port}"
        if not self.ingress.listening:
            # One worker accepting is not enough: all of them must serve before the pod takes load.
            detail = self.ingress.summary if isinstance(self.ingress, IngressWorkers) else "not listening"
            return False, f"gRPC ingress: {detail}"
        if not self.config.edge:
            return True, f"ready: gRPC ingress on {self.ingress.port}, no edge"
        if self.edge is None or not await accepts_tcp(host, self.edge.http_port):
            return False, f"Envoy not accepting on {self.config.listen_host}:{self.config.http_port}"
        return True, f"ready: gRPC ingress on {self.ingress.port}, Envoy on {self.edge.http_port}"

    def liveness(self) -> tuple[bool, str]:
        """Alive unless the NATS connection is stuck (it claims to be connected but stopped
        reading), Envoy died and its supervisor gave up restarting it, or so did an ingress
        worker's; a restart fixes them all."""
        if self.stopping:
            return True, "stopping"
        if self.nc is not None and (problem := connection_problem(self.nc)) is not None:
            return False, f"NATS connection: {problem}"
        if self.edge is not None and _gave_up(self.edge.envoy):
            return False, "Envoy exited and could not be restarted"
        if self.ingress is not None and (problem := self.ingress.problem) is not None:
            return False, problem
        return True, "alive"

    def metrics(self, accept: str = "") -> tuple[bytes, str]:
        """Prometheus exposition (for a scraper's ``accept``): this process, its NATS connection,
        discovery, Envoy and ingress worker restarts."""
        if self.nc is not None:
            self._transport_metrics.refresh((), (self.nc,))
        if self.ingress is not None:
            self._services.set(len(self.ingress.discovery.services()))
            if isinstance(self.ingress, IngressWorkers):
                self._worker_restarts.set(self.ingress.restarts)
        if self.edge is not None:
            self._envoy_starts.set(self.edge.envoy.starts)
        return exposition(self.registry, accept)

    async def stop(self) -> None:
        """Readiness 503, the ingress refuses new calls and waits out the grace for in-flight
        ones, then Envoy stops, NATS drains, the admin server closes and the spans still queued
        are exported."""
        self.stopping = True
        if self.ingress is not None:
            await self.ingress.stop()
        if self.edge is not None:
            await self.edge.stop()
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await self.nc.drain()
        if self.admin is not None:
            await self.admin.stop()
        if self._owns_tracing and self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)  # blocks while it exports


def _gave_up(envoy: EnvoyProcess) -> bool:
    # EnvoyProcess restarts a dead Envoy until its restart budget is spent; its supervisor task
    # ends only then (or on stop), and it says so nowhere public.
    supervisor: asyncio.Task[None] | None = getattr(envoy, "_supervisor", None)
    return envoy.pid is None and supervisor is not None and supervisor.done()


async def accepts_tcp(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on ``host:port`` now (within a second)."""
    try:
        async with asyncio.timeout(_PROBE_CONNECT_TIMEOUT):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def _check_free(config: GatewayConfig) -> None:
    """Fail before anything starts when a port is taken, so the error is the only line printed
    (the binds that follow still report a port taken in between)."""
    for flag, port in config.listening_ports().items():
        with socket.socket(socket.AF_INET6 if ":" in config.listen_host else socket.AF_INET) as probe:
            # As the ingress, Envoy and asyncio bind: a port in TIME_WAIT is free, a listener is not.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((config.listen_host, port))
            except socket.gaierror as error:
                raise GatewayError(f"--listen-host: {config.listen_host!r}: {error.strerror or error}",
                                   "--listen-host") from error
            except OSError as error:
                # An address this machine does not have is the host's fault, not the port's.
                flag = "--listen-host" if error.errno == errno.EADDRNOTAVAIL else flag
                raise GatewayError(f"{flag}: cannot listen on {config.listen_host}:{port}: {error.strerror or error}",
                                   flag) from error


async def serve_gateway(config: GatewayConfig, out: TextIO = sys.stdout) -> None:
    """Run the gateway until SIGINT or SIGTERM, then stop it in order.

    Raises:
        GatewayError: a port is taken, or Envoy failed to start.
        AccessDenied: NATS refused the credentials.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(number, stop.set)
    _check_free(config)
    gateway = Gateway(config)
    try:
        # A signal while starting (NATS may be awaited for long) stops the start-up too.
        starting = asyncio.ensure_future(gateway.start())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            starting.result()
            _print_ready(config, gateway, out)
            await stopped
        else:
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
        stopped.cancel()
    finally:
        await gateway.stop()
    print("mesh gateway: stopped", file=out, flush=True)


def _print_ready(config: GatewayConfig, gateway: Gateway, out: TextIO) -> None:
    assert gateway.ingress is not None
    tls = "S" if config.serve_tls else ""
    workers = f" ({config.ingress_workers} workers)" if isinstance(gateway.ingress, IngressWorkers) else ""
    parts = [f"gRPC{' (TLS)' if tls else ''} on {config.listen_host}:{gateway.ingress.port}{workers}",
             *([f"HTTP{tls} (Envoy) on {config.listen_host}:{gateway.edge.http_port}"] if gateway.edge else []),
             *([f"admin on {config.listen_host}:{gateway.admin.port}"] if gateway.admin else [])]
    # Flushed: stdout is often a pipe (a supervisor, a test) waiting for this line.
    print(f"mesh gateway: ready: {', '.join(parts)}", file=out, flush=True)


def run(args: argparse.Namespace) -> int:
    """The ``mesh gateway`` command: 0 after a clean stop, 2 on a bad setting, a taken port or
    refused credentials, 1 when Envoy fails."""
    try:
        config = resolve(args)
    except ConfigError as error:
        return _fail(str(error), EXIT_USAGE)
    configure_json_logging(config.log_level)
    try:
        event_loop.run(serve_gateway(config))
    except EventLoopError as error:
        return _fail(str(error), EXIT_USAGE)
    except AccessDenied as denied:
        return _fail(str(denied), EXIT_USAGE)
    except GatewayError as error:
        return _fail(str(error), EXIT_USAGE if error.flag else EXIT_FAILED)
    return EXIT_OK


def _fail(message: str, code: int) -> int:
    print(f"mesh gateway: error: {message}", file=sys.stderr, flush=True)
    return code
