"""``mesh up --cluster 3`` as a subprocess on free ports, stopped (and everything it started
cleaned up) whatever the test did."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests._waiting import wait_for
from tests.cluster._monitoring import Node
from tests.cluster._ports import disjoint_runs

READY_TIMEOUT = 90.0
# Hosts drain one after another (up to their grace each), then the nodes stop.
STOP_TIMEOUT = 45.0


@dataclass
class ClusterMesh:
    """A running ``mesh up --cluster N``: its process, nodes and ports."""

    process: asyncio.subprocess.Process
    data_dir: Path
    nodes: list[Node]
    grpc_port: int
    admin_port: int
    stdout: Path
    stderr: Path

    def output(self) -> str:
        return self.stdout.read_text(errors="replace")

    def errors(self) -> str:
        return self.stderr.read_text(errors="replace")

    def node(self, name: str) -> Node:
        return next(node for node in self.nodes if node.name == name)


async def start_cluster_mesh(tmp_path: Path, size: int = 3, *extra: str) -> ClusterMesh:
    """Start ``mesh up --cluster size`` and return once it has printed its table."""
    nats, monitor, routes, grpc_port, http_port, admin_port = disjoint_runs(size, size, size, 1, 1, 1)
    data_dir = tmp_path / "data"
    stdout, stderr = tmp_path / "mesh-up.out", tmp_path / "mesh-up.err"
    arguments = [
        "up", "--cluster", str(size), "--data-dir", str(data_dir),
        "--nats-port", str(nats), "--nats-monitor-port", str(monitor), "--nats-cluster-port", str(routes),
        "--grpc-port", str(grpc_port), "--http-port", str(http_port), "--admin-port", str(admin_port), *extra,
    ]
    # Accounts may hold the operator scope here, so the test can log in as an operator and
    # charge; a cheap password hash keeps the login quick.
    env = {**os.environ, "MESH_AUTH_ACCOUNT_SCOPES": "player,operator", "MESH_AUTH_SCRYPT_LOG2_N": "10"}
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = await asyncio.create_subprocess_exec(sys.executable, "-m", "mesh", *arguments, cwd=tmp_path,
                                                       stdout=out, stderr=err, env=env)
    nodes = [Node(f"nats-{i}", nats + i, monitor + i, data_dir / f"nats-{i}") for i in range(size)]
    mesh = ClusterMesh(process, data_dir, nodes, grpc_port, admin_port, stdout, stderr)

    def printed_table_or_exited() -> bool:
        return "admin server" in mesh.output() or process.returncode is not None

    try:
        await wait_for(printed_table_or_exited, timeout=READY_TIMEOUT)
        if process.returncode is not None:
            raise AssertionError(f"mesh up exited with {process.returncode}:\n{mesh.output()}\n{mesh.errors()}")
    except BaseException:
        await stop_cluster_mesh(mesh)
        raise
    return mesh


async def stop_cluster_mesh(mesh: ClusterMesh) -> int | None:
    """SIGTERM ``mesh up`` and wait for it; if it does not stop in time, kill it and whatever it
    started (its nodes and hosts run in sessions of their own, so they would outlive it)."""
    process = mesh.process
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
    for pid in _started_by(mesh):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return process.returncode


def _started_by(mesh: ClusterMesh) -> list[int]:
    """Processes still running that this mesh started: nats-servers (their config is in its data
    directory) and hosts (their command line names its nodes' ports)."""
    marks = [str(mesh.data_dir), *(f"127.0.0.1:{node.client_port}" for node in mesh.nodes)]
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if any(mark in command for mark in marks):
                found.append(int(entry.name))
    return found


@pytest.fixture
async def cluster_mesh(tmp_path: Path) -> AsyncIterator[ClusterMesh]:
    """``mesh up --cluster 3`` on free ports, ready; stopped after the test."""
    mesh = await start_cluster_mesh(tmp_path)
    try:
        yield mesh
    finally:
        await stop_cluster_mesh(mesh)
