"""The synchronous channel (``nats_transport.channel``): grpc.Channel semantics over NATS.

The asyncio server runs in the test's event loop; the sync channel blocks its calling thread, so
every blocking call is made from a worker thread with ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, NamedTuple

import grpc
import pytest
from gaming.quest.v1 import quest_pb2, quest_pb2_grpc
from google.rpc import status_pb2
from grpc_status import rpc_status
from nats.aio.client import Client

import nats_transport
from nats_transport.testing import NatsServer
from tests._quests import reply, serving

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"






async def get_quest(request: quest_pb2.GetQuestRequest, context: Any) -> quest_pb2.GetQuestResponse:
    """Echoes; quest ids ``missing`` and ``slow`` fail and stall; metadata comes back both ways."""
    metadata = dict(context.invocation_metadata())
    await context.send_initial_metadata((("x-initial", "hi"),))
    context.set_trailing_metadata((("x-trailing", "bye"),))
    if request.quest_id == "missing":
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such quest", (("x-why", "gone"),))
    if request.quest_id == "rich":
        await context.abort_with_status(
            rpc_status.to_status(status_pb2.Status(code=grpc.StatusCode.OUT_OF_RANGE.value[0], message="too far"))
        )
    if request.quest_id == "slow":
        await asyncio.Event().wait()  # nothing sets it: longer than any deadline
    return reply(f"quest {request.quest_id}", quest_id=request.quest_id, description=metadata.get("x-intercepted", ""))


@pytest.fixture
def target() -> str:
    return f"sync-{uuid.uuid4().hex[:12]}"




@contextlib.asynccontextmanager
async def sync_channel(url: str, target: str) -> AsyncIterator[nats_transport.Channel]:
    channel = await asyncio.to_thread(nats_transport.channel, url, target)
    try:
        yield channel
    finally:
        await asyncio.to_thread(channel.close)


def capture_error(fn: Callable[[], Any]) -> grpc.RpcError:
    """Run a blocking call that must fail; return the error it raised."""
    try:
        fn()
    except grpc.RpcError as err:
        return err
    raise AssertionError("the call did not fail")


class CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


class ClientCallDetails(CallDetails, grpc.ClientCallDetails):
    """What an interceptor hands to its continuation (grpc leaves the class to users)."""


class AddMetadata(grpc.UnaryUnaryClientInterceptor):
    def __init__(self) -> None:
        self.methods: list[str] = []

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self.methods.append(details.method)
        metadata = [*(details.metadata or ()), ("x-intercepted", "yes")]
        return continuation(
            ClientCallDetails(
                details.method, details.timeout, metadata, details.credentials, details.wait_for_ready,
                getattr(details, "compression", None),
            ),
            request,
        )


class CatchErrors(grpc.UnaryUnaryClientInterceptor):
    """Looks at the outcome, catches the error to record it, and hands the outcome back."""

    def __init__(self) -> None:
        self.caught: list[grpc.StatusCode] = []

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        outcome = continuation(details, request)
        try:
            outcome.result()
        except grpc.RpcError as err:
            self.caught.append(err.code())
        return outcome


# -- calls ---------------------------------------------------------------------------------------


async def test_the_sync_channel_is_a_grpc_channel_and_a_stub_call_returns_the_response(
    nc: Client, nats_server: NatsServer, target: str
) -> None:
    async with serving(nc, target, get_quest), sync_channel(nats_server.url, target) as channel:
        assert isinstance(channel, grpc.Channel)
        stub = quest_pb2_grpc.QuestServiceStub(channel)
        response = await asyncio.to_thread(stub.GetQuest, quest_pb2.GetQuestRequest(quest_id="q1"), timeout=5)
    assert response.quest.title == "quest q1"


async def test_with_call_returns_the_response_and_an_ok_call_with_its_metadata(
    nc: Client, nats_server: NatsServer, target: str
) -> None:
    async with serving(nc, target, get_quest), sync_channel(nats_server.url, target) as channel:
        stub = quest_pb2_grpc.QuestServiceStub(channel)

        def call() -> tuple[Any, Any, Any, Any, Any]:
            response, rpc = stub.GetQuest.with_call(quest_pb2.GetQuestRequest(quest_id="q2"), timeout=5)
            return response, rpc.code(), rpc.details(), tuple(rpc.initial_metadata()), tuple(rpc.trailing_metadata())

        response, code, details, initial, trailing = await asyncio.to_thread(call)
    assert response.quest.quest_id == "q2"
    assert code == grpc.StatusCode.OK
    assert not details
    assert ("x-initial", "hi") in initial
    assert ("x-trailing", "bye") in trailing


async def test_future_resolves_and_runs_its_done_callbacks(nc: Client, nats_server: NatsServer, target: str) -> None:
    done = threading.Event()
    seen: list[Any] = []

    def on_done(future: Any) -> None:
        seen.append(future)
        done.set()

    async with serving(nc, target, get_quest), sync_channel(nats_server.url, target) as channel:
        stub = quest_pb2_grpc.QuestServiceStub(channel)
        future = stub.GetQuest.future(quest_pb2.GetQuestRequest(quest_id="q3"), timeout=5)
        assert isinstance(future, grpc.Future)
        assert isinstance(future, grpc.Call)
        future.add_done_callback(on_done)
        response = await asyncio.to_thread(future.result, 5)
        assert await asyncio.to_thread(done.wait, 5)
        assert future.done()
        assert future.exception() is None
        assert future.code() == grpc.StatusCode.OK
        late: list[Any] = []
        future.add_done_callback(late.append)  # on a finished future it runs at once
    assert response.quest.title == "quest q3"
    assert seen == [future]
    assert late == [future]


async def test_a_failed_call_raises_an_error_that_is_rpc_error_call_and_future(
    nc: Client, nats_server: NatsServer, target: str
) -> None:
    async with serving(nc, target, get_quest), sync_channel(nats_server.url, target) as channel:
        stub = quest_pb2_grpc.QuestServiceStub(channel)
        err = await asyncio.to_thread(
            capture_error, lambda: stub.GetQuest(quest_pb2.GetQuestRequest(quest_id="missing"), timeout=5)
        )
    assert isinstance(err, grpc.RpcError)
    assert isinstance(err, grpc.Call)
    assert isinstance(err, grpc.Future)
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details() == "no such quest"
    assert ("x-why", "gone") in tuple(err.trailing_metadata())
    assert err.done()
    assert err.exception() is err
    with pytest.raises(grpc.RpcError):
        err.result()


async def test_a_failed_future_reports_its_error_and_raises_from_result(
    nc: Client, nats_server: NatsServer, target: str
) -> None:
    async with serving(nc, target, get_quest), sync_channel(nats_server.url, target) as channel:
        stub = quest_pb2_grpc.QuestServiceStub(channel)
        future = stub.GetQuest.future(quest_pb2.GetQuestRequest(quest_id="missing"), timeout=5)
        error = await asyncio.to_thread(future.exception, 5)
        assert error is not None
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert future.code() == grpc.StatusCode.NOT_FOUND
        assert future.details() == "no such quest"
        raised = await asyncio.to_thread(capture_error, future.result)
    assert raised.code() == grpc.StatusCode.NOT_FOUND


async def test_a_rich_status_is_readable_from_a_sync_error(nc: Client, nats_server: NatsServer, target: str) -> None:
    async with serving(nc, target, get_quest), sync_channel(nats_server.url, target) as channel:
        stub = quest_pb2_grpc.QuestServiceStub(channel)
        err = await asyncio.to_thread(
            capture_error, lambda: stub.GetQuest(quest_pb2.GetQuestRequest(quest_id="rich"), timeout=5)
        )
    status = rpc_status.from_call(err)
    assert status is not None
    assert (status.code, status.message) == (grpc.StatusCode.OUT_OF_RANGE.value[0], "too far")


async def test_a_sync_call_past_its_deadline_is_deadline_exceeded(
    nc: Client, nats_server: NatsServer, target: str
) -> None:
    async with serving(nc, target, get_quest), sync_channel(nats_server.url, target) as channel:
        stub = quest_pb2_grpc.QuestServiceStub(channel)
        err = await asyncio.to_thread(
            capture_error, lambda: stub.GetQuest(quest_pb2.GetQuestRequest(quest_id="slow"), timeout=0.2)
        )
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_a_sync_call_to_a_target_without_servers_is_unavailable(nats_server: NatsServer, target: str) -> None:
    async with sync_channel(nats_server.url, target) as channel:
        stub = quest_pb2_grpc.QuestServiceStub(channel)
        err = await asyncio.to_thread(capture_error, lambda: stub.GetQuest(quest_pb2.GetQuestRequest(), timeout=5))
    assert err.code() == grpc.StatusCode.UNAVAILABLE


# -- grpc.intercept_channel ----------------------------------------------------------------------


async def test_an_intercepting_channel_runs_the_interceptor_and_the_server_sees_its_metadata(
    nc: Client, nats_server: NatsServer, target: str
) -> None:
    interceptor = AddMetadata()
    async with serving(nc, target, get_quest), sync_channel(nats_server.url, target) as channel:
        stub = quest_pb2_grpc.QuestServiceStub(grpc.intercept_channel(channel, interceptor))
        response = await asyncio.to_thread(stub.GetQuest, quest_pb2.GetQuestRequest(quest_id="i1"), timeout=5)
        with_call_response, call = await asyncio.to_thread(
            stub.GetQuest.with_call, quest_pb2.GetQuestRequest(quest_id="i2"), timeout=5
        )
        future = stub.GetQuest.future(quest_pb2.GetQuestRequest(quest_id="i3"), timeout=5)
        future_response = await asyncio.to_thread(future.result, 5)
    assert response.quest.description == "yes"
    assert with_call_response.quest.description == "yes"
    assert call.code() == grpc.StatusCode.OK
    assert future_response.quest.description == "yes"
    assert interceptor.methods == ["/gaming.quest.v1.QuestService/GetQuest"] * 3


async def test_an_interceptor_that_catches_the_error_still_lets_it_reach_the_caller(
    nc: Client, nats_server: NatsServer, target: str
) -> None:
    catcher = CatchErrors()
    async with serving(nc, target, get_quest), sync_channel(nats_server.url, target) as channel:
        stub = quest_pb2_grpc.QuestServiceStub(grpc.intercept_channel(channel, AddMetadata(), catcher))
        request = quest_pb2.GetQuestRequest(quest_id="missing")
        err = await asyncio.to_thread(capture_error, lambda: stub.GetQuest(request, timeout=5))
        err_with_call = await asyncio.to_thread(capture_error, lambda: stub.GetQuest.with_call(request, timeout=5))
        # CatchErrors blocks on the outcome inside future(): call it off the server's loop.
        err_future = await asyncio.to_thread(capture_error, lambda: stub.GetQuest.future(request, timeout=5).result(5))
    for error in (err, err_with_call, err_future):
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert error.details() == "no such quest"
    assert catcher.caught == [grpc.StatusCode.NOT_FOUND] * 3


# -- lifecycle and context -----------------------------------------------------------------------


def _channel_threads(target: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.endswith(target) and t.name.startswith("grpc-nats-channel")]


async def test_close_ends_the_channel_thread_and_refuses_later_calls(
    nc: Client, nats_server: NatsServer, target: str
) -> None:
    async with serving(nc, target, get_quest):
        channel = await asyncio.to_thread(nats_transport.channel, nats_server.url, target)
        try:
            stub = quest_pb2_grpc.QuestServiceStub(channel)
            await asyncio.to_thread(stub.GetQuest, quest_pb2.GetQuestRequest(quest_id="before"), timeout=5)
            threads = _channel_threads(target)
            assert len(threads) == 1
        finally:
            await asyncio.to_thread(channel.close)
        await asyncio.to_thread(threads[0].join, 5)
        assert not threads[0].is_alive()
        assert _channel_threads(target) == []
        with pytest.raises((RuntimeError, ValueError, grpc.RpcError)):
            await asyncio.to_thread(stub.GetQuest, quest_pb2.GetQuestRequest(quest_id="after"), timeout=5)
        await asyncio.to_thread(channel.close)  # closing twice is harmless


async def test_a_channel_used_as_a_context_manager_closes_on_exit(
    nc: Client, nats_server: NatsServer, target: str
) -> None:
    def use() -> str:
        with nats_transport.channel(nats_server.url, target) as channel:
            stub = quest_pb2_grpc.QuestServiceStub(channel)
            return str(stub.GetQuest(quest_pb2.GetQuestRequest(quest_id="cm"), timeout=5).quest.title)

    async with serving(nc, target, get_quest):
        assert await asyncio.to_thread(use) == "quest cm"
    assert _channel_threads(target) == []


async def test_a_sync_call_from_a_handler_thread_inherits_the_deadline_and_trace_context(
    nc: Client, nats_server: NatsServer, target: str
) -> None:
    inner_target = f"{target}-inner"
    inner_seen: dict[str, Any] = {}

    async def inner(request: Any, context: Any) -> quest_pb2.GetQuestResponse:
        inner_seen["remaining"] = context.time_remaining()
        inner_seen["traceparent"] = dict(context.invocation_metadata()).get("traceparent")
        return reply("inner")

    async with serving(nc, inner_target, inner), sync_channel(nats_server.url, inner_target) as inner_channel:
        inner_stub = quest_pb2_grpc.QuestServiceStub(inner_channel)

        def outer(request: Any, context: Any) -> quest_pb2.GetQuestResponse:  # a plain function: a pool thread
            response = inner_stub.GetQuest(quest_pb2.GetQuestRequest(quest_id="nested"))  # no timeout
            return reply(f"outer+{response.quest.title}")

        async with serving(nc, target, outer), nats_transport.aio.channel(nc, target) as channel:
            response = await quest_pb2_grpc.QuestServiceStub(channel).GetQuest(
                quest_pb2.GetQuestRequest(), timeout=3, metadata=(("traceparent", TRACEPARENT),)
            )
    assert response.quest.title == "outer+inner"
    assert inner_seen["remaining"] is not None
    assert 0 < inner_seen["remaining"] <= 3
    assert inner_seen["traceparent"] == TRACEPARENT
