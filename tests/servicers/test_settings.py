"""settings over NATS: per-player and per-service settings, partial compare-and-set updates,
validation of keys and values, the change feed, and settings that outlive the servicer."""

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
from gaming.settings.v1 import settings_pb2 as st
from gaming.settings.v1 import settings_pb2_grpc
from google.protobuf import duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nats.aio.client import Client

from mesh.jetstream_storage import JetStreamStorage
from nats_transport.testing import NatsServer
from servicers import settings
from servicers.auth.call_identity import set_call_identity
from servicers.auth.identity import Identity
from servicers.dependencies import Dependencies
from servicers.errors import RpcError
from tests._buckets import delete_buckets
from tests._serving import served

NOW = 1_700_000_000.0
# JetStream reserves a bucket's size up front: keep the buckets of many tests within the server.
SETTINGS = {"bucket_max_bytes": str(8 << 20)}
Stub = Any  # settings_pb2_grpc.SettingsServiceAsyncStub exists in the .pyi only
PLAYER = st.Scope(kind=st.SCOPE_KIND_PLAYER, id="p1")
SERVICE = st.Scope(kind=st.SCOPE_KIND_SERVICE, id="world-state")


def no_channel(target: str) -> Any:
    raise AssertionError(f"settings calls no other service (asked for {target!r})")


@pytest.fixture
async def prefix(nc: Client) -> AsyncIterator[str]:
    """A bucket prefix private to the test; its buckets are deleted after it."""
    name = f"t{uuid.uuid4().hex[:8]}_"
    yield name
    await delete_buckets(nc, name)


@pytest.fixture
def storage(nc: Client, prefix: str) -> JetStreamStorage:
    return JetStreamStorage(nc, prefix=prefix)


@contextlib.asynccontextmanager
async def serving(nc: Client, storage: Any) -> AsyncIterator[Stub]:
    servicer = await settings.create(
        Dependencies(storage=storage, channel=no_channel, settings=SETTINGS, clock=lambda: NOW)
    )
    async with served(nc, settings.add_to_server, servicer) as channel:
        yield settings_pb2_grpc.SettingsServiceStub(channel)


@pytest.fixture
async def stub(nc: Client, storage: JetStreamStorage) -> AsyncIterator[Stub]:
    async with serving(nc, storage) as stub:
        yield stub


def rev(value: int) -> common_pb2.Revision:
    return common_pb2.Revision(value=value)


def text(value: str) -> st.SettingValue:
    return st.SettingValue(string_value=value)


def number(value: int) -> st.SettingValue:
    return st.SettingValue(int_value=value)


async def get(stub: Stub, scope: st.Scope = PLAYER) -> st.Settings:
    return (await stub.Get(st.GetRequest(scope=scope), timeout=5)).settings


async def update(
    stub: Stub,
    revision: int,
    scope: st.Scope = PLAYER,
    remove: tuple[str, ...] = (),
    actor_id: str = "",
    **values: st.SettingValue,
) -> st.Settings:
    request = st.UpdateRequest(
        scope=scope, expected_revision=rev(revision), set=values, remove_keys=remove, actor_id=actor_id
    )
    return (await stub.Update(request, timeout=5)).settings


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


async def next_message(call: Any) -> st.WatchResponse:
    message = await asyncio.wait_for(call.read(), timeout=5)
    assert isinstance(message, st.WatchResponse), message
    return message


# -- get and update -------------------------------------------------------------------------


async def test_a_scope_never_written_reads_as_empty_at_revision_zero(stub: Stub) -> None:
    assert await get(stub) == st.Settings(scope=PLAYER, revision=rev(0))


async def test_an_update_at_revision_zero_sets_values_of_every_type(stub: Stub) -> None:
    values = {
        "audio.music_volume": st.SettingValue(double_value=0.75),
        "graphics.fps_cap": number(144),
        "ui.show_hints": st.SettingValue(bool_value=False),
        "ui.language": text("pt-BR"),
        "net.timeout": st.SettingValue(duration_value=duration_pb2.Duration(seconds=1, nanos=500_000_000)),
    }
    written = await update(stub, 0, actor_id="p1", **values)
    assert written.scope == PLAYER
    assert dict(written.values) == values
    assert written.revision.value > 0
    assert written.audit.actor_id == ""  # claimed "p1" without a token: not recorded
    assert written.audit.update_time.ToNanoseconds() == int(NOW * 1e9)
    assert await get(stub) == written


async def test_an_update_sets_and_removes_named_keys_and_leaves_the_others(stub: Stub) -> None:
    first = await update(stub, 0, a=number(1), b=number(2), c=number(3))
    second = await update(stub, first.revision.value, remove=("b", "never_set"), a=number(10), d=number(4))
    assert dict(second.values) == {"a": number(10), "c": number(3), "d": number(4)}
    assert second.revision.value > first.revision.value
    assert await get(stub) == second


async def test_an_update_that_only_removes_keys_is_allowed(stub: Stub) -> None:
    first = await update(stub, 0, a=number(1), b=number(2))
    second = await update(stub, first.revision.value, remove=("a",))
    assert dict(second.values) == {"b": number(2)}


async def test_player_and_service_scopes_with_the_same_id_are_separate(stub: Stub) -> None:
    same_id_service = st.Scope(kind=st.SCOPE_KIND_SERVICE, id=PLAYER.id)
    await update(stub, 0, scope=PLAYER, volume=number(1))
    await update(stub, 0, scope=same_id_service, workers=number(8))
    assert dict((await get(stub, PLAYER)).values) == {"volume": number(1)}
    assert dict((await get(stub, same_id_service)).values) == {"workers": number(8)}


@pytest.mark.parametrize("scope_id", ["a.b", "a/b", "ä 🎮", "*", ">", "x" * 128])
async def test_scope_ids_with_any_characters_are_distinct_scopes(stub: Stub, scope_id: str) -> None:
    scope = st.Scope(kind=st.SCOPE_KIND_PLAYER, id=scope_id)
    await update(stub, 0, scope=scope, who=text(scope_id))
    await update(stub, 0, scope=st.Scope(kind=st.SCOPE_KIND_PLAYER, id="a_b"), who=text("a_b"))
    read = await get(stub, scope)
    assert (read.scope, dict(read.values)) == (scope, {"who": text(scope_id)})


async def test_a_scope_holds_up_to_256_keys(stub: Stub) -> None:
    full = await update(stub, 0, **{f"key_{n}": number(n) for n in range(256)})
    assert len(full.values) == 256
    field = await invalid_field(update(stub, full.revision.value, one_more=number(1)))
    assert field == "set"
    # Replacing and removing keep the count within the limit.
    assert len((await update(stub, full.revision.value, remove=("key_0",), key_1=number(0))).values) == 255


async def test_settings_too_large_for_one_stored_value_are_invalid_and_the_store_stays_usable(stub: Stub) -> None:
    # Within the API's limits (256 keys of 4 KiB), but over what one NATS message carries.
    field = await invalid_field(update(stub, 0, **{f"k{n}": text("x" * 4096) for n in range(256)}))
    assert field == "set"
    assert dict((await update(stub, 0, ok=number(1))).values) == {"ok": number(1)}


# -- compare-and-set conflicts --------------------------------------------------------------


async def test_an_update_at_a_stale_revision_is_aborted_with_the_current_revision(stub: Stub) -> None:
    first = await update(stub, 0, a=number(1))
    current = await update(stub, first.revision.value, a=number(2))
    err = await rpc_error(update(stub, first.revision.value, a=number(3)))
    assert err.code() == grpc.StatusCode.ABORTED
    assert detail(err, st.RevisionConflict) == st.RevisionConflict(scope=PLAYER, current_revision=current.revision)
    info = detail(err, error_details_pb2.ErrorInfo)
    assert info.reason == "REVISION_CONFLICT"
    assert info.metadata["current_revision"] == str(current.revision.value)
    assert await get(stub) == current


async def test_an_update_at_revision_zero_of_a_written_scope_is_aborted(stub: Stub) -> None:
    first = await update(stub, 0, a=number(1))
    err = await rpc_error(update(stub, 0, a=number(2)))
    assert err.code() == grpc.StatusCode.ABORTED
    assert detail(err, st.RevisionConflict).current_revision == first.revision


async def test_an_update_of_a_scope_never_written_at_a_nonzero_revision_is_aborted(stub: Stub) -> None:
    err = await rpc_error(update(stub, 5, scope=SERVICE, a=number(1)))
    assert err.code() == grpc.StatusCode.ABORTED
    assert detail(err, st.RevisionConflict) == st.RevisionConflict(scope=SERVICE, current_revision=rev(0))


async def test_only_one_of_many_concurrent_updates_at_one_revision_wins(stub: Stub) -> None:
    first = await update(stub, 0, n=number(0))
    results = await asyncio.gather(
        *(update(stub, first.revision.value, n=number(n)) for n in range(1, 9)), return_exceptions=True
    )
    winners = [result for result in results if isinstance(result, st.Settings)]
    losers = [result for result in results if isinstance(result, grpc.aio.AioRpcError)]
    assert len(winners) == 1
    assert {loser.code() for loser in losers} == {grpc.StatusCode.ABORTED}
    assert len(losers) == 7
    assert await get(stub) == winners[0]


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        pytest.param(st.GetRequest(), "scope", id="no scope"),
        pytest.param(st.GetRequest(scope=st.Scope(id="p1")), "scope.kind", id="unspecified kind"),
        pytest.param(st.GetRequest(scope=st.Scope(kind=99, id="p1")), "scope.kind", id="unknown kind"),  # type: ignore[arg-type]
        pytest.param(st.GetRequest(scope=st.Scope(kind=st.SCOPE_KIND_PLAYER)), "scope.id", id="empty id"),
        pytest.param(st.GetRequest(scope=st.Scope(kind=st.SCOPE_KIND_PLAYER, id="x" * 129)), "scope.id",
                     id="id over 128 characters"),
    ],
)
async def test_a_get_with_a_bad_scope_is_invalid_and_names_the_field(
    stub: Stub, request_: st.GetRequest, field: str
) -> None:
    assert await invalid_field(stub.Get(request_, timeout=5)) == field


def updates_with_bad_input() -> list[Any]:
    def request(**overrides: Any) -> st.UpdateRequest:
        fields: dict[str, Any] = {"scope": PLAYER, "expected_revision": rev(0), "set": {"a": number(1)}, **overrides}
        return st.UpdateRequest(**{name: value for name, value in fields.items() if value is not None})

    def setting(key: str, value: st.SettingValue) -> st.UpdateRequest:
        return request(set={key: value})

    def duration(seconds: int, nanos: int) -> st.SettingValue:
        return st.SettingValue(duration_value=duration_pb2.Duration(seconds=seconds, nanos=nanos))

    return [
        pytest.param(request(scope=None), "scope", id="no scope"),
        pytest.param(request(scope=st.Scope(id="p1")), "scope.kind", id="unspecified scope kind"),
        pytest.param(request(scope=st.Scope(kind=st.SCOPE_KIND_SERVICE)), "scope.id", id="empty scope id"),
        pytest.param(request(expected_revision=None), "expected_revision", id="no expected revision"),
        pytest.param(request(set={}), "set", id="nothing to set or remove"),
        pytest.param(request(remove_keys=["b", "a"]), "remove_keys[1]", id="a key both set and removed"),
        pytest.param(setting("Audio", number(1)), 'set["Audio"]', id="upper case key"),
        pytest.param(setting("audio..volume", number(1)), 'set["audio..volume"]', id="empty segment"),
        pytest.param(setting("audio.", number(1)), 'set["audio."]', id="trailing dot"),
        pytest.param(setting("2d_mode", number(1)), 'set["2d_mode"]', id="segment starting with a digit"),
        pytest.param(setting("music-volume", number(1)), 'set["music-volume"]', id="dash in key"),
        pytest.param(setting("a__b", number(1)), 'set["a__b"]', id="double underscore"),
        pytest.param(setting("", number(1)), 'set[""]', id="empty key"),
        pytest.param(setting("k" * 129, number(1)), f'set["{"k" * 129}"]', id="key over 128 characters"),
        pytest.param(setting("a", st.SettingValue()), 'set["a"]', id="value without a type"),
        pytest.param(setting("a", text("x" * 4097)), 'set["a"]', id="string over 4 KiB"),
        pytest.param(setting("a", text("é" * 2049)), 'set["a"]', id="string over 4 KiB of UTF-8"),
        pytest.param(setting("a", st.SettingValue(double_value=math.nan)), 'set["a"]', id="NaN"),
        pytest.param(setting("a", st.SettingValue(double_value=-math.inf)), 'set["a"]', id="infinity"),
        pytest.param(setting("a", duration(1, -5)), 'set["a"]', id="duration with mixed signs"),
        pytest.param(setting("a", duration(0, 1_000_000_000)), 'set["a"]', id="duration nanos out of range"),
        pytest.param(setting("a", duration(315_576_000_001, 0)), 'set["a"]', id="duration seconds out of range"),
        pytest.param(request(set={}, remove_keys=["ok", "Bad Key"]), "remove_keys[1]", id="malformed key to remove"),
        pytest.param(request(actor_id="a" * 129), "actor_id", id="actor id over 128 characters"),
    ]


@pytest.mark.parametrize(("request_", "field"), updates_with_bad_input())
async def test_an_update_with_bad_input_is_invalid_and_names_the_field(
    stub: Stub, request_: st.UpdateRequest, field: str
) -> None:
    assert await invalid_field(stub.Update(request_, timeout=5)) == field
    assert (await get(stub)).revision.value == 0


async def test_values_at_their_limits_are_accepted(stub: Stub) -> None:
    values = {
        "longest": text("é" * 2048),
        "k" * 128: number(-(2**63)),
        "long_ago": st.SettingValue(duration_value=duration_pb2.Duration(seconds=-315_576_000_000, nanos=-999_999_999)),
    }
    assert dict((await update(stub, 0, **values)).values) == values


async def test_a_watch_with_a_bad_scope_is_invalid(stub: Stub) -> None:
    call = stub.Watch(st.WatchRequest(scope=st.Scope(id="p1")), timeout=5)
    assert await invalid_field(call.read()) == "scope.kind"


async def test_a_player_may_not_use_another_players_scope(storage: JetStreamStorage) -> None:
    servicer = await settings.create(Dependencies(storage=storage, channel=no_channel, settings=SETTINGS))
    # AccessPolicy sets the verified caller in the handler's context; called directly, the
    # handler runs in this test's (its own task's), and raises what the boundary would answer.
    set_call_identity(Identity(subject="p2", session_id="s", scopes=("player",), expire_time=NOW + 60), "token")
    try:
        with pytest.raises(RpcError) as caught:
            await servicer.Get(st.GetRequest(scope=PLAYER), None)
        await servicer.Get(st.GetRequest(scope=st.Scope(kind=st.SCOPE_KIND_PLAYER, id="p2")), None)  # their own
    finally:
        set_call_identity(None, None)  # tests may share a context: leave no caller behind
    assert (caught.value.code, caught.value.message, caught.value.reason) == (
        grpc.StatusCode.PERMISSION_DENIED, "a player may use only their own player scope", "NOT_SCOPE_OWNER")


# -- watch ----------------------------------------------------------------------------------


async def test_a_watch_sends_a_snapshot_then_the_settings_after_each_update(stub: Stub) -> None:
    first = await update(stub, 0, a=number(1), b=number(2))
    call = stub.Watch(st.WatchRequest(scope=PLAYER))
    try:
        snapshot = await next_message(call)
        assert snapshot == st.WatchResponse(settings=first, initial=True)
        second = await update(stub, first.revision.value, remove=("b", "never_set"), a=number(1), c=number(3))
        third = await update(stub, second.revision.value, remove=("a",))
        changes = [await next_message(call), await next_message(call)]
        # A key set to the value it had still counts as set by that update.
        assert changes[0] == st.WatchResponse(settings=second, changed_keys=["a", "c"], removed_keys=["b"])
        assert changes[1] == st.WatchResponse(settings=third, removed_keys=["a"])
    finally:
        call.cancel()


async def test_a_watch_of_a_scope_never_written_starts_with_an_empty_snapshot(stub: Stub) -> None:
    call = stub.Watch(st.WatchRequest(scope=SERVICE))
    try:
        snapshot = await next_message(call)
        assert snapshot == st.WatchResponse(settings=st.Settings(scope=SERVICE, revision=rev(0)), initial=True)
        written = await update(stub, 0, scope=SERVICE, workers=number(4))
        assert await next_message(call) == st.WatchResponse(settings=written, changed_keys=["workers"])
    finally:
        call.cancel()


async def test_a_watch_sees_only_its_own_scope(stub: Stub) -> None:
    call = stub.Watch(st.WatchRequest(scope=PLAYER))
    try:
        await next_message(call)
        await update(stub, 0, scope=st.Scope(kind=st.SCOPE_KIND_SERVICE, id=PLAYER.id), other=number(1))
        mine = await update(stub, 0, scope=PLAYER, mine=number(1))
        assert (await next_message(call)).settings == mine
    finally:
        call.cancel()


async def test_cancelling_a_watch_leaves_the_service_serving(stub: Stub) -> None:
    call = stub.Watch(st.WatchRequest(scope=PLAYER))
    await next_message(call)
    call.cancel()
    assert (await update(stub, 0, a=number(1))).revision.value > 0


@pytest.mark.parametrize(
    ("before", "after", "changed", "removed"),
    [
        ({}, {"a": 1}, ["a"], []),
        ({"a": 1, "b": 2}, {"a": 1, "b": 3}, ["b"], []),
        ({"a": 1, "b": 2}, {"b": 2}, [], ["a"]),
        ({"b": 1, "a": 1}, {"c": 1, "d": 1}, ["c", "d"], ["a", "b"]),
        ({"a": 1}, {"a": 1}, [], []),
    ],
)
def test_the_delta_between_two_snapshots_names_keys_set_and_removed(
    before: dict[str, int], after: dict[str, int], changed: list[str], removed: list[str]
) -> None:
    # What a watcher reports when a write slipped in while it started (it cannot see the records).
    as_values = lambda values: {key: number(value) for key, value in values.items()}  # noqa: E731
    assert settings._delta(as_values(before), as_values(after)) == (changed, removed)


# -- failures and restarts ------------------------------------------------------------------


async def test_calls_are_unavailable_when_the_store_is_unreachable(
    nc: Client, nats_server: NatsServer, prefix: str
) -> None:
    store_nc = await nats.connect(nats_server.url, max_reconnect_attempts=0)
    try:
        async with serving(nc, JetStreamStorage(store_nc, prefix=prefix)) as stub:
            await update(stub, 0, a=number(1))
            await store_nc.close()
            for call in (
                stub.Get(st.GetRequest(scope=PLAYER), timeout=5),
                update(stub, 1, a=number(2)),
                stub.Watch(st.WatchRequest(scope=PLAYER), timeout=5).read(),
            ):
                err = await rpc_error(call)
                assert err.code() == grpc.StatusCode.UNAVAILABLE
                assert detail(err, error_details_pb2.ErrorInfo).reason == "STORAGE_UNAVAILABLE"
    finally:
        await store_nc.close()  # a no-op when the test closed it


async def test_a_restart_keeps_acknowledged_settings(nats_server: NatsServer, prefix: str) -> None:
    first_nc = await nats.connect(nats_server.url)
    try:
        async with serving(first_nc, JetStreamStorage(first_nc, prefix=prefix)) as stub:
            written = await update(stub, 0, scope=SERVICE, workers=number(8), actor_id="ops")
    finally:
        await first_nc.close()

    second_nc = await nats.connect(nats_server.url)
    try:
        async with serving(second_nc, JetStreamStorage(second_nc, prefix=prefix)) as stub:
            assert await get(stub, SERVICE) == written
            later = await update(stub, written.revision.value, scope=SERVICE, workers=number(16))
            assert dict(later.values) == {"workers": number(16)}
    finally:
        await second_nc.close()


def test_the_module_names_its_target_and_service() -> None:
    assert settings.TARGET == "settings"
    assert [st.DESCRIPTOR.services_by_name["SettingsService"].full_name] == list(settings.SERVICE_NAMES)
