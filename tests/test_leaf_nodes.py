"""A region joins the mesh as a NATS leaf node: a client connected only to the leaf nats-server
calls a target served on the hub (unary and a server stream) and discovers it through ``$SRV``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from gaming.time_manager.v1 import time_manager_pb2 as tm
from gaming.time_manager.v1 import time_manager_pb2_grpc
from google.protobuf import duration_pb2
from nats.aio.client import Client
from prometheus_client import CollectorRegistry

import nats_transport.aio
from mesh.connection import NatsAccess
from mesh.host import Host, HostConfig
from mesh.tools import discover
from nats_transport.testing import NatsServer, free_port
from tests._waiting import wait_for, wait_until

REPO = Path(__file__).resolve().parent.parent
# Its methods are public (gaming.common.v1.access), so no token is needed, and it keeps its
# clocks in JetStream, which only the hub runs.
TARGET = "time-manager"
SERVICE = "gaming.time_manager.v1.TimeManagerService"
WORLD = "main"  # the world time-manager gives a clock by default


def _leaf_connections(server: NatsServer) -> int:
    """How many leaf node connections the server's monitoring ``/leafz`` lists."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.monitor_port}/leafz", timeout=2) as response:
        return int(json.loads(response.read()).get("leafnodes", 0))


def _wait_for_leaf_link(hub: NatsServer, leaf: NatsServer, timeout: float = 15.0) -> None:
    # The leaf dials its remote after it starts accepting clients: poll both ends, bounded.
    try:
        wait_until(lambda: _leaf_connections(hub) >= 1 and _leaf_connections(leaf) >= 1, timeout, "a leaf connection")
    except AssertionError as error:
        raise AssertionError(f"{error}:\n{leaf.log()[-2000:]}") from None


@pytest.fixture
def hub_and_leaf() -> Iterator[tuple[NatsServer, NatsServer]]:
    """The hub (JetStream, accepting leaf connections) and a region's leaf server with a remote
    to it, both real processes; yields once the leaf connection is up on both sides."""
    leaf_port = free_port()
    hub = NatsServer(name="hub", extra_config=f"leafnodes {{ listen: 127.0.0.1:{leaf_port} }}")
    leaf = NatsServer(name="region-eu", jetstream=False,
                      extra_config=f'leafnodes {{ remotes = [ {{ url: "nats-leaf://127.0.0.1:{leaf_port}" }} ] }}')
    try:
        hub.start()
        leaf.start()
        _wait_for_leaf_link(hub, leaf)
        yield hub, leaf
    finally:
        leaf.close()
        hub.close()


@pytest.fixture
async def hosted_on_hub(hub_and_leaf: tuple[NatsServer, NatsServer]) -> AsyncIterator[Host]:
    """time-manager in a real host connected to the hub only, once it is SERVING."""
    hub, _ = hub_and_leaf
    host = Host(HostConfig(targets=(TARGET,), nats=NatsAccess(urls=(hub.url,)), admin_port=None,
                           grace=1.0, drain_pause=0.0,
                           settings={TARGET: {"clocks_max_bytes": str(1 << 20)}}),
                registry=CollectorRegistry())
    try:
        await host.start()

        async def serving() -> bool:
            ready, _ = await host.readiness()
            return ready

        await wait_for(serving, timeout=20)
        yield host
    finally:
        await host.drain()


@pytest.fixture
async def leaf_client(hub_and_leaf: tuple[NatsServer, NatsServer]) -> AsyncIterator[Client]:
    """A client of the region: it knows only the leaf server's URL."""
    _, leaf = hub_and_leaf
    nc = await nats.connect(leaf.url, max_reconnect_attempts=0)
    try:
        yield nc
    finally:
        await nc.close()


async def _sees_target(nc: Client) -> bool:
    return any(answer.get("name") == TARGET for answer in await discover(nc, wait=0.3))


async def test_a_client_on_the_leaf_discovers_and_calls_a_target_served_on_the_hub(
    hosted_on_hub: Host, leaf_client: Client, hub_and_leaf: tuple[NatsServer, NatsServer]
):
    # The hub tells the leaf about its subscriptions a moment after they are made: $SRV answers
    # arriving at the leaf mean the target's subjects are known there too.
    await wait_for(lambda: _sees_target(leaf_client), timeout=15)
    info = next(a for a in await discover(leaf_client) if a.get("name") == TARGET)
    assert SERVICE in info["metadata"]["grpc.services"]

    stub = time_manager_pb2_grpc.TimeManagerServiceStub(nats_transport.aio.channel(leaf_client, TARGET))
    reply = await stub.GetTime(tm.GetTimeRequest(world_id=WORLD), timeout=10)
    assert reply.clock.world_id == WORLD

    # A server stream: one tick at once, then one per game second (coalesced to >= 50 ms apart).
    call = stub.StreamTicks(tm.StreamTicksRequest(world_id=WORLD, tick_interval=duration_pb2.Duration(seconds=1)),
                            timeout=20)
    try:
        ticks = [await call.read() for _ in range(3)]
    finally:
        call.cancel()
    assert [t.sequence for t in ticks] == [0, 1, 2]
    assert ticks[0].game_time.ToNanoseconds() < ticks[2].game_time.ToNanoseconds()

    # The operator's view from the region: `mesh services` against the leaf lists the target.
    _, leaf = hub_and_leaf
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mesh", "services", "--nats-url", leaf.url,
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.communicate()
    assert process.returncode == 0, err.decode()
    assert any(line.split()[0] == TARGET and SERVICE in line for line in out.decode().splitlines())
