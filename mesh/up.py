"""``mesh up``: NATS (embedded unless told otherwise: one server, or with ``--cluster N`` N routed
ones), every built target in host processes (one per core), one admin server answering for the
whole mesh, and the gRPC ingress in front of it; then wait for a signal and drain.

The HTTP edge is a real Envoy configured by our xDS control plane, in front of the ingress.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import urlsplit, urlunsplit

import nats
import nats.errors
from nats.aio.client import Client

from gateway.edge import Edge
from gateway.envoy_config import TlsPair
from gateway.ingress import Ingress
from gateway.workers import IngressWorkers
from health.admin import AdminServer
from health.tracing import TRACE_DIR
from mesh.catalogue import built_targets
from mesh.config import LOOPBACK, UpConfig, flag_of
from mesh.connection import AccessDenied, NatsAccess, connect
from mesh.embedded_cluster import CLUSTER_NAME, DEFAULT_REPLICAS, EmbeddedCluster
from mesh.embedded_nats import EmbeddedNats, EmbeddedNatsError
from mesh.gateway_command import GatewayError, accepts_tcp, ingress_tracing, start_edge_for, start_ingress
from mesh.ingress import IngressWorkerSetup
from mesh.security import SecurityInitError, initialise, read_identity
from mesh.security.routes import route_tls_in
from mesh.supervisor import HostProcess, multiprocess_metrics, prepare_metrics_dir, split_targets

if TYPE_CHECKING:
    from health.trace_pipeline import Tracing

__all__ = ["NatsNotUsable", "PortsTaken", "TracingNotUsable", "UpError", "run"]

# Bounds for the start-up check, so an unreachable --nats-url fails in seconds, not minutes.
_CONNECT_TIMEOUT = 2.0
_JETSTREAM_TIMEOUT = 5.0


class UpError(RuntimeError):
    """``mesh up`` could not start, or something it started stopped on its own."""


class PortsTaken(UpError):
    """Ports ``mesh up`` would listen on are taken; the message names every one of them."""


class NatsNotUsable(UpError):
    """The NATS given by ``--nats-url`` cannot be reached, refuses us, or lacks JetStream: a
    configuration to fix, so ``mesh up`` exits 2."""


class TracingNotUsable(UpError):
    """An ``OTEL_*`` or ``MESH_TRACE_DIR`` value the tracing cannot use; the message is one line
    naming the variable. Found before anything starts (the hosts would refuse it too)."""


async def run(config: UpConfig, out: TextIO = sys.stdout, *, trace: bool = False) -> None:
    """Start everything ``config`` asks for, print the endpoints, and run until SIGINT or SIGTERM.
    With ``trace``, the hosts and the ingress keep their spans in ``<data dir>/traces``
    (``mesh trace``); the ``OTEL_*`` variables apply to both, as to ``mesh serve``.

    Raises:
        mesh.embedded_nats.PortUnavailableError: an embedded NATS port is taken.
        mesh.embedded_nats.EmbeddedNatsError: the embedded server failed to start.
        UpError: NATS is unreachable, lacks JetStream, or the embedded server died while up.
        TracingNotUsable: a tracing variable holds a value that cannot be used.
    """
    began = time.monotonic()
    # Every taken port at once, before anything starts: fixing them one run at a time is tedious.
    _check_ports_free(config)
    # Handlers first: a signal that arrives while starting must still stop the child in order.
    stop = _event_on_signals(signal.SIGINT, signal.SIGTERM)
    if config.secure:
        await asyncio.to_thread(_prepare_secrets, config, out)
    else:
        print("mesh up: INSECURE: anyone who can reach NATS can read, call and impersonate every service; "
              "use --secure beyond a laptop (docs/security.md)", file=out, flush=True)
    tracing = _ingress_tracing(config, trace)
    async with AsyncExitStack() as stack:
        if tracing is not None:
            # The first callback runs last: the ingress has stopped, its spans have ended.
            stack.push_async_callback(asyncio.to_thread, tracing.shutdown)
        server: EmbeddedNats | EmbeddedCluster | None = None
        supervision: asyncio.Task[None] | None = None
        if config.embedded and config.cluster > 1:
            server = await _start_cluster(config, stack)
            supervision = _supervise(server, stack, out)
        elif config.embedded:
            server = await _start_embedded(config, stack)
        await _check_nats(config)
        hosts = _start_hosts(config, stack, trace)
        front: list[int] = []  # the ingress and Envoy ports, once they are started
        started: list[Ingress | IngressWorkers] = []  # the ingress, once it is
        admin = AdminServer(
            lambda: _mesh_ready(hosts, front, started),
            lambda accept: multiprocess_metrics(config.data_dir / "metrics", accept),
            host=LOOPBACK, port=config.admin_port, liveness=lambda: _hosts_alive(hosts),
        )
        await admin.start()
        stack.push_async_callback(admin.stop)
        await _wait_until_ready(hosts, stop)
        ingress = await _start_ingress(config, stack, tracing, trace)
        edge = await _start_edge(config, ingress, stack)
        assert ingress.port is not None  # bound: start_ingress returns a started ingress
        front += [ingress.port, edge.http_port]
        started.append(ingress)
        # Envoy listens a moment after its configuration is pushed: "ready" only once it does.
        await _wait_until_ready(hosts, stop, front, started)
        _print_endpoints(config, server, hosts, ingress, edge, time.monotonic() - began, out, trace)
        await _wait_for_stop(stop, server if isinstance(server, EmbeddedNats) else None, supervision, hosts, ingress)
    print("mesh up: stopped", file=out, flush=True)


def _check_ports_free(config: UpConfig) -> None:
    taken = []
    for name, port in config.listening_ports().items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # As nats-server, Envoy and asyncio bind: a port held only by TIME_WAIT is usable.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((LOOPBACK, port))
            except OSError as error:
                base, _, node = name.partition("+")
                flag = flag_of(base) + (f" + {node}" if node else "")
                taken.append(f"{flag}: cannot listen on {LOOPBACK}:{port}: {(error.strerror or str(error)).lower()}")
    if taken:
        raise PortsTaken("; ".join(taken))


def _start_hosts(config: UpConfig, stack: AsyncExitStack, trace: bool = False) -> list[HostProcess]:
    # One host process per core: the servicers are Python, so a second process is what lets a
    # busy mesh use the second core.
    metrics_dir = prepare_metrics_dir(config.data_dir / "metrics")
    log_dir = config.data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    groups = split_targets(built_targets(), os.cpu_count() or 1)
    extra_args: tuple[str, ...] = ()
    extra_env: dict[str, str] = {}
    if config.secure:
        # Each target connects as its own identity; auth learns the targets' public nkeys so it
        # can tell which of them asks for a service token.
        extra_args = ("--secrets", str(config.secrets_dir))
        extra_env = {"MESH_AUTH_SERVICE_KEYS": str(_service_keys_file(config))}
    if trace:
        # Each host appends to a file of its own there, rotated at a bound (health.span_file).
        traces = config.data_dir / "traces"
        traces.mkdir(parents=True, exist_ok=True)
        extra_env[TRACE_DIR] = str(traces)
    hosts = [HostProcess(i, group, config.client_url, log_dir, metrics_dir, extra_args=extra_args, extra_env=extra_env)
             for i, group in enumerate(groups)]
    for host in hosts:
        host.start()
        stack.push_async_callback(asyncio.to_thread, host.stop)
    return hosts


async def _mesh_ready(hosts: list[HostProcess], front: Sequence[int] | None,
                      started: Sequence[Ingress | IngressWorkers] = ()) -> tuple[bool, str]:
    """Every host ready and, unless ``front`` is None (hosts only), the ingress and Envoy
    accepting connections on the ports in ``front`` (empty until they are started), and every
    worker of the ingress in ``started`` listening."""
    answers = await asyncio.gather(*(h.ready() for h in hosts))
    waiting = [reason for ok, reason in answers if not ok]
    if waiting:
        return False, "; ".join(waiting)
    if front is None:
        return True, "hosts ready"
    if not front:
        return False, "gRPC ingress and HTTP edge not started yet"
    for name, port in zip(("gRPC ingress", "HTTP edge (Envoy)"), front, strict=True):
        if not await accepts_tcp(LOOPBACK, port):
            return False, f"{name} not accepting on {LOOPBACK}:{port}"
    for ingress in started:
        if isinstance(ingress, IngressWorkers) and not ingress.listening:
            return False, f"gRPC ingress: {ingress.summary}"
    return True, f"ready: {sum(len(h.targets) for h in hosts)} targets in {len(hosts)} host processes, " \
                 f"gRPC ingress on {front[0]}, HTTP edge on {front[1]}"


def _hosts_alive(hosts: list[HostProcess]) -> tuple[bool, str]:
    dead = [f"host {h.index} exited with {h.returncode}" for h in hosts if not h.running]
    return (not dead), ("; ".join(dead) or "alive")


async def _wait_until_ready(hosts: list[HostProcess], stop: asyncio.Event, front: Sequence[int] | None = None,
                            started: Sequence[Ingress | IngressWorkers] = (), limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not stop.is_set():
        ready, reason = await _mesh_ready(hosts, front, started)
        if ready:
            return
        if any(not h.running for h in hosts):
            raise UpError(reason)
        if time.monotonic() > deadline:
            raise UpError(f"not ready after {limit:.0f}s: {reason}")
        await asyncio.sleep(0.05)  # polling the hosts' /readyz: there is no event to wait on


def _ingress_tracing(config: UpConfig, trace: bool) -> Tracing | None:
    """The in-process ingress's span pipeline: what the environment asks of the hosts too, and
    with ``trace`` its own spans file among theirs (``ingress.jsonl``)."""
    environ = {**os.environ, TRACE_DIR: str(config.data_dir / "traces")} if trace else os.environ
    try:
        return ingress_tracing(environ)
    except GatewayError as error:
        raise TracingNotUsable(str(error)) from None


async def _start_ingress(config: UpConfig, stack: AsyncExitStack, tracing: Tracing | None = None,
                         trace: bool = False) -> Ingress | IngressWorkers:
    """The gRPC ingress, in this process, on its own NATS connection (stopped before the hosts);
    ``tracing``: its span pipeline, shut down by the caller. With ``--ingress-workers N`` it is N
    processes sharing the port, each connecting as the ingress identity (and, with ``trace``,
    keeping its spans beside the hosts'); this process's connection feeds Envoy's routes."""
    access = _access(config, "ingress")
    nc = await connect(
        access, name="mesh:ingress",
        max_reconnect_attempts=-1, reconnect_time_wait=0.5, connect_timeout=_CONNECT_TIMEOUT, error_cb=_ignore_error,
    )
    stack.push_async_callback(nc.close)
    tls = None
    if config.secure:
        server_files = config.secrets_dir / "server"
        tls = TlsPair(cert=server_files / "cert.pem", key=server_files / "key.pem")
    try:
        setup = IngressWorkerSetup(access=access, name="mesh:ingress",
                                   trace_dir=str(config.data_dir / "traces") if trace else None)
        ingress = await start_ingress(nc, LOOPBACK, config.grpc_port, tls=tls, tracing=tracing,
                                      workers=config.ingress_workers, worker_setup=setup)
    except GatewayError as error:
        raise UpError(str(error)) from error
    stack.push_async_callback(ingress.stop)
    return ingress


async def _start_edge(config: UpConfig, ingress: Ingress | IngressWorkers, stack: AsyncExitStack) -> Edge:
    """Envoy on --http-port, routes following the ingress's discovery. Started from this (the
    loop's) thread: Envoy exits when the thread that started it exits (PR_SET_PDEATHSIG)."""
    tls, upstream_ca = None, None
    if config.secure:
        server_files = config.secrets_dir / "server"
        tls = TlsPair(cert=server_files / "cert.pem", key=server_files / "key.pem")
        upstream_ca = server_files / "ca.pem"
    try:
        edge = await start_edge_for(ingress, config.http_port, http_host=LOOPBACK, tls=tls, upstream_ca=upstream_ca)
    except GatewayError as exc:
        raise UpError(str(exc)) from exc
    stack.push_async_callback(edge.stop)  # pushed after the ingress: Envoy stops first
    return edge


def _event_on_signals(*signals: signal.Signals) -> asyncio.Event:
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in signals:
        loop.add_signal_handler(number, event.set)
    return event


async def _start_embedded(config: UpConfig, stack: AsyncExitStack) -> EmbeddedNats:
    server = EmbeddedNats(
        port=config.nats_port, monitor_port=config.nats_monitor_port, data_dir=config.data_dir, host=LOOPBACK,
        include=config.data_dir / "nats-security.conf" if config.secure else None,
    )
    # start() and stop() block on the child process; threads keep the signal handlers live.
    await asyncio.to_thread(server.start)
    stack.push_async_callback(asyncio.to_thread, server.stop)
    return server


async def _start_cluster(config: UpConfig, stack: AsyncExitStack) -> EmbeddedCluster:
    secure = config.secure
    cluster = EmbeddedCluster(
        size=config.cluster, port=config.nats_port, monitor_port=config.nats_monitor_port,
        cluster_port=config.nats_cluster_port, data_dir=config.data_dir, host=LOOPBACK,
        include=config.data_dir / "nats-security.conf" if secure else None,
        # Written by `mesh security init`, which --secure ran before anything started.
        route_tls=route_tls_in(config.secrets_dir / "routes") if secure else None,
    )
    await cluster.start()
    # Pushed before the hosts: they drain first, with NATS still there, then the nodes stop.
    stack.push_async_callback(asyncio.to_thread, cluster.stop)
    return cluster


def _supervise(cluster: EmbeddedCluster, stack: AsyncExitStack, out: TextIO) -> asyncio.Task[None]:
    """Restart nodes that die for as long as ``mesh up`` runs; the task ends only by raising."""
    def report(line: str) -> None:
        print(f"mesh up: {line}", file=out, flush=True)

    task = asyncio.create_task(cluster.supervise(report), name="nats-cluster-supervisor")

    async def cancel() -> None:
        # After the hosts have drained (a node lost while they drain is still restarted), and
        # before the nodes stop: a node stopped on purpose must not be started again.
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, EmbeddedNatsError):
            await task

    stack.push_async_callback(cancel)
    return task


def _access(config: UpConfig, identity: str) -> NatsAccess:
    access = NatsAccess(urls=config.client_urls)
    return access.as_identity(config.secrets_dir / identity) if config.secure else access


def _prepare_secrets(config: UpConfig, out: TextIO) -> None:
    """``mesh security init`` on the data dir; it keeps what exists, so this is cheap after once."""
    try:
        lines = initialise(config.data_dir)
    except SecurityInitError as error:
        raise UpError(f"--secure: {error}") from error
    for line in lines:
        print(f"mesh up: {line}", file=out)
    out.flush()


def _service_keys_file(config: UpConfig) -> Path:
    """``{target: public nkey}`` for auth's IssueServiceToken, written beside the secrets."""
    keys = {target: read_identity(config.secrets_dir / target).nkey for target in built_targets()}
    path = config.secrets_dir / "service-keys.json"
    path.write_text(json.dumps(keys, indent=2, sort_keys=True) + "\n")
    return path


async def _check_nats(config: UpConfig) -> None:
    """Connect once and ask JetStream for the account, since every service keeps state there."""
    url = config.client_url
    try:
        nc = await connect(
            _access(config, "operator"), name="mesh:up",
            connect_timeout=_CONNECT_TIMEOUT,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.2,
            error_cb=_ignore_error,
        )
    except AccessDenied as error:
        raise NatsNotUsable(f"NATS at {redact(url)} refused the operator identity: {error}") from error
    except (OSError, TimeoutError, nats.errors.Error) as error:
        raise NatsNotUsable(f"--nats-url: cannot connect to NATS at {redact(url)}: {describe(error)}") from error
    try:
        await _check_jetstream(nc, url)
    finally:
        await nc.close()


async def _check_jetstream(nc: Client, url: str) -> None:
    try:
        await nc.jetstream(timeout=_JETSTREAM_TIMEOUT).account_info()
    except (TimeoutError, nats.errors.Error) as error:
        message = f"JetStream does not answer on {redact(url)} (is it enabled?): {describe(error)}"
        raise NatsNotUsable(message) from error


async def _ignore_error(error: Exception) -> None:
    # The start-up check reports failures through the exception connect() raises; nats-py would
    # otherwise log each failed attempt as well.
    del error


def _print_endpoints(
    config: UpConfig, server: EmbeddedNats | EmbeddedCluster | None, hosts: list[HostProcess],
    ingress: Ingress | IngressWorkers, edge: Edge, elapsed: float, out: TextIO, trace: bool = False,
) -> None:
    targets = sum(len(h.targets) for h in hosts)
    rows = [
        *_nats_rows(config, server),
        ("services", f"{targets} targets in {len(hosts)} host processes (logs: {config.data_dir / 'logs'})"),
        *((f"  host {h.index}", ", ".join(h.targets)) for h in hosts),
        ("gRPC ingress", f"{ingress.address}  ({_grpcurl()} {_grpcurl_flags(config)} {ingress.address} list)"
                         + (f"; {len(ingress.pids)} worker processes" if isinstance(ingress, IngressWorkers) else "")),
        _edge_row(config, edge),
        ("admin server", f"http://{LOOPBACK}:{config.admin_port}  (/livez /readyz /metrics)"),
    ]
    if trace:
        rows.append(("traces", f"{config.data_dir / 'traces'}  (mesh trace --last)"))
    width = max(len(name) for name, _ in rows)
    print(f"mesh up: ready in {elapsed:.2f} s; Ctrl-C or SIGTERM stops it", file=out)
    for name, where in rows:
        print(f"  {name.ljust(width)}  {where}", file=out)
    # Flushed because stdout is often a pipe (a supervisor, a test) waiting for this table.
    out.flush()


def _edge_row(config: UpConfig, edge: Edge) -> tuple[str, str]:
    if not config.secure:
        return "HTTP edge", f"http://{LOOPBACK}:{edge.http_port}  (Envoy; curl http://{LOOPBACK}:{edge.http_port}/v1/...)"
    ca = config.secrets_dir / "server" / "ca.pem"
    return "HTTPS edge", f"https://localhost:{edge.http_port}  (Envoy; curl --cacert {ca} https://localhost:{edge.http_port}/v1/...)"


def _grpcurl() -> str:
    # The dev extra installs grpcurl beside this interpreter; that folder is often not on PATH.
    beside = Path(sys.executable).parent / "grpcurl"
    return str(beside) if shutil.which("grpcurl") is None and beside.is_file() else "grpcurl"


def _grpcurl_flags(config: UpConfig) -> str:
    if not config.secure:
        return "-plaintext"
    return f"-cacert {config.secrets_dir / 'server' / 'ca.pem'}"


def _nats_rows(config: UpConfig, server: EmbeddedNats | EmbeddedCluster | None) -> list[tuple[str, str]]:
    if isinstance(server, EmbeddedCluster):
        return [
            ("NATS", f"{config.client_url}  (embedded cluster {CLUSTER_NAME!r} of {len(server.nodes)} nodes, "
                     f"JetStream R{DEFAULT_REPLICAS} by default; a node that dies is restarted)"),
            *((f"  {node.server_name}", f"{node.url}  monitoring {node.monitor_url}  store {node.store_dir}")
              for node in server.nodes),
        ]
    if server is None:
        return [
            ("NATS", f"{redact(config.client_url)}  (external)"),
            ("NATS monitoring", "not managed (external NATS)"),
        ]
    return [
        ("NATS", f"{server.url}  (embedded, JetStream store {server.store_dir})"),
        ("NATS monitoring", server.monitor_url),
    ]


async def _wait_for_stop(stop: asyncio.Event, server: EmbeddedNats | None, supervision: asyncio.Task[None] | None,
                         hosts: list[HostProcess], ingress: Ingress | IngressWorkers | None = None) -> None:
    """Until SIGINT or SIGTERM. A single embedded server that exits ends ``mesh up``; a cluster
    node that exits is restarted by ``supervision``, which ends it only when a node keeps dying;
    an ingress worker that keeps dying (its pool gave up restarting it) ends it too."""
    stopped: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
    watched: set[asyncio.Future[Any]] = {stopped}
    if supervision is not None:
        watched.add(supervision)
    exited: asyncio.Future[Any] | None = None
    if server is not None:
        # A thread blocked in waitpid notices the child dying; it returns once stop() reaps it.
        exited = asyncio.ensure_future(asyncio.to_thread(server.wait))
        watched.add(exited)
    while True:
        done, _ = await asyncio.wait(watched, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
        if stopped in done:
            break
        if supervision is not None and supervision in done:
            stopped.cancel()
            raise UpError(describe(supervision.exception() or RuntimeError("the NATS cluster supervisor stopped")))
        if exited is not None and exited in done:
            stopped.cancel()
            assert server is not None
            raise UpError(f"nats-server exited unexpectedly with code {exited.result()} (log: {server.log_path})")
        alive, reason = _hosts_alive(hosts)
        if not alive:
            stopped.cancel()
            raise UpError(f"{reason} (logs: {hosts[0].log_path.parent})")
        if ingress is not None and (problem := ingress.problem) is not None:
            stopped.cancel()
            raise UpError(f"gRPC ingress: {problem}")
    if exited is not None:
        exited.cancel()


def describe(error: BaseException) -> str:
    """An error's message, or its type name when it has none (asyncio's TimeoutError)."""
    return str(error) or type(error).__name__


def redact(url: str) -> str:
    """``url`` with any user and password replaced by ``***``, fit to print."""
    return ",".join(_redact_one(server) for server in url.split(","))


def _redact_one(server: str) -> str:
    parts = urlsplit(server.strip())
    if parts.username is None and parts.password is None:
        return server.strip()
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"***@{host}"))
