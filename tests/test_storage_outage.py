"""A target whose storage is away: refused at once with UNAVAILABLE, NOT_SERVING, /readyz says
why, back to SERVING when the store answers again; and a replica takes no call before it serves."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

import grpc
import nats
import pytest
from gaming.time_manager.v1 import time_manager_pb2, time_manager_pb2_grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from prometheus_client import CollectorRegistry

import nats_transport.aio
from mesh.connection import NatsAccess
from mesh.host import NOT_SERVING, SERVING, Host, HostConfig, check_health
from nats_transport.testing import NatsCluster, NatsServer
from tests._waiting import wait_for

# A public method (no token needed) of a target that keeps its state in JetStream.
TARGET = "time-manager"


@contextlib.asynccontextmanager
async def hosting(*urls: str) -> AsyncIterator[Host]:
    host = Host(HostConfig(targets=(TARGET,), nats=NatsAccess(urls=urls), admin_port=None,
                           grace=1.0, drain_pause=0.0), registry=CollectorRegistry())
    await host.start()
    try:
        yield host
    finally:
        await host.drain()


SERVED = "served"


async def get_time(nc: nats.aio.client.Client, timeout: float = 10.0) -> str | grpc.aio.AioRpcError:
    """SERVED when the servicer answered (a world without a clock is NOT_FOUND, an answer too)."""
    stub = time_manager_pb2_grpc.TimeManagerServiceStub(nats_transport.aio.channel(nc, TARGET))
    try:
        await stub.GetTime(time_manager_pb2.GetTimeRequest(world_id="outage"), timeout=timeout)
    except grpc.aio.AioRpcError as err:
        return SERVED if err.code() == grpc.StatusCode.NOT_FOUND else err
    return SERVED


def reason_of(err: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(err)
    assert status is not None, "the refusal carries a google.rpc.Status"
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return ""


async def test_a_target_whose_storage_never_opens_takes_no_call_so_none_is_unimplemented():
    with NatsServer(jetstream=False, name="no-jetstream") as server:
        nc = await nats.connect(server.url)
        try:
            async with hosting(server.url) as host:
                await wait_for(lambda: "time-manager:" in _reason(host), timeout=10)
                for _ in range(5):
                    outcome = await get_time(nc, timeout=2)
                    # No replica joined the queue group, so NATS says nobody is there: never
                    # UNIMPLEMENTED "Method not found" from a replica without its servicer.
                    assert isinstance(outcome, grpc.aio.AioRpcError)
                    assert outcome.code() == grpc.StatusCode.UNAVAILABLE
                ready, reason = await host.readiness()
                assert not ready
                assert reason.startswith("not serving: time-manager:")
        finally:
            await nc.close()


async def is_ready(host: Host) -> bool:
    return (await host.readiness())[0]


def _reason(host: Host) -> str:
    return " ".join(h.error for h in host._hosted)


@pytest.fixture
def cluster() -> Iterator[NatsCluster]:
    with NatsCluster(size=3, name="outage") as nodes:
        yield nodes


async def test_storage_without_quorum_refuses_calls_at_once_then_serves_again_when_it_returns(cluster):
    survivor = cluster.servers[0]
    nc = await nats.connect(survivor.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    try:
        async with hosting(survivor.url) as host:
            assert host.replicas.replicas == 3, host.replicas.reason
            await wait_for(lambda: is_ready(host), timeout=20)
            assert await get_time(nc) == SERVED
            for stream in host._hosted[0].storage.streams:
                info = await nc.jetstream().stream_info(stream)
                assert info.config.num_replicas == 3

            for node in cluster.servers[1:]:
                node.stop(kill=True)  # two of three: no stream can elect a leader

            async def refused() -> bool:
                return not await is_ready(host)

            await wait_for(refused, timeout=20)
            _ready, reason = await host.readiness()
            assert reason.startswith("storage unavailable: time-manager:"), reason
            assert await check_health(nc, TARGET, "gaming.time_manager.v1.TimeManagerService") == NOT_SERVING
            outcome = await get_time(nc, timeout=10)
            assert isinstance(outcome, grpc.aio.AioRpcError)
            assert outcome.code() == grpc.StatusCode.UNAVAILABLE, outcome
            assert reason_of(outcome) == "STORAGE_UNAVAILABLE"
            assert "cannot reach its storage" in (outcome.details() or "")

            for node in cluster.servers[1:]:
                node.start()

            await wait_for(lambda: is_ready(host), timeout=30)
            assert await check_health(nc, TARGET) == SERVING
            assert await get_time(nc) == SERVED
    finally:
        await nc.close()
