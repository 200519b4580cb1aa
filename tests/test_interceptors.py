"""Standard gRPC interceptors over NATS: grpc.aio client interceptors of the four call kinds, and
grpc.aio / plain grpc server interceptors, in order."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any, NamedTuple

import grpc
import pytest
from gaming.event_bus.v1 import event_bus_pb2, event_bus_pb2_grpc
from gaming.npc_behavior.v1 import npc_behavior_pb2, npc_behavior_pb2_grpc
from gaming.quest.v1 import quest_pb2, quest_pb2_grpc
from nats.aio.client import Client

import nats_transport

GET_QUEST = "/gaming.quest.v1.QuestService/GetQuest"
LIST_QUESTS = "/gaming.quest.v1.QuestService/List"


# -- servicers: every call kind, each recording the metadata it received ---------------------------


class Seen:
    """What the servicers saw: invocation metadata by method name, and which methods ran."""

    def __init__(self) -> None:
        self.metadata: dict[str, dict[str, Any]] = {}

    def record(self, method: str, context: Any) -> None:
        self.metadata[method] = dict(context.invocation_metadata())


class Quests(quest_pb2_grpc.QuestServiceServicer):
    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    async def GetQuest(self, request: Any, context: Any) -> quest_pb2.GetQuestResponse:
        self.seen.record("GetQuest", context)
        if request.quest_id == "missing":
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such quest")
        return quest_pb2.GetQuestResponse(quest=quest_pb2.Quest(quest_id=request.quest_id))

    async def List(self, request: Any, context: Any) -> quest_pb2.ListResponse:
        self.seen.record("List", context)
        return quest_pb2.ListResponse(quests=[quest_pb2.Quest(quest_id="listed")])


class EventBus(event_bus_pb2_grpc.EventBusServiceServicer):
    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    async def Subscribe(self, request: Any, context: Any) -> AsyncIterator[event_bus_pb2.SubscribeResponse]:
        self.seen.record("Subscribe", context)
        if request.consumer_name == "fail":
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such consumer")
        for sequence in (1, 2):
            yield event_bus_pb2.SubscribeResponse(event=event_bus_pb2.Event(sequence=sequence))

    async def PublishBatch(self, request_iterator: Any, context: Any) -> event_bus_pb2.PublishBatchResponse:
        self.seen.record("PublishBatch", context)
        count = 0
        async for request in request_iterator:
            if request.topic == "fail":
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad topic")
            count += 1
        return event_bus_pb2.PublishBatchResponse(accepted_count=count)


class Npcs(npc_behavior_pb2_grpc.NpcBehaviorServiceServicer):
    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    async def DecisionStream(
        self, request_iterator: Any, context: Any
    ) -> AsyncIterator[npc_behavior_pb2.DecisionStreamResponse]:
        self.seen.record("DecisionStream", context)
        async for request in request_iterator:
            if request.client_sequence == 99:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "npc is dead")
            yield npc_behavior_pb2.DecisionStreamResponse(client_sequence=request.client_sequence)


@pytest.fixture
def target() -> str:
    return f"icpt-{uuid.uuid4().hex[:12]}"


@contextlib.asynccontextmanager
async def serving(nc: Client, target: str, seen: Seen, interceptors: Sequence[Any] = ()) -> AsyncIterator[Any]:
    server = nats_transport.aio.server(nc, target, interceptors=list(interceptors))
    quest_pb2_grpc.add_QuestServiceServicer_to_server(Quests(seen), server)
    event_bus_pb2_grpc.add_EventBusServiceServicer_to_server(EventBus(seen), server)
    npc_behavior_pb2_grpc.add_NpcBehaviorServiceServicer_to_server(Npcs(seen), server)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(0)


class Stubs(NamedTuple):
    quests: quest_pb2_grpc.QuestServiceStub
    events: event_bus_pb2_grpc.EventBusServiceStub
    npcs: npc_behavior_pb2_grpc.NpcBehaviorServiceStub


@contextlib.asynccontextmanager
async def stubs_for(nc: Client, target: str, interceptors: Sequence[Any]) -> AsyncIterator[Stubs]:
    async with nats_transport.aio.channel(nc, target, interceptors=list(interceptors)) as channel:
        yield Stubs(
            quest_pb2_grpc.QuestServiceStub(channel),
            event_bus_pb2_grpc.EventBusServiceStub(channel),
            npc_behavior_pb2_grpc.NpcBehaviorServiceStub(channel),
        )


async def one_call_of_each_kind(stubs: Stubs, fail: bool = False) -> dict[str, Any]:
    """Make a unary, a server-streaming, a client-streaming and a bidi call; return the outcomes
    (a response, a list of responses, or the AioRpcError)."""
    outcomes: dict[str, Any] = {}

    async def outcome(kind: str, coro: Any) -> None:
        try:
            outcomes[kind] = await coro
        except grpc.aio.AioRpcError as err:
            outcomes[kind] = err

    async def collect(call: Any) -> list[Any]:
        return [message async for message in call]

    quest = quest_pb2.GetQuestRequest(quest_id="missing" if fail else "q")
    await outcome("unary_unary", stubs.quests.GetQuest(quest, timeout=5))
    subscription = event_bus_pb2.SubscribeRequest(consumer_name="fail" if fail else "c")
    await outcome("unary_stream", collect(stubs.events.Subscribe(subscription, timeout=5)))
    batch = [event_bus_pb2.PublishBatchRequest(topic=t) for t in ("a", "fail" if fail else "b")]
    await outcome("stream_unary", stubs.events.PublishBatch(iter(batch), timeout=5))
    decisions = [npc_behavior_pb2.DecisionStreamRequest(client_sequence=s) for s in (1, 99 if fail else 2)]
    await outcome("stream_stream", collect(stubs.npcs.DecisionStream(iter(decisions), timeout=5)))
    return outcomes


# -- client interceptors ---------------------------------------------------------------------------


class Marking:
    """Shared behaviour: log the run, add ``x-seen-by-<name>`` to the metadata, note errors."""

    kind = ""

    def __init__(self, name: str, log: list[tuple[str, str]]) -> None:
        self.name = name
        self.log = log
        self.errors: list[grpc.StatusCode] = []

    def enter(self, details: Any) -> grpc.aio.ClientCallDetails:
        self.log.append((self.kind, self.name))
        metadata = [*(details.metadata or ()), (f"x-seen-by-{self.name}", "1")]
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, grpc.aio.Metadata(*metadata), details.credentials, details.wait_for_ready
        )

    async def watch_responses(self, call: Any) -> AsyncIterator[Any]:
        try:
            async for message in call:
                yield message
        except grpc.aio.AioRpcError as err:
            self.errors.append(err.code())
            raise


class UnaryUnary(Marking, grpc.aio.UnaryUnaryClientInterceptor):
    kind = "unary_unary"

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        call = await continuation(self.enter(details), request)
        try:
            await call
        except grpc.aio.AioRpcError as err:
            self.errors.append(err.code())
        return call


class UnaryStream(Marking, grpc.aio.UnaryStreamClientInterceptor):
    kind = "unary_stream"

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return self.watch_responses(await continuation(self.enter(details), request))


class StreamUnary(Marking, grpc.aio.StreamUnaryClientInterceptor):
    kind = "stream_unary"

    async def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(self.enter(details), request_iterator)


class StreamUnaryAwaiting(StreamUnary):
    """Awaits the call to see its outcome, then hands the call on (the caller awaits it again)."""

    async def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        call = await continuation(self.enter(details), request_iterator)
        try:
            await call
        except grpc.aio.AioRpcError as err:
            self.errors.append(err.code())
        return call


class StreamStream(Marking, grpc.aio.StreamStreamClientInterceptor):
    kind = "stream_stream"

    async def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return self.watch_responses(await continuation(self.enter(details), request_iterator))


KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
METHOD_OF_KIND = {
    "unary_unary": "GetQuest",
    "unary_stream": "Subscribe",
    "stream_unary": "PublishBatch",
    "stream_stream": "DecisionStream",
}


def two_of_each_kind(log: list[tuple[str, str]]) -> list[Marking]:
    classes = (UnaryUnary, UnaryStream, StreamUnary, StreamStream)
    return [cls(f"{cls.kind.replace('_', '')}-{n}", log) for n in (1, 2) for cls in classes]


async def one_call_of_each_kind_only(stubs: Stubs, kind: str) -> Any:
    """One call of ``kind`` that succeeds; returns its outcome."""
    if kind == "unary_unary":
        return await stubs.quests.GetQuest(quest_pb2.GetQuestRequest(quest_id="q"), timeout=5)
    if kind == "unary_stream":
        return [m async for m in stubs.events.Subscribe(event_bus_pb2.SubscribeRequest(consumer_name="c"), timeout=5)]
    if kind == "stream_unary":
        requests = iter([event_bus_pb2.PublishBatchRequest(topic=t) for t in ("a", "b")])
        return await stubs.events.PublishBatch(requests, timeout=5)
    requests = iter([npc_behavior_pb2.DecisionStreamRequest(client_sequence=s) for s in (1, 2)])
    return [m async for m in stubs.npcs.DecisionStream(requests, timeout=5)]


async def test_client_interceptors_run_in_order_for_their_call_kind_only(nc: Client, target: str) -> None:
    log: list[tuple[str, str]] = []
    seen = Seen()
    async with serving(nc, target, seen), stubs_for(nc, target, two_of_each_kind(log)) as stubs:
        for kind in KINDS:
            log.clear()
            await one_call_of_each_kind_only(stubs, kind)
            short = kind.replace("_", "")
            assert log == [(kind, f"{short}-1"), (kind, f"{short}-2")]


async def test_client_interceptors_add_metadata_the_server_receives_for_every_call_kind(
    nc: Client, target: str
) -> None:
    log: list[tuple[str, str]] = []
    seen = Seen()
    async with serving(nc, target, seen), stubs_for(nc, target, two_of_each_kind(log)) as stubs:
        outcomes = await one_call_of_each_kind(stubs)

    assert outcomes["unary_unary"].quest.quest_id == "q"
    assert [r.event.sequence for r in outcomes["unary_stream"]] == [1, 2]
    assert outcomes["stream_unary"].accepted_count == 2
    assert [r.client_sequence for r in outcomes["stream_stream"]] == [1, 2]
    for kind, method in METHOD_OF_KIND.items():
        short = kind.replace("_", "")
        marks = sorted(k for k in seen.metadata[method] if k.startswith("x-seen-by-"))
        assert marks == [f"x-seen-by-{short}-1", f"x-seen-by-{short}-2"], method


async def test_client_interceptors_see_the_errors_of_every_call_kind(nc: Client, target: str) -> None:
    log: list[tuple[str, str]] = []
    interceptors = [
        UnaryUnary("uu", log), UnaryStream("us", log), StreamUnaryAwaiting("su", log), StreamStream("ss", log)
    ]
    expected = {
        "unary_unary": grpc.StatusCode.NOT_FOUND,
        "unary_stream": grpc.StatusCode.NOT_FOUND,
        "stream_unary": grpc.StatusCode.INVALID_ARGUMENT,
        "stream_stream": grpc.StatusCode.FAILED_PRECONDITION,
    }
    async with serving(nc, target, Seen()), stubs_for(nc, target, interceptors) as stubs:
        outcomes = await one_call_of_each_kind(stubs, fail=True)

    for interceptor in interceptors:
        error = outcomes[interceptor.kind]
        assert isinstance(error, grpc.aio.AioRpcError), (interceptor.kind, error)
        assert error.code() == expected[interceptor.kind]
        assert interceptor.errors == [expected[interceptor.kind]], interceptor.kind


async def test_a_stream_unary_call_awaited_by_an_interceptor_still_gives_the_caller_its_response(
    nc: Client, target: str
) -> None:
    log: list[tuple[str, str]] = []
    interceptor = StreamUnaryAwaiting("su", log)
    async with serving(nc, target, Seen()), stubs_for(nc, target, [interceptor]) as stubs:
        requests = iter([event_bus_pb2.PublishBatchRequest(topic=t) for t in ("a", "b", "c")])
        response = await stubs.events.PublishBatch(requests, timeout=5)
    assert response.accepted_count == 3
    assert interceptor.errors == []


async def test_a_stream_unary_call_awaited_twice_gives_the_same_response(nc: Client, target: str) -> None:
    async with serving(nc, target, Seen()), stubs_for(nc, target, ()) as stubs:
        call = stubs.events.PublishBatch(iter([event_bus_pb2.PublishBatchRequest(topic="a")]), timeout=5)
        first = await call
        second = await call
    assert first.accepted_count == second.accepted_count == 1


class AnswersItself(grpc.aio.UnaryUnaryClientInterceptor):
    """Returns the response message rather than the call, as grpc.aio allows."""

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        call = await continuation(details, request)
        return await call


class AwaitsTheCall(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self) -> None:
        self.codes: list[grpc.StatusCode] = []

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        call = await continuation(details, request)
        await call
        self.codes.append(await call.code())
        return call


async def test_an_outer_interceptor_gets_a_call_even_when_an_inner_one_returns_the_response_itself(
    nc: Client, target: str
) -> None:
    outer = AwaitsTheCall()
    async with serving(nc, target, Seen()), stubs_for(nc, target, [outer, AnswersItself()]) as stubs:
        response = await stubs.quests.GetQuest(quest_pb2.GetQuestRequest(quest_id="q"), timeout=5)
    assert response.quest.quest_id == "q"
    assert outer.codes == [grpc.StatusCode.OK]


def test_a_channel_refuses_an_object_that_is_not_a_client_interceptor(nc: Client) -> None:
    with pytest.raises(ValueError, match="interceptor"):
        nats_transport.aio.channel(nc, "anything", interceptors=[object()])


# -- server interceptors ---------------------------------------------------------------------------


async def _deny(request: Any, context: Any) -> Any:
    await context.abort(grpc.StatusCode.PERMISSION_DENIED, "denied by interceptor")


def _deny_sync(request: Any, context: Any) -> Any:
    context.abort(grpc.StatusCode.PERMISSION_DENIED, "denied by interceptor")


class AioRecord(grpc.aio.ServerInterceptor):
    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        self.log.append(self.name)
        return await continuation(handler_call_details)


class AioDeny(AioRecord):
    """Rejects one method with PERMISSION_DENIED; passes the others on."""

    def __init__(self, name: str, log: list[str], method: str) -> None:
        super().__init__(name, log)
        self.method = method

    async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        self.log.append(self.name)
        if handler_call_details.method == self.method:
            return grpc.unary_unary_rpc_method_handler(_deny)
        return await continuation(handler_call_details)


class SyncRecord(grpc.ServerInterceptor):
    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        self.log.append(self.name)
        return continuation(handler_call_details)


class SyncDeny(SyncRecord):
    def __init__(self, name: str, log: list[str], method: str) -> None:
        super().__init__(name, log)
        self.method = method

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        self.log.append(self.name)
        if handler_call_details.method == self.method:
            return grpc.unary_unary_rpc_method_handler(_deny_sync)
        return continuation(handler_call_details)


class HandlerCallDetails(NamedTuple):
    method: str
    invocation_metadata: Any


class SyncAddMetadata(grpc.ServerInterceptor):
    """Passes its continuation new call details, with one more metadata entry."""

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        metadata = (*handler_call_details.invocation_metadata, ("x-added-by-interceptor", "1"))
        return continuation(HandlerCallDetails(handler_call_details.method, metadata))


async def _check_chain(nc: Client, target: str, interceptors: list[Any], log: list[str], names: list[str]) -> None:
    """GetQuest is denied by the second interceptor, List passes all three; both in order."""
    seen = Seen()
    async with serving(nc, target, seen, interceptors), stubs_for(nc, target, ()) as stubs:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.quests.GetQuest(quest_pb2.GetQuestRequest(quest_id="q"), timeout=5)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert caught.value.details() == "denied by interceptor"
        assert log == names[:2]
        assert "GetQuest" not in seen.metadata

        log.clear()
        response = await stubs.quests.List(quest_pb2.ListRequest(player_id="p"), timeout=5)
        assert [q.quest_id for q in response.quests] == ["listed"]
        assert log == names
        assert "List" in seen.metadata


async def test_aio_server_interceptors_run_in_order_and_one_can_reject_a_method(nc: Client, target: str) -> None:
    log: list[str] = []
    chain = [AioRecord("outer", log), AioDeny("gate", log, GET_QUEST), AioRecord("inner", log)]
    await _check_chain(nc, target, chain, log, ["outer", "gate", "inner"])


async def test_plain_grpc_server_interceptors_run_in_order_and_one_can_reject_a_method(
    nc: Client, target: str
) -> None:
    log: list[str] = []
    chain = [SyncRecord("outer", log), SyncDeny("gate", log, GET_QUEST), SyncRecord("inner", log)]
    await _check_chain(nc, target, chain, log, ["outer", "gate", "inner"])


async def test_plain_and_aio_server_interceptors_mix_in_order(nc: Client, target: str) -> None:
    log: list[str] = []
    chain = [AioRecord("outer", log), SyncDeny("gate", log, GET_QUEST), AioRecord("inner", log)]
    await _check_chain(nc, target, chain, log, ["outer", "gate", "inner"])


async def test_a_plain_grpc_server_interceptor_passes_through_when_it_is_alone(nc: Client, target: str) -> None:
    log: list[str] = []
    seen = Seen()
    async with serving(nc, target, seen, [SyncRecord("only", log)]), stubs_for(nc, target, ()) as stubs:
        response = await stubs.quests.GetQuest(quest_pb2.GetQuestRequest(quest_id="q"), timeout=5)
    assert response.quest.quest_id == "q"
    assert log == ["only"]


async def test_a_plain_grpc_server_interceptor_may_hand_new_call_details_to_its_continuation(
    nc: Client, target: str
) -> None:
    seen = Seen()
    async with serving(nc, target, seen, [SyncAddMetadata()]), stubs_for(nc, target, ()) as stubs:
        response = await stubs.quests.GetQuest(quest_pb2.GetQuestRequest(quest_id="q"), timeout=5)
    assert response.quest.quest_id == "q"
