"""Unary calls over NATS with the asyncio channel and server: generated stubs, metadata, status,
deadlines, limits, load sharing between replicas and robustness against malformed requests."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import grpc
import nats
import pytest
from gaming.quest.v1 import quest_pb2, quest_pb2_grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from nats.aio.client import Client

import nats_transport
from nats_transport import _framing, _status
from nats_transport._connection_guard import guard_connection
from nats_transport.testing import NatsServer
from tests._deadlines import BEYOND_THE_TEST_TIMEOUT
from tests._quests import Handler, reply, serving
from tests._waiting import wait_for

MiB = 1024 * 1024
GET_QUEST = "/gaming.quest.v1.QuestService/GetQuest"
GET_QUEST_ENDPOINT = "gaming.quest.v1.QuestService.GetQuest"  # how the server names it in its stats
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"








async def echo(request: quest_pb2.GetQuestRequest, context: Any) -> quest_pb2.GetQuestResponse:
    return reply(quest_id=request.quest_id, title=f"quest {request.quest_id}")


@pytest.fixture
def target() -> str:
    return f"unary-{uuid.uuid4().hex[:12]}"




@contextlib.asynccontextmanager
async def stub_for(nc: Client, target: str) -> AsyncIterator[quest_pb2_grpc.QuestServiceStub]:
    async with nats_transport.aio.channel(nc, target) as channel:
        yield quest_pb2_grpc.QuestServiceStub(channel)


async def rpc_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


# -- basics --------------------------------------------------------------------------------------


async def test_a_generated_stub_makes_a_unary_call(nc: Client, target: str) -> None:
    async with serving(nc, target, echo), stub_for(nc, target) as stub:
        response = await stub.GetQuest(quest_pb2.GetQuestRequest(quest_id="q-1"), timeout=5)
        assert response.quest.quest_id == "q-1"
        assert response.quest.title == "quest q-1"


async def test_a_unary_call_object_reports_ok_status_after_the_response(nc: Client, target: str) -> None:
    async with serving(nc, target, echo), stub_for(nc, target) as stub:
        call = stub.GetQuest(quest_pb2.GetQuestRequest(quest_id="q-2"), timeout=5)
        assert (await call).quest.quest_id == "q-2"
        assert await call.code() == grpc.StatusCode.OK
        assert call.done()


async def test_metadata_travels_both_ways_with_bin_keys_and_repeated_bin_values(nc: Client, target: str) -> None:
    seen: list[tuple[str, Any]] = []

    async def get_quest(request: Any, context: Any) -> quest_pb2.GetQuestResponse:
        seen.extend(context.invocation_metadata())
        await context.send_initial_metadata((("x-initial", "hello"), ("initial-bin", b"\x00\x01\xfe")))
        context.set_trailing_metadata(
            (("x-trailing", "bye"), ("trail-bin", b"\xff"), ("trail-bin", b"\x00,\x01"), ("trail-bin", b""))
        )
        return reply("ok")

    metadata = (
        ("x-user", "alice"),
        ("X-Mixed-Case", "v"),
        ("token-bin", b"\x00\xff\x10"),
        ("multi-bin", b"one"),
        ("multi-bin", b"\x00two"),
    )
    async with serving(nc, target, get_quest), stub_for(nc, target) as stub:
        call = stub.GetQuest(quest_pb2.GetQuestRequest(), timeout=5, metadata=metadata)
        await call
        initial = await call.initial_metadata()
        trailing = await call.trailing_metadata()

    assert ("x-user", "alice") in seen
    assert ("x-mixed-case", "v") in seen
    assert ("token-bin", b"\x00\xff\x10") in seen
    assert [v for k, v in seen if k == "multi-bin"] == [b"one", b"\x00two"]
    assert not [k for k, _ in seen if k.startswith("grpc-")]
    assert initial.get_all("x-initial") == ["hello"]
    assert initial.get_all("initial-bin") == [b"\x00\x01\xfe"]
    assert trailing.get_all("x-trailing") == ["bye"]
    assert trailing.get_all("trail-bin") == [b"\xff", b"\x00,\x01", b""]


async def test_a_non_ascii_text_metadata_value_fails_the_call_client_side_and_the_channel_stays_usable(
    nc: Client, target: str
) -> None:
    calls: list[str] = []

    async def get_quest(request: Any, context: Any) -> quest_pb2.GetQuestResponse:
        calls.append(request.quest_id)
        return reply("ok")

    async with serving(nc, target, get_quest), stub_for(nc, target) as stub:
        err = await rpc_error(
            stub.GetQuest(quest_pb2.GetQuestRequest(quest_id="bad"), timeout=5, metadata=(("x-name", "José"),))
        )
        assert err.code() == grpc.StatusCode.INTERNAL
        assert "x-name" in (err.details() or "")
        response = await stub.GetQuest(quest_pb2.GetQuestRequest(quest_id="good"), timeout=5)
        assert response.quest.title == "ok"
    assert calls == ["good"]


# -- status --------------------------------------------------------------------------------------


async def test_a_rich_status_with_a_bad_request_detail_reaches_the_client(nc: Client, target: str) -> None:
    bad_request = error_details_pb2.BadRequest(
        field_violations=[error_details_pb2.BadRequest.FieldViolation(field="quest_id", description="empty")]
    )
    detail = any_pb2.Any()
    detail.Pack(bad_request)
    status = status_pb2.Status(
        code=grpc.StatusCode.INVALID_ARGUMENT.value[0], message="quest_id is required", details=[detail]
    )

    async def get_quest(request: Any, context: Any) -> quest_pb2.GetQuestResponse:
        await context.abort_with_status(rpc_status.to_status(status))
        raise AssertionError("abort_with_status returned")

    async with serving(nc, target, get_quest), stub_for(nc, target) as stub:
        err = await rpc_error(stub.GetQuest(quest_pb2.GetQuestRequest(), timeout=5))

    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "quest_id is required"
    received = rpc_status.from_call(err)
    assert received is not None
    assert received == status
    unpacked = error_details_pb2.BadRequest()
    assert received.details[0].Unpack(unpacked)
    assert unpacked.field_violations[0].field == "quest_id"


async def test_abort_carries_a_unicode_message_unchanged(nc: Client, target: str) -> None:
    message = "quête introuvable ✓ 100% — 🎮\nsecond line"

    async def get_quest(request: Any, context: Any) -> quest_pb2.GetQuestResponse:
        await context.abort(grpc.StatusCode.NOT_FOUND, message)

    async with serving(nc, target, get_quest), stub_for(nc, target) as stub:
        err = await rpc_error(stub.GetQuest(quest_pb2.GetQuestRequest(), timeout=5))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details() == message


async def test_set_code_and_set_details_without_abort_fail_the_call_and_drop_the_response(
    nc: Client, target: str
) -> None:
    async def get_quest(request: Any, context: Any) -> quest_pb2.GetQuestResponse:
        context.set_code(grpc.StatusCode.FAILED_PRECONDITION)
        context.set_details("quest already accepted")
        context.set_trailing_metadata((("x-why", "accepted"),))
        return reply("must not arrive")

    async with serving(nc, target, get_quest), stub_for(nc, target) as stub:
        err = await rpc_error(stub.GetQuest(quest_pb2.GetQuestRequest(), timeout=5))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.details() == "quest already accepted"
    assert ("x-why", "accepted") in tuple(err.trailing_metadata())


async def test_a_handler_exception_is_unknown_with_a_generic_message_that_hides_the_error(
    nc: Client, target: str
) -> None:
    secret = "database password is hunter2"

    async def get_quest(request: Any, context: Any) -> quest_pb2.GetQuestResponse:
        raise RuntimeError(secret)

    async with serving(nc, target, get_quest), stub_for(nc, target) as stub:
        err = await rpc_error(stub.GetQuest(quest_pb2.GetQuestRequest(), timeout=5))
        again = await rpc_error(stub.GetQuest(quest_pb2.GetQuestRequest(), timeout=5))
    assert err.code() == grpc.StatusCode.UNKNOWN
    assert err.details()
    for part in (secret, "hunter2", "RuntimeError"):
        assert part not in (err.details() or "")
        assert part not in repr(tuple(err.trailing_metadata()))
    assert again.code() == grpc.StatusCode.UNKNOWN


async def test_a_servicer_method_left_unimplemented_is_unimplemented(nc: Client, target: str) -> None:
    async with serving(nc, target, echo), stub_for(nc, target) as stub:
        err = await rpc_error(stub.Accept(quest_pb2.AcceptRequest(quest_id="q"), timeout=5))
    assert err.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize(
    "method", ["/gaming.quest.v1.QuestService/NoSuchMethod", "/gaming.nope.v1.NopeService/GetQuest"]
)
async def test_an_unknown_method_or_service_is_unimplemented(nc: Client, target: str, method: str) -> None:
    async with serving(nc, target, echo), nats_transport.aio.channel(nc, target) as channel:
        call = channel.unary_unary(
            method,
            request_serializer=quest_pb2.GetQuestRequest.SerializeToString,
            response_deserializer=quest_pb2.GetQuestResponse.FromString,
        )
        err = await rpc_error(call(quest_pb2.GetQuestRequest(), timeout=5))
        assert err.code() == grpc.StatusCode.UNIMPLEMENTED
        # The server is unharmed.
        ok = await quest_pb2_grpc.QuestServiceStub(channel).GetQuest(quest_pb2.GetQuestRequest(quest_id="x"), timeout=5)
        assert ok.quest.quest_id == "x"


async def test_a_target_without_servers_is_unavailable_at_once(nc: Client, target: str) -> None:
    async with stub_for(nc, target) as stub:
        # A call that waited for this deadline would outlast the test's own timeout and fail it.
        err = await rpc_error(stub.GetQuest(quest_pb2.GetQuestRequest(), timeout=BEYOND_THE_TEST_TIMEOUT))
    # NATS answered "no responders": the transport's own status for it, not a timeout's.
    assert (err.code(), err.details()) == _status.NO_SERVER


def test_the_long_deadline_outlasts_the_test_timeout(pytestconfig: pytest.Config) -> None:
    # What makes BEYOND_THE_TEST_TIMEOUT a check: pytest-timeout ends a test that waits for it.
    assert 0 < float(pytestconfig.getini("timeout")) < BEYOND_THE_TEST_TIMEOUT


# -- deadlines -----------------------------------------------------------------------------------


async def test_a_handler_slower_than_the_deadline_is_deadline_exceeded_and_its_task_is_cancelled(
    nc: Client, target: str
) -> None:
    remaining: list[float | None] = []
    entered = asyncio.Event()
    cancelled = asyncio.Event()
    finished = asyncio.Event()

    async def get_quest(request: Any, context: Any) -> quest_pb2.GetQuestResponse:
        remaining.append(context.time_remaining())
        entered.set()
        try:
            await asyncio.Event().wait()  # longer than any deadline: nothing ever sets it
        except asyncio.CancelledError:
            cancelled.set()
            raise
        finally:
            finished.set()
        return reply("too late")

    async with serving(nc, target, get_quest) as server, stub_for(nc, target) as stub:
        err = await rpc_error(stub.GetQuest(quest_pb2.GetQuestRequest(), timeout=0.3))
        await asyncio.wait_for(cancelled.wait(), 5)
        await asyncio.wait_for(finished.wait(), 5)
        await wait_for(lambda: server.in_flight == 0)

    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert entered.is_set()
    (seen,) = remaining
    assert seen is not None
    assert 0 < seen <= 0.3
    # The server ended the call for its own deadline (grpc-timeout), not for a cancel from the client.
    assert server.endpoint_stats[GET_QUEST_ENDPOINT].last_error.startswith("DEADLINE_EXCEEDED")
    assert server.stats.unary_cancelled == 0


async def test_a_call_made_inside_a_handler_inherits_the_deadline_and_the_trace_context(
    nc: Client, target: str
) -> None:
    inner_target = f"{target}-inner"
    inner_seen: dict[str, Any] = {}

    async def inner(request: Any, context: Any) -> quest_pb2.GetQuestResponse:
        inner_seen["remaining"] = context.time_remaining()
        inner_seen["traceparent"] = dict(context.invocation_metadata()).get("traceparent")
        return reply("inner")

    async with serving(nc, inner_target, inner), stub_for(nc, inner_target) as inner_stub:

        async def outer(request: Any, context: Any) -> quest_pb2.GetQuestResponse:
            response = await inner_stub.GetQuest(quest_pb2.GetQuestRequest(quest_id="nested"))  # no timeout
            return reply(f"outer+{response.quest.title}")

        async with serving(nc, target, outer), stub_for(nc, target) as stub:
            response = await stub.GetQuest(
                quest_pb2.GetQuestRequest(), timeout=2, metadata=(("traceparent", TRACEPARENT),)
            )

    assert response.quest.title == "outer+inner"
    assert inner_seen["remaining"] is not None
    assert 0 < inner_seen["remaining"] <= 2
    assert inner_seen["traceparent"] == TRACEPARENT


async def test_a_call_without_timeout_has_no_deadline_on_the_server(nc: Client, target: str) -> None:
    remaining: list[float | None] = []

    async def get_quest(request: Any, context: Any) -> quest_pb2.GetQuestResponse:
        remaining.append(context.time_remaining())
        return reply("ok")

    async with serving(nc, target, get_quest), stub_for(nc, target) as stub:
        await stub.GetQuest(quest_pb2.GetQuestRequest())
    assert remaining == [None]


# -- handlers and limits -------------------------------------------------------------------------


async def test_a_plain_function_handler_runs_in_a_worker_thread(nc: Client, target: str) -> None:
    threads: list[threading.Thread] = []

    def get_quest(request: Any, context: Any) -> quest_pb2.GetQuestResponse:
        threads.append(threading.current_thread())
        context.set_trailing_metadata((("x-sync", "yes"),))
        return reply(f"sync {request.quest_id}")

    async with serving(nc, target, get_quest), stub_for(nc, target) as stub:
        call = stub.GetQuest(quest_pb2.GetQuestRequest(quest_id="7"), timeout=5)
        response = await call
        trailing = await call.trailing_metadata()
    assert response.quest.title == "sync 7"
    assert trailing.get_all("x-sync") == ["yes"]
    (thread,) = threads
    assert thread is not threading.current_thread()
    assert thread is not threading.main_thread()


async def test_a_plain_function_handler_can_abort(nc: Client, target: str) -> None:
    def get_quest(request: Any, context: Any) -> quest_pb2.GetQuestResponse:
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "not yours")

    async with serving(nc, target, get_quest), stub_for(nc, target) as stub:
        err = await rpc_error(stub.GetQuest(quest_pb2.GetQuestRequest(), timeout=5))
    assert (err.code(), err.details()) == (grpc.StatusCode.PERMISSION_DENIED, "not yours")


async def test_a_call_beyond_maximum_concurrent_rpcs_is_resource_exhausted(nc: Client, target: str) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()

    async def get_quest(request: Any, context: Any) -> quest_pb2.GetQuestResponse:
        entered.set()
        await release.wait()
        return reply(request.quest_id)

    async with serving(nc, target, get_quest, maximum_concurrent_rpcs=1), stub_for(nc, target) as stub:
        first = asyncio.ensure_future(stub.GetQuest(quest_pb2.GetQuestRequest(quest_id="first"), timeout=5))
        try:
            await asyncio.wait_for(entered.wait(), 5)
            err = await rpc_error(stub.GetQuest(quest_pb2.GetQuestRequest(quest_id="second"), timeout=5))
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        finally:
            release.set()
        assert (await first).quest.title == "first"
        # Once the first call is done there is room again.
        assert (await stub.GetQuest(quest_pb2.GetQuestRequest(quest_id="third"), timeout=5)).quest.title == "third"


async def test_a_three_mib_request_and_a_three_mib_response_both_arrive_whole(nc: Client, target: str) -> None:
    big = "q" * (3 * MiB)

    async def get_quest(request: Any, context: Any) -> quest_pb2.GetQuestResponse:
        if request.quest_id == "big":
            return reply("big", description="d" * (3 * MiB))
        return reply(f"{len(request.quest_id)}", quest_id=request.quest_id[:16])

    assert nc.max_payload < 3 * MiB  # so the message really is split over several NATS messages
    async with serving(nc, target, get_quest), stub_for(nc, target) as stub:
        response = await stub.GetQuest(quest_pb2.GetQuestRequest(quest_id=big), timeout=10)
        assert response.quest.title == str(3 * MiB)
        response = await stub.GetQuest(quest_pb2.GetQuestRequest(quest_id="big"), timeout=10)
        assert response.quest.description == "d" * (3 * MiB)


async def test_a_five_mib_request_is_resource_exhausted_and_the_connection_keeps_working(
    nc: Client, target: str
) -> None:
    seen: list[int] = []

    async def get_quest(request: Any, context: Any) -> quest_pb2.GetQuestResponse:
        seen.append(len(request.quest_id))
        return reply("ok")

    async with serving(nc, target, get_quest), stub_for(nc, target) as stub:
        err = await rpc_error(stub.GetQuest(quest_pb2.GetQuestRequest(quest_id="x" * (5 * MiB)), timeout=10))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert nc.is_connected
        assert (await stub.GetQuest(quest_pb2.GetQuestRequest(quest_id="small"), timeout=5)).quest.title == "ok"
    assert seen == [len("small")]


async def test_a_five_mib_response_is_resource_exhausted_and_the_server_keeps_serving(
    nc: Client, target: str
) -> None:
    async def get_quest(request: Any, context: Any) -> quest_pb2.GetQuestResponse:
        if request.quest_id == "huge":
            return reply("huge", description="d" * (5 * MiB))
        return reply("ok")

    async with serving(nc, target, get_quest), stub_for(nc, target) as stub:
        err = await rpc_error(stub.GetQuest(quest_pb2.GetQuestRequest(quest_id="huge"), timeout=10))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert nc.is_connected
        assert (await stub.GetQuest(quest_pb2.GetQuestRequest(quest_id="small"), timeout=5)).quest.title == "ok"


@pytest.mark.parametrize(
    "garbage",
    [
        b"not a grpc frame at all",
        b"",
        b"\x00\x00\x00\x00\x09short",  # truncated frame
        b"\x00\x00\x00\x00\x02\xff\xff",  # a whole frame, but not a GetQuestRequest
        _framing.encode_message(b"") + _framing.encode_message(b""),  # two messages on a unary call
        _framing.encode_trailers(_framing.Trailers(0)),  # a trailer frame instead of a message
    ],
    ids=["not-a-frame", "empty", "truncated", "not-protobuf", "two-messages", "trailer-frame"],
)
async def test_garbage_published_to_a_call_subject_gets_an_internal_error_reply_and_the_server_keeps_serving(
    nc: Client, target: str, garbage: bytes
) -> None:
    subject = f"grpc.{target}.gaming.quest.v1.QuestService.GetQuest"
    async with serving(nc, target, echo), stub_for(nc, target) as stub:
        msg = await nc.request(subject, garbage, timeout=5)
        frames = _framing.decode_complete(msg.data, 4 * MiB)
        trailers = [_framing.decode_trailer_block(block) for flag, block in frames if flag == _framing.TRAILER_FLAG]
        assert len(trailers) == 1
        assert trailers[0].code == grpc.StatusCode.INTERNAL.value[0]
        assert not [flag for flag, _ in frames if flag == _framing.MESSAGE_FLAG]
        assert (await stub.GetQuest(quest_pb2.GetQuestRequest(quest_id="after"), timeout=5)).quest.quest_id == "after"


# -- replicas ------------------------------------------------------------------------------------


async def test_replicas_of_a_target_share_calls_and_a_stopping_replica_finishes_its_call_while_the_other_takes_new_ones(
    nc: Client, nats_server: NatsServer, target: str
) -> None:
    release = asyncio.Event()
    slow_in_flight = {"a": 0, "b": 0}

    def replica(name: str) -> Handler:
        async def get_quest(request: Any, context: Any) -> quest_pb2.GetQuestResponse:
            if request.quest_id == "slow":
                slow_in_flight[name] += 1
                await release.wait()
            return reply(name)

        return get_quest

    nc_b = await nats.connect(nats_server.url, max_reconnect_attempts=0)
    slow_calls: list[asyncio.Future[Any]] = []
    try:
        async with (
            serving(nc, target, replica("a")) as server_a,
            serving(nc_b, target, replica("b")),
            stub_for(nc, target) as stub,
        ):
            responses = await asyncio.gather(
                *(stub.GetQuest(quest_pb2.GetQuestRequest(quest_id=str(i)), timeout=5) for i in range(60))
            )
            assert {r.quest.title for r in responses} == {"a", "b"}

            # Hold slow calls until replica a has one in flight.
            for attempt in range(1, 40):
                slow_calls.append(
                    asyncio.ensure_future(stub.GetQuest(quest_pb2.GetQuestRequest(quest_id="slow"), timeout=10))
                )
                await wait_for(lambda n=attempt: sum(slow_in_flight.values()) == n)
                if slow_in_flight["a"]:
                    break
            assert slow_in_flight["a"] == 1

            stopping = asyncio.ensure_future(server_a.stop(grace=10))
            await wait_for(lambda: "stopping" in repr(server_a))
            after = await asyncio.gather(
                *(stub.GetQuest(quest_pb2.GetQuestRequest(quest_id=f"n{i}"), timeout=5) for i in range(20))
            )
            assert {r.quest.title for r in after} == {"b"}
            assert not stopping.done()  # still waiting for the call in flight on a

            release.set()
            titles = [(await call).quest.title for call in slow_calls]
            assert titles.count("a") == 1
            await asyncio.wait_for(stopping, 5)
    finally:
        release.set()
        for call in slow_calls:
            call.cancel()
        await nc_b.close()


# -- the servicer context ------------------------------------------------------------------------


async def test_the_context_names_a_peer(nc: Client, target: str) -> None:
    peers: list[str] = []

    async def get_quest(request: Any, context: Any) -> quest_pb2.GetQuestResponse:
        peers.append(context.peer())
        return reply("ok")

    async with serving(nc, target, get_quest), stub_for(nc, target) as stub:
        await stub.GetQuest(quest_pb2.GetQuestRequest(), timeout=5)
    (peer,) = peers
    assert isinstance(peer, str)
    assert peer


async def test_context_callbacks_run_when_the_call_ends_not_before(nc: Client, target: str) -> None:
    ran: list[str] = []
    ran_before_return: list[list[str]] = []
    contexts: list[Any] = []

    async def get_quest(request: Any, context: Any) -> quest_pb2.GetQuestResponse:
        contexts.append(context)
        assert context.add_callback(lambda: ran.append("add_callback"))
        context.add_done_callback(lambda ctx: ran.append("add_done_callback") if ctx is context else None)
        ran_before_return.append(list(ran))
        return reply("ok")

    async with serving(nc, target, get_quest), stub_for(nc, target) as stub:
        await stub.GetQuest(quest_pb2.GetQuestRequest(), timeout=5)
        await wait_for(lambda: len(ran) == 2)
    assert ran_before_return == [[]]
    assert sorted(ran) == ["add_callback", "add_done_callback"]
    assert contexts[0].done()


async def test_context_callbacks_run_when_a_call_fails(nc: Client, target: str) -> None:
    ran: list[str] = []

    async def get_quest(request: Any, context: Any) -> quest_pb2.GetQuestResponse:
        context.add_callback(lambda: ran.append("failed call ended"))
        await context.abort(grpc.StatusCode.ABORTED, "conflict")

    async with serving(nc, target, get_quest), stub_for(nc, target) as stub:
        err = await rpc_error(stub.GetQuest(quest_pb2.GetQuestRequest(), timeout=5))
        await wait_for(lambda: bool(ran))
    assert err.code() == grpc.StatusCode.ABORTED
    assert ran == ["failed call ended"]


async def test_a_plain_function_handler_gets_its_callback_when_the_call_ends(nc: Client, target: str) -> None:
    ended = threading.Event()

    def get_quest(request: Any, context: Any) -> quest_pb2.GetQuestResponse:
        assert context.add_callback(ended.set)
        assert not ended.is_set()
        return reply("ok")

    async with serving(nc, target, get_quest), stub_for(nc, target) as stub:
        await stub.GetQuest(quest_pb2.GetQuestRequest(), timeout=5)
        await wait_for(ended.is_set)


# -- sizes of metadata, empty messages and keepalives --------------------------------------------


async def test_an_empty_response_message_is_a_response_not_an_error(nc: Client, target: str) -> None:
    async def get_quest(request: Any, context: Any) -> quest_pb2.GetQuestResponse:
        return quest_pb2.GetQuestResponse()

    async with serving(nc, target, get_quest), stub_for(nc, target) as stub:
        response = await stub.GetQuest(quest_pb2.GetQuestRequest(), timeout=5)
    assert response == quest_pb2.GetQuestResponse()


async def test_request_metadata_larger_than_max_payload_is_resource_exhausted_and_the_connection_survives(
    nc: Client, target: str
) -> None:
    seen: list[str] = []

    async def get_quest(request: Any, context: Any) -> quest_pb2.GetQuestResponse:
        seen.append(request.quest_id)
        return reply("ok")

    huge = (("huge-bin", b"m" * (nc.max_payload + 100)),)
    async with serving(nc, target, get_quest), stub_for(nc, target) as stub:
        err = await rpc_error(stub.GetQuest(quest_pb2.GetQuestRequest(quest_id="huge"), timeout=2, metadata=huge))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert nc.is_connected
        assert (await stub.GetQuest(quest_pb2.GetQuestRequest(quest_id="small"), timeout=5)).quest.title == "ok"
    assert seen == ["small"]


async def test_initial_metadata_larger_than_max_payload_fails_the_call_and_the_servers_connection_survives(
    nc: Client, nats_server: NatsServer, target: str
) -> None:
    async def get_quest(request: Any, context: Any) -> quest_pb2.GetQuestResponse:
        if request.quest_id == "huge":
            await context.send_initial_metadata((("huge-bin", b"m" * (nc.max_payload + 100)),))
        return reply("ok")

    server_nc = await nats.connect(nats_server.url, max_reconnect_attempts=0)
    try:
        async with serving(server_nc, target, get_quest), stub_for(nc, target) as stub:
            err = await rpc_error(stub.GetQuest(quest_pb2.GetQuestRequest(quest_id="huge"), timeout=2.5))
            assert err.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL)
            assert server_nc.is_connected
            assert (await stub.GetQuest(quest_pb2.GetQuestRequest(quest_id="small"), timeout=5)).quest.title == "ok"
    finally:
        await server_nc.close()


async def test_a_handler_slower_than_the_keepalive_interval_still_delivers_its_response_and_metadata(
    nc: Client, nats_server: NatsServer, target: str
) -> None:
    pings: list[bytes] = []
    release = asyncio.Event()

    async def get_quest(request: Any, context: Any) -> quest_pb2.GetQuestResponse:
        await context.send_initial_metadata((("x-initial", "after-pings"),))
        context.set_trailing_metadata((("x-trailing", "after-pings"),))
        await release.wait()
        return reply("patient")

    async def spy(msg: Any) -> None:
        if msg.data[:1] == bytes([nats_transport._envelope.Kind.PING]):
            pings.append(msg.data)

    # A second connection watching reply inboxes sees the server's keepalive PINGs go by.
    # Guarded for its flush(): plain nats-py's may return before the server saw the SUB.
    watcher = guard_connection(await nats.connect(nats_server.url, max_reconnect_attempts=0))
    try:
        await watcher.subscribe("_INBOX.>", cb=spy)
        await watcher.flush()
        options = nats_transport.ServerOptions(keepalive_interval=0.02, keepalive_timeout=1.0)
        async with serving(nc, target, get_quest, options=options), stub_for(nc, target) as stub:
            call = stub.GetQuest(quest_pb2.GetQuestRequest(), timeout=10)
            await wait_for(lambda: len(pings) >= 3)
            release.set()
            response = await call
            assert response.quest.title == "patient"
            assert (await call.initial_metadata()).get_all("x-initial") == ["after-pings"]
            assert (await call.trailing_metadata()).get_all("x-trailing") == ["after-pings"]
    finally:
        release.set()
        await watcher.close()


@contextlib.asynccontextmanager
async def silent_replica(nc: Client, target: str) -> AsyncIterator[None]:
    """A replica that takes calls and is never heard of again, PINGs included: a hung or dead
    server. (A live server PINGs a slow call at whatever interval its client asks for.)"""

    async def swallow(msg: Any) -> None:
        return None

    sub = await nc.subscribe(f"grpc.{target}.>", queue=target, cb=swallow)
    await nc.flush()
    try:
        yield
    finally:
        await sub.unsubscribe()


async def test_a_server_that_goes_silent_fails_a_unary_call_unavailable_before_its_deadline(
    nc: Client, target: str
) -> None:
    watchful = nats_transport.ChannelOptions(keepalive_interval=0.05, keepalive_timeout=0.3)
    async with (
        silent_replica(nc, target),
        nats_transport.aio.channel(nc, target, options=watchful) as channel,
    ):
        stub = quest_pb2_grpc.QuestServiceStub(channel)
        err = await rpc_error(stub.GetQuest(quest_pb2.GetQuestRequest(), timeout=BEYOND_THE_TEST_TIMEOUT))
    # The keepalive timeout ended it (the deadline is beyond the test's own timeout).
    assert (err.code(), err.details()) == _status.SERVER_SILENT


async def test_a_channels_keepalive_timeout_applies_even_when_another_channel_used_the_connection_first(
    nc: Client, target: str
) -> None:
    silent = f"{target}-silent"
    watchful = nats_transport.ChannelOptions(keepalive_interval=0.05, keepalive_timeout=0.3)
    async with serving(nc, target, echo), stub_for(nc, target) as default_stub, silent_replica(nc, silent):
        await default_stub.GetQuest(quest_pb2.GetQuestRequest(quest_id="first"), timeout=5)  # default options
        async with nats_transport.aio.channel(nc, silent, options=watchful) as channel:
            stub = quest_pb2_grpc.QuestServiceStub(channel)
            err = await rpc_error(stub.GetQuest(quest_pb2.GetQuestRequest(quest_id="hang"), timeout=1.5))
    assert err.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("size", [10, 2 * MiB], ids=["small", "larger-than-max-payload"])
async def test_a_call_on_a_closed_connection_is_unavailable(nats_server: NatsServer, target: str, size: int) -> None:
    closed = await nats.connect(nats_server.url, max_reconnect_attempts=0)
    async with stub_for(closed, target) as stub:
        # A first call while connected sets up the connection's reply subscription.
        assert (await rpc_error(stub.GetQuest(quest_pb2.GetQuestRequest(), timeout=2))).code() == (
            grpc.StatusCode.UNAVAILABLE
        )
        await closed.close()
        err = await rpc_error(stub.GetQuest(quest_pb2.GetQuestRequest(quest_id="x" * size), timeout=2))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
