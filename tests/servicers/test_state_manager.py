"""state-manager over NATS: player documents written with compare-and-set, partial updates,
deletes, the per-player change feed, and state that outlives the servicer."""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import grpc
import nats
import pytest
from gaming.common.v1 import common_pb2
from gaming.state_manager.v1 import state_manager_pb2 as sm
from gaming.state_manager.v1 import state_manager_pb2_grpc
from google.protobuf import field_mask_pb2, struct_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nats.aio.client import Client

from mesh.jetstream_storage import JetStreamStorage
from nats_transport.testing import NatsServer
from servicers import state_manager
from servicers.dependencies import Dependencies
from tests._buckets import delete_buckets
from tests._serving import served
from tests._waiting import wait_for

NOW = 1_700_000_000.0
# JetStream reserves a bucket's size up front: keep the buckets of many tests within the server.
SETTINGS = {"bucket_max_bytes": str(8 << 20)}
Stub = Any  # state_manager_pb2_grpc.StateManagerServiceAsyncStub exists in the .pyi only


class Clock:
    """A settable wall clock, so audit times can be asserted exactly."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def no_channel(target: str) -> Any:
    raise AssertionError(f"state-manager calls no other service (asked for {target!r})")


@pytest.fixture
async def prefix(nc: Client) -> AsyncIterator[str]:
    """A bucket prefix private to the test; its buckets are deleted after it."""
    name = f"t{uuid.uuid4().hex[:8]}_"
    yield name
    await delete_buckets(nc, name)


@pytest.fixture
def storage(nc: Client, prefix: str) -> JetStreamStorage:
    return JetStreamStorage(nc, prefix=prefix)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@contextlib.asynccontextmanager
async def serving(nc: Client, storage: Any, clock: Clock) -> AsyncIterator[Stub]:
    servicer = await state_manager.create(
        Dependencies(storage=storage, channel=no_channel, settings=SETTINGS, clock=clock)
    )
    async with served(nc, state_manager.add_to_server, servicer) as channel:
        yield state_manager_pb2_grpc.StateManagerServiceStub(channel)


@pytest.fixture
async def stub(nc: Client, storage: JetStreamStorage, clock: Clock) -> AsyncIterator[Stub]:
    async with serving(nc, storage, clock) as stub:
        yield stub


def doc(**fields: Any) -> struct_pb2.Struct:
    document = struct_pb2.Struct()
    document.update(fields)
    return document


def rev(value: int) -> common_pb2.Revision:
    return common_pb2.Revision(value=value)


async def rpc_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def detail(err: grpc.aio.AioRpcError, kind: type[Message]) -> Any:
    """The first status detail of type ``kind`` in the error's google.rpc.Status."""
    status = rpc_status.from_call(err)
    assert status is not None, "no google.rpc.Status in the trailers"
    for packed in status.details:
        found = kind()
        if packed.Unpack(found):
            return found
    raise AssertionError(f"no {kind.__name__} in {status.details}")


async def invalid_field(call: Awaitable[Any]) -> str:
    err = await rpc_error(call)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    return str(detail(err, error_details_pb2.BadRequest).field_violations[0].field)


async def create(stub: Stub, player_id: str, **fields: Any) -> sm.PlayerState:
    response = await stub.Update(
        sm.UpdateRequest(player_id=player_id, document=doc(**fields), expected_revision=rev(0)), timeout=5
    )
    return response.state


async def replace(stub: Stub, player_id: str, revision: int, **fields: Any) -> sm.PlayerState:
    response = await stub.Update(
        sm.UpdateRequest(player_id=player_id, document=doc(**fields), expected_revision=rev(revision)), timeout=5
    )
    return response.state


async def delete(stub: Stub, player_id: str, revision: int, actor_id: str = "") -> sm.DeleteResponse:
    request = sm.DeleteRequest(player_id=player_id, expected_revision=rev(revision), actor_id=actor_id)
    return await stub.Delete(request, timeout=5)


async def next_change(call: Any) -> sm.WatchResponse:
    message = await asyncio.wait_for(call.read(), timeout=5)
    assert isinstance(message, sm.WatchResponse), message
    return message


# -- reads and writes -----------------------------------------------------------------------


async def test_an_update_at_revision_zero_creates_the_players_state(stub: Stub, clock: Clock) -> None:
    response = await stub.Update(
        sm.UpdateRequest(player_id="p1", document=doc(level=3, name="Ada"), expected_revision=rev(0), actor_id="game"),
        timeout=5,
    )
    state = response.state
    assert state.player_id == "p1"
    assert dict(state.document) == {"level": 3, "name": "Ada"}
    assert state.revision.value > 0
    assert state.create_time.ToNanoseconds() == int(NOW * 1e9)
    assert state.audit.actor_id == ""  # claimed without a token: not recorded
    assert state.audit.update_time == state.create_time
    assert (await stub.Get(sm.GetRequest(player_id="p1"), timeout=5)).state == state


async def test_an_update_at_the_current_revision_replaces_the_whole_document(stub: Stub, clock: Clock) -> None:
    created = await create(stub, "p1", level=1, gold=5)
    clock.now += 60
    response = await stub.Update(
        sm.UpdateRequest(player_id="p1", document=doc(level=2), expected_revision=created.revision, actor_id="gm"),
        timeout=5,
    )
    state = response.state
    assert dict(state.document) == {"level": 2}
    assert state.revision.value > created.revision.value
    assert state.create_time == created.create_time
    assert state.audit.actor_id == ""  # claimed without a token: not recorded
    assert state.audit.update_time.ToNanoseconds() == int((NOW + 60) * 1e9)
    assert (await stub.Get(sm.GetRequest(player_id="p1"), timeout=5)).state == state


async def test_an_update_mask_replaces_only_the_named_top_level_keys(stub: Stub) -> None:
    created = await create(stub, "p1", level=1, gold=5, inventory={"sword": 1}, title="novice")
    response = await stub.Update(
        sm.UpdateRequest(
            player_id="p1",
            document=doc(level=2, inventory={"shield": 1}, ignored="not in the mask"),
            expected_revision=created.revision,
            update_mask=field_mask_pb2.FieldMask(paths=["level", "inventory", "title"]),
        ),
        timeout=5,
    )
    # level and inventory replaced, title removed (named but absent), gold untouched.
    assert dict(response.state.document) == {"level": 2, "gold": 5, "inventory": doc(shield=1)}


async def test_an_update_mask_on_a_player_without_state_starts_from_an_empty_document(stub: Stub) -> None:
    response = await stub.Update(
        sm.UpdateRequest(
            player_id="p1", document=doc(level=1, gold=9), expected_revision=rev(0),
            update_mask=field_mask_pb2.FieldMask(paths=["level"]),
        ),
        timeout=5,
    )
    assert dict(response.state.document) == {"level": 1}


async def test_nested_documents_and_every_json_type_round_trip(stub: Stub) -> None:
    fields = {"s": "text", "n": 1.5, "b": True, "z": None, "list": [1, "two", [3], {"four": 4}], "obj": {"a": {"b": 1}}}
    created = await create(stub, "p1", **fields)
    assert created.document == doc(**fields)
    assert (await stub.Get(sm.GetRequest(player_id="p1"), timeout=5)).state.document == doc(**fields)


@pytest.mark.parametrize("player_id", ["a.b", "a/b", "a b", "ä🎮", "*", ">", "x" * 128])
async def test_player_ids_with_any_characters_are_stored_as_distinct_players(stub: Stub, player_id: str) -> None:
    await create(stub, player_id, who=player_id)
    await create(stub, "a_b", who="a_b")
    state = (await stub.Get(sm.GetRequest(player_id=player_id), timeout=5)).state
    assert (state.player_id, dict(state.document)) == (player_id, {"who": player_id})


async def test_a_large_document_round_trips(stub: Stub) -> None:
    big = "x" * (900 * 1024)
    created = await create(stub, "p1", blob=big)
    assert (await stub.Get(sm.GetRequest(player_id="p1"), timeout=5)).state.document["blob"] == big
    assert created.document["blob"] == big


async def test_revisions_grow_with_every_write_and_are_never_reused_after_a_delete(stub: Stub) -> None:
    first = await create(stub, "p1", n=1)
    second = await replace(stub, "p1", first.revision.value, n=2)
    deleted = await delete(stub, "p1", second.revision.value)
    again = await create(stub, "p1", n=3)
    revisions = [first.revision.value, second.revision.value, deleted.revision.value, again.revision.value]
    assert revisions == sorted(set(revisions))


# -- delete ---------------------------------------------------------------------------------


async def test_a_delete_at_the_current_revision_removes_the_state(stub: Stub, clock: Clock) -> None:
    created = await create(stub, "p1", n=1)
    clock.now += 5
    response = await delete(stub, "p1", created.revision.value, actor_id="gm")
    assert response.revision.value > created.revision.value
    assert response.delete_time.ToNanoseconds() == int((NOW + 5) * 1e9)
    err = await rpc_error(stub.Get(sm.GetRequest(player_id="p1"), timeout=5))
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_a_deleted_player_can_be_created_again_at_revision_zero(stub: Stub, clock: Clock) -> None:
    created = await create(stub, "p1", n=1)
    await delete(stub, "p1", created.revision.value)
    clock.now += 10
    again = await create(stub, "p1", n=2)
    assert dict(again.document) == {"n": 2}
    assert again.create_time.ToNanoseconds() == int((NOW + 10) * 1e9)


async def test_a_deleted_player_can_be_created_again_at_the_revision_a_conflict_reports(stub: Stub) -> None:
    created = await create(stub, "p1", n=1)
    deleted = await delete(stub, "p1", created.revision.value)
    err = await rpc_error(replace(stub, "p1", created.revision.value, n=2))
    conflict = detail(err, sm.RevisionConflict)
    assert (conflict.current_revision.value, conflict.exists) == (deleted.revision.value, False)
    again = await replace(stub, "p1", conflict.current_revision.value, n=2)
    assert dict(again.document) == {"n": 2}


async def test_delete_of_a_player_without_state_is_not_found(stub: Stub) -> None:
    err = await rpc_error(delete(stub, "nobody", 1))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert detail(err, error_details_pb2.ErrorInfo).reason == "STATE_NOT_FOUND"


async def test_delete_of_an_already_deleted_player_is_not_found(stub: Stub) -> None:
    created = await create(stub, "p1", n=1)
    deleted = await delete(stub, "p1", created.revision.value)
    err = await rpc_error(delete(stub, "p1", deleted.revision.value))
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_delete_at_a_stale_revision_is_aborted_with_the_current_revision(stub: Stub) -> None:
    created = await create(stub, "p1", n=1)
    current = await replace(stub, "p1", created.revision.value, n=2)
    err = await rpc_error(delete(stub, "p1", created.revision.value))
    assert err.code() == grpc.StatusCode.ABORTED
    conflict = detail(err, sm.RevisionConflict)
    assert conflict == sm.RevisionConflict(player_id="p1", current_revision=current.revision, exists=True)
    assert (await stub.Get(sm.GetRequest(player_id="p1"), timeout=5)).state == current


# -- compare-and-set conflicts --------------------------------------------------------------


async def test_an_update_at_a_stale_revision_is_aborted_with_the_current_revision(stub: Stub) -> None:
    created = await create(stub, "p1", n=1)
    current = await replace(stub, "p1", created.revision.value, n=2)
    err = await rpc_error(replace(stub, "p1", created.revision.value, n=3))
    assert err.code() == grpc.StatusCode.ABORTED
    conflict = detail(err, sm.RevisionConflict)
    assert conflict == sm.RevisionConflict(player_id="p1", current_revision=current.revision, exists=True)
    info = detail(err, error_details_pb2.ErrorInfo)
    assert info.reason == "REVISION_CONFLICT"
    assert info.metadata["current_revision"] == str(current.revision.value)
    assert info.metadata["expected_revision"] == str(created.revision.value)
    assert dict((await stub.Get(sm.GetRequest(player_id="p1"), timeout=5)).state.document) == {"n": 2}


async def test_creating_a_player_that_has_state_is_aborted(stub: Stub) -> None:
    created = await create(stub, "p1", n=1)
    err = await rpc_error(create(stub, "p1", n=2))
    assert err.code() == grpc.StatusCode.ABORTED
    conflict = detail(err, sm.RevisionConflict)
    assert (conflict.current_revision.value, conflict.exists) == (created.revision.value, True)


async def test_an_update_of_a_player_never_written_at_a_nonzero_revision_is_aborted(stub: Stub) -> None:
    err = await rpc_error(replace(stub, "nobody", 42, n=1))
    assert err.code() == grpc.StatusCode.ABORTED
    assert detail(err, sm.RevisionConflict) == sm.RevisionConflict(player_id="nobody", current_revision=rev(0))


async def test_only_one_of_many_concurrent_updates_at_one_revision_wins(stub: Stub) -> None:
    created = await create(stub, "p1", n=0)
    results = await asyncio.gather(
        *(replace(stub, "p1", created.revision.value, n=n) for n in range(1, 9)), return_exceptions=True
    )
    winners = [result for result in results if isinstance(result, sm.PlayerState)]
    losers = [result for result in results if isinstance(result, grpc.aio.AioRpcError)]
    assert len(winners) == 1
    assert len(losers) == 7
    assert {loser.code() for loser in losers} == {grpc.StatusCode.ABORTED}
    assert (await stub.Get(sm.GetRequest(player_id="p1"), timeout=5)).state == winners[0]


async def test_a_retry_at_the_revision_a_conflict_reports_succeeds(stub: Stub) -> None:
    created = await create(stub, "p1", n=1)
    await replace(stub, "p1", created.revision.value, n=2)
    err = await rpc_error(replace(stub, "p1", created.revision.value, n=3))
    current = detail(err, sm.RevisionConflict).current_revision.value
    assert dict((await replace(stub, "p1", current, n=3)).document) == {"n": 3}


# -- bad input ------------------------------------------------------------------------------


async def test_get_without_a_player_id_is_invalid(stub: Stub) -> None:
    assert await invalid_field(stub.Get(sm.GetRequest(), timeout=5)) == "player_id"


async def test_a_player_id_over_128_characters_is_invalid(stub: Stub) -> None:
    assert await invalid_field(stub.Get(sm.GetRequest(player_id="x" * 129), timeout=5)) == "player_id"


async def test_get_of_a_player_never_written_is_not_found(stub: Stub) -> None:
    err = await rpc_error(stub.Get(sm.GetRequest(player_id="nobody"), timeout=5))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "nobody" in (err.details() or "")


def updates_with_bad_input() -> list[Any]:
    def update(**overrides: Any) -> sm.UpdateRequest:
        fields: dict[str, Any] = {"player_id": "p1", "document": doc(n=1), "expected_revision": rev(0), **overrides}
        return sm.UpdateRequest(**{name: value for name, value in fields.items() if value is not None})

    no_kind = doc(n=1)
    no_kind.fields["empty"].Clear()
    nested_nan = doc(deep={"list": [1.0]})
    nested_nan.fields["deep"].struct_value.fields["list"].list_value.values[0].number_value = math.nan
    return [
        pytest.param(update(player_id=None), "player_id", id="no player id"),
        pytest.param(update(document=None), "document", id="no document"),
        pytest.param(update(expected_revision=None), "expected_revision", id="no expected revision"),
        pytest.param(update(document=doc(blob="x" * (1 << 20))), "document", id="document over 1 MiB"),
        pytest.param(update(document=doc(n=math.inf)), "document", id="infinite number"),
        pytest.param(update(document=nested_nan), "document", id="NaN deep inside"),
        pytest.param(update(document=no_kind), "document", id="value without kind"),
        pytest.param(update(update_mask=field_mask_pb2.FieldMask(paths=["n", ""])), "update_mask.paths[1]",
                     id="empty mask path"),
        pytest.param(update(update_mask=field_mask_pb2.FieldMask(paths=["a.b"])), "update_mask.paths[0]",
                     id="nested mask path"),
        pytest.param(update(actor_id="a" * 129), "actor_id", id="actor id over 128 characters"),
    ]


@pytest.mark.parametrize(("request_", "field"), updates_with_bad_input())
async def test_an_update_with_bad_input_is_invalid_and_names_the_field(
    stub: Stub, request_: sm.UpdateRequest, field: str
) -> None:
    assert await invalid_field(stub.Update(request_, timeout=5)) == field
    err = await rpc_error(stub.Get(sm.GetRequest(player_id="p1"), timeout=5))
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_a_document_too_close_to_1_mib_to_store_is_invalid_and_the_store_stays_usable(stub: Stub) -> None:
    # Under the API's 1 MiB, but with its metadata over what one NATS message carries.
    field = await invalid_field(create(stub, "p1", blob="x" * ((1 << 20) - 200)))
    assert field == "document"
    assert dict((await create(stub, "p2", n=1)).document) == {"n": 1}


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        pytest.param(sm.DeleteRequest(expected_revision=rev(1)), "player_id", id="no player id"),
        pytest.param(sm.DeleteRequest(player_id="p1"), "expected_revision", id="no expected revision"),
        pytest.param(sm.DeleteRequest(player_id="p1", expected_revision=rev(1), actor_id="a" * 129), "actor_id",
                     id="actor id over 128 characters"),
    ],
)
async def test_a_delete_with_bad_input_is_invalid_and_names_the_field(
    stub: Stub, request_: sm.DeleteRequest, field: str
) -> None:
    assert await invalid_field(stub.Delete(request_, timeout=5)) == field


async def test_a_watch_without_a_player_id_is_invalid(stub: Stub) -> None:
    call = stub.Watch(sm.WatchRequest(), timeout=5)
    assert await invalid_field(call.read()) == "player_id"


# -- watch ----------------------------------------------------------------------------------


async def test_a_watch_sends_the_current_state_then_every_later_change_in_order(stub: Stub, clock: Clock) -> None:
    created = await create(stub, "p1", n=1)
    call = stub.Watch(sm.WatchRequest(player_id="p1", send_initial=True))
    try:
        initial = await next_change(call)
        assert (initial.operation, initial.revision, dict(initial.document)) == (
            sm.OPERATION_PUT, created.revision, {"n": 1}
        )
        assert initial.audit == created.audit
        clock.now += 1
        second = await replace(stub, "p1", created.revision.value, n=2)
        third = await replace(stub, "p1", second.revision.value, n=3)
        deleted = await delete(stub, "p1", third.revision.value, actor_id="gm")
        changes = [await next_change(call) for _ in range(3)]
        assert [(c.operation, c.revision.value) for c in changes] == [
            (sm.OPERATION_PUT, second.revision.value),
            (sm.OPERATION_PUT, third.revision.value),
            (sm.OPERATION_DELETE, deleted.revision.value),
        ]
        assert [dict(c.document) for c in changes[:2]] == [{"n": 2}, {"n": 3}]
        assert not changes[2].HasField("document")
        assert changes[2].audit.actor_id == ""  # claimed without a token: not recorded
        assert changes[2].audit.update_time == deleted.delete_time
        assert {c.player_id for c in [initial, *changes]} == {"p1"}
    finally:
        call.cancel()


async def test_a_watch_with_send_initial_of_a_player_without_state_starts_with_the_first_write(stub: Stub) -> None:
    call = stub.Watch(sm.WatchRequest(player_id="p1", send_initial=True))
    try:
        created = await create(stub, "p1", n=1)
        first = await next_change(call)
        assert (first.operation, first.revision) == (sm.OPERATION_PUT, created.revision)
    finally:
        call.cancel()


async def test_a_watch_from_now_on_does_not_send_the_current_state(stub: Stub) -> None:
    created = await create(stub, "p1", n=0)
    call = stub.Watch(sm.WatchRequest(player_id="p1"))
    received: list[sm.WatchResponse] = []
    written: list[int] = []

    async def read_all() -> None:
        async for message in call:
            received.append(message)

    async def write_until_one_arrives() -> bool:
        # Nothing tells when the watch is live: keep writing until a change comes through.
        if received:
            return True
        revision = written[-1] if written else created.revision.value
        written.append((await replace(stub, "p1", revision, n=len(written) + 1)).revision.value)
        return False

    reader = asyncio.create_task(read_all())
    try:
        await wait_for(write_until_one_arrives)
        assert received[0].revision.value in written
        assert received[0].operation == sm.OPERATION_PUT
    finally:
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


async def test_a_watch_after_the_revision_before_the_latest_change_replays_that_change(stub: Stub) -> None:
    created = await create(stub, "p1", n=1)
    current = await replace(stub, "p1", created.revision.value, n=2)
    call = stub.Watch(sm.WatchRequest(player_id="p1", after_revision=created.revision))
    try:
        replayed = await next_change(call)
        assert (replayed.revision, dict(replayed.document)) == (current.revision, {"n": 2})
        later = await replace(stub, "p1", current.revision.value, n=3)
        assert (await next_change(call)).revision == later.revision
    finally:
        call.cancel()


async def test_a_watch_after_the_current_revision_sends_only_later_changes(stub: Stub) -> None:
    created = await create(stub, "p1", n=1)
    call = stub.Watch(sm.WatchRequest(player_id="p1", after_revision=created.revision, send_initial=True))
    try:
        later = await replace(stub, "p1", created.revision.value, n=2)
        first = await next_change(call)
        assert (first.revision, dict(first.document)) == (later.revision, {"n": 2})
    finally:
        call.cancel()


async def test_a_watch_after_a_revision_no_longer_retained_is_out_of_range(stub: Stub) -> None:
    created = await create(stub, "p1", n=1)
    second = await replace(stub, "p1", created.revision.value, n=2)
    await replace(stub, "p1", second.revision.value, n=3)
    call = stub.Watch(sm.WatchRequest(player_id="p1", after_revision=created.revision), timeout=5)
    err = await rpc_error(call.read())
    assert err.code() == grpc.StatusCode.OUT_OF_RANGE
    assert detail(err, error_details_pb2.ErrorInfo).reason == "REVISION_NOT_RETAINED"


async def test_a_watch_after_revision_zero_of_a_player_created_once_replays_the_creation(stub: Stub) -> None:
    created = await create(stub, "p1", n=1)
    call = stub.Watch(sm.WatchRequest(player_id="p1", after_revision=rev(0)))
    try:
        assert (await next_change(call)).revision == created.revision
    finally:
        call.cancel()


async def test_a_watch_sees_only_its_own_player(stub: Stub) -> None:
    call = stub.Watch(sm.WatchRequest(player_id="p1", send_initial=True))
    try:
        await create(stub, "p2", n=2)
        mine = await create(stub, "p1", n=1)
        first = await next_change(call)
        assert (first.player_id, first.revision) == ("p1", mine.revision)
    finally:
        call.cancel()


async def test_cancelling_a_watch_leaves_the_service_serving(stub: Stub) -> None:
    created = await create(stub, "p1", n=1)
    call = stub.Watch(sm.WatchRequest(player_id="p1", send_initial=True))
    await next_change(call)
    call.cancel()
    assert (await replace(stub, "p1", created.revision.value, n=2)).document["n"] == 2


# -- failures and restarts ------------------------------------------------------------------


async def test_calls_are_unavailable_when_the_store_is_unreachable(
    nc: Client, nats_server: NatsServer, prefix: str, clock: Clock
) -> None:
    store_nc = await nats.connect(nats_server.url, max_reconnect_attempts=0)
    try:
        async with serving(nc, JetStreamStorage(store_nc, prefix=prefix), clock) as stub:
            await create(stub, "p1", n=1)
            await store_nc.close()
            for call in (
                stub.Get(sm.GetRequest(player_id="p1"), timeout=5),
                replace(stub, "p1", 1, n=2),
                delete(stub, "p1", 1),
                stub.Watch(sm.WatchRequest(player_id="p1"), timeout=5).read(),
            ):
                err = await rpc_error(call)
                assert err.code() == grpc.StatusCode.UNAVAILABLE
                assert detail(err, error_details_pb2.ErrorInfo).reason == "STORAGE_UNAVAILABLE"
    finally:
        await store_nc.close()  # a no-op when the test closed it


async def test_a_restart_keeps_acknowledged_state(nats_server: NatsServer, prefix: str, clock: Clock) -> None:
    first_nc = await nats.connect(nats_server.url)
    try:
        async with serving(first_nc, JetStreamStorage(first_nc, prefix=prefix), clock) as stub:
            created = await create(stub, "p1", level=7)
            gone = await create(stub, "p2", n=1)
            await delete(stub, "p2", gone.revision.value)
    finally:
        await first_nc.close()

    second_nc = await nats.connect(nats_server.url)
    try:
        async with serving(second_nc, JetStreamStorage(second_nc, prefix=prefix), clock) as stub:
            assert (await stub.Get(sm.GetRequest(player_id="p1"), timeout=5)).state == created
            err = await rpc_error(stub.Get(sm.GetRequest(player_id="p2"), timeout=5))
            assert err.code() == grpc.StatusCode.NOT_FOUND
            assert dict((await replace(stub, "p1", created.revision.value, level=8)).document) == {"level": 8}
    finally:
        await second_nc.close()


def test_the_module_names_its_target_and_service() -> None:
    assert state_manager.TARGET == "state-manager"
    assert [sm.DESCRIPTOR.services_by_name["StateManagerService"].full_name] == list(state_manager.SERVICE_NAMES)


async def test_the_bucket_size_comes_from_settings_and_must_be_a_positive_integer(storage: JetStreamStorage) -> None:
    for bad in ("lots", "0", "-5"):
        with pytest.raises(ValueError, match="bucket_max_bytes"):
            await state_manager.create(
                Dependencies(storage=storage, channel=no_channel, settings={"bucket_max_bytes": bad})
            )
