"""Host processes run by ``mesh up``: one ``mesh serve`` child per core, each with its own admin
port on loopback, metrics shared through prometheus_client's multiprocess directory."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from health.metrics import exposition
from mesh.config import LOOPBACK
from nats_transport.testing import free_port

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def split_targets(targets: list[str], processes: int) -> list[list[str]]:
    """Deal targets round-robin over ``processes`` groups (empty groups dropped)."""
    groups: list[list[str]] = [[] for _ in range(max(processes, 1))]
    for index, target in enumerate(targets):
        groups[index % len(groups)].append(target)
    return [g for g in groups if g]


class HostProcess:
    """One ``mesh serve`` child."""

    def __init__(self, index: int, targets: list[str], nats_url: str, log_dir: Path, metrics_dir: Path,
                 *, extra_args: tuple[str, ...] = (), extra_env: dict[str, str] | None = None) -> None:
        self.index = index
        self.targets = targets
        self.admin_port = free_port()
        self._nats_url = nats_url
        self.log_path = log_dir / f"host-{index}.log"
        self._metrics_dir = metrics_dir
        self._extra_args = extra_args
        self._extra_env = dict(extra_env or {})
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [
            sys.executable, "-m", "mesh", "serve", *self.targets,
            "--nats-url", self._nats_url,
            "--admin-host", LOOPBACK, "--admin-port", str(self.admin_port),
            "--drain-pause", "0", "--grace", "5",
            *self._extra_args,
        ]
        env = {**os.environ, **self._extra_env, MULTIPROC_ENV: str(self._metrics_dir)}
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=log, env=env,
                                             start_new_session=True)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.poll()

    async def ready(self) -> tuple[bool, str]:
        """Its /readyz, over loopback."""
        if not self.running:
            return False, f"host {self.index} exited with {self.returncode} (log: {self.log_path})"
        try:
            status, body = await http_get(LOOPBACK, self.admin_port, "/readyz")
        except OSError:
            return False, f"host {self.index} starting"
        return status == 200, body.strip()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (the host drains), then SIGKILL if it takes too long."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


async def http_get(host: str, port: int, path: str, limit: float = 1.0) -> tuple[int, str]:
    """A minimal HTTP/1.1 GET: (status, body)."""
    async def fetch() -> tuple[int, str]:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        head, _, body = raw.partition(b"\r\n\r\n")
        if b"transfer-encoding: chunked" in head.lower():
            body = _unchunk(body)  # nats-server's monitoring answers in chunks
        return int(head.split(b" ", 2)[1]), body.decode(errors="replace")

    return await asyncio.wait_for(fetch(), limit)


def _unchunk(body: bytes) -> bytes:
    """The payload of an HTTP/1.1 chunked body (extensions and trailers ignored)."""
    payload = bytearray()
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            break
        payload += rest[:size]
        body = rest[size + 2:]
    return bytes(payload)


def prepare_metrics_dir(path: Path) -> Path:
    """An empty multiprocess directory (stale files from a previous run would add up)."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def multiprocess_metrics(path: Path, accept: str = "") -> tuple[bytes, str]:
    """Every host process's metrics, merged (in the format ``accept`` asks for; multiprocess
    mode keeps no exemplars)."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(path))  # type: ignore[no-untyped-call]
    return exposition(registry, accept)
