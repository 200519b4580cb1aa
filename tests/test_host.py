"""``mesh serve`` host processes: probes, health over NATS, discovery, metrics, drain, reconnects."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import nats
import pytest
from gaming.time_manager.v1 import time_manager_pb2, time_manager_pb2_grpc

import nats_transport.aio
from mesh.host import SERVING, check_health
from mesh.supervisor import http_get
from nats_transport.testing import NatsServer, free_port
from tests._waiting import wait_for

REPO = Path(__file__).resolve().parent.parent
# A public method (no token needed): these tests are about the host, not the access policy.
TARGET = "time-manager"
SERVICE = "gaming.time_manager.v1.TimeManagerService"


class Serve:
    """A ``mesh serve`` child process and its admin port."""

    def __init__(self, nats_url: str, *targets: str, env: dict[str, str] | None = None) -> None:
        self.admin_port = free_port()
        # Logs go to a file: a pipe nobody reads would fill up and stall the host.
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close(), outlives this call
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mesh", "serve", *targets, "--nats-url", nats_url,
             "--admin-host", "127.0.0.1", "--admin-port", str(self.admin_port), "--drain-pause", "0.2",
             "--grace", "5"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=self.log,
            env={**os.environ, **(env or {})},
        )

    async def probe(self, path: str) -> int:
        try:
            status, _ = await http_get("127.0.0.1", self.admin_port, path)
        except OSError:
            return 0
        return status

    async def ready(self) -> bool:
        return await self.probe("/readyz") == 200

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(15)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture
def serve_processes() -> Iterator[list[Serve]]:
    started: list[Serve] = []
    yield started
    for serve in started:
        serve.close()


@pytest.fixture
async def client(private_nats_server: NatsServer) -> AsyncIterator[nats.aio.client.Client]:
    nc = await nats.connect(private_nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    yield nc
    await nc.close()


def _get(key: str) -> time_manager_pb2.GetTimeRequest:
    return time_manager_pb2.GetTimeRequest(world_id=key)


async def _call_ok(nc: nats.aio.client.Client, key: str) -> grpc.StatusCode:
    stub = time_manager_pb2_grpc.TimeManagerServiceStub(nats_transport.aio.channel(nc, TARGET))
    try:
        await stub.GetTime(_get(key), timeout=5)
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


async def test_a_served_target_turns_ready_answers_health_and_discovery_and_counts_calls(
    private_nats_server, client, serve_processes
):
    serve = Serve(private_nats_server.url, TARGET)
    serve_processes.append(serve)
    await wait_for(serve.ready, timeout=20)
    assert await serve.probe("/livez") == 200
    assert await check_health(client, TARGET) == SERVING
    assert await check_health(client, TARGET, SERVICE) == SERVING

    inbox = client.new_inbox()
    replies = await client.subscribe(inbox)
    await client.publish(f"$SRV.PING.{TARGET}", b"", reply=inbox)
    ping = json.loads((await replies.next_msg(timeout=2)).data)
    assert ping["type"] == "io.nats.micro.v1.ping_response"
    assert ping["name"] == TARGET

    code = await _call_ok(client, f"world-{uuid.uuid4().hex[:6]}")
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND)
    status, metrics = await http_get("127.0.0.1", serve.admin_port, "/metrics")
    assert status == 200
    handled = [line for line in metrics.splitlines() if line.startswith("grpc_server_handled_total{")]
    assert any(f'grpc_service="{SERVICE}"' in line and 'grpc_method="GetTime"' in line for line in handled)
    assert "nats_transport_received_bytes_total" in metrics
    assert serve.terminate() == 0


async def test_sigterm_on_one_of_two_replicas_during_a_stream_of_calls_loses_none(
    private_nats_server, client, serve_processes
):
    first, second = Serve(private_nats_server.url, TARGET), Serve(private_nats_server.url, TARGET)
    serve_processes.extend([first, second])
    await wait_for(first.ready, timeout=20)
    await wait_for(second.ready, timeout=20)
    results: list[grpc.StatusCode] = []
    stop = asyncio.Event()

    async def caller(index: int) -> None:
        while not stop.is_set():
            results.append(await _call_ok(client, f"world-{index}"))

    callers = [asyncio.create_task(caller(i)) for i in range(8)]
    await wait_for(lambda: len(results) > 50, timeout=10)
    drained = asyncio.ensure_future(asyncio.to_thread(first.terminate))
    await wait_for(drained.done, timeout=20)
    before = len(results)
    await wait_for(lambda: len(results) > before + 50, timeout=10)  # the survivor takes them all
    stop.set()
    await asyncio.gather(*callers)
    assert drained.result() == 0
    assert set(results) <= {grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND}, set(results)


async def test_readiness_follows_a_nats_restart_and_calls_work_again(private_nats_server, client, serve_processes):
    serve = Serve(private_nats_server.url, TARGET)
    serve_processes.append(serve)
    await wait_for(serve.ready, timeout=20)
    private_nats_server.stop()

    async def unready() -> bool:
        return await serve.probe("/readyz") == 503

    await wait_for(unready, timeout=10)
    private_nats_server.start()
    await wait_for(serve.ready, timeout=20)

    async def call_works() -> bool:
        return await _call_ok(client, "after-restart") in (grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND)

    await wait_for(call_works, timeout=20)
    assert serve.terminate() == 0


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"MESH_ADMIN_PORT": "eighty"}, "MESH_ADMIN_PORT"),
        ({"MESH_REPLICAS": "2"}, "MESH_REPLICAS"),
        ({"MESH_NATS_URL": "http://x"}, "MESH_NATS_URL"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it_and_exit_2(env, named):
    result = subprocess.run(
        [sys.executable, "-m", "mesh", "serve", TARGET], cwd=REPO, capture_output=True, text=True,
        env={**os.environ, **env}, timeout=30,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert named in lines[0]


def test_an_unknown_target_exits_2():
    result = subprocess.run([sys.executable, "-m", "mesh", "serve", "no-such-target"], cwd=REPO,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "no-such-target" in result.stderr


async def test_mesh_services_lists_and_mesh_call_calls_a_running_target(private_nats_server, serve_processes):
    serve = Serve(private_nats_server.url, TARGET, "language-system")
    serve_processes.append(serve)
    await wait_for(serve.ready, timeout=20)

    def mesh(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mesh", *args, "--nats-url", private_nats_server.url],
                              cwd=REPO, capture_output=True, text=True, timeout=30)

    listed = await asyncio.to_thread(mesh, "services")
    assert listed.returncode == 0, listed.stderr
    assert any(line.startswith(TARGET) for line in listed.stdout.splitlines())
    assert SERVICE in listed.stdout

    called = await asyncio.to_thread(mesh, "call", "language-system", "gaming.language.v1.LanguageService/Detect",
                                     '{"text": "the quick brown fox jumps over the lazy dog"}')
    assert called.returncode == 0, called.stderr
    assert json.loads(called.stdout)["candidates"]

    refused = await asyncio.to_thread(mesh, "call", TARGET, f"{SERVICE}/GetTime", '{"world_id": "NOT VALID"}')
    assert refused.returncode == 1
    assert refused.stderr.startswith("mesh call: INVALID_ARGUMENT")
