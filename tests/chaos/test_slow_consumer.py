"""Slow consumers: a stream nobody reads is held to the flow-control window, the server stays
healthy for everyone else, and NATS never cuts the server off as a slow consumer.

A server in a child process (``_flood_server.py``, ``nats_transport.aio.server``) streams 1 KiB
events as fast as flow control lets it. Against it, at once:

- three streams in this process that read one event and then no more (a client that stopped
  reading, its keepalives still going);
- a subscriber in a child process (``_stuck_reader.py``) that stops reading, then is stopped
  with SIGSTOP (a subscriber that cannot keep up at all: it cannot even answer keepalives);
- a stream read as fast as it comes, and four callers making unary calls (everyone else).

For ``MESH_CHAOS_SECONDS`` the stuck streams stay stuck. Asserted (section 6.5 of the wire
protocol: a sender may send no more DATA than the receiver's window until it grants credit):
no stuck stream's handler got more than the client's window plus the server's own send buffer
(up to the server's window) plus a message or two past it, and its count did not move while
it was stuck; the server's memory stayed flat; every unary call succeeded and the
reading stream kept flowing; the server ended the hung subscriber's stream for its silence (a
bounded wait; how long it took is reported, not asserted); and nats-server counted no slow
consumer, with the server's connection never dropped.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from gaming.event_bus.v1 import event_bus_pb2, event_bus_pb2_grpc
from nats.aio.client import Client

import nats_transport.aio
from nats_transport import ChannelOptions
from nats_transport.testing import NatsServer
from tests.chaos._harness import load_runs_for, until
from tests.chaos._load import Load, failure_details, failures_by_code, unary
from tests.chaos._monitoring import connections, slow_consumers
from tests.chaos._processes import Child, Processes, script
from tests.chaos._report import SECONDS, Summary, time_limit
from tests.chaos.conftest import Clients

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(time_limit(per_round=20))]

TARGET = "chaos-flood"
# The stream window of both ends.
WINDOW = 64 * 1024
# One framed event: a 1 KiB payload, a few bytes of protobuf and sequence, the 5-byte frame header.
FRAME = 1024 + 20
# Everything a stuck stream's handler can hand over: a window sent, a window queued behind it,
# the event queued past the mark before the handler waits, and the one the client did read.
STUCK_BOUND = WINDOW + WINDOW + 2 * FRAME
STUCK_STREAMS = 3
# The server's stream keepalive timeout (_flood_server.py, which looks every 0.5 s): it ends a
# stream whose client has been silent this long. (It waits at least three of the PING intervals
# the client announces, wire protocol section 6.8; the clients here announce 0.5 s, so its own
# timeout decides.)
SERVER_KEEPALIVE_TIMEOUT = 2.0
# Growth of the server's resident memory that would mean it buffers what it cannot send: a stuck
# stream holds at most a window in the server's send buffer (256 KiB for the four here), while
# the flood, unbounded, would queue megabytes a second.
MEMORY_GROWTH_LIMIT = 32 * 1024 * 1024
# This client's keepalives (the stuck reader's too): well inside the server's timeout, so a live
# client that stopped reading keeps its stream.
CHANNEL_OPTIONS = ChannelOptions(stream_window=WINDOW, keepalive_interval=0.5, keepalive_timeout=2.0)


async def stats(nc: Client) -> dict[str, Any]:
    reply = await nc.request(f"chaos.{TARGET}.stats", b"", timeout=2)
    answer: dict[str, Any] = json.loads(reply.data)
    return answer


async def first_line(child: Child, expected: str) -> None:
    line = await asyncio.wait_for(asyncio.to_thread(child.read_line), 20)
    assert line == expected, f"{child.name} printed {line!r}:\n{child.log()[-2000:]}"


async def test_a_stream_nobody_reads_is_held_to_its_window_and_the_server_stays_healthy_for_others(
        private_nats_server: NatsServer, processes: Processes, clients: Clients) -> None:
    server = private_nats_server
    flood = processes.child("flood server", script("_flood_server.py", server.url, TARGET, str(WINDOW)))
    await first_line(flood, "ready")
    nc = await clients.connect(server.url)
    flood_connection = await connections(server, "chaos-flood")
    assert len(flood_connection) == 1
    stub = event_bus_pb2_grpc.EventBusServiceStub(nats_transport.aio.channel(nc, TARGET, options=CHANNEL_OPTIONS))

    # Everyone else: unary callers, and a stream read as fast as it comes.
    callers = Load(lambda: unary(stub.Publish(event_bus_pb2.PublishRequest(topic="chaos"), timeout=5)), 4)
    received = 0

    async def read_everything() -> None:
        nonlocal received
        async for _ in stub.Subscribe(event_bus_pb2.SubscribeRequest(consumer_name="reader"), timeout=120):
            received += 1

    stuck = [stub.Subscribe(event_bus_pb2.SubscribeRequest(consumer_name=f"stuck-{i}"), timeout=120)
             for i in range(STUCK_STREAMS)]
    reader = asyncio.create_task(read_everything())
    callers.start()
    try:
        for call in stuck:
            await call.read()  # one event, then this client reads no more
        hung = processes.child("stuck reader", script("_stuck_reader.py", server.url, TARGET, "hung", str(WINDOW)))
        await first_line(hung, "reading stopped")
        names = [f"stuck-{i}" for i in range(STUCK_STREAMS)] + ["hung"]

        async def windows_full() -> bool:
            # Every stuck stream's handler has handed over at least a window: the client's
            # window is spent and the server's buffer is filling or full.
            streams = (await stats(nc))["streams"]
            return all(streams.get(name, {}).get("bytes", 0) >= WINDOW for name in names)

        await until(windows_full, 20, "the stuck streams never filled their windows")
        hung.stop()
        hung_at = time.monotonic()
        before = await stats(nc)
        stuck_since = time.monotonic()
        received_before = received

        async def hung_stream_ended() -> bool:
            return (await stats(nc))["streams"]["hung"]["ended"] is not None

        await until(hung_stream_ended, SERVER_KEEPALIVE_TIMEOUT + 10, "the server never ended the hung stream")
        hung_ended = time.monotonic()
        await load_runs_for(SECONDS, stuck_since)  # the stuck period: unread streams, the others going on
        after = await stats(nc)
        received_during = received - received_before
    finally:
        await callers.stop()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        for call in stuck:
            call.cancel()

    stuck_bytes = {name: after["streams"][name]["bytes"] for name in names}
    grew = {name: after["streams"][name]["bytes"] - before["streams"][name]["bytes"] for name in names[:-1]}
    summary = Summary(
        "slow consumer",
        calls=len(callers.outcomes),
        failed=failures_by_code(callers.outcomes),
        recovery_s=[round(hung_ended - hung_at, 2)],
        worst_latency_s=max(o.latency for o in callers.outcomes),
        notes={"stuck streams": STUCK_STREAMS + 1, "window bytes": WINDOW,
               "most a stuck stream's handler handed over": max(stuck_bytes.values()),
               "bound": STUCK_BOUND, "reader got events while stuck": received_during,
               "server memory MiB before/after": f"{before['rss'] / 2**20:.1f}/{after['rss'] / 2**20:.1f}",
               "slow consumers": await slow_consumers(server)},
        details=failure_details(callers.outcomes),
    )
    summary.publish()

    assert all(size <= STUCK_BOUND for size in stuck_bytes.values()), stuck_bytes
    assert grew == dict.fromkeys(grew, 0), f"stuck streams kept sending: {grew}"
    assert after["rss"] - before["rss"] < MEMORY_GROWTH_LIMIT, summary.line()
    assert summary.failed == {}, summary.details
    assert received_during > 0, "the reading stream stalled behind the stuck ones"
    assert after["streams"]["hung"]["ended"] == "cancelled", after["streams"]["hung"]
    assert summary.notes["slow consumers"] == 0
    assert after["reconnects"] == 0
    assert [c["cid"] for c in await connections(server, "chaos-flood")] == [flood_connection[0]["cid"]]
