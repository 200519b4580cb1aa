"""The nats-server that ``mesh up`` runs as a child process when no ``--nats-url`` is given.

It listens on loopback only, with JetStream on and its store, configuration and log under one
data directory, so a second ``mesh up`` on the same directory finds its streams and buckets again.
Given :class:`ClusterSettings` it is one node of a routed JetStream cluster
(``mesh.embedded_cluster`` runs the nodes).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from nats_transport.testing import find_nats_server

__all__ = ["ClusterSettings", "EmbeddedNats", "EmbeddedNatsError", "PortUnavailableError", "RouteTls"]

# Between two readiness probes the wait is spent in Popen.wait, so an early exit ends it at once.
_PROBE_INTERVAL = 0.02

# How nats-server finds clients that stopped reading (see _write_config).
PING_INTERVAL = "2s"
PING_MAX = 2


class EmbeddedNatsError(RuntimeError):
    """The embedded nats-server could not be started, or stopped working."""


class PortUnavailableError(EmbeddedNatsError):
    """A port the server needs cannot be bound; ``role`` is ``client``, ``monitoring`` or ``cluster``."""

    def __init__(self, host: str, port: int, role: str, reason: str) -> None:
        super().__init__(f"{role} port {port} on {host} is not available: {reason}")
        self.host = host
        self.port = port
        self.role = role
        self.reason = reason


@dataclass(frozen=True, slots=True)
class RouteTls:
    """The certificate a node presents on its routes, and the CA its peers' certificates must
    come from (routes are always mutual TLS in nats-server)."""

    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """What makes a server one node of a cluster: the cluster's name, the port this node accepts
    routes on, and the route URLs of the other nodes (``nats-route://127.0.0.1:6223``)."""

    name: str
    port: int
    routes: Sequence[str]
    tls: RouteTls | None = None


class EmbeddedNats:
    """One nats-server child process: :meth:`start` it, :meth:`stop` it, or use ``with``.

    After the process has exited on its own, :meth:`start` runs it again on the same ports and
    store (how ``mesh up`` restarts a cluster node that died).
    """

    def __init__(
        self,
        *,
        port: int,
        monitor_port: int,
        data_dir: Path,
        host: str = "127.0.0.1",
        server_name: str = "mesh",
        ready_timeout: float = 10.0,
        include: Path | None = None,
        cluster: ClusterSettings | None = None,
    ) -> None:
        self.port = port
        self.monitor_port = monitor_port
        # Absolute, because the path goes into a config file read by another process.
        self.data_dir = data_dir.resolve()
        self.host = host
        self.server_name = server_name
        self.ready_timeout = ready_timeout
        # A config fragment to include (``nats-security.conf``: TLS and per-identity users).
        self.include = include.resolve() if include is not None else None
        self.cluster = cluster
        self._process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        state = "stopped" if self._process is None else f"pid={self._process.pid}"
        return f"<EmbeddedNats url={self.url!r} {state}>"

    @property
    def url(self) -> str:
        """The client URL, ``nats://127.0.0.1:<port>``."""
        return f"nats://{self.host}:{self.port}"

    @property
    def monitor_url(self) -> str:
        """The HTTP monitoring endpoint (``/varz``, ``/jsz``, ``/healthz``)."""
        return f"http://{self.host}:{self.monitor_port}"

    @property
    def store_dir(self) -> Path:
        """Where JetStream keeps streams and key-value buckets."""
        return self.data_dir / "jetstream"

    @property
    def log_path(self) -> Path:
        """The server's own log (its stdout and stderr)."""
        return self.data_dir / "nats-server.log"

    @property
    def pid_path(self) -> Path:
        """The file nats-server writes its process id to (``nats-server --signal`` reads it)."""
        return self.data_dir / "nats-server.pid"

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs."""
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        """True while the child process has not exited."""
        return self._process is not None and self._process.poll() is None

    def exit_code(self) -> int | None:
        """The child's exit code once it has exited on its own (negative: killed by that signal)."""
        return None if self._process is None else self._process.poll()

    def check_ports(self) -> None:
        """Raise PortUnavailableError if a port this server listens on cannot be bound now."""
        # Checked up front so the common mistake (another server on 4222) gets a clear message
        # instead of a line buried in the server's log.
        _ensure_bindable(self.host, self.port, "client")
        _ensure_bindable(self.host, self.monitor_port, "monitoring")
        if self.cluster is not None:
            _ensure_bindable(self.host, self.cluster.port, "cluster")

    def start(self) -> EmbeddedNats:
        """Start the server and return once it accepts TCP clients, within ``ready_timeout``.

        Raises:
            PortUnavailableError: the client or monitoring port cannot be bound.
            EmbeddedNatsError: the server exited early or did not become ready in time.
        """
        if self.running:
            raise EmbeddedNatsError(f"{self!r} is already started")
        self._process = None  # a process that exited on its own: reaped, started afresh
        self.check_ports()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        # Appended to, so the lines of a server that died stay next to those of its restart.
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [find_nats_server(), "-c", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own session, so a terminal's Ctrl-C reaches only us and we stop the server
                # last, after whatever still needs it has drained.
                start_new_session=True,
            )
        try:
            self._wait_until_accepting()
        except BaseException:
            self.stop()
            raise
        return self

    def wait(self) -> int:
        """Block until the server exits, for whatever reason; return its exit code."""
        if self._process is None:
            raise EmbeddedNatsError(f"{self!r} is not started")
        return self._process.wait()

    def terminate(self) -> None:
        """Send SIGTERM without waiting (stopping several servers at once); :meth:`stop` reaps."""
        if self.running:
            assert self._process is not None
            self._process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 10.0) -> None:
        """Send SIGTERM and wait up to ``timeout`` seconds, then SIGKILL. Safe to call twice."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __enter__(self) -> EmbeddedNats:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _write_config(self) -> Path:
        # json.dumps quotes strings the way the nats config parser reads them.
        lines = [
            f"server_name: {json.dumps(self.server_name)}",
            f"host: {json.dumps(self.host)}",
            f"port: {self.port}",
            f"http: {json.dumps(f'{self.host}:{self.monitor_port}')}",
            f"jetstream {{ store_dir: {json.dumps(str(self.store_dir))} }}",
            f"pid_file: {json.dumps(str(self.pid_path))}",
            # A hung client (a host stopped or wedged) keeps its place in its queue groups until
            # the server closes it as stale: after 2 minutes by default. Here after 2 to 6 s.
            # nats-server PINGs only clients that sent nothing within the interval.
            f'ping_interval: "{PING_INTERVAL}"',
            f"ping_max: {PING_MAX}",
        ]
        if self.cluster is not None:
            lines += _cluster_block(self.host, self.cluster)
        if self.include is not None:
            # nats-server resolves an include relative to the including file, even an absolute one.
            lines.append(f"include {json.dumps(os.path.relpath(self.include, self.data_dir))}")
        # Not nats-server.conf: `mesh security init` writes a standalone config by that name.
        config = self.data_dir / "nats-embedded.conf"
        config.write_text("\n".join(lines) + "\n")
        return config

    def _wait_until_accepting(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.ready_timeout
        while not _accepts_tcp(self.host, self.port):
            code = self._process.poll()
            if code is not None:
                raise EmbeddedNatsError(
                    f"nats-server exited with code {code}: {self._last_log_line()} (log: {self.log_path})"
                )
            if time.monotonic() >= deadline:
                raise EmbeddedNatsError(
                    f"nats-server did not accept clients on {self.url} within {self.ready_timeout:g} s "
                    f"(log: {self.log_path})"
                )
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=_PROBE_INTERVAL)

    def _last_log_line(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return lines[-1] if lines else "(empty log)"


def _cluster_block(host: str, cluster: ClusterSettings) -> list[str]:
    routes = ", ".join(json.dumps(route) for route in cluster.routes)
    lines = [
        "cluster {",
        f"  name: {json.dumps(cluster.name)}",
        f"  listen: {json.dumps(f'{host}:{cluster.port}')}",
        f"  routes: [{routes}]",
    ]
    if cluster.tls is not None:
        tls = cluster.tls
        lines += [
            "  tls {",
            f"    cert_file: {json.dumps(str(tls.cert.resolve()))}",
            f"    key_file: {json.dumps(str(tls.key.resolve()))}",
            f"    ca_file: {json.dumps(str(tls.ca.resolve()))}",
            "    timeout: 2",
            "  }",
        ]
    return [*lines, "}"]


def _ensure_bindable(host: str, port: int, role: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # Go sets SO_REUSEADDR on its listeners, so a port held only by TIME_WAIT connections is
        # usable by nats-server; probing the same way avoids refusing such a port.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            reason = "already in use" if error.errno == errno.EADDRINUSE else (error.strerror or str(error))
            raise PortUnavailableError(host, port, role, reason) from error


def _accepts_tcp(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False
