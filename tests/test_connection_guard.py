"""What ``guard_connection`` fixes in nats-py besides malformed messages (see test_poison.py)."""

from __future__ import annotations

import asyncio
import gc
import weakref

import nats
from gaming.quest.v1 import quest_pb2, quest_pb2_grpc
from nats.aio.msg import Msg

import nats_transport.aio
from nats_transport._connection_guard import dropped_messages, guard_connection, subscribe_direct
from nats_transport.testing import NatsServer
from tests._waiting import wait_for


async def test_flush_returns_only_after_the_server_saw_what_was_written_before_it(nats_server: NatsServer):
    # nats-py writes PING straight to the socket while a SUB or PUB may still wait for its
    # flusher task: flush() could return before the server saw a subscription.
    nc = guard_connection(await nats.connect(nats_server.url))
    written: list[bytes] = []
    transport = nc._transport
    assert transport is not None
    write, writelines = transport.write, transport.writelines
    transport.write = lambda payload: (written.append(bytes(payload)), write(payload))[1]  # type: ignore[method-assign]
    transport.writelines = lambda payloads: (written.extend(bytes(p) for p in payloads), writelines(payloads))[1]  # type: ignore[method-assign]
    try:
        await nc.subscribe("probe.ordering")
        await nc.flush()
        stream = b"".join(written)
        assert stream.index(b"SUB probe.ordering") < stream.index(b"PING\r\n"), stream
    finally:
        await nc.close()


async def test_a_direct_subscription_hands_each_message_to_its_handler_from_the_reader(nats_server: NatsServer):
    nc = guard_connection(await nats.connect(nats_server.url))
    publisher = await nats.connect(nats_server.url)
    seen: list[tuple[str, str, bytes, dict[str, str] | None]] = []
    in_reader: list[bool] = []

    def handler(msg: Msg) -> None:
        in_reader.append(asyncio.current_task() is nc._reading_task)
        seen.append((msg.subject, msg.reply, msg.data, msg.headers))

    try:
        sub = await subscribe_direct(nc, "direct.>", handler)
        await nc.flush()
        await publisher.publish("direct.a", b"one", reply="answer.here", headers={"k": "v"})
        await publisher.publish("direct.b", b"two")
        await publisher.flush()
        await wait_for(lambda: len(seen) == 2, timeout=5)
        assert seen == [("direct.a", "answer.here", b"one", {"k": "v"}), ("direct.b", "", b"two", None)]
        # Handed over by the reader itself, not by the subscription's dispatch task; nats-py's
        # counters still count them.
        assert in_reader == [True, True]
        assert sub.delivered == 2
        assert nc.stats["in_msgs"] >= 2
    finally:
        await nc.close()
        await publisher.close()


async def test_a_direct_handler_that_raises_costs_one_message_not_the_connection(nats_server: NatsServer):
    nc = guard_connection(await nats.connect(nats_server.url))
    publisher = await nats.connect(nats_server.url)
    seen: list[bytes] = []

    def handler(msg: Msg) -> None:
        if msg.data == b"boom":
            raise ValueError("handler failed")
        seen.append(msg.data)

    try:
        await subscribe_direct(nc, "direct.raise", handler)
        await nc.flush()
        for body in (b"boom", b"after"):
            await publisher.publish("direct.raise", body)
        await publisher.flush()
        await wait_for(lambda: seen == [b"after"], timeout=5)
        assert dropped_messages(nc) == 1
    finally:
        await nc.close()
        await publisher.close()


async def test_a_direct_subscription_hears_nothing_once_unsubscribed(nats_server: NatsServer):
    nc = guard_connection(await nats.connect(nats_server.url))
    seen: list[bytes] = []
    try:
        sub = await subscribe_direct(nc, "direct.gone", lambda msg: seen.append(msg.data))
        await nc.publish("direct.gone", b"first")
        await wait_for(lambda: seen == [b"first"], timeout=5)
        await sub.unsubscribe()
        marker = await nc.subscribe("direct.gone")
        await nc.publish("direct.gone", b"second")
        await marker.next_msg(timeout=5)  # the second message reached this connection...
        assert seen == [b"first"]  # ...but not the handler of the subscription that ended
    finally:
        await nc.close()


async def test_without_the_guard_a_direct_subscription_still_delivers_through_nats_py(nats_server: NatsServer):
    nc = await nats.connect(nats_server.url)
    seen: list[bytes] = []
    try:
        await subscribe_direct(nc, "direct.plain", lambda msg: seen.append(msg.data))
        await nc.publish("direct.plain", b"hello")
        await wait_for(lambda: seen == [b"hello"], timeout=5)
    finally:
        await nc.close()


async def test_a_closed_connection_is_freed_once_its_server_and_channel_are_gone(nats_server: NatsServer):
    # The per-connection state of servers and channels (direct routes, the reply mux) lives on
    # the client: registries keyed weakly by the client, whose values reference it, kept every
    # connection a process ever served or called on alive.
    class Quests(quest_pb2_grpc.QuestServiceServicer):
        async def GetQuest(self, request: object, context: object) -> quest_pb2.GetQuestResponse:
            return quest_pb2.GetQuestResponse()

    server_nc, client_nc = await nats.connect(nats_server.url), await nats.connect(nats_server.url)
    server = nats_transport.aio.server(server_nc, "freed")
    quest_pb2_grpc.add_QuestServiceServicer_to_server(Quests(), server)
    await server.start()
    channel = nats_transport.aio.channel(client_nc, "freed")
    await quest_pb2_grpc.QuestServiceStub(channel).GetQuest(quest_pb2.GetQuestRequest(quest_id="q"), timeout=5)
    await channel.close()
    await server.stop(0)
    await server_nc.close()
    await client_nc.close()
    connections = [weakref.ref(server_nc), weakref.ref(client_nc)]
    del server, channel, server_nc, client_nc

    def all_freed() -> bool:
        gc.collect()
        return all(ref() is None for ref in connections)

    # The channel's keepalive sweep (1 s by default) holds its connection until it next runs.
    await wait_for(all_freed, timeout=10)
