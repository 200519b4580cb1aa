"""Unary cancellation on the wire (protocol 1.1, docs/wire-protocol.md §5): a client that gives
up a fast-path call has the handler cancelled on the replica that took it, and on no other."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import nats
import pytest
from gaming.ai_integration.v1 import ai_integration_pb2 as ai
from gaming.ai_integration.v1 import ai_integration_pb2_grpc
from gaming.quest.v1 import quest_pb2, quest_pb2_grpc
from nats.aio.client import Client
from prometheus_client import CollectorRegistry

import nats_transport
import nats_transport.aio
from health.call_log import CallLog
from health.metrics import ServerMetrics, client_interceptors, server_reporter
from nats_transport import _envelope, _framing
from nats_transport.testing import NatsServer
from servicers import ai_integration
from servicers.dependencies import Dependencies
from tests._quests import reply, serving
from tests._waiting import wait_for
from tests.servicers.test_ai_integration import KEY_ENV, Reply, StandInServer, no_channel

GET_QUEST = "gaming.quest.v1.QuestService.GetQuest"
CANCEL_HEADER = "nats-grpc-call"


@pytest.fixture
def target() -> str:
    return f"cancel-{uuid.uuid4().hex[:12]}"


class Handlers:
    """GetQuest handlers that block until released, noting which start (with the time they were
    given) and which are cancelled, in order. Each call is named by its ``quest_id``."""

    def __init__(self, replica: str = "") -> None:
        self.replica = replica
        self.started: set[str] = set()
        self.remaining: dict[str, float | None] = {}  # quest_id -> time_remaining() on arrival
        self.replies: dict[str, str] = {}  # quest_id -> reply subject of the call, seen on the wire
        self.cancelled: list[str] = []
        self.release = asyncio.Event()

    async def watch(self, nc: Client, target: str) -> None:
        """Note each call's reply subject as NATS delivers it (a plain subscriber sees every call)."""
        async def note(msg: Any) -> None:
            self.replies[quest_pb2.GetQuestRequest.FromString(msg.data[5:]).quest_id] = msg.reply

        await nc.subscribe(f"grpc.{target}.>", cb=note)
        await nc.flush()

    async def get_quest(self, request: quest_pb2.GetQuestRequest, context: Any) -> quest_pb2.GetQuestResponse:
        self.started.add(request.quest_id)
        self.remaining[request.quest_id] = context.time_remaining()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.append(request.quest_id)
            raise
        return reply(self.replica, quest_id=request.quest_id)


@contextlib.asynccontextmanager
async def stub_for(nc: Client, target: str) -> AsyncIterator[quest_pb2_grpc.QuestServiceStub]:
    async with nats_transport.aio.channel(nc, target) as channel:
        yield quest_pb2_grpc.QuestServiceStub(channel)


def request(quest_id: str) -> quest_pb2.GetQuestRequest:
    return quest_pb2.GetQuestRequest(quest_id=quest_id)


async def publish_cancel(nc: Client, target: str, reply_subject: str | None, body: bytes = b"") -> None:
    headers = None if reply_subject is None else {CANCEL_HEADER: reply_subject}
    await nc.publish(f"grpc.$cancel.{target}", body, headers=headers)
    await nc.flush()


# -- the three ways a caller gives a call up -----------------------------------------------------


async def test_cancelling_an_aio_call_cancels_its_handler_and_the_server_sends_nothing_more(
    nc: Client, target: str
) -> None:
    handlers = Handlers()
    await handlers.watch(nc, target)
    after_cancel: list[bytes] = []
    async with serving(nc, target, handlers.get_quest) as server, stub_for(nc, target) as stub:
        call = stub.GetQuest(request("q"), timeout=30)
        await wait_for(lambda: "q" in handlers.started)
        reply_subject = handlers.replies["q"]

        async def spy(msg: Any) -> None:
            after_cancel.append(msg.data)

        watcher = await nc.subscribe(reply_subject, cb=spy)
        await nc.flush()
        assert call.cancel()
        # Cancelled by the client's cancel message (counted below), not by its 30 s deadline.
        await wait_for(lambda: handlers.cancelled == ["q"])
        assert await call.code() == grpc.StatusCode.CANCELLED
        await wait_for(lambda: server.in_flight == 0)
        await nc.flush()  # whatever the server published has reached the watcher by now
        await watcher.unsubscribe()
        assert server.stats.unary_cancelled == 1
        assert server.endpoint_stats[GET_QUEST].last_error.startswith("CANCELLED")
    assert after_cancel == []  # no trailers, no PING: the client is gone


async def test_cancelling_a_sync_channels_future_cancels_its_handler(
    nc: Client, nats_server: NatsServer, target: str
) -> None:
    handlers = Handlers()
    started = threading.Event()
    seen_cancel = threading.Event()

    async def get_quest(request: quest_pb2.GetQuestRequest, context: Any) -> quest_pb2.GetQuestResponse:
        started.set()
        try:
            return await handlers.get_quest(request, context)
        finally:
            seen_cancel.set()

    def call_and_cancel() -> grpc.StatusCode:
        with nats_transport.channel(nats_server.url, target) as channel:
            future = quest_pb2_grpc.QuestServiceStub(channel).GetQuest.future(request("q"), timeout=30)
            assert started.wait(5)
            assert future.cancel()
            # Keep the channel open until the server has acted, as a program that goes on would.
            assert seen_cancel.wait(5)
            code: grpc.StatusCode = future.code()
            return code

    async with serving(nc, target, get_quest) as server:
        code = await asyncio.to_thread(call_and_cancel)
        assert code == grpc.StatusCode.CANCELLED
        assert handlers.cancelled == ["q"]
        assert server.stats.unary_cancelled == 1  # by the cancel message, not the 30 s deadline


@pytest.mark.parametrize("how", ["task.cancel()", "asyncio.timeout"])
async def test_cancelling_the_task_awaiting_a_call_cancels_its_handler(nc: Client, target: str, how: str) -> None:
    handlers = Handlers()
    async with serving(nc, target, handlers.get_quest) as server, stub_for(nc, target) as stub:

        async def caller() -> Any:
            if how == "asyncio.timeout":
                async with asyncio.timeout(0.3):  # the caller's own bound, not the call's deadline
                    return await stub.GetQuest(request("q"), timeout=30)
            return await stub.GetQuest(request("q"), timeout=30)

        task = asyncio.get_running_loop().create_task(caller())
        await wait_for(lambda: "q" in handlers.started)
        if how == "task.cancel()":
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        else:
            with pytest.raises(TimeoutError):
                await task
        await wait_for(lambda: handlers.cancelled == ["q"])
        assert server.stats.unary_cancelled == 1  # by the cancel message, not the 30 s deadline


async def test_cancelling_the_awaiting_task_reaches_the_server_through_client_interceptors(
    nc: Client, target: str
) -> None:
    handlers = Handlers()
    interceptors = client_interceptors(CollectorRegistry())  # what a mesh host puts on its channels
    async with (
        serving(nc, target, handlers.get_quest) as server,
        nats_transport.aio.channel(nc, target, interceptors=interceptors) as channel,
    ):
        stub = quest_pb2_grpc.QuestServiceStub(channel)

        async def caller() -> Any:
            return await stub.GetQuest(request("q"), timeout=30)

        task = asyncio.get_running_loop().create_task(caller())
        await wait_for(lambda: "q" in handlers.started)
        task.cancel()
        await wait_for(lambda: handlers.cancelled == ["q"])
        assert server.stats.unary_cancelled == 1  # by the cancel message, not the 30 s deadline


async def test_a_deadline_that_passes_cancels_the_handler_on_the_server(nc: Client, target: str) -> None:
    handlers = Handlers()
    async with serving(nc, target, handlers.get_quest) as server, stub_for(nc, target) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetQuest(request("q"), timeout=0.2)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await wait_for(lambda: handlers.cancelled == ["q"])
        remaining = handlers.remaining["q"]
        assert remaining is not None
        assert 0 < remaining <= 0.2  # the handler was given the caller's deadline
        # The server enforces grpc-timeout itself: no cancel message is needed or counted.
        await wait_for(lambda: server.in_flight == 0)
        assert server.endpoint_stats[GET_QUEST].last_error.startswith("DEADLINE_EXCEEDED")
        assert server.stats.unary_cancelled == 0


# -- replicas, late and early cancels, garbage ---------------------------------------------------


async def test_with_two_replicas_only_the_one_running_the_call_cancels_its_handler(
    nats_server: NatsServer, nc: Client, target: str
) -> None:
    replicas = {name: Handlers(name) for name in ("a", "b")}
    connections = [await nats.connect(nats_server.url, max_reconnect_attempts=0) for _ in replicas]
    try:
        async with contextlib.AsyncExitStack() as stack:
            servers = {
                name: await stack.enter_async_context(serving(conn, target, handlers.get_quest))
                for (name, handlers), conn in zip(replicas.items(), connections, strict=True)
            }
            stub = await stack.enter_async_context(stub_for(nc, target))
            calls: dict[str, Any] = {}
            # NATS picks a replica per call: call until both run one (each waits to start).
            for n in range(40):
                quest = f"q{n}"
                calls[quest] = stub.GetQuest(request(quest), timeout=30)
                await wait_for(lambda q=quest: any(q in h.started for h in replicas.values()))
                if all(h.started for h in replicas.values()):
                    break
            assert all(h.started for h in replicas.values()), "NATS never picked both replicas"
            victim = next(iter(replicas["a"].started))
            calls[victim].cancel()
            await wait_for(lambda: victim in replicas["a"].cancelled)
            await wait_for(lambda: servers["b"].stats.cancels_ignored == 1)
            assert servers["a"].stats.unary_cancelled == 1
            assert servers["b"].stats.unary_cancelled == 0
            assert replicas["a"].cancelled == [victim]
            assert replicas["b"].cancelled == []
            for handlers in replicas.values():
                handlers.release.set()
            for quest, call in calls.items():
                if quest != victim:
                    assert (await call).quest.quest_id == quest
    finally:
        for conn in connections:
            await conn.close()


async def test_cancelling_a_finished_call_is_harmless(nc: Client, target: str) -> None:
    handlers = Handlers()
    await handlers.watch(nc, target)
    handlers.release.set()
    async with serving(nc, target, handlers.get_quest) as server, stub_for(nc, target) as stub:
        call = stub.GetQuest(request("done"), timeout=5)
        assert (await call).quest.quest_id == "done"
        assert not call.cancel()  # nothing is sent for a call that has its outcome
        # A cancel that crossed the reply on the wire: it names a call no longer running.
        await publish_cancel(nc, target, handlers.replies["done"])
        await wait_for(lambda: server.stats.cancels_ignored == 1)
        assert (await stub.GetQuest(request("next"), timeout=5)).quest.quest_id == "next"
        assert server.stats.unary_cancelled == 0
        assert handlers.cancelled == []


async def test_a_cancel_that_overtakes_its_call_ends_it_before_the_handler_runs(nc: Client, target: str) -> None:
    handlers = Handlers()
    answers: list[bytes] = []

    async def collect(msg: Any) -> None:
        answers.append(msg.data)

    reply_subject = nc.new_inbox()
    inbox = await nc.subscribe(reply_subject, cb=collect)
    async with serving(nc, target, handlers.get_quest) as server:
        await publish_cancel(nc, target, reply_subject)
        await wait_for(lambda: server.stats.cancels_ignored == 1)  # no such call yet: remembered
        call_subject = f"grpc.{target}.{GET_QUEST}"
        await nc.publish(call_subject, _framing.encode_message(b""), reply=reply_subject)
        await wait_for(lambda: server.stats.unary_cancelled == 1)
        await nc.flush()
        assert handlers.started == set()
        assert server.endpoint_stats[GET_QUEST].last_error.startswith("CANCELLED")
    await inbox.unsubscribe()
    assert answers == []


async def test_a_cancel_carrying_a_status_ends_the_call_with_it(nc: Client, target: str) -> None:
    handlers = Handlers()
    await handlers.watch(nc, target)
    async with serving(nc, target, handlers.get_quest) as server, stub_for(nc, target) as stub:
        call = stub.GetQuest(request("q"), timeout=30)
        await wait_for(lambda: "q" in handlers.started)
        status = _framing.encode_trailers(_framing.Trailers(grpc.StatusCode.UNAVAILABLE.value[0], "gone"))
        await publish_cancel(nc, target, handlers.replies["q"], status)
        await wait_for(lambda: handlers.cancelled == ["q"])
        await wait_for(lambda: server.in_flight == 0)
        assert server.endpoint_stats[GET_QUEST].last_error == "UNAVAILABLE: gone"
        call.cancel()


async def test_garbage_on_the_cancel_subject_is_ignored_and_the_server_keeps_serving(
    nc: Client, target: str
) -> None:
    handlers = Handlers()
    async with serving(nc, target, handlers.get_quest) as server, stub_for(nc, target) as stub:
        call = stub.GetQuest(request("running"), timeout=30)
        await wait_for(lambda: "running" in handlers.started)
        garbage: list[tuple[str | None, bytes]] = [
            (None, b""),  # no header at all
            (None, b"\x80\x00\x00\x00\x05hello"),
            ("", b""),  # an empty call name
            ("_INBOX.nobody.1", b""),  # no such call
            ("_INBOX.nobody.2", b"\x80\xff\xff\xff\xff"),  # a trailer frame that lies about its size
            ("_INBOX.nobody.3", _envelope.pack(_envelope.Kind.CANCEL, 0)),
            ("x" * 100_000, b"\x00" * 1000),  # far longer than any reply subject
            ("_INBOX.nobody.4 with spaces", b"\x23\x00"),
        ]
        for name, body in garbage:
            await publish_cancel(nc, target, name, body)
        await nc.publish(f"grpc.$cancel.{target}", b"no headers", reply="_INBOX.wants.an.answer")
        await wait_for(lambda: server.stats.cancels_ignored == len(garbage) + 1)
        assert server.stats.unary_cancelled == 0
        assert handlers.cancelled == []
        # The call that was running is untouched, and new calls are served.
        handlers.release.set()
        assert (await call).quest.quest_id == "running"
        assert (await stub.GetQuest(request("after"), timeout=5)).quest.quest_id == "after"


async def test_a_large_unary_call_sent_as_a_stream_is_cancelled_too(nc: Client, target: str) -> None:
    handlers = Handlers()
    big = "x" * (nc.max_payload + 1000)  # too large for one NATS message: unary over a stream
    async with serving(nc, target, handlers.get_quest) as server, stub_for(nc, target) as stub:
        call = stub.GetQuest(request(big), timeout=30)
        await wait_for(lambda: big in handlers.started)
        call.cancel()
        await wait_for(lambda: handlers.cancelled == [big])
        await wait_for(lambda: server.in_flight == 0)
        # Ended by the client's cancel (the stream's CANCEL), not by its 30 s deadline.
        assert server.endpoint_stats[GET_QUEST].last_error.startswith("CANCELLED")


# -- the acceptance test: a generation that costs real work stops ----------------------------------


async def test_a_cancelled_generation_stops_at_the_model_server_and_is_counted_cancelled(
    nc: Client, storage: Any, caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    target = f"ai-{uuid.uuid4().hex[:10]}"
    async with StandInServer() as model_server:
        model_server.reply = Reply(hang=True)  # a generation that goes on until the caller leaves
        settings = {"backend": "openai", "base_url": model_server.url, "model": "standin-7b",
                    "served_model": "remote", "api_key_env": KEY_ENV}
        servicer = await ai_integration.create(Dependencies(storage=storage, channel=no_channel, settings=settings))
        server = nats_transport.aio.server(
            nc, target, interceptors=[ServerMetrics(server_reporter(registry)), CallLog(target)]
        )
        ai_integration.add_to_server(servicer, server)
        await server.start()
        try:
            async with nats_transport.aio.channel(nc, target) as channel:
                stub = ai_integration_pb2_grpc.AiIntegrationServiceStub(channel)
                with caplog.at_level(logging.INFO, logger="mesh.calls"):
                    call = stub.Generate(ai.GenerateRequest(model="remote", prompt="Tell me everything"))
                    await wait_for(lambda: len(model_server.requests) == 1)
                    call.cancel()
                    # The model server saw its request abandoned: the generation stopped there.
                    await wait_for(lambda: model_server.abandoned == 1)
                    labels = {"grpc_type": "unary", "grpc_service": "gaming.ai_integration.v1.AiIntegrationService",
                              "grpc_method": "Generate", "grpc_code": "CANCELLED"}
                    await wait_for(lambda: registry.get_sample_value("grpc_server_handled_total", labels) == 1.0)
                    await wait_for(lambda: server.in_flight == 0)
            logged = [r for r in caplog.records if r.name == "mesh.calls" and r.getMessage() == "call finished"]
            assert [getattr(r, "code", None) for r in logged] == ["CANCELLED"]
        finally:
            await server.stop(0)
