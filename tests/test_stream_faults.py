"""Streams under faults: a killed server process, replicas sharing streams, sync-channel streams."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import grpc
import nats
import pytest
from gaming.event_bus.v1 import event_bus_pb2, event_bus_pb2_grpc
from gaming.npc_behavior.v1 import npc_behavior_pb2, npc_behavior_pb2_grpc

import nats_transport
import nats_transport.aio
from nats_transport import ChannelOptions, ServerOptions
from tests._deadlines import BEYOND_THE_TEST_TIMEOUT
from tests._waiting import wait_for

HERE = Path(__file__).parent
FAST_KEEPALIVE = {"keepalive_interval": 0.2, "keepalive_timeout": 1.0}


class Echo(npc_behavior_pb2_grpc.NpcBehaviorServiceServicer):
    """Answers each perception batch with one response echoing its sequence, tagged by replica."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls_seen = 0

    async def DecisionStream(self, request_iterator, context):
        self.calls_seen += 1
        async for request in request_iterator:
            yield npc_behavior_pb2.DecisionStreamResponse(
                client_sequence=request.client_sequence, npc_id=self.name
            )


async def _read_until_error(call) -> None:
    while True:
        await call.read()


@pytest.fixture
def target() -> str:
    return f"faults-{uuid.uuid4().hex[:8]}"


async def test_a_killed_server_process_fails_the_stream_with_unavailable_long_before_its_deadline(
    nats_server, nc, target
):
    process = subprocess.Popen(  # noqa: ASYNC220 - starting a child does not block the loop for long
        [sys.executable, str(HERE / "_slow_stream_server.py"), nats_server.url, target],
        stdout=subprocess.PIPE,
        cwd=HERE.parent,
    )
    try:
        assert process.stdout is not None
        assert (await asyncio.to_thread(process.stdout.readline)).strip() == b"ready"
        channel = nats_transport.aio.channel(nc, target, options=ChannelOptions(**FAST_KEEPALIVE))
        stub = event_bus_pb2_grpc.EventBusServiceStub(channel)
        # A call that waited for this deadline would outlast the test's own timeout and fail it.
        call = stub.Subscribe(event_bus_pb2.SubscribeRequest(consumer_name="c"), timeout=BEYOND_THE_TEST_TIMEOUT)
        await call.read()
        process.kill()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _read_until_error(call)
        # The stream's keepalive timeout found the server gone (its words for the silence).
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert (caught.value.details() or "").endswith("assuming it is gone")
    finally:
        process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


async def test_replicas_share_fifty_concurrent_streams_and_no_stream_crosses_replicas(nats_server, target):
    servers, connections = [], []
    replicas = [Echo("a"), Echo("b")]
    for servicer in replicas:
        server_nc = await nats.connect(nats_server.url)
        server = nats_transport.aio.server(server_nc, target)
        npc_behavior_pb2_grpc.add_NpcBehaviorServiceServicer_to_server(servicer, server)
        await server.start()
        servers.append(server)
        connections.append(server_nc)
    client_nc = await nats.connect(nats_server.url)
    try:
        stub = npc_behavior_pb2_grpc.NpcBehaviorServiceStub(nats_transport.aio.channel(client_nc, target))

        async def one_stream() -> set[str]:
            call = stub.DecisionStream()
            replicas_seen = set()
            for sequence in range(20):
                await call.write(npc_behavior_pb2.DecisionStreamRequest(client_sequence=sequence))
                response = await call.read()
                assert response.client_sequence == sequence
                replicas_seen.add(response.npc_id)
            await call.done_writing()
            assert await call.read() is grpc.aio.EOF
            assert await call.code() == grpc.StatusCode.OK
            return replicas_seen

        results = await asyncio.gather(*(one_stream() for _ in range(50)))
        assert all(len(seen) == 1 for seen in results)
        assert replicas[0].calls_seen + replicas[1].calls_seen == 50
        assert replicas[0].calls_seen > 0
        assert replicas[1].calls_seen > 0
    finally:
        await client_nc.close()
        for server, server_nc in zip(servers, connections, strict=True):
            await server.stop(0)
            await server_nc.close()


async def test_a_client_that_vanishes_mid_stream_gets_its_server_handler_cancelled(nats_server, target):
    cancelled = asyncio.Event()

    class Forever(event_bus_pb2_grpc.EventBusServiceServicer):
        async def Subscribe(self, request, context):
            try:
                while True:
                    yield event_bus_pb2.SubscribeResponse()
                    await asyncio.sleep(0.05)
            finally:
                cancelled.set()

    server_nc = await nats.connect(nats_server.url)
    server = nats_transport.aio.server(server_nc, target, options=ServerOptions(**FAST_KEEPALIVE))
    event_bus_pb2_grpc.add_EventBusServiceServicer_to_server(Forever(), server)
    await server.start()
    client_nc = await nats.connect(nats_server.url)
    try:
        channel = nats_transport.aio.channel(client_nc, target, options=ChannelOptions(**FAST_KEEPALIVE))
        call = event_bus_pb2_grpc.EventBusServiceStub(channel).Subscribe(event_bus_pb2.SubscribeRequest())
        await call.read()
        # The client's connection disappears without a CANCEL: only keepalives can tell.
        await client_nc.close()
        await wait_for(cancelled.is_set, timeout=5)
        await wait_for(lambda: server.in_flight == 0, timeout=5)
    finally:
        await server.stop(0)
        await server_nc.close()


async def test_sync_channel_streams_work_in_all_three_kinds(nats_server, target):
    class Npc(npc_behavior_pb2_grpc.NpcBehaviorServiceServicer):
        async def DecisionStream(self, request_iterator, context):
            async for request in request_iterator:
                yield npc_behavior_pb2.DecisionStreamResponse(client_sequence=request.client_sequence)

    class Events(event_bus_pb2_grpc.EventBusServiceServicer):
        async def Subscribe(self, request, context):
            for _ in range(3):
                yield event_bus_pb2.SubscribeResponse()

        async def PublishBatch(self, request_iterator, context):
            count = 0
            async for _ in request_iterator:
                count += 1
            return event_bus_pb2.PublishBatchResponse(accepted_count=count)

    server_nc = await nats.connect(nats_server.url)
    server = nats_transport.aio.server(server_nc, target)
    npc_behavior_pb2_grpc.add_NpcBehaviorServiceServicer_to_server(Npc(), server)
    event_bus_pb2_grpc.add_EventBusServiceServicer_to_server(Events(), server)
    await server.start()

    def use_sync_channel() -> tuple[int, int, list[int], grpc.StatusCode]:
        with nats_transport.channel(nats_server.url, target) as channel:
            events = event_bus_pb2_grpc.EventBusServiceStub(channel)
            server_stream = events.Subscribe(event_bus_pb2.SubscribeRequest())
            received = len(list(server_stream))
            requests = (event_bus_pb2.PublishBatchRequest() for _ in range(1000))
            accepted = events.PublishBatch(requests).accepted_count
            npc = npc_behavior_pb2_grpc.NpcBehaviorServiceStub(channel)
            bidi = npc.DecisionStream(
                npc_behavior_pb2.DecisionStreamRequest(client_sequence=i) for i in range(5)
            )
            sequences = [r.client_sequence for r in bidi]
            return received, accepted, sequences, bidi.code()

    try:
        received, accepted, sequences, code = await asyncio.to_thread(use_sync_channel)
        assert received == 3
        assert accepted == 1000
        assert sequences == [0, 1, 2, 3, 4]
        assert code == grpc.StatusCode.OK
    finally:
        await server.stop(0)
        await server_nc.close()


async def test_a_sync_stream_iterator_can_be_cancelled_and_reports_its_callbacks(nats_server, target):
    cancelled = asyncio.Event()

    class Forever(event_bus_pb2_grpc.EventBusServiceServicer):
        async def Subscribe(self, request, context):
            try:
                while True:
                    yield event_bus_pb2.SubscribeResponse()
                    await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                cancelled.set()
                raise

    server_nc = await nats.connect(nats_server.url)
    server = nats_transport.aio.server(server_nc, target)
    event_bus_pb2_grpc.add_EventBusServiceServicer_to_server(Forever(), server)
    await server.start()

    def read_two_then_cancel() -> tuple[grpc.StatusCode, bool, bool]:
        with nats_transport.channel(nats_server.url, target) as channel:
            calls = event_bus_pb2_grpc.EventBusServiceStub(channel).Subscribe(event_bus_pb2.SubscribeRequest())
            ended = threading.Event()
            calls.add_callback(ended.set)
            next(calls)
            next(calls)
            calls.cancel()
            with pytest.raises(grpc.RpcError) as caught:
                next(calls)
            return caught.value.code(), ended.wait(5), calls.is_active()

    try:
        code, callback_ran, active = await asyncio.to_thread(read_two_then_cancel)
        assert code == grpc.StatusCode.CANCELLED
        assert callback_ran
        assert not active
        await wait_for(cancelled.is_set, timeout=5)
    finally:
        await server.stop(0)
        await server_nc.close()
