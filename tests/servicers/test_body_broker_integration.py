"""body-broker-integration over NATS, with the real world-state, event-bus, state-manager,
quest-system (its story-teller left out: quests come degraded), npc-behavior and payment on the
same NATS: events applied and acknowledged in order, rejected in-band, deduplicated across
streams, backpressure from a slow downstream, dependency outages, and player snapshots."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import nats
import pytest
from gaming.body_broker_integration.v1 import body_broker_integration_pb2 as pb
from gaming.body_broker_integration.v1 import body_broker_integration_pb2_grpc
from gaming.common.v1 import common_pb2
from gaming.event_bus.v1 import event_bus_pb2 as eb
from gaming.event_bus.v1 import event_bus_pb2_grpc
from gaming.payment.v1 import payment_pb2, payment_pb2_grpc
from gaming.quest.v1 import quest_pb2, quest_pb2_grpc
from gaming.state_manager.v1 import state_manager_pb2, state_manager_pb2_grpc
from gaming.world_state.v1 import world_state_pb2 as ws
from gaming.world_state.v1 import world_state_pb2_grpc
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nats.aio.client import Client

import nats_transport.aio
from mesh.jetstream_event_log import JetStreamEventLog
from mesh.jetstream_storage import JetStreamStorage
from nats_transport import ChannelOptions, ServerOptions
from nats_transport._status import NO_SERVER
from nats_transport.testing import NatsServer
from servicers import body_broker_integration as bbi
from servicers import event_bus, npc_behavior, payment, quest, state_manager, world_state
from servicers._downstream import degraded_sources
from servicers.dependencies import Dependencies
from servicers.error_boundary import ErrorBoundary
from tests._buckets import delete_buckets
from tests._waiting import wait_for
from tests.servicers._mesh import Calls, Mesh, mesh_on, recorded

SMALL = str(8 * 1024 * 1024)
REGIONS = [
    {"regionId": "harbor", "displayName": "Harbor", "boundsMin": {"x": -100, "y": -10, "z": -100},
     "boundsMax": {"x": 100, "y": 50, "z": 100}, "maxEntities": 1000},
    {"regionId": "forest", "displayName": "Forest", "boundsMin": {"x": -100, "y": -10, "z": -100},
     "boundsMax": {"x": 100, "y": 50, "z": 100}, "maxEntities": 1000},
]
NOW = 1_700_000_000.0
# Small transport windows for the bridge's streams, so a held-back engine blocks after a few
# events instead of after 256 KiB of them.
TINY_WINDOW = 4096


class Gate:
    """Holds world-state's ApplyEvent while closed: a downstream slower than the engine."""

    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._open.set()

    def close(self) -> None:
        self._open.clear()

    def open(self) -> None:
        self._open.set()

    def wrap(self, servicer: Any, method: str) -> Any:
        inner = getattr(servicer, method)

        async def gated(request: Any, context: Any) -> Any:
            await self._open.wait()
            return await inner(request, context)

        setattr(servicer, method, gated)
        return servicer


@dataclass
class Bridge:
    """The bridge and its surroundings for one test."""

    nc: Client
    mesh: Mesh
    storage: Any
    prefix: str
    log: Any
    calls: Calls
    gate: Gate
    servicer: Any = None
    stub: Any = None
    server: Any = None
    settings: dict[str, str] = field(default_factory=dict)

    def client(self, target: str, stub_class: Any) -> Any:
        return stub_class(self.mesh.channel(target))

    @property
    def world(self) -> Any:
        return self.client(world_state.TARGET, world_state_pb2_grpc.WorldStateServiceStub)

    @property
    def states(self) -> Any:
        return self.client(state_manager.TARGET, state_manager_pb2_grpc.StateManagerServiceStub)

    @property
    def quests(self) -> Any:
        return self.client(quest.TARGET, quest_pb2_grpc.QuestServiceStub)

    @property
    def payments(self) -> Any:
        return self.client(payment.TARGET, payment_pb2_grpc.PaymentServiceStub)

    @property
    def bus(self) -> Any:
        return self.client(event_bus.TARGET, event_bus_pb2_grpc.EventBusServiceStub)

    async def start(self, storage: Any | None = None, nc: Client | None = None, **settings: str) -> Any:
        """(Re)start the bridge itself with ``settings``, on ``storage`` (default: the test's)."""
        await self.stop()
        self.settings = {"bucket_max_bytes": SMALL, **settings}
        self.servicer = await bbi.create(Dependencies(storage=storage or self.storage, channel=self.mesh.channel,
                                                      settings=self.settings, clock=lambda: NOW))
        connection = nc or self.nc
        server = nats_transport.aio.server(connection, self.mesh.name(bbi.TARGET),
                                           options=ServerOptions(stream_window=TINY_WINDOW),
                                           interceptors=[ErrorBoundary()])
        bbi.add_to_server(self.servicer, server)
        await server.start()
        self.server = server
        channel = nats_transport.aio.channel(connection, self.mesh.name(bbi.TARGET),
                                             options=ChannelOptions(stream_window=TINY_WINDOW))
        self.stub = body_broker_integration_pb2_grpc.BodyBrokerIntegrationServiceStub(channel)
        return server

    async def stop(self) -> None:
        if self.server is not None:
            server, self.server = self.server, None
            await server.stop(0)


async def host_core(b: Bridge) -> None:
    deps = Dependencies(storage=b.storage, channel=b.mesh.channel, event_log=b.log,
                        settings={"regions": json.dumps(REGIONS), "bucket_max_bytes": SMALL,
                                  "accounts_max_bytes": SMALL, "ledger_max_bytes": SMALL})
    # Recorded on arrival, then held at the gate when it is closed.
    world = recorded(b.gate.wrap(await world_state.create(deps), "ApplyEvent"), b.calls, "ApplyEvent", "ListEntities")
    await b.mesh.host(world_state.TARGET, world_state.add_to_server, world)
    await b.mesh.host(event_bus.TARGET, event_bus.add_to_server, await event_bus.create(deps))
    await b.mesh.host(state_manager.TARGET, state_manager.add_to_server,
                      recorded(await state_manager.create(deps), b.calls, "Get"))
    await b.mesh.host(payment.TARGET, payment.add_to_server, recorded(await payment.create(deps), b.calls, "Balance"))
    await b.mesh.host(npc_behavior.TARGET, npc_behavior.add_to_server, await npc_behavior.create(deps))
    await b.mesh.host(quest.TARGET, quest.add_to_server, recorded(await quest.create(deps), b.calls, "List"))


@pytest.fixture
async def b(nc: Client) -> AsyncIterator[Bridge]:
    tag = uuid.uuid4().hex[:10]
    prefix = f"t{tag[:8]}_"
    log = JetStreamEventLog(nc, stream=f"EV_{tag}", subject_prefix=f"ev_{tag}", control_prefix=f"_EVLOG_{tag}",
                            max_bytes=8 << 20, pull_expires=1.0)
    try:
        async with mesh_on(nc) as mesh:
            bridge = Bridge(nc, mesh, JetStreamStorage(nc, prefix=prefix), prefix, log, Calls(), Gate())
            await host_core(bridge)
            await bridge.start()
            try:
                yield bridge
            finally:
                bridge.gate.open()
                await bridge.stop()
    finally:
        if nc.is_connected:
            await delete_buckets(nc, prefix)
            with contextlib.suppress(Exception):
                await nc.jetstream(timeout=2).delete_stream(f"EV_{tag}")


# -- the engine's side ------------------------------------------------------------------------------


class Engine:
    """One IngestEvents stream, written like an engine would."""

    def __init__(self, stub: Any) -> None:
        self.call = stub.IngestEvents()
        self.sequence = 0

    def event(self, kind: int, key: str | None = None, *, sequence: int | None = None, **fields: Any) -> Any:
        self.sequence = sequence if sequence is not None else self.sequence + 1
        position = fields.pop("position", None)
        attributes = [common_pb2.Attribute(key=k, value=v) for k, v in fields.pop("attributes", {}).items()]
        event = pb.EngineEvent(kind=kind, attributes=attributes, **fields)  # type: ignore[arg-type]
        if position is not None:
            event.position.CopyFrom(common_pb2.Vector3(x=position[0], y=position[1], z=position[2]))
        return pb.IngestEventsRequest(sequence=self.sequence, event=event,
                                      idempotency_key=common_pb2.IdempotencyKey(key=key or uuid.uuid4().hex))

    async def send(self, *requests: Any) -> list[Any]:
        """Write ``requests`` and read their acknowledgements."""
        for request in requests:
            await self.call.write(request)
        return [await self.call.read() for _ in requests]

    async def close(self) -> None:
        await self.call.done_writing()
        assert await self.call.read() is grpc.aio.EOF
        assert await self.call.code() == grpc.StatusCode.OK


def joined(e: Engine, player: str = "ayla", region: str = "harbor", position: tuple[float, ...] | None = (1, 0, 1),
           **extra: Any) -> Any:
    return e.event(pb.ENGINE_EVENT_KIND_PLAYER_JOINED, player_id=player, region_id=region, position=position, **extra)


def moved(e: Engine, position: tuple[float, ...], player: str = "ayla", region: str = "harbor", **extra: Any) -> Any:
    return e.event(pb.ENGINE_EVENT_KIND_PLAYER_MOVED, player_id=player, region_id=region, position=position, **extra)


def spawned(e: Engine, entity: str, region: str = "harbor", position: tuple[float, ...] = (5, 0, 5),
            **extra: Any) -> Any:
    return e.event(pb.ENGINE_EVENT_KIND_ENTITY_SPAWNED, entity_id=entity, region_id=region, position=position,
                   **extra)


async def entities(b: Bridge, region: str = "harbor", kind: str = "") -> dict[str, ws.Entity]:
    reply = await b.world.ListEntities(ws.ListEntitiesRequest(
        region_id=region, kind=kind, page=common_pb2.PageRequest(page_size=1000)), timeout=5)
    return {entity.entity_id: entity for entity in reply.entities}


async def region_revision(b: Bridge, region: str = "harbor") -> int:
    return int((await b.world.GetRegion(ws.GetRegionRequest(region_id=region), timeout=5)).region.revision.value)


async def published(b: Bridge, count: int) -> list[eb.Event]:
    call = b.bus.Subscribe(eb.SubscribeRequest(consumer_name=f"c{uuid.uuid4().hex[:8]}", topic_filter="engine.>",
                                               start_position=eb.START_POSITION_ALL), timeout=10)
    events = []
    async for reply in call:
        events.append(reply.event)
        if len(events) == count:
            break
    call.cancel()
    return events


async def failure(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def reason(err: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(err)
    assert status is not None
    for packed in status.details:
        if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            packed.Unpack(info)
            return info.reason
    return ""


async def stream_error(e: Engine) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        while await e.call.read() is not grpc.aio.EOF:
            pass
    return caught.value


# -- IngestEvents -----------------------------------------------------------------------------------


async def test_engine_events_become_world_events_acknowledged_in_order_with_credit(b):
    e = Engine(b.stub)
    acks = await e.send(
        joined(e),
        moved(e, (10, 0, 12)),
        spawned(e, "wolf-1", attributes={"entity_kind": "creature", "pack": "grey"}),
        spawned(e, "wolf-2"),
        e.event(pb.ENGINE_EVENT_KIND_ENTITY_DESTROYED, entity_id="wolf-2"),
        e.event(pb.ENGINE_EVENT_KIND_CUSTOM, player_id="ayla", attributes={"custom_kind": "trade", "item": "fish"}),
    )
    await e.close()

    assert [(ack.sequence, ack.accepted, ack.error, ack.credit) for ack in acks] == [
        (n, True, "", bbi.WINDOW) for n in range(1, 7)
    ]
    found = await entities(b)
    assert sorted(found) == ["ayla", "wolf-1"]
    assert found["ayla"].kind == "player_avatar"
    assert (found["ayla"].position.x, found["ayla"].position.z) == (10, 12)
    assert found["wolf-1"].kind == "creature"
    assert [(a.key, a.value) for a in found["wolf-1"].attributes] == [("pack", "grey")]
    events = await published(b, 6)
    assert [event.topic for event in events] == [
        "engine.player_joined", "engine.player_moved", "engine.entity_spawned", "engine.entity_spawned",
        "engine.entity_destroyed", "engine.custom.trade",
    ]
    assert pb.EngineEvent.FromString(events[1].payload).position.x == 10
    # Each world-state call had the bridge's per-call bound, at most.
    assert all(0 < seen.time_remaining <= 5.0 for seen in b.calls.of("ApplyEvent"))


async def test_a_move_to_another_region_takes_the_avatar_there(b):
    e = Engine(b.stub)
    acks = await e.send(joined(e), moved(e, (3, 0, 4), region="forest"))
    assert all(ack.accepted for ack in acks)
    assert "ayla" not in await entities(b, "harbor")
    assert (await entities(b, "forest"))["ayla"].position.x == 3


async def test_a_player_who_left_has_no_avatar_and_rejoins_where_they_were(b):
    e = Engine(b.stub)
    await e.send(joined(e), moved(e, (7, 0, 7)))
    left = await e.send(e.event(pb.ENGINE_EVENT_KIND_PLAYER_LEFT, player_id="ayla"))
    assert left[0].accepted
    assert "ayla" not in await entities(b)
    back = await e.send(joined(e, position=None))
    assert back[0].accepted
    assert (await entities(b))["ayla"].position.x == 7


@pytest.mark.parametrize(("build", "error"), [
    (lambda e: pb.IngestEventsRequest(sequence=e.event(pb.ENGINE_EVENT_KIND_PLAYER_LEFT).sequence,
                                      event=pb.EngineEvent(kind=pb.ENGINE_EVENT_KIND_PLAYER_LEFT, player_id="a")),
     "idempotency_key is required"),
    (lambda e: pb.IngestEventsRequest(sequence=e.event(pb.ENGINE_EVENT_KIND_PLAYER_LEFT).sequence,
                                      idempotency_key=common_pb2.IdempotencyKey(key="k1")), "event is required"),
    (lambda e: e.event(pb.ENGINE_EVENT_KIND_UNSPECIFIED), "ENGINE_EVENT_KIND_UNSPECIFIED"),
    (lambda e: e.event(pb.ENGINE_EVENT_KIND_PLAYER_MOVED, player_id="a", region_id="harbor"),
     "position missing for PLAYER_MOVED"),
    (lambda e: e.event(pb.ENGINE_EVENT_KIND_PLAYER_JOINED, player_id="a"), "region_id missing for PLAYER_JOINED"),
    (lambda e: e.event(pb.ENGINE_EVENT_KIND_CUSTOM), "custom_kind"),
    (lambda e: e.event(pb.ENGINE_EVENT_KIND_PLAYER_LEFT, player_id="a",
                       attributes={f"a{n}": "v" for n in range(33)}), "at most 32 attributes"),
    (lambda e: e.event(pb.ENGINE_EVENT_KIND_PLAYER_LEFT, player_id="a", attributes={"a": "v" * 1025}),
     "longer than 1024"),
    (lambda e: spawned(e, "far", position=(5000, 0, 0)), "FAILED_PRECONDITION"),
    (lambda e: spawned(e, "nowhere", region="atlantis"), "NOT_FOUND"),
    (lambda e: e.event(pb.ENGINE_EVENT_KIND_ENTITY_DESTROYED, entity_id="ghost"), "region_id missing"),
    (lambda e: e.event(pb.ENGINE_EVENT_KIND_ENTITY_DESTROYED, entity_id="ghost", region_id="harbor"), "NOT_FOUND"),
])
async def test_a_bad_event_is_rejected_in_its_ack_and_the_stream_goes_on(b, build, error):
    e = Engine(b.stub)
    bad, good = await e.send(build(e), joined(e))
    await e.close()
    assert not bad.accepted
    assert error in bad.error
    assert bad.sequence == 1
    assert (good.sequence, good.accepted) == (2, True)


async def test_a_spawn_of_an_id_in_use_is_rejected(b):
    e = Engine(b.stub)
    first, second = await e.send(spawned(e, "wolf-1"), spawned(e, "wolf-1"))
    assert first.accepted
    assert not second.accepted
    assert "ALREADY_EXISTS" in second.error


async def test_sequences_that_do_not_increase_end_the_stream_with_invalid_argument(b):
    e = Engine(b.stub)
    (ack,) = await e.send(joined(e, sequence=10))
    await e.call.write(moved(e, (2, 0, 2), sequence=10))
    err = await stream_error(e)
    assert ack.accepted
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sequence" in (err.details() or "")


async def test_an_event_resent_on_another_stream_is_acknowledged_without_being_applied_twice(b):
    first = Engine(b.stub)
    (ack,) = await first.send(spawned(first, "wolf-1", key="spawn-wolf-1"))
    await first.close()
    revision = await region_revision(b)

    again = Engine(b.stub)
    (resent,) = await again.send(spawned(again, "wolf-1", key="spawn-wolf-1", sequence=1))
    await again.close()

    assert ack.accepted
    assert resent.accepted
    assert resent.error == ""
    assert await region_revision(b) == revision
    assert len(await published(b, 1)) == 1


async def test_a_stopped_world_state_ends_the_stream_with_unavailable_naming_it(b):
    e = Engine(b.stub)
    (ack,) = await e.send(joined(e))
    await b.mesh.stop(world_state.TARGET)
    await e.call.write(moved(e, (2, 0, 2)))
    err = await stream_error(e)
    assert ack.accepted
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert "world-state" in (err.details() or "")
    # On no responders, known at once: not after waiting out the call's share of time.
    assert f"(UNAVAILABLE: {NO_SERVER[1]})" in (err.details() or "")
    assert reason(err) == "DEPENDENCY_UNAVAILABLE"


async def test_a_stopped_event_bus_ends_the_stream_and_the_resend_is_applied_once(b):
    await b.mesh.stop(event_bus.TARGET)
    e = Engine(b.stub)
    await e.call.write(spawned(e, "wolf-1", key="wolf"))
    err = await stream_error(e)
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert "event-bus" in (err.details() or "")
    # world-state took the spawn before the bus failed; the resend does not spawn it twice.
    revision = await region_revision(b)

    await b.mesh.host(event_bus.TARGET, event_bus.add_to_server,
                      await event_bus.create(Dependencies(storage=b.storage, channel=b.mesh.channel, event_log=b.log)))
    again = Engine(b.stub)
    (ack,) = await again.send(spawned(again, "wolf-1", key="wolf"))
    assert ack.accepted
    assert await region_revision(b) == revision
    assert [event.topic for event in await published(b, 1)] == ["engine.entity_spawned"]


async def test_with_publishing_off_the_bridge_needs_no_event_bus(b):
    await b.mesh.stop(event_bus.TARGET)
    await b.start(publish_events="false")
    e = Engine(b.stub)
    acks = await e.send(joined(e), spawned(e, "wolf-1"))
    await e.close()
    assert all(ack.accepted for ack in acks)


async def test_a_slow_downstream_stops_the_reading_and_the_transport_holds_the_engine_back(b):
    await b.start(downstream_timeout_s="30")
    padding = {"pad": "x" * 300}
    total = 200
    e = Engine(b.stub)
    requests = [spawned(e, f"wolf-{n}", position=(n % 90, 0, 1), attributes=padding) for n in range(total)]
    written = 0

    async def write_all() -> None:
        nonlocal written
        for request in requests:
            await e.call.write(request)
            written += 1

    b.gate.close()
    writer = asyncio.create_task(write_all())
    try:
        # The bridge read its window of 64 events (one of them held in world-state) and stopped.
        await wait_for(lambda: b.servicer.flow.held == 1)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(writer), 0.5)
        # The engine is blocked: what it wrote fits in the window plus the two transport buffers.
        assert bbi.WINDOW < written < bbi.WINDOW + 3 * TINY_WINDOW // 300
        assert len(b.calls.of("ApplyEvent")) == 1

        b.gate.open()
        acks = [await e.call.read() for _ in range(total)]
        await writer
        await e.close()
    finally:
        writer.cancel()

    assert [ack.sequence for ack in acks] == list(range(1, total + 1))
    assert all(ack.accepted and ack.credit == bbi.WINDOW for ack in acks)
    assert len(await entities(b, kind="npc")) == total


async def test_with_credit_overrun_fail_an_engine_exceeding_its_credit_gets_resource_exhausted(b):
    await b.start(credit_overrun="fail", downstream_timeout_s="30")
    b.gate.close()
    e = Engine(b.stub)
    for n in range(bbi.WINDOW + 1):
        await e.call.write(spawned(e, f"wolf-{n}"))
    err = await stream_error(e)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason(err) == "CREDIT_EXCEEDED"


async def test_an_engine_that_waits_for_credit_is_never_refused(b):
    await b.start(credit_overrun="fail")
    e = Engine(b.stub)
    total, acked, credit = 200, [], bbi.WINDOW
    sent = 0
    while len(acked) < total:
        while sent < total and sent - len(acked) < credit:
            await e.call.write(spawned(e, f"wolf-{sent}", position=(sent % 90, 0, 2)))
            sent += 1
        ack = await e.call.read()
        acked.append(ack)
        credit = ack.credit
    await e.close()
    assert all(ack.accepted for ack in acked)


async def test_a_restart_keeps_applied_events_and_presence(nats_server: NatsServer, b):
    e = Engine(b.stub)
    await e.send(joined(e), spawned(e, "wolf-1", key="kept"))
    await e.close()
    revision = await region_revision(b)

    nc2 = await nats.connect(nats_server.url)
    try:
        await b.start(storage=JetStreamStorage(nc2, prefix=b.prefix), nc=nc2)
        try:
            again = Engine(b.stub)
            (ack,) = await again.send(spawned(again, "wolf-1", key="kept"))
            await again.close()
            await b.states.Update(state_manager_pb2.UpdateRequest(
                player_id="ayla", document=struct_pb2.Struct(), expected_revision=common_pb2.Revision(value=0)),
                timeout=5)
            snapshot = (await b.stub.SyncPlayer(pb.SyncPlayerRequest(player_id="ayla"), timeout=5)).snapshot
        finally:
            await b.stop()
    finally:
        await nc2.close()
    assert ack.accepted
    assert await region_revision(b) == revision
    assert snapshot.region_id == "harbor"
    assert snapshot.online


# -- SyncPlayer -------------------------------------------------------------------------------------


async def register(b: Bridge, player: str = "ayla") -> None:
    await b.states.Update(state_manager_pb2.UpdateRequest(
        player_id=player, document=struct_pb2.Struct(), expected_revision=common_pb2.Revision(value=0)), timeout=5)


async def active_quest(b: Bridge, player: str = "ayla") -> str:
    made = (await b.quests.GenerateQuest(quest_pb2.GenerateQuestRequest(
        player_id=player, region_id="harbor", difficulty=quest_pb2.DIFFICULTY_EASY,
        idempotency_key=common_pb2.IdempotencyKey(key=uuid.uuid4().hex)), timeout=5)).quest
    await b.quests.Accept(quest_pb2.AcceptRequest(quest_id=made.quest_id, player_id=player,
                                                  expected_revision=made.revision), timeout=5)
    return str(made.quest_id)


async def test_a_snapshot_gathers_presence_position_quests_and_balance(b):
    await register(b)
    e = Engine(b.stub)
    await e.send(joined(e), moved(e, (20, 1, 30)))
    quest_id = await active_quest(b)
    await active_quest(b, player="brann")
    await b.payments.Deposit(payment_pb2.DepositRequest(
        account_id="ayla", amount=common_pb2.Money(currency_code="GOLD", amount_minor=250),
        idempotency_key=common_pb2.IdempotencyKey(key="gift")), timeout=5)

    call = b.stub.SyncPlayer(pb.SyncPlayerRequest(player_id="ayla"), timeout=5)
    snapshot = (await call).snapshot

    avatar = (await entities(b))["ayla"]
    assert snapshot.player_id == "ayla"
    assert snapshot.region_id == "harbor"
    assert snapshot.online
    assert (snapshot.position.x, snapshot.position.y, snapshot.position.z) == (20, 1, 30)
    assert snapshot.state_revision == avatar.revision
    assert list(snapshot.active_quest_ids) == [quest_id]
    assert (snapshot.balance.currency_code, snapshot.balance.amount_minor) == ("GOLD", 250)
    assert snapshot.snapshot_time.seconds == int(NOW)
    assert degraded_sources(await call.trailing_metadata()) == []


async def test_a_registered_player_never_placed_has_an_empty_snapshot(b):
    await register(b)
    snapshot = (await b.stub.SyncPlayer(pb.SyncPlayerRequest(player_id="ayla"), timeout=5)).snapshot
    assert snapshot.region_id == ""
    assert not snapshot.online
    assert not snapshot.HasField("state_revision")
    assert snapshot.balance.amount_minor == 0


async def test_an_offline_player_keeps_the_region_and_last_position(b):
    await register(b)
    e = Engine(b.stub)
    await e.send(joined(e), moved(e, (9, 0, 9)), e.event(pb.ENGINE_EVENT_KIND_PLAYER_LEFT, player_id="ayla"))
    snapshot = (await b.stub.SyncPlayer(pb.SyncPlayerRequest(player_id="ayla"), timeout=5)).snapshot
    assert snapshot.region_id == "harbor"
    assert not snapshot.online
    assert snapshot.position.x == 9


async def test_an_unknown_player_is_not_found_and_an_empty_id_invalid(b):
    err = await failure(b.stub.SyncPlayer(pb.SyncPlayerRequest(player_id="nobody"), timeout=5))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    err = await failure(b.stub.SyncPlayer(pb.SyncPlayerRequest(), timeout=5))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_without_quest_system_and_payment_the_snapshot_is_partial_and_says_so(b):
    await register(b)
    e = Engine(b.stub)
    await e.send(joined(e))
    await b.mesh.stop(quest.TARGET)
    await b.mesh.stop(payment.TARGET)
    call = b.stub.SyncPlayer(pb.SyncPlayerRequest(player_id="ayla"), timeout=5)
    snapshot = (await call).snapshot
    assert snapshot.region_id == "harbor"
    assert list(snapshot.active_quest_ids) == []
    assert not snapshot.HasField("balance")
    assert degraded_sources(await call.trailing_metadata()) == ["payment", "quest-system"]


@pytest.mark.parametrize("target", [state_manager.TARGET, world_state.TARGET])
async def test_a_required_source_down_fails_the_snapshot_with_unavailable_naming_it(b, target):
    await register(b)
    e = Engine(b.stub)
    await e.send(joined(e))
    await b.mesh.stop(target)
    err = await failure(b.stub.SyncPlayer(pb.SyncPlayerRequest(player_id="ayla"), timeout=5))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert target in (err.details() or "")
    assert f"(UNAVAILABLE: {NO_SERVER[1]})" in (err.details() or "")  # no responders: no wait for a share


async def test_a_short_caller_deadline_reaches_every_source_as_its_share(b):
    await register(b)
    e = Engine(b.stub)
    await e.send(joined(e))
    await b.stub.SyncPlayer(pb.SyncPlayerRequest(player_id="ayla"), timeout=1.0)

    shares = {"Get": 0.8, "ListEntities": 0.8, "List": 0.5, "Balance": 0.5}
    for method, share in shares.items():
        seen = b.calls.of(method)[-1]
        assert seen.time_remaining is not None, method
        assert 0 < seen.time_remaining <= share, method
