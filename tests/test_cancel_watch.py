"""A handler that loses its call's cancellation is cancelled again until it ends, and the server
says so in its log (Python 3.11's wait_for can drop a cancellation; a handler can swallow one)."""

from __future__ import annotations

import asyncio
import logging
import uuid

import grpc
import pytest
from gaming.event_bus.v1 import event_bus_pb2, event_bus_pb2_grpc
from gaming.quest.v1 import quest_pb2, quest_pb2_grpc

import nats_transport.aio
from nats_transport import _cancel_watch
from tests._waiting import wait_for


class Stubborn(event_bus_pb2_grpc.EventBusServiceServicer, quest_pb2_grpc.QuestServiceServicer):
    """Swallows the first cancellation of each call and carries on; ends at the next."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.swallowed = 0
        self.ended = asyncio.Event()

    async def _wait_twice(self) -> None:
        try:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.swallowed += 1  # lost, as a wait_for racing a result would lose it
            await asyncio.Event().wait()
        finally:
            self.ended.set()

    async def Subscribe(self, request, context):
        yield event_bus_pb2.SubscribeResponse()
        self.started.set()
        await self._wait_twice()

    async def GetQuest(self, request, context):
        self.started.set()
        await self._wait_twice()
        return quest_pb2.GetQuestResponse()


@pytest.fixture
async def stubborn(nc, monkeypatch):
    monkeypatch.setattr(_cancel_watch, "GRACE", 0.2)
    target = f"stubborn-{uuid.uuid4().hex[:8]}"
    servicer = Stubborn()
    server = nats_transport.aio.server(nc, target)
    event_bus_pb2_grpc.add_EventBusServiceServicer_to_server(servicer, server)
    quest_pb2_grpc.add_QuestServiceServicer_to_server(servicer, server)
    await server.start()
    channel = nats_transport.aio.channel(nc, target)
    yield servicer, channel
    await channel.close()
    await server.stop(0)


async def test_a_server_stream_whose_handler_swallowed_the_clients_cancel_still_ends(stubborn, caplog):
    servicer, channel = stubborn
    call = event_bus_pb2_grpc.EventBusServiceStub(channel).Subscribe(event_bus_pb2.SubscribeRequest())
    await call.read()
    await wait_for(servicer.started.is_set, timeout=5)
    with caplog.at_level(logging.WARNING, logger="nats_transport.server"):
        call.cancel()
        await wait_for(servicer.ended.is_set, timeout=5)
    assert servicer.swallowed == 1
    assert "still running" in caplog.text
    assert "gaming.event_bus.v1.EventBusService/Subscribe" in caplog.text


async def test_a_unary_handler_that_swallowed_its_deadline_still_ends(stubborn, caplog):
    servicer, channel = stubborn
    stub = quest_pb2_grpc.QuestServiceStub(channel)
    with caplog.at_level(logging.WARNING, logger="nats_transport.server"):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.GetQuest(quest_pb2.GetQuestRequest(quest_id="q-1"), timeout=0.3)
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await wait_for(servicer.ended.is_set, timeout=5)
    assert servicer.swallowed == 1
    assert "gaming.quest.v1.QuestService/GetQuest" in caplog.text
