"""The ingress as several worker processes sharing one port (``gateway.workers``), for real: a
nats-server, a real settings target on it, ``python -m gateway ingress --workers 2`` and
``mesh gateway --ingress-workers 2`` as subprocesses (and the pool and ``mesh gateway``'s probes
in this process, their workers real processes), grpc.aio clients over many connections.

Which worker served a call is told by NATS: each worker has its own connection, named
``<name>:worker-<i>:pid-<pid>``, and nats-server's ``/connz`` counts the messages each one sent
(a forwarded unary call is one). Discovery polls rarely in these tests (``--poll-interval``), so
nothing else adds to those counts while calls are made.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from gaming.settings.v1 import settings_pb2 as st
from gaming.settings.v1 import settings_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from nats.aio.client import Client
from prometheus_client import CollectorRegistry

from gateway.envoy_config import TlsPair
from gateway.ingress import IngressOptions
from gateway.workers import IngressWorkers, PlainNats, PortUnavailable, run_workers, usable_cores, worker_count
from health.span_file import read_spans, span_files
from mesh.cli import build_parser, main
from mesh.connection import NatsAccess
from mesh.gateway_command import Gateway, GatewayConfig
from mesh.ingress import IngressWorkerSetup, start_ingress
from nats_transport.testing import NatsServer, free_port
from tests._waiting import wait_for
from tests.gateway._targets import SERVING, Target

REPO = Path(__file__).resolve().parents[2]
SETTINGS = "gaming.settings.v1.SettingsService"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
# Connections are dealt to workers by the kernel's hash: this many new ones in a row all landing
# on one of two workers (1 in 2**49) would mean the other takes none.
CONNECTION_BOUND = 50


# -- helpers ----------------------------------------------------------------------------------------


@dataclass
class Pool:
    """A ``python -m gateway ingress --workers N`` child and what it said."""

    process: asyncio.subprocess.Process
    port: int
    pids: tuple[int, ...]
    stderr: Path

    def log(self) -> str:
        return _tail(self.stderr)


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else ""


async def _start_pool(nats_url: str, log: Path, *extra: str, workers: str = "2") -> Pool:
    port = free_port()
    with log.open("wb") as stderr:  # a file: nobody reads stderr while it runs
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "ingress", "--nats-url", nats_url, "--host", "127.0.0.1",
            "--port", str(port), "--workers", workers, "--grace", "1", "--poll-interval", "30", *extra,
            cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=stderr,
        )
    assert process.stdout is not None
    try:
        line = (await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT)).decode()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"no listening line: {_tail(log)}") from None
    found = re.search(r"listening on 127\.0\.0\.1:(\d+) \((\d+) workers, pids ([\d, ]+)\)", line)
    assert found, line or _tail(log)
    assert int(found.group(1)) == port
    return Pool(process, port, tuple(int(pid) for pid in found.group(3).split(", ")), log)


async def _stop(process: asyncio.subprocess.Process) -> tuple[int, str]:
    """SIGTERM, then the exit code and stdout (SIGKILL if it does not stop in time)."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
    try:
        out, _ = await asyncio.wait_for(process.communicate(), STOP_TIMEOUT)
    except TimeoutError:
        process.kill()
        out, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace")


@contextlib.asynccontextmanager
async def _pool(nats_url: str, log: Path, *extra: str) -> AsyncIterator[Pool]:
    pool = await _start_pool(nats_url, log, *extra)
    try:
        yield pool
    except BaseException:
        print(f"the pool's log:\n{pool.log()}")  # shown with the failure
        raise
    finally:
        await _stop(pool.process)


def _children(parent: int) -> set[int]:
    """The worker processes of ``parent`` (its children running gateway.worker_process)."""
    found: set[int] = set()
    for children in Path(f"/proc/{parent}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            for child in children.read_text().split():
                with contextlib.suppress(OSError):
                    if b"gateway.worker_process" in Path(f"/proc/{child}/cmdline").read_bytes():
                        found.add(int(child))
    return found


def _listening(port: int) -> set[str]:
    """The inodes of the sockets listening on ``port`` (from /proc/net)."""
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    inodes.add(fields[9])
    return inodes


def _listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a socket listening on ``port``."""
    inodes = _listening(port)
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    return True
    return False


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _sent_by_worker(server: NatsServer) -> dict[int, int]:
    """Messages each ingress worker's NATS connection has sent, by worker pid."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.monitor_port}/connz?limit=1024", timeout=5) as reply:
        connections = json.load(reply)["connections"]
    sent: dict[int, int] = {}
    for connection in connections:
        found = re.search(r":worker-\d+:pid-(\d+)$", connection.get("name", ""))
        if found:
            sent[int(found.group(1))] = connection["in_msgs"]
    return sent


async def _sent(server: NatsServer) -> dict[int, int]:
    return await asyncio.to_thread(_sent_by_worker, server)


def _one_connection(address: str, credentials: grpc.ChannelCredentials | None = None) -> grpc.aio.Channel:
    """A channel with an HTTP/2 connection of its own (channels to one address otherwise share one)."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=options)
    return grpc.aio.secure_channel(address, credentials, options=options)


async def _get(address: str, credentials: grpc.ChannelCredentials | None = None) -> st.GetResponse:
    """SettingsService.Get on a new connection: a call the ingress forwards over NATS."""
    scope = st.Scope(kind=st.SCOPE_KIND_PLAYER, id=f"p-{uuid.uuid4().hex[:8]}")
    async with _one_connection(address, credentials) as channel:
        reply: st.GetResponse = await settings_pb2_grpc.SettingsServiceStub(channel).Get(
            st.GetRequest(scope=scope), timeout=10)
    return reply


async def _until_each_serves(server: NatsServer, address: str, pids: set[int],
                             credentials: grpc.ChannelCredentials | None = None) -> int:
    """Forwarded calls on new connections, every one of which must succeed, until each worker in
    ``pids`` has sent one more message to NATS than before (it forwarded one); the calls made."""
    before = await _sent(server)
    calls = 0
    while True:
        await _get(address, credentials)
        calls += 1
        now = await _sent(server)
        if all(now.get(pid, 0) > before.get(pid, 0) for pid in pids):
            return calls
        assert calls < CONNECTION_BOUND, f"after {calls} connections, workers served: {now} (before: {before})"


@pytest.fixture
def taken_port(request: pytest.FixtureRequest) -> Iterator[int]:
    """A port another process's socket listens on (with SO_REUSEPORT set, when the test asks)."""
    with socket.socket() as holder:
        if getattr(request, "param", False):
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


# -- python -m gateway ingress --workers 2 ---------------------------------------------------------


async def test_calls_from_many_connections_all_succeed_and_both_workers_serve_them(
    nats_server: NatsServer, settings_target: Target, tmp_path: Path
):
    async with _pool(nats_server.url, tmp_path / "pool.log") as pool:
        assert _children(pool.process.pid) == set(pool.pids)
        assert set(await _sent(nats_server)) == set(pool.pids)  # one NATS connection per worker
        address = f"127.0.0.1:{pool.port}"
        before = await _sent(nats_server)
        replies = await asyncio.gather(*(_get(address) for _ in range(40)))
        after = await _sent(nats_server)
        calls = await _until_each_serves(nats_server, address, set(pool.pids))

        # Every worker answers health and reflection for the whole mesh, as a single ingress does.
        for _ in range(4):
            async with _one_connection(address) as channel:
                health = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=SETTINGS), timeout=10)
                assert health.status == SERVING
                answers = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
                listed = {s.name async for answer in answers for s in answer.list_services_response.service}
                assert SETTINGS in listed
        code, out = await _stop(pool.process)

    assert all(reply.settings.scope.kind == st.SCOPE_KIND_PLAYER for reply in replies)
    # Each of the 40 calls was forwarded by one worker's connection, and by no other.
    assert sum(after[pid] - before[pid] for pid in pool.pids) >= 40
    assert calls <= CONNECTION_BOUND
    assert code == 0, pool.log()
    assert out.splitlines()[-1] == "gateway ingress: stopped"


async def test_a_worker_killed_with_sigkill_is_replaced_and_calls_keep_succeeding(
    nats_server: NatsServer, settings_target: Target, tmp_path: Path
):
    async with _pool(nats_server.url, tmp_path / "pool.log") as pool:
        address = f"127.0.0.1:{pool.port}"
        killed, survivor = pool.pids
        os.kill(killed, signal.SIGKILL)
        # Gone once its socket is: its threads may still hold it after its main thread has died.
        await wait_for(lambda: len(_listening(pool.port)) == 1, timeout=10)
        # Meanwhile the kernel deals every new connection to the worker still listening.
        await asyncio.gather(*(_get(address) for _ in range(10)))

        def replaced() -> bool:
            workers = _children(pool.process.pid)
            return len(workers) == 2 and survivor in workers and killed not in workers

        await wait_for(replaced, timeout=START_TIMEOUT)
        (newcomer,) = _children(pool.process.pid) - {survivor}
        await wait_for(lambda: _listens(newcomer, pool.port), timeout=START_TIMEOUT)
        # Calls go on succeeding, and the new worker takes its share.
        await _until_each_serves(nats_server, address, {newcomer, survivor})
        code, _ = await _stop(pool.process)

    assert code == 0, pool.log()
    assert "ingress worker exited; restarting" in pool.log()


async def test_sigterm_drains_every_worker_and_exits_0_with_one_line(
    nats_server: NatsServer, settings_target: Target, tmp_path: Path
):
    pool = await _start_pool(nats_server.url, tmp_path / "pool.log")
    try:
        await _get(f"127.0.0.1:{pool.port}")
    finally:
        code, out = await _stop(pool.process)

    assert code == 0, pool.log()
    assert out.splitlines()[-1] == "gateway ingress: stopped"
    assert not any(_alive(pid) for pid in pool.pids)
    assert "Traceback" not in pool.log()


@pytest.mark.parametrize("taken_port", [False, True], ids=["plain", "reuseport"], indirect=True)
async def test_a_taken_port_is_one_line_and_exit_1_even_when_its_holder_set_so_reuseport(
    nats_server: NatsServer, taken_port: int
):
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "ingress", "--nats-url", nats_server.url, "--host", "127.0.0.1",
        "--port", str(taken_port), "--workers", "2",
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), STOP_TIMEOUT)

    assert process.returncode == 1
    assert out == b""
    lines = err.decode().splitlines()
    assert lines == [f"gateway ingress: error: --port: cannot listen on 127.0.0.1:{taken_port}: "
                     "address already in use"], lines


# -- the pool from Python ---------------------------------------------------------------------------


@pytest.mark.parametrize("taken_port", [True], ids=["reuseport"], indirect=True)
async def test_run_workers_refuses_a_port_held_with_so_reuseport_instead_of_sharing_it(nc: Client, taken_port: int):
    with pytest.raises(PortUnavailable, match=f"cannot listen on 127.0.0.1:{taken_port}: address already in use"):
        await run_workers(nc, "127.0.0.1", taken_port, PlainNats(("nats://127.0.0.1:1",)), IngressOptions(workers=2))


async def test_a_worker_that_keeps_exiting_is_given_up_on_and_the_pool_says_so(
    nats_server: NatsServer, nc: Client
):
    options = IngressOptions(workers=2, worker_restarts=0, grace=0, poll_interval=30)
    pool = await run_workers(nc, "127.0.0.1", 0, PlainNats((nats_server.url,)), options)
    try:
        assert pool.listening
        os.kill(pool.pids[0], signal.SIGKILL)
        await asyncio.wait_for(pool.failed.wait(), 10)
        assert not pool.listening
        assert pool.problem == "ingress worker(s) 1 kept exiting and are not restarted"
        assert "1 of 2 workers listening" in pool.summary
    finally:
        await pool.stop()
    assert pool.pids == ()


@pytest.fixture
def tls(tmp_path: Path) -> TlsPair:
    """A self-signed certificate for 127.0.0.1 and its key."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=30,
    )
    return TlsPair(cert=cert, key=key)


async def test_workers_keep_tls_and_tracing_each_in_a_spans_file_of_its_own(
    nats_server: NatsServer, nc: Client, settings_target: Target, tls: TlsPair, tmp_path: Path
):
    traces = tmp_path / "traces"
    setup = IngressWorkerSetup(access=NatsAccess(urls=(nats_server.url,)), name="test-ingress",
                               trace_dir=str(traces))
    pool = await start_ingress(nc, "127.0.0.1", 0, tls=tls, grace=0, workers=2, worker_setup=setup)
    assert isinstance(pool, IngressWorkers)
    credentials = grpc.ssl_channel_credentials(root_certificates=tls.cert.read_bytes())
    try:
        calls = await _until_each_serves(nats_server, pool.address, set(pool.pids), credentials)
        async with grpc.aio.insecure_channel(pool.address) as plaintext:
            with pytest.raises(grpc.aio.AioRpcError):
                await health_pb2_grpc.HealthStub(plaintext).Check(health_pb2.HealthCheckRequest(), timeout=5)
    finally:
        await pool.stop()  # each worker exports the spans it still holds as it stops

    files = {path.name for path in span_files(traces)}
    assert files == {"ingress-1.jsonl", "ingress-2.jsonl"}
    served = [span for span in read_spans(traces / name for name in sorted(files))
              if span.name == f"/{SETTINGS}/Get" and span.kind == "server"]
    assert len(served) >= calls


# -- mesh gateway --ingress-workers -----------------------------------------------------------------


async def test_mesh_gateway_is_ready_only_while_every_worker_listens_and_names_the_workers_in_nats(
    nats_server: NatsServer, settings_target: Target
):
    config = GatewayConfig(access=NatsAccess(urls=(nats_server.url,)), listen_host="127.0.0.1", grpc_port=free_port(),
                           admin_port=None, edge=False, ingress_workers=2, grace=0, log_level="WARNING")
    gateway = Gateway(config, registry=CollectorRegistry())
    try:
        await gateway.start()
        assert isinstance(gateway.ingress, IngressWorkers)
        pool = gateway.ingress
        assert await gateway.readiness() == (True, f"ready: gRPC ingress on {config.grpc_port}, no edge")
        names = await asyncio.to_thread(_connection_names, nats_server)
        assert {f"mesh:gateway:worker-{i}:pid-{pid}" for i, pid in enumerate(pool.pids, 1)} <= names

        os.kill(pool.pids[1], signal.SIGKILL)

        async def not_ready() -> bool:
            ready, reason = await gateway.readiness()
            return not ready and reason == "gRPC ingress: 1 of 2 workers listening"

        # The pool waits before it restarts a worker: the probe runs on the same loop meanwhile.
        await wait_for(not_ready, timeout=10)
        assert gateway.liveness() == (True, "alive")

        async def ready() -> bool:
            return (await gateway.readiness())[0]

        await wait_for(ready, timeout=START_TIMEOUT)
        metrics, _ = gateway.metrics()
        assert b"mesh_gateway_ingress_worker_restarts 1.0" in metrics
    finally:
        await gateway.stop()


def _connection_names(server: NatsServer) -> set[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.monitor_port}/connz?limit=1024", timeout=5) as reply:
        return {c.get("name", "") for c in json.load(reply)["connections"]}


@pytest.mark.parametrize("taken_port", [True], ids=["reuseport"], indirect=True)
async def test_mesh_gateway_with_workers_says_a_taken_port_in_one_line_naming_the_flag(
    nats_server: NatsServer, taken_port: int
):
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mesh", "gateway", "--nats-url", nats_server.url, "--listen-host", "127.0.0.1",
        "--grpc-port", str(taken_port), "--admin-port", "off", "--no-edge", "--ingress-workers", "2",
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), STOP_TIMEOUT)

    assert process.returncode == 2
    assert out == b""
    lines = err.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"mesh gateway: error: --grpc-port: cannot listen on 127.0.0.1:{taken_port}")


@pytest.mark.parametrize(("argv", "env", "named"), [
    (["--ingress-workers", "0"], {}, "--ingress-workers"),
    ([], {"MESH_GATEWAY_INGRESS_WORKERS": "many"}, "MESH_GATEWAY_INGRESS_WORKERS"),
])
def test_a_bad_worker_count_exits_2_with_one_line_naming_it(
    argv: list[str], env: dict[str, str], named: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code = main(["gateway", "--nats-url", "nats://127.0.0.1:1", *argv])

    assert code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"mesh gateway: error: {named}: ")


# -- settings ---------------------------------------------------------------------------------------


def test_auto_means_the_usable_cores_and_a_count_must_be_at_least_1():
    assert worker_count("auto") == usable_cores() == len(os.sched_getaffinity(0))
    assert worker_count("3") == 3
    for bad in ("0", "-1", "two", ""):
        with pytest.raises(ValueError, match="at least 1"):
            worker_count(bad)
    for workers in (0, -2, True):
        with pytest.raises(ValueError, match="workers"):
            IngressOptions(workers=workers)
    assert IngressOptions().workers == 1


def test_mesh_up_takes_ingress_workers_and_auto():
    parser = build_parser()
    assert parser.parse_args(["up", "--ingress-workers", "auto"]).ingress_workers == usable_cores()
    assert parser.parse_args(["up"]).ingress_workers == 1
    assert main(["up", "--ingress-workers", "0"]) == 2
