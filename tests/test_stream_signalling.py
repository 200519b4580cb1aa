"""A side that ends a stream on its own tells the other at once, with the real status."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import nats
import pytest
from gaming.event_bus.v1 import event_bus_pb2, event_bus_pb2_grpc

import nats_transport.aio
from nats_transport import _envelope as env
from nats_transport import _framing
from nats_transport._envelope import Kind
from tests._waiting import wait_for

SUBSCRIBE = "gaming.event_bus.v1.EventBusService.Subscribe"


class Forever(event_bus_pb2_grpc.EventBusServiceServicer):
    """Streams until cancelled, and records that it was."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def Subscribe(self, request, context):
        self.started.set()
        try:
            while True:
                yield event_bus_pb2.SubscribeResponse()
                await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


@pytest.fixture
async def forever(nc):
    target = f"signal-{uuid.uuid4().hex[:8]}"
    servicer = Forever()
    server = nats_transport.aio.server(nc, target)
    event_bus_pb2_grpc.add_EventBusServiceServicer_to_server(servicer, server)
    await server.start()
    yield target, servicer, server
    await server.stop(0)


async def test_a_sequence_gap_from_the_client_is_answered_with_a_data_loss_cancel(nats_server, forever):
    target, servicer, _ = forever
    raw = await nats.connect(nats_server.url)
    try:
        inbox = raw.new_inbox()
        replies = await raw.subscribe(inbox)
        request = _framing.encode_message(event_bus_pb2.SubscribeRequest().SerializeToString())
        await raw.publish(
            f"grpc.{target}.{SUBSCRIBE}",
            env.pack(Kind.DATA, 0, request),
            reply=inbox,
            headers={"nats-grpc-stream": "1", "nats-grpc-window": "65536"},
        )
        kind, _, payload = env.unpack((await replies.next_msg(timeout=2)).data)
        assert kind == Kind.ACCEPT
        _, call_subject = env.unpack_accept(payload)
        await raw.publish(call_subject, env.pack(Kind.HALF_CLOSE, 7))  # 1 was expected
        while True:
            kind, _, payload = env.unpack((await replies.next_msg(timeout=2)).data)
            if kind == Kind.CANCEL:
                break
        ((flag, block),) = _framing.decode_complete(bytes(payload), 65536)
        trailers = _framing.decode_trailer_block(block)
        assert flag == _framing.TRAILER_FLAG
        assert trailers.code == grpc.StatusCode.DATA_LOSS.value[0]
        await wait_for(servicer.cancelled.is_set, timeout=2)
    finally:
        await raw.close()


async def test_a_cancel_made_before_the_server_accepted_still_reaches_the_handler(nc, forever):
    target, servicer, _ = forever
    stub = event_bus_pb2_grpc.EventBusServiceStub(nats_transport.aio.channel(nc, target))
    call = stub.Subscribe(event_bus_pb2.SubscribeRequest())
    await call._opened.wait()  # the opening message is out; its ACCEPT needs a round trip
    assert call._stream.endpoint.peer_subject is None  # the ACCEPT has not arrived yet
    call.cancel()
    await wait_for(servicer.started.is_set, timeout=2)
    # Well inside the 5 s keepalive timeout: the CANCEL, not a keepalive, ended it.
    await wait_for(servicer.cancelled.is_set, timeout=2)


async def test_streams_still_open_when_the_server_stops_end_with_unavailable(nc, forever):
    target, _, server = forever
    stub = event_bus_pb2_grpc.EventBusServiceStub(nats_transport.aio.channel(nc, target))
    call = stub.Subscribe(event_bus_pb2.SubscribeRequest())
    await call.read()
    await server.stop(0.1)
    # Well before the 5 s keepalive timeout: the server said why.
    await asyncio.wait_for(call.code(), 2)
    assert await call.code() == grpc.StatusCode.UNAVAILABLE


async def test_unary_calls_still_running_when_the_server_stops_end_with_unavailable(nc):
    from gaming.quest.v1 import quest_pb2, quest_pb2_grpc

    started = asyncio.Event()

    class Stuck(quest_pb2_grpc.QuestServiceServicer):
        async def GetQuest(self, request, context):
            started.set()
            await asyncio.Event().wait()  # never finishes on its own

    target = f"stuck-{uuid.uuid4().hex[:8]}"
    server = nats_transport.aio.server(nc, target)
    quest_pb2_grpc.add_QuestServiceServicer_to_server(Stuck(), server)
    await server.start()
    call = quest_pb2_grpc.QuestServiceStub(nats_transport.aio.channel(nc, target)).GetQuest(
        quest_pb2.GetQuestRequest(quest_id="q"), timeout=30
    )
    await started.wait()
    await server.stop(0)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asyncio.wait_for(call, 2)  # well inside the 5 s keepalive timeout
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
