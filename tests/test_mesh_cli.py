"""``mesh up`` runs a working NATS with JetStream and stops cleanly; bad usage exits 2."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest

from mesh.cli import UNBUILT, main
from nats_transport.testing import free_port

READY_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


@dataclass
class MeshUp:
    """A ``mesh up`` subprocess and the NATS URL it was told to serve."""

    process: asyncio.subprocess.Process
    nats_url: str
    stdout: list[str]


def _up_arguments(data_dir: Path) -> tuple[list[str], int]:
    ports = {
        "--nats-port": free_port(),
        "--nats-monitor-port": free_port(),
        "--grpc-port": free_port(),
        "--http-port": free_port(),
        "--admin-port": free_port(),
    }
    flags = [part for flag, port in ports.items() for part in (flag, str(port))]
    return ["up", *flags, "--data-dir", str(data_dir)], ports["--nats-port"]


async def _read_until_ready(process: asyncio.subprocess.Process, lines: list[str]) -> None:
    # The table's last row is printed (and flushed) only after NATS and JetStream answered.
    assert process.stdout is not None
    while not any("admin server" in line for line in lines):
        line = await process.stdout.readline()
        if not line:
            raise AssertionError(f"mesh up exited before it was ready: {lines}")
        lines.append(line.decode())


async def _finish(process: asyncio.subprocess.Process) -> None:
    # SIGTERM rather than a kill, so mesh stops its own nats-server (a separate session) too;
    # communicate() reaps the process and drains its pipes, leaving no transport unclosed.
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.communicate(), STOP_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()


@pytest.fixture
async def mesh_up(tmp_path: Path) -> AsyncIterator[MeshUp]:
    """``python -m mesh up`` on free ports with its data in ``tmp_path``, once it says it is ready."""
    arguments, nats_port = _up_arguments(tmp_path / "data")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mesh", *arguments,
        cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    lines: list[str] = []
    try:
        await asyncio.wait_for(_read_until_ready(process, lines), READY_TIMEOUT)
        yield MeshUp(process, f"nats://127.0.0.1:{nats_port}", lines)
    finally:
        await _finish(process)


async def test_mesh_up_serves_nats_with_jetstream_and_exits_0_on_sigterm(mesh_up: MeshUp) -> None:
    nc = await nats.connect(mesh_up.nats_url, max_reconnect_attempts=0, connect_timeout=2)
    try:
        account = await nc.jetstream(timeout=5).account_info()
        assert account.limits is not None
    finally:
        await nc.close()

    mesh_up.process.send_signal(signal.SIGTERM)
    stdout, stderr = await asyncio.wait_for(mesh_up.process.communicate(), STOP_TIMEOUT)

    assert mesh_up.process.returncode == 0, stderr.decode()
    assert "mesh up: stopped" in stdout.decode()


async def test_mesh_up_prints_where_nats_runs_and_what_is_not_built(mesh_up: MeshUp) -> None:
    table = "".join(mesh_up.stdout)
    assert mesh_up.nats_url in table
    for part in ("services", "gRPC ingress", "HTTP edge", "admin server"):
        row = next(line for line in mesh_up.stdout if part in line)
        assert "not built yet" in row


async def test_mesh_up_stops_its_nats_server_on_sigterm(mesh_up: MeshUp) -> None:
    port = int(mesh_up.nats_url.rsplit(":", 1)[1])
    mesh_up.process.send_signal(signal.SIGTERM)
    await asyncio.wait_for(mesh_up.process.wait(), STOP_TIMEOUT)

    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


@pytest.mark.parametrize(
    ("arguments", "flag"),
    [
        (["--nats-port", "70000"], "--nats-port"),
        (["--grpc-port", "0"], "--grpc-port"),
        (["--admin-port", "not-a-number"], "--admin-port"),
        (["--http-port", "9999", "--admin-port", "9999"], "--admin-port"),
        (["--nats-url", "http://127.0.0.1:4222"], "--nats-url"),
    ],
)
def test_a_bad_flag_value_exits_2_naming_the_flag(
    arguments: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["up", *arguments])

    error = capsys.readouterr().err
    assert code == 2
    assert flag in error
    assert len(error.strip().splitlines()) == 1, error


def test_a_bad_flag_value_exits_2_from_the_command_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mesh", "up", "--nats-port", "70000"],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2
    assert "--nats-port" in result.stderr


def test_a_taken_nats_port_exits_2_naming_the_port(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "mesh", "up", "--nats-port", str(port), "--data-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=30,
        )
    assert result.returncode == 2
    assert str(port) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize("command", sorted(UNBUILT))
def test_an_unbuilt_subcommand_exits_2_saying_so(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main([command, "some-target", "--some-flag"])

    assert code == 2
    assert capsys.readouterr().err.strip() == f"mesh {command}: not built yet"
