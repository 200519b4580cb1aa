"""world-state over NATS: regions from configuration, events applied atomically and idempotently,
paged entity lists, watches, and state that outlives the servicer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import nats
import pytest
from gaming.common.v1 import common_pb2
from gaming.world_state.v1 import world_state_pb2 as ws
from gaming.world_state.v1 import world_state_pb2_grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nats.aio.client import Client

from mesh.jetstream_storage import JetStreamStorage
from nats_transport.testing import NatsServer
from servicers import paging, world_state
from servicers.dependencies import Dependencies
from tests._serving import served
from tests._waiting import wait_for

REGIONS = [
    {"regionId": "harbor", "displayName": "Harbor", "boundsMin": {"x": -100, "y": -10, "z": -100},
     "boundsMax": {"x": 100, "y": 50, "z": 100}, "maxEntities": 3},
    {"regionId": "wide/open plains", "boundsMin": {"x": -1000, "y": -1000, "z": -1000},
     "boundsMax": {"x": 1000, "y": 1000, "z": 1000}},
]
SETTINGS = {"regions": json.dumps(REGIONS)}
NOW = 1_700_000_000.25


def no_channel(target: str) -> Any:
    raise AssertionError(f"world-state calls no other service (asked for {target!r})")


def deps(storage: Any, **settings: str) -> Dependencies:
    return Dependencies(storage=storage, channel=no_channel, settings={**SETTINGS, **settings}, clock=lambda: NOW)


@contextlib.asynccontextmanager
async def world(
    nc: Client, storage: Any, **settings: str
) -> AsyncIterator[Any]:
    servicer = await world_state.create(deps(storage, **settings))
    async with served(nc, world_state.add_to_server, servicer) as channel:
        yield world_state_pb2_grpc.WorldStateServiceStub(channel)


@pytest.fixture
async def stub(nc: Client, storage: JetStreamStorage) -> AsyncIterator[Any]:
    async with world(nc, storage) as stub:
        yield stub


def at(x: float = 0, y: float = 0, z: float = 0) -> common_pb2.Vector3:
    return common_pb2.Vector3(x=x, y=y, z=z)


def event(region_id: str = "harbor", event_id: str | None = None, expected: int | None = None,
          **change: Any) -> ws.ApplyEventRequest:
    request = ws.ApplyEventRequest(
        region_id=region_id,
        event_id=common_pb2.IdempotencyKey(key=event_id or uuid.uuid4().hex),
        event=ws.WorldEvent(**change),
        actor_id="tester",
    )
    if expected is not None:
        request.expected_region_revision.value = expected
    return request


def spawn(entity_id: str = "", kind: str = "npc", position: common_pb2.Vector3 | None = None,
          **fields: Any) -> dict[str, Any]:
    return {"spawn": ws.SpawnEntity(entity_id=entity_id, kind=kind, position=position or at(), **fields)}


async def failure(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def outcome(call: Any) -> grpc.aio.AioRpcError | None:
    """The error a call ends with, or None when it succeeds."""
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err
    return None


def bad_field(err: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(err)
    assert status is not None
    request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(request)
    return str(request.field_violations[0].field)


def error_info(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(err)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info


# -- regions -------------------------------------------------------------------------------------


async def test_configured_regions_exist_with_no_events_applied(stub: Any) -> None:
    reply = await stub.GetRegion(ws.GetRegionRequest(region_id="harbor"), timeout=5)
    region = reply.region
    assert (region.display_name, region.max_entities, region.entity_count) == ("Harbor", 3, 0)
    assert (region.bounds_min, region.bounds_max) == (at(-100, -10, -100), at(100, 50, 100))
    assert region.revision.value == 0
    assert region.update_time.ToNanoseconds() == round(NOW * 1e9)
    other = await stub.GetRegion(ws.GetRegionRequest(region_id="wide/open plains"), timeout=5)
    assert other.region.max_entities == world_state.DEFAULT_MAX_ENTITIES


async def test_without_a_regions_setting_the_world_has_the_default_overworld(nc: Client, storage: Any) -> None:
    servicer = await world_state.create(Dependencies(storage=storage, channel=no_channel))
    async with served(nc, world_state.add_to_server, servicer) as channel:
        reply = await world_state_pb2_grpc.WorldStateServiceStub(channel).GetRegion(
            ws.GetRegionRequest(region_id="overworld"), timeout=5
        )
    assert reply.region.display_name == "Overworld"


async def test_get_region_with_an_empty_id_is_invalid_argument_naming_the_field(stub: Any) -> None:
    err = await failure(stub.GetRegion(ws.GetRegionRequest(), timeout=5))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_field(err) == "region_id"


async def test_get_region_of_an_unknown_region_is_not_found(stub: Any) -> None:
    err = await failure(stub.GetRegion(ws.GetRegionRequest(region_id="atlantis"), timeout=5))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(err).reason == "REGION_NOT_FOUND"


@pytest.mark.parametrize(
    ("setting", "problem"),
    [
        ("not json", "not JSON"),
        ('{"regionId": "a"}', "JSON list"),
        ('[{"regionId": ""}]', "region_id"),
        ('[{"regionId": "a", "boundsMin": {"x": 5}}]', "bounds_min.x"),
        ('[{"regionId": "a", "maxEntities": -1}]', "max_entities"),
        ('[{"regionId": "a"}, {"regionId": "a"}]', "duplicate"),
        ('[{"regionId": "a", "colour": "red"}]', "colour"),
    ],
)
def test_a_malformed_regions_setting_is_refused_at_start_up(setting: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        world_state.configured_regions(setting)


# -- events --------------------------------------------------------------------------------------


async def test_a_spawn_creates_the_entity_and_bumps_the_region_revision(stub: Any) -> None:
    attributes = [common_pb2.Attribute(key="mood", value="grumpy")]
    reply = await stub.ApplyEvent(
        event(event_id="e1", **spawn("smith", position=at(1, 2, 3), attributes=attributes)), timeout=5
    )
    assert not reply.replayed
    applied = reply.applied_event
    assert (applied.event_id, applied.region_id, applied.region_revision.value) == ("e1", "harbor", 1)
    assert applied.audit.actor_id == ""  # claimed without a token: not recorded
    assert applied.event.spawn.entity_id == "smith"
    entity = reply.entity
    assert (entity.entity_id, entity.region_id, entity.kind) == ("smith", "harbor", "npc")
    assert entity.position == at(1, 2, 3)
    assert list(entity.attributes) == attributes
    assert entity.revision.value == 1
    assert entity.create_time == entity.update_time == applied.audit.update_time
    region = (await stub.GetRegion(ws.GetRegionRequest(region_id="harbor"), timeout=5)).region
    assert (region.revision.value, region.entity_count) == (1, 1)


async def test_a_spawn_without_an_entity_id_gets_one_from_the_server_and_a_replay_returns_it(stub: Any) -> None:
    first = await stub.ApplyEvent(event(event_id="spawn-anon", **spawn()), timeout=5)
    assert first.entity.entity_id
    assert first.applied_event.event.spawn.entity_id == first.entity.entity_id
    again = await stub.ApplyEvent(event(event_id="spawn-anon", **spawn()), timeout=5)
    assert again.replayed
    assert again.entity == first.entity
    assert again.applied_event == first.applied_event
    region = (await stub.GetRegion(ws.GetRegionRequest(region_id="harbor"), timeout=5)).region
    assert (region.revision.value, region.entity_count) == (1, 1)


async def test_a_replay_returns_the_first_result_even_after_later_events_and_a_stale_expectation(
    stub: Any,
) -> None:
    first = await stub.ApplyEvent(event(event_id="once", expected=0, **spawn("a")), timeout=5)
    await stub.ApplyEvent(event(move=ws.MoveEntity(entity_id="a", position=at(5))), timeout=5)
    again = await stub.ApplyEvent(event(event_id="once", expected=0, **spawn("a")), timeout=5)
    assert again.replayed
    assert again.entity == first.entity
    assert again.applied_event.region_revision.value == 1


async def test_move_set_attribute_and_despawn_change_the_entity_one_revision_at_a_time(stub: Any) -> None:
    await stub.ApplyEvent(event(**spawn("cat", attributes=[common_pb2.Attribute(key="lives", value="9")])), timeout=5)
    moved = await stub.ApplyEvent(event(move=ws.MoveEntity(entity_id="cat", position=at(7, 0, -7))), timeout=5)
    assert moved.entity.position == at(7, 0, -7)
    assert moved.entity.revision.value == 2
    set_attr = ws.SetAttribute(entity_id="cat", attribute=common_pb2.Attribute(key="lives", value="8"))
    changed = await stub.ApplyEvent(event(set_attribute=set_attr), timeout=5)
    assert [(a.key, a.value) for a in changed.entity.attributes] == [("lives", "8")]
    added = ws.SetAttribute(entity_id="cat", attribute=common_pb2.Attribute(key="colour", value="black"))
    changed = await stub.ApplyEvent(event(set_attribute=added), timeout=5)
    assert [(a.key, a.value) for a in changed.entity.attributes] == [("lives", "8"), ("colour", "black")]
    removed = ws.SetAttribute(entity_id="cat", attribute=common_pb2.Attribute(key="lives"), remove=True)
    changed = await stub.ApplyEvent(event(set_attribute=removed), timeout=5)
    assert [a.key for a in changed.entity.attributes] == ["colour"]
    assert changed.entity.revision.value == 5
    gone = await stub.ApplyEvent(event(despawn=ws.DespawnEntity(entity_id="cat")), timeout=5)
    assert not gone.HasField("entity")
    assert gone.applied_event.region_revision.value == 6
    region = (await stub.GetRegion(ws.GetRegionRequest(region_id="harbor"), timeout=5)).region
    assert (region.revision.value, region.entity_count) == (6, 0)


def _without_event_id() -> ws.ApplyEventRequest:
    request = event(**spawn())
    request.ClearField("event_id")
    return request


def _without_event() -> ws.ApplyEventRequest:
    request = event(**spawn())
    request.ClearField("event")
    return request


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (event(region_id="", **spawn()), "region_id"),
        (_without_event_id(), "event_id.key"),
        (event(event_id="tab\tin key", **spawn()), "event_id.key"),
        (_without_event(), "event"),
        (event(), "event"),
        (event(**spawn(kind="")), "event.spawn.kind"),
        (event(**spawn(kind="Big NPC")), "event.spawn.kind"),
        (event(**spawn(entity_id="x" * 129)), "event.spawn.entity_id"),
        (event(**spawn(position=at(math.nan))), "event.spawn.position.x"),
        (event(**spawn(position=at(0, 0, math.inf))), "event.spawn.position.z"),
        (event(**spawn(attributes=[common_pb2.Attribute(key="a"), common_pb2.Attribute(key="a")])),
         "event.spawn.attributes[1].key"),
        (event(**spawn(attributes=[common_pb2.Attribute(key="Bad-Key")])), "event.spawn.attributes[0].key"),
        (event(move=ws.MoveEntity(entity_id="a")), "event.move.position"),
        (event(move=ws.MoveEntity(position=at())), "event.move.entity_id"),
        (event(move=ws.MoveEntity(entity_id="a", position=at(y=-math.inf))), "event.move.position.y"),
        (event(despawn=ws.DespawnEntity()), "event.despawn.entity_id"),
        (event(set_attribute=ws.SetAttribute(entity_id="a")), "event.set_attribute.attribute"),
        (event(set_attribute=ws.SetAttribute(entity_id="a", attribute=common_pb2.Attribute(value="v"))),
         "event.set_attribute.attribute.key"),
    ],
)
async def test_a_malformed_event_is_invalid_argument_naming_the_field(
    stub: Any, request_: ws.ApplyEventRequest, field: str
) -> None:
    err = await failure(stub.ApplyEvent(request_, timeout=5))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_field(err) == field


async def test_an_event_for_an_unknown_region_is_not_found(stub: Any) -> None:
    err = await failure(stub.ApplyEvent(event(region_id="atlantis", **spawn()), timeout=5))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(err).reason == "REGION_NOT_FOUND"


@pytest.mark.parametrize(
    "change",
    [
        {"move": ws.MoveEntity(entity_id="ghost", position=at())},
        {"despawn": ws.DespawnEntity(entity_id="ghost")},
        {"set_attribute": ws.SetAttribute(entity_id="ghost", attribute=common_pb2.Attribute(key="a"))},
    ],
)
async def test_an_event_for_an_unknown_entity_is_not_found_and_changes_nothing(
    stub: Any, change: dict[str, Any]
) -> None:
    err = await failure(stub.ApplyEvent(event(**change), timeout=5))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(err).reason == "ENTITY_NOT_FOUND"
    region = (await stub.GetRegion(ws.GetRegionRequest(region_id="harbor"), timeout=5)).region
    assert region.revision.value == 0


async def test_a_spawn_reusing_an_entity_id_is_already_exists(stub: Any) -> None:
    await stub.ApplyEvent(event(**spawn("twin")), timeout=5)
    err = await failure(stub.ApplyEvent(event(**spawn("twin")), timeout=5))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_positions_outside_the_region_break_a_world_rule(stub: Any) -> None:
    err = await failure(stub.ApplyEvent(event(**spawn(position=at(101))), timeout=5))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(err).reason == "OUT_OF_BOUNDS"
    await stub.ApplyEvent(event(**spawn("edge", position=at(100, 50, -100))), timeout=5)
    err = await failure(stub.ApplyEvent(event(move=ws.MoveEntity(entity_id="edge", position=at(y=-11))), timeout=5))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(err).reason == "OUT_OF_BOUNDS"


async def test_a_full_region_refuses_another_spawn(stub: Any) -> None:
    for name in ("a", "b", "c"):
        await stub.ApplyEvent(event(**spawn(name)), timeout=5)
    err = await failure(stub.ApplyEvent(event(**spawn("d")), timeout=5))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(err).reason == "REGION_FULL"


async def test_a_sixty_fifth_attribute_breaks_a_world_rule(stub: Any) -> None:
    many = [common_pb2.Attribute(key=f"a{i}", value="v") for i in range(64)]
    await stub.ApplyEvent(event(**spawn("hoarder", attributes=many)), timeout=5)
    one_more = ws.SetAttribute(entity_id="hoarder", attribute=common_pb2.Attribute(key="extra", value="v"))
    err = await failure(stub.ApplyEvent(event(set_attribute=one_more), timeout=5))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(err).reason == "TOO_MANY_ATTRIBUTES"


async def test_a_region_that_would_outgrow_one_stored_value_refuses_the_event(stub: Any) -> None:
    bulky = [common_pb2.Attribute(key=f"a{i}", value="x" * 2048) for i in range(64)]  # ~130 kB each

    def spawn_bulky() -> Any:
        return stub.ApplyEvent(event("wide/open plains", **spawn(attributes=bulky)), timeout=5)

    applied = 0
    while (err := await outcome(spawn_bulky())) is None:
        applied += 1
        assert applied < 8, "a 1 MB region took 8 entities of 130 kB"
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(err).reason == "REGION_TOO_LARGE"
    assert applied >= 5  # older events made room before the region refused
    region = (await stub.GetRegion(ws.GetRegionRequest(region_id="wide/open plains"), timeout=5)).region
    assert (region.revision.value, region.entity_count) == (applied, applied)


async def test_a_stale_expected_region_revision_is_aborted_with_the_current_revision(stub: Any) -> None:
    await stub.ApplyEvent(event(**spawn("a")), timeout=5)
    err = await failure(stub.ApplyEvent(event(expected=0, **spawn("b")), timeout=5))
    assert err.code() == grpc.StatusCode.ABORTED
    info = error_info(err)
    assert info.reason == "REVISION_CONFLICT"
    assert (info.metadata["expected_revision"], info.metadata["current_revision"]) == ("0", "1")
    reply = await stub.ApplyEvent(event(expected=1, **spawn("b")), timeout=5)
    assert reply.applied_event.region_revision.value == 2


async def test_concurrent_events_on_one_region_all_apply_with_consecutive_revisions(nc: Client, storage: Any) -> None:
    async with world(nc, storage) as stub:
        moves = [event("wide/open plains", **spawn(f"e{i}")) for i in range(20)]
        replies = await asyncio.gather(*(stub.ApplyEvent(m, timeout=10) for m in moves))
        assert sorted(r.applied_event.region_revision.value for r in replies) == list(range(1, 21))
        region = (await stub.GetRegion(ws.GetRegionRequest(region_id="wide/open plains"), timeout=5)).region
    assert (region.revision.value, region.entity_count) == (20, 20)


async def test_concurrent_replays_of_one_event_id_apply_it_once(stub: Any) -> None:
    same = event(event_id="dup", **spawn())
    replies = await asyncio.gather(*(stub.ApplyEvent(same, timeout=10) for _ in range(8)))
    assert sum(not r.replayed for r in replies) == 1
    assert len({r.entity.entity_id for r in replies}) == 1
    region = (await stub.GetRegion(ws.GetRegionRequest(region_id="harbor"), timeout=5)).region
    assert (region.revision.value, region.entity_count) == (1, 1)


# -- listing -------------------------------------------------------------------------------------


async def test_list_entities_pages_in_entity_id_order_and_filters_by_kind(stub: Any) -> None:
    region = "wide/open plains"
    for name, kind in [("d", "npc"), ("a", "npc"), ("c", "item"), ("b", "npc"), ("e", "npc")]:
        await stub.ApplyEvent(event(region, **spawn(name, kind=kind)), timeout=5)
    seen: list[str] = []
    token = ""
    while True:
        reply = await stub.ListEntities(
            ws.ListEntitiesRequest(
                region_id=region, kind="npc", page=common_pb2.PageRequest(page_size=3, page_token=token)
            ),
            timeout=5,
        )
        assert reply.page.total_size == 4
        assert reply.region_revision.value == 5
        seen += [e.entity_id for e in reply.entities]
        token = reply.page.next_page_token
        if not token:
            break
    assert seen == ["a", "b", "d", "e"]
    everything = await stub.ListEntities(ws.ListEntitiesRequest(region_id=region), timeout=5)
    assert [e.entity_id for e in everything.entities] == ["a", "b", "c", "d", "e"]
    assert not everything.page.next_page_token


async def test_list_entities_refuses_a_bad_page_size_and_a_token_from_another_query(stub: Any) -> None:
    await stub.ApplyEvent(event(**spawn("a")), timeout=5)
    await stub.ApplyEvent(event(**spawn("b")), timeout=5)
    first = await stub.ListEntities(
        ws.ListEntitiesRequest(region_id="harbor", page=common_pb2.PageRequest(page_size=1)), timeout=5
    )
    assert first.page.next_page_token
    requests = [
        ws.ListEntitiesRequest(region_id="harbor", page=common_pb2.PageRequest(page_size=-1)),
        ws.ListEntitiesRequest(region_id="harbor", kind="item",
                               page=common_pb2.PageRequest(page_token=first.page.next_page_token)),
        ws.ListEntitiesRequest(region_id="harbor", page=common_pb2.PageRequest(page_token="%%%not-a-token")),
        ws.ListEntitiesRequest(region_id=""),
    ]
    fields = []
    for request in requests:
        err = await failure(stub.ListEntities(request, timeout=5))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        fields.append(bad_field(err))
    assert fields == ["page.page_size", "page.page_token", "page.page_token", "region_id"]


async def test_list_entities_of_an_unknown_region_is_not_found(stub: Any) -> None:
    err = await failure(stub.ListEntities(ws.ListEntitiesRequest(region_id="atlantis"), timeout=5))
    assert err.code() == grpc.StatusCode.NOT_FOUND


def test_a_page_size_above_the_cap_is_capped_and_zero_means_the_default() -> None:
    assert paging.page_size(common_pb2.PageRequest(page_size=5000)) == paging.MAX_PAGE_SIZE
    assert paging.page_size(common_pb2.PageRequest()) == paging.DEFAULT_PAGE_SIZE


# -- watching ------------------------------------------------------------------------------------


async def test_watch_sends_retained_events_after_a_revision_then_live_ones_in_order(stub: Any) -> None:
    await stub.ApplyEvent(event(**spawn("a")), timeout=5)
    await stub.ApplyEvent(event(**spawn("b")), timeout=5)
    call = stub.WatchRegion(ws.WatchRegionRequest(region_id="harbor", after_revision=common_pb2.Revision(value=1)))
    received: list[ws.WatchRegionResponse] = []

    async def collect() -> None:
        async for item in call:
            received.append(item)

    reader = asyncio.create_task(collect())
    try:
        await wait_for(lambda: len(received) == 1)
        await stub.ApplyEvent(event(move=ws.MoveEntity(entity_id="a", position=at(3))), timeout=5)
        await stub.ApplyEvent(event(despawn=ws.DespawnEntity(entity_id="b")), timeout=5)
        await wait_for(lambda: len(received) == 3)
    finally:
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    assert [r.applied_event.region_revision.value for r in received] == [2, 3, 4]
    assert received[0].entity.entity_id == "b"
    assert received[1].entity.position == at(3)
    assert received[2].applied_event.event.despawn.entity_id == "b"
    assert not received[2].HasField("entity")


async def test_a_watch_without_a_revision_sends_only_events_applied_after_it_opened(stub: Any) -> None:
    await stub.ApplyEvent(event(**spawn("walker")), timeout=5)
    call = stub.WatchRegion(ws.WatchRegionRequest(region_id="harbor"))
    received: list[ws.WatchRegionResponse] = []

    async def collect() -> None:
        async for item in call:
            received.append(item)

    async def a_later_event_arrived() -> bool:
        # The stream's start races the events: keep moving the walker until the watch sees a move.
        if not received:
            await stub.ApplyEvent(event(move=ws.MoveEntity(entity_id="walker", position=at(1))), timeout=5)
        return bool(received)

    reader = asyncio.create_task(collect())
    try:
        await wait_for(a_later_event_arrived)
    finally:
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    assert all(r.applied_event.event.HasField("move") for r in received)
    revisions = [r.applied_event.region_revision.value for r in received]
    assert revisions == list(range(revisions[0], revisions[0] + len(revisions)))


async def test_a_watch_from_before_the_retained_history_is_out_of_range(nc: Client, storage: Any) -> None:
    async with world(nc, storage, event_history="2") as stub:
        for name in ("a", "b", "c"):
            await stub.ApplyEvent(event(**spawn(name)), timeout=5)
        call = stub.WatchRegion(ws.WatchRegionRequest(region_id="harbor", after_revision=common_pb2.Revision(value=0)))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call:
                pass
        assert caught.value.code() == grpc.StatusCode.OUT_OF_RANGE
        kept = stub.WatchRegion(ws.WatchRegionRequest(region_id="harbor", after_revision=common_pb2.Revision(value=1)))
        first = await kept.read()
        kept.cancel()
    assert first.applied_event.region_revision.value == 2


async def test_an_event_id_is_remembered_while_its_event_is_retained(nc: Client, storage: Any) -> None:
    async with world(nc, storage, event_history="2") as stub:
        first = await stub.ApplyEvent(event("wide/open plains", event_id="old", **spawn()), timeout=5)
        for _ in range(2):
            await stub.ApplyEvent(event("wide/open plains", **spawn()), timeout=5)
        again = await stub.ApplyEvent(event("wide/open plains", event_id="old", **spawn()), timeout=5)
    # Beyond the window the id is forgotten: documented, and visible as a second entity.
    assert not again.replayed
    assert again.entity.entity_id != first.entity.entity_id


@pytest.mark.parametrize(("region_id", "code"), [("", grpc.StatusCode.INVALID_ARGUMENT),
                                                 ("atlantis", grpc.StatusCode.NOT_FOUND)])
async def test_a_watch_on_a_missing_or_empty_region_id_fails(stub: Any, region_id: str, code: grpc.StatusCode) -> None:
    call = stub.WatchRegion(ws.WatchRegionRequest(region_id=region_id))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == code


# -- durability and failures ---------------------------------------------------------------------


async def test_a_restart_keeps_acknowledged_state(nc: Client, nats_server: NatsServer) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}_"
    async with world(nc, JetStreamStorage(nc, prefix=prefix)) as stub:
        await stub.ApplyEvent(event(event_id="kept", **spawn("survivor", position=at(4, 5, 6))), timeout=5)

    nc2 = await nats.connect(nats_server.url, max_reconnect_attempts=0)
    try:
        async with world(nc2, JetStreamStorage(nc2, prefix=prefix)) as stub:
            region = (await stub.GetRegion(ws.GetRegionRequest(region_id="harbor"), timeout=5)).region
            listed = await stub.ListEntities(ws.ListEntitiesRequest(region_id="harbor"), timeout=5)
            replay = await stub.ApplyEvent(event(event_id="kept", **spawn("survivor")), timeout=5)
    finally:
        await nc2.close()
    assert (region.revision.value, region.entity_count) == (1, 1)
    assert [(e.entity_id, e.position) for e in listed.entities] == [("survivor", at(4, 5, 6))]
    assert replay.replayed


async def test_an_unreachable_store_is_unavailable(nc: Client, nats_server: NatsServer) -> None:
    store_connection = await nats.connect(nats_server.url, max_reconnect_attempts=0)
    servicer = await world_state.create(deps(JetStreamStorage(store_connection, prefix=f"t{uuid.uuid4().hex[:8]}_")))
    await store_connection.close()
    async with served(nc, world_state.add_to_server, servicer) as channel:
        stub = world_state_pb2_grpc.WorldStateServiceStub(channel)
        err = await failure(stub.GetRegion(ws.GetRegionRequest(region_id="harbor"), timeout=5))
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        err = await failure(stub.ApplyEvent(event(**spawn()), timeout=5))
        assert err.code() == grpc.StatusCode.UNAVAILABLE
