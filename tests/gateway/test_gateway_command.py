"""``mesh gateway`` as a subprocess, for real: a nats-server, a real settings target on it, and the
gateway's gRPC ingress and Envoy in front; probes, calls both ways, SIGTERM, a taken port."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import ssl
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from gaming.common.v1 import common_pb2
from gaming.settings.v1 import settings_pb2 as st
from gaming.settings.v1 import settings_pb2_grpc
from gaming.time_manager.v1 import time_manager_pb2 as tm
from gaming.time_manager.v1 import time_manager_pb2_grpc
from nats.aio.client import Client
from prometheus_client import CollectorRegistry

import nats_transport.aio
from mesh.cli import main
from mesh.connection import NatsAccess
from mesh.host import Host, HostConfig
from mesh.security import initialise
from nats_transport.testing import NatsServer, free_port
from tests._waiting import wait_for
from tests.gateway._http import fetch
from tests.gateway._targets import Target

READY_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
REPO = Path(__file__).resolve().parents[2]
# A target whose methods are public (no token needed), for the tests on a locked-down NATS.
TIME_MANAGER = "time-manager"


@dataclass
class Gateway:
    """A ``mesh gateway`` child process and its ports."""

    process: asyncio.subprocess.Process
    log: Path
    grpc_port: int
    http_port: int
    admin_port: int
    probes: list[int] = field(default_factory=list)
    result: tuple[int, str] | None = None

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    async def status(self, path: str) -> int:
        """The admin server's answer to ``path``, 0 while it does not answer at all."""
        try:
            reply = await fetch("GET", f"http://127.0.0.1:{self.admin_port}{path}")
        except OSError:
            return 0
        return reply.status


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


async def _start(nats_url: str, log: Path, *extra: str, grace: float = 1.0, from_env: bool = False) -> Gateway:
    """Start ``mesh gateway`` on free loopback ports, given as flags or (``from_env``) as its
    environment variables."""
    ports = {"--grpc-port": free_port(), "--http-port": free_port(), "--admin-port": free_port()}
    settings = {"--nats-url": nats_url, "--listen-host": "127.0.0.1", **{k: str(v) for k, v in ports.items()},
                "--grace": str(grace), "--log-level": "warning"}
    variables = {"--nats-url": "MESH_NATS_URL", "--listen-host": "MESH_GATEWAY_HOST",
                 "--grpc-port": "MESH_GATEWAY_GRPC_PORT", "--http-port": "MESH_GATEWAY_HTTP_PORT",
                 "--admin-port": "MESH_ADMIN_PORT", "--grace": "MESH_GRACE", "--log-level": "MESH_LOG_LEVEL"}
    flags = [] if from_env else [part for flag, value in settings.items() for part in (flag, value)]
    env = {**os.environ, **({variables[flag]: value for flag, value in settings.items()} if from_env else {})}
    with log.open("wb") as stderr:  # a file, not a pipe: nobody reads stderr while it runs
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mesh", "gateway", *flags, *extra,
            cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=stderr,
        )
    return Gateway(process, log, ports["--grpc-port"], ports["--http-port"], ports["--admin-port"])


async def _stop(gateway: Gateway) -> tuple[int, str]:
    """SIGTERM, then the exit code and stdout (SIGKILL if it does not stop in time); once."""
    if gateway.result is not None:
        return gateway.result
    process = gateway.process
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
    try:
        out, _ = await asyncio.wait_for(process.communicate(), STOP_TIMEOUT)
    except TimeoutError:
        process.kill()
        out, _ = await process.communicate()
    assert process.returncode is not None
    gateway.result = process.returncode, out.decode(errors="replace")
    return gateway.result


@pytest.fixture
async def gateway(nats_server: NatsServer, settings_target: Target, tmp_path: Path) -> AsyncIterator[Gateway]:
    started = await _start(nats_server.url, tmp_path / "gateway.log")
    try:
        yield started
    finally:
        await _stop(started)


async def _ready_once_envoy_accepts(gateway: Gateway) -> None:
    """Poll /readyz until 200; at that moment both the ingress and Envoy must accept."""
    async def ready() -> bool:
        status = await gateway.status("/readyz")
        if status == 200:
            return True
        gateway.probes.append(status)
        if gateway.process.returncode is not None:
            raise AssertionError(f"mesh gateway exited with {gateway.process.returncode}:\n{gateway.stderr()}")
        return False

    try:
        await wait_for(ready, timeout=READY_TIMEOUT)
    except AssertionError as error:
        raise AssertionError(f"{error} (probes {set(gateway.probes)}):\n{gateway.stderr()}") from None
    assert _accepts(gateway.http_port), "/readyz said 200 before Envoy accepted connections"
    assert _accepts(gateway.grpc_port), "/readyz said 200 before the ingress accepted connections"
    assert set(gateway.probes) <= {0, 503}, gateway.probes


async def test_ready_only_once_envoy_accepts_then_grpc_and_http_json_reach_the_target(gateway: Gateway):
    await _ready_once_envoy_accepts(gateway)
    assert await gateway.status("/livez") == 200
    player = f"p-{uuid.uuid4().hex[:8]}"

    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
        stub = settings_pb2_grpc.SettingsServiceStub(channel)
        request = st.GetRequest(scope=st.Scope(kind=st.SCOPE_KIND_PLAYER, id=player))

        async def grpc_answers() -> bool:
            # The ingress learns the target from $SRV discovery, a poll or two after it starts.
            try:
                await stub.Get(request, timeout=5)
            except grpc.aio.AioRpcError:
                return False
            return True

        await wait_for(grpc_answers, timeout=20)
        reply = await stub.Get(request, timeout=5)
    assert reply.settings.scope.id == player

    url = f"http://127.0.0.1:{gateway.http_port}/v1/settings/scopes/SCOPE_KIND_PLAYER/{player}"

    async def http_answers() -> bool:
        # Envoy's routes follow discovery: pushed over xDS once the ingress has seen the service.
        return (await fetch("GET", url)).status == 200

    await wait_for(http_answers, timeout=20)
    answer = (await fetch("GET", url)).json()
    assert answer["settings"]["scope"] == {"kind": "SCOPE_KIND_PLAYER", "id": player}

    metrics = await fetch("GET", f"http://127.0.0.1:{gateway.admin_port}/metrics")
    assert metrics.status == 200
    assert b"mesh_gateway_envoy_starts 1.0" in metrics.body


async def test_sigterm_turns_readiness_503_refuses_new_calls_lets_a_stream_finish_and_exits_0(
    nats_server: NatsServer, nc: Client, settings_target: Target, tmp_path: Path
):
    gateway = await _start(nats_server.url, tmp_path / "gateway.log", grace=10.0)
    try:
        await _ready_once_envoy_accepts(gateway)
        scope = st.Scope(kind=st.SCOPE_KIND_PLAYER, id=f"p-{uuid.uuid4().hex[:8]}")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
            stub = settings_pb2_grpc.SettingsServiceStub(channel)
            call = await _open_watch(stub, scope)
            gateway.process.send_signal(signal.SIGTERM)
            await wait_for(lambda: _status_is(gateway, 503), timeout=10)
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Get(st.GetRequest(scope=scope), timeout=5)
            # The stream opened before SIGTERM is still served in the grace period: a change
            # made behind the gateway (straight over NATS) reaches it through the gateway.
            direct = settings_pb2_grpc.SettingsServiceStub(nats_transport.aio.channel(nc, settings_target.name))
            await direct.Update(st.UpdateRequest(
                scope=scope, expected_revision=common_pb2.Revision(value=0),
                set={"audio.music_volume": st.SettingValue(int_value=7)},
            ), timeout=5)
            change = await asyncio.wait_for(call.read(), 10)
            assert change.settings.values["audio.music_volume"].int_value == 7
            call.cancel()  # the last in-flight call: the gateway stops now, not at the grace's end
            code, out = await _stop(gateway)
    finally:
        await _stop(gateway)
    assert code == 0, gateway.stderr()
    assert out.splitlines()[-1] == "mesh gateway: stopped"
    assert "Traceback" not in gateway.stderr()


async def _open_watch(stub: settings_pb2_grpc.SettingsServiceStub, scope: st.Scope) -> Any:
    """A Watch through the gateway that has delivered its snapshot (retried until the ingress
    has discovered the target)."""
    opened: list[Any] = []

    async def snapshot_read() -> bool:
        call = stub.Watch(st.WatchRequest(scope=scope))
        try:
            await asyncio.wait_for(call.read(), 5)
        except (grpc.aio.AioRpcError, TimeoutError):
            call.cancel()
            return False
        opened.append(call)
        return True

    await wait_for(snapshot_read, timeout=20)
    return opened[0]


async def _status_is(gateway: Gateway, expected: int) -> bool:
    return await gateway.status("/readyz") == expected


async def test_from_environment_variables_alone_without_the_edge_it_is_ready_with_the_ingress_alone(
    nats_server: NatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("MESH_GATEWAY_EDGE", "off")
    gateway = await _start(nats_server.url, tmp_path / "gateway.log", from_env=True)
    try:
        await wait_for(lambda: _status_is(gateway, 200), timeout=READY_TIMEOUT)
        reply = await fetch("GET", f"http://127.0.0.1:{gateway.admin_port}/readyz")
        assert b"no edge" in reply.body
        assert not _accepts(gateway.http_port)
    finally:
        code, out = await _stop(gateway)
    assert code == 0, gateway.stderr()
    assert out.splitlines()[-1] == "mesh gateway: stopped"


def _envoy_pids(parent: int) -> list[int]:
    """The Envoy processes ``parent`` started (its children named envoy)."""
    pids: list[int] = []
    for children in Path(f"/proc/{parent}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            for child in children.read_text().split():
                with contextlib.suppress(OSError):
                    if Path(f"/proc/{child}/comm").read_text().strip() == "envoy":
                        pids.append(int(child))
    return pids


def _kill_envoy(gateway: Gateway) -> bool:
    """SIGKILL every Envoy of the gateway; whether there was one."""
    pids = _envoy_pids(gateway.process.pid)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return bool(pids)


async def test_a_killed_envoy_is_restarted_and_livez_fails_once_it_cannot_be(gateway: Gateway):
    await _ready_once_envoy_accepts(gateway)
    first = _envoy_pids(gateway.process.pid)
    assert len(first) == 1
    assert _kill_envoy(gateway)

    async def restarted_and_ready() -> bool:
        pids = _envoy_pids(gateway.process.pid)
        return bool(pids) and pids != first and await _status_is(gateway, 200)

    await wait_for(restarted_and_ready, timeout=30)
    assert await gateway.status("/livez") == 200

    # A crash loop: the supervisor's restart budget runs out, and only a new pod can help.
    async def given_up() -> bool:
        _kill_envoy(gateway)
        return await gateway.status("/livez") == 503

    await wait_for(given_up, timeout=60)
    assert await gateway.status("/readyz") == 503


async def _exit_of(*args: str) -> tuple[int | None, bytes, list[str]]:
    """Run ``mesh gateway`` with ``args`` until it exits by itself: (exit code, stdout, stderr lines)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mesh", "gateway", *args,
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), STOP_TIMEOUT)
    finally:
        if process.returncode is None:
            process.kill()
            await process.communicate()
    return process.returncode, out, err.decode().splitlines()


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port some other process listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


async def test_a_taken_grpc_port_exits_2_with_one_line_naming_the_flag(
    nats_server: NatsServer, taken_port: int
):
    returncode, out, lines = await _exit_of(
        "--nats-url", nats_server.url, "--listen-host", "127.0.0.1",
        "--grpc-port", str(taken_port), "--http-port", str(free_port()), "--admin-port", str(free_port()))
    assert returncode == 2
    assert out == b""
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"mesh gateway: error: --grpc-port: cannot listen on 127.0.0.1:{taken_port}")


@pytest.mark.parametrize(("argv", "env", "named"), [
    (["--http-port", "0"], {}, "--http-port"),
    ([], {"MESH_GATEWAY_GRPC_PORT": "fifty"}, "MESH_GATEWAY_GRPC_PORT"),
    ([], {"MESH_GATEWAY_EDGE": "sometimes"}, "MESH_GATEWAY_EDGE"),
    (["--grace", "-1"], {}, "--grace"),
    (["--grpc-port", "9000", "--http-port", "9000"], {}, "--http-port"),
    (["--serve-cert", "pyproject.toml"], {}, "--serve-key"),
])
def test_a_bad_setting_exits_2_with_one_line_naming_it(
    argv: list[str], env: dict[str, str], named: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
):
    monkeypatch.chdir(REPO)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["gateway", *argv]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"mesh gateway: error: {named}: "), err


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[NatsServer, Path]]:
    """A nats-server locked down by ``mesh security init`` (mTLS, one nkey user per identity)."""
    data_dir = tmp_path / "data"
    initialise(data_dir)
    with NatsServer(name="secured", include=data_dir / "nats-security.conf") as server:
        yield server, data_dir / "secrets"


async def test_with_tls_both_ports_serve_tls_and_envoy_verifies_the_ingress(
    secured: tuple[NatsServer, Path], tmp_path: Path
):
    server, secrets = secured
    host = Host(HostConfig(targets=(TIME_MANAGER,), nats=NatsAccess(urls=(server.url,)), secrets_dir=secrets,
                           admin_port=None, grace=1.0, drain_pause=0.0,
                           settings={TIME_MANAGER: {"clocks_max_bytes": str(1 << 20)}}),
                registry=CollectorRegistry())
    await host.start()
    gateway = await _start(server.url, tmp_path / "gateway.log", "--identity", str(secrets / "ingress"),
                           "--serve-cert", str(secrets / "server" / "cert.pem"),
                           "--serve-key", str(secrets / "server" / "key.pem"))
    try:
        await _ready_once_envoy_accepts(gateway)
        ca = secrets / "server" / "ca.pem"
        credentials = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
        async with grpc.aio.secure_channel(f"localhost:{gateway.grpc_port}", credentials) as channel:
            stub = time_manager_pb2_grpc.TimeManagerServiceStub(channel)

            async def grpc_answers() -> bool:
                try:
                    await stub.GetTime(tm.GetTimeRequest(world_id="main"), timeout=5)
                except grpc.aio.AioRpcError:
                    return False
                return True

            await wait_for(grpc_answers, timeout=20)
        # HTTPS from Envoy, which reaches the ingress over TLS too, checked against the CA.
        context = ssl.create_default_context(cafile=str(ca))
        url = f"https://localhost:{gateway.http_port}/v1/time-manager/worlds/main/clock"

        async def https_answers() -> bool:
            return await asyncio.to_thread(_https_status, url, context) == 200

        await wait_for(https_answers, timeout=20)
    finally:
        code, _ = await _stop(gateway)
        await host.drain()
    assert code == 0, gateway.stderr()


def _https_status(url: str, context: ssl.SSLContext) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


async def test_credentials_nats_refuses_exit_2_with_one_line(secured: tuple[NatsServer, Path]):
    server, secrets = secured
    ingress = secrets / "ingress"
    # Its certificate passes TLS, but without its nkey NATS does not know who it is.
    returncode, out, lines = await _exit_of(
        "--nats-url", server.url, "--listen-host", "127.0.0.1",
        "--tls-ca", str(ingress / "ca.pem"), "--tls-cert", str(ingress / "cert.pem"),
        "--tls-key", str(ingress / "key.pem"), "--grpc-port", str(free_port()), "--http-port", str(free_port()),
        "--admin-port", str(free_port()))
    assert returncode == 2
    assert out == b""
    assert len(lines) == 1, lines
    assert lines[0].startswith("mesh gateway: error: NATS refused the credentials"), lines
