"""``mesh up`` runs a working NATS with JetStream and stops cleanly; bad usage exits 2."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import nats
import nats.errors
import pytest
from gaming.language.v1 import language_pb2, language_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import nats_transport.aio
from mesh import catalogue
from mesh.catalogue import built_targets
from mesh.cli import main
from mesh.host import SERVING, check_health
from mesh.supervisor import http_get
from nats_transport.testing import free_port
from tests._waiting import wait_for

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


@dataclass
class MeshUp:
    """A ``mesh up`` subprocess and the NATS URL it was told to serve."""

    process: asyncio.subprocess.Process
    nats_url: str
    stdout: list[str]
    admin_port: int
    grpc_port: int = 0
    http_port: int = 0


def _up_arguments(data_dir: Path) -> tuple[list[str], dict[str, int]]:
    ports = {
        "--nats-port": free_port(),
        "--nats-monitor-port": free_port(),
        "--grpc-port": free_port(),
        "--http-port": free_port(),
        "--admin-port": free_port(),
    }
    flags = [part for flag, port in ports.items() for part in (flag, str(port))]
    return ["up", *flags, "--data-dir", str(data_dir)], ports


async def _read_until_ready(process: asyncio.subprocess.Process, lines: list[str]) -> None:
    # The table's last row is printed (and flushed) only after NATS and JetStream answered.
    assert process.stdout is not None
    while not any("admin server" in line for line in lines):
        line = await process.stdout.readline()
        if not line:
            assert process.stderr is not None
            error = (await process.stderr.read()).decode(errors="replace")[-2000:]
            raise AssertionError(f"mesh up exited before it was ready: {lines}\n{error}")
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
    arguments, ports = _up_arguments(tmp_path / "data")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mesh", *arguments,
        cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    lines: list[str] = []
    try:
        await asyncio.wait_for(_read_until_ready(process, lines), READY_TIMEOUT)
        yield MeshUp(process, f"nats://127.0.0.1:{ports['--nats-port']}", lines, ports["--admin-port"],
                     ports["--grpc-port"], ports["--http-port"])
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


async def test_mesh_up_prints_where_everything_runs_and_what_is_not_built(mesh_up: MeshUp) -> None:
    table = "".join(mesh_up.stdout)
    assert mesh_up.nats_url in table
    assert f"{len(built_targets())} targets" in next(line for line in mesh_up.stdout if "services" in line)
    assert f"127.0.0.1:{mesh_up.admin_port}" in next(line for line in mesh_up.stdout if "admin server" in line)
    ingress = next(line for line in mesh_up.stdout if "gRPC ingress" in line)
    assert f"127.0.0.1:{mesh_up.grpc_port}" in ingress
    assert "grpcurl -plaintext" in ingress
    assert f"127.0.0.1:{mesh_up.http_port}" in next(line for line in mesh_up.stdout if "HTTP edge" in line)


async def test_mesh_up_answers_http_json_through_its_envoy_edge(mesh_up: MeshUp) -> None:
    # A public method: this is about the edge, not the access policy.
    path = "/v1/weather-manager/regions/through-envoy/weather"
    answers: list[tuple[int, str]] = []

    async def routed() -> bool:
        # Envoy's routes follow the ingress's discovery, which may trail readiness briefly.
        answers.append(await http_get("127.0.0.1", mesh_up.http_port, path, limit=5))
        return answers[-1][0] == 200

    await wait_for(routed, timeout=20)
    body = json.loads(answers[-1][1])
    assert "weather" in body, body
    status, _ = await http_get("127.0.0.1", mesh_up.http_port, "/v1/no-such-thing", limit=10)
    assert status == 404


async def test_mesh_up_serves_every_service_through_its_grpc_ingress(mesh_up: MeshUp) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{mesh_up.grpc_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert (await health.Check(health_pb2.HealthCheckRequest(), timeout=5)).status == SERVING
        listing = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(timeout=5)
        await listing.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        listed = {service.name for service in (await listing.read()).list_services_response.service}
        listing.cancel()
        stub = language_pb2_grpc.LanguageServiceStub(channel)
        reply = await stub.Detect(language_pb2.DetectRequest(text="the quick brown fox jumps over the dog"), timeout=5)

    expected = {name for target in built_targets() for name in catalogue.load(target).SERVICE_NAMES}
    assert expected <= listed
    assert reply.candidates


async def test_mesh_up_is_ready_with_every_target_serving_and_discoverable(mesh_up: MeshUp) -> None:
    status, body = await http_get("127.0.0.1", mesh_up.admin_port, "/readyz")
    assert status == 200, body
    # Ready covers the front too: both the ingress and Envoy accept connections.
    assert f"gRPC ingress on {mesh_up.grpc_port}, HTTP edge on {mesh_up.http_port}" in body
    for port in (mesh_up.grpc_port, mesh_up.http_port):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
    nc = await nats.connect(mesh_up.nats_url, max_reconnect_attempts=0, connect_timeout=2)
    try:
        for target in built_targets():
            assert await check_health(nc, target, deadline=5) == SERVING, target
        inbox = nc.new_inbox()
        replies = await nc.subscribe(inbox)
        await nc.publish("$SRV.PING", b"", reply=inbox)
        names: set[str] = set()

        async def all_answered() -> bool:
            with contextlib.suppress(nats.errors.TimeoutError):
                names.add(json.loads((await replies.next_msg(timeout=0.2)).data)["name"])
            return names >= set(built_targets())

        await wait_for(all_answered, timeout=10)
        stub = language_pb2_grpc.LanguageServiceStub(nats_transport.aio.channel(nc, "language-system"))
        await stub.Detect(language_pb2.DetectRequest(text="the quick brown fox"), timeout=5)
    finally:
        await nc.close()

    async def call_counted() -> bool:
        _, metrics = await http_get("127.0.0.1", mesh_up.admin_port, "/metrics")
        return any(
            line.startswith("grpc_server_handled_total{") and 'grpc_method="Detect"' in line
            and "gaming.language.v1.LanguageService" in line
            for line in metrics.splitlines()
        )

    await wait_for(call_counted, timeout=10)


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


@pytest.mark.parametrize(("command", "says"), [
    ("services", "NATS Services API ($SRV.INFO)"),
    ("call", "Client and bidi streams send one JSON request per line of stdin"),
])
def test_the_tools_help_describes_them(command: str, says: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main([command, "--help"])

    assert code == 0
    assert " ".join(capsys.readouterr().out.split()).count(says) == 1


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
