"""Applying one engine event: world events on world-state, the bridge's own records, the event bus.

How engine events become world events (``EventIds.world_event(step)`` names each)::

    PLAYER_JOINED     despawn the avatar from the region it was online in, if another ("leave");
                      spawn a ``player_avatar`` entity (id = player id) at the event's position,
                      else its last position in that region, else the origin ("join"); if it is
                      there already, move it when a position was given ("join-move")
    PLAYER_LEFT       despawn the avatar ("leave"); the player is offline, region kept
    PLAYER_MOVED      same region: move ("move"), or spawn if the avatar is missing ("enter");
                      another region: despawn there ("leave"), spawn here ("enter"), or move
                      if it is already here ("move")
    ENTITY_SPAWNED    spawn an entity of kind ``entity_kind`` (attribute; default ``npc``) with
                      the other attributes ("spawn")
    ENTITY_DESTROYED  despawn it from the event's region, or the one it was spawned in ("despawn")
    CUSTOM            nothing on world-state

Then every accepted event is published on the event bus (topic ``_events.topic``, message id
``EventIds.message_id``, payload the serialized EngineEvent), when publishing is on.

A refusal by world-state or the event bus about the event itself (NOT_FOUND, ALREADY_EXISTS,
FAILED_PRECONDITION, INVALID_ARGUMENT, ...) is ``Refused``: the event is rejected. Anything that
means the dependency could not answer is ``DependencyError`` (UNAVAILABLE naming it), which ends
the stream so that the engine resends from its first unacknowledged event.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import grpc
from gaming.body_broker_integration.v1 import body_broker_integration_pb2 as pb
from gaming.common.v1 import common_pb2
from gaming.event_bus.v1 import event_bus_pb2, event_bus_pb2_grpc
from gaming.world_state.v1 import world_state_pb2 as ws
from gaming.world_state.v1 import world_state_pb2_grpc
from google.protobuf import timestamp_pb2

from servicers._downstream import DependencyError, describe, is_down
from servicers.body_broker_integration import _events
from servicers.body_broker_integration._records import EventIds, entity_key, player_key
from servicers.storage import KeyValue, RevisionConflict

WORLD_STATE = "world-state"
EVENT_BUS = "event-bus"
ACTOR = "body-broker-integration"
CONTENT_TYPE = "application/x-protobuf; proto=gaming.body_broker_integration.v1.EngineEvent"
# Compare-and-set attempts on one player's presence when two streams move the same player.
_PRESENCE_ATTEMPTS = 8


class Refused(Exception):
    """A dependency refused the event itself: it is rejected, the stream goes on."""


class Forwarder:
    """Applies accepted-shape engine events to world-state, the presence records and the bus."""

    def __init__(
        self,
        presence: KeyValue,
        *,
        channel: Callable[[str], Any],
        clock: Callable[[], float],
        call_timeout: float,
        topic_prefix: str | None,
    ) -> None:
        self._presence = presence
        self._channel = channel
        self._clock = clock
        self._timeout = call_timeout
        self._topic_prefix = topic_prefix

    def __repr__(self) -> str:
        return f"<Forwarder timeout={self._timeout}s topics={self._topic_prefix!r}>"

    async def apply(self, request: pb.IngestEventsRequest) -> None:
        """Apply one event (checked by ``_events.problem``).

        Raises:
            Refused: a dependency refused the event.
            DependencyError: a dependency could not be reached.
            StorageUnavailable: the bridge's own store failed.
        """
        event, ids = request.event, EventIds.of(request.idempotency_key.key)
        kind = event.kind
        if kind == pb.ENGINE_EVENT_KIND_PLAYER_JOINED:
            await self._joined(event, ids)
        elif kind == pb.ENGINE_EVENT_KIND_PLAYER_LEFT:
            await self._left(event, ids)
        elif kind == pb.ENGINE_EVENT_KIND_PLAYER_MOVED:
            await self._moved(event, ids)
        elif kind == pb.ENGINE_EVENT_KIND_ENTITY_SPAWNED:
            await self._spawned(event, ids)
        elif kind == pb.ENGINE_EVENT_KIND_ENTITY_DESTROYED:
            await self._destroyed(event, ids)
        if self._topic_prefix is not None:
            await self._publish(request, ids)

    # -- players ---------------------------------------------------------------------------------

    async def _joined(self, event: pb.EngineEvent, ids: EventIds) -> None:
        known = await self.presence(event.player_id)
        if known is not None and known.online and known.region_id and known.region_id != event.region_id:
            await self._despawn(known.region_id, event.player_id, ids.world_event("leave"), missing_ok=True)
        if event.HasField("position"):
            position = event.position
        elif known is not None and known.region_id == event.region_id:
            position = known.position
        else:
            position = common_pb2.Vector3()
        try:
            await self._spawn(event.region_id, event.player_id, _events.AVATAR_KIND, position, [],
                              ids.world_event("join"))
        except _AlreadyThere:
            if event.HasField("position"):
                await self._move(event.region_id, event.player_id, position, ids.world_event("join-move"))
        await self._save_presence(event.player_id, region_id=event.region_id, position=position, online=True)

    async def _left(self, event: pb.EngineEvent, ids: EventIds) -> None:
        known = await self.presence(event.player_id)
        if known is not None and known.online and known.region_id:
            await self._despawn(known.region_id, event.player_id, ids.world_event("leave"), missing_ok=True)
        await self._save_presence(event.player_id, online=False)

    async def _moved(self, event: pb.EngineEvent, ids: EventIds) -> None:
        known = await self.presence(event.player_id)
        here = known is not None and known.online and known.region_id == event.region_id
        if not here and known is not None and known.online and known.region_id:
            await self._despawn(known.region_id, event.player_id, ids.world_event("leave"), missing_ok=True)
        if here:
            try:
                await self._move(event.region_id, event.player_id, event.position, ids.world_event("move"))
            except _Missing:
                await self._spawn(event.region_id, event.player_id, _events.AVATAR_KIND, event.position, [],
                                  ids.world_event("enter"))
        else:
            try:
                await self._spawn(event.region_id, event.player_id, _events.AVATAR_KIND, event.position, [],
                                  ids.world_event("enter"))
            except _AlreadyThere:
                await self._move(event.region_id, event.player_id, event.position, ids.world_event("move"))
        await self._save_presence(event.player_id, region_id=event.region_id, position=event.position, online=True)

    async def presence(self, player_id: str) -> pb.PlayerSnapshot | None:
        """What the bridge last heard about a player (region, position, online), if anything."""
        entry = await self._presence.get(player_key(player_id))
        return pb.PlayerSnapshot.FromString(entry.value) if entry is not None else None

    async def _save_presence(
        self, player_id: str, *, online: bool, region_id: str | None = None, position: common_pb2.Vector3 | None = None
    ) -> None:
        key = player_key(player_id)
        for _ in range(_PRESENCE_ATTEMPTS):
            entry = await self._presence.get(key)
            snapshot = pb.PlayerSnapshot.FromString(entry.value) if entry else pb.PlayerSnapshot(player_id=player_id)
            snapshot.online = online
            if region_id is not None:
                snapshot.region_id = region_id
            if position is not None:
                snapshot.position.CopyFrom(position)
            snapshot.snapshot_time.CopyFrom(_timestamp(self._clock()))
            try:
                await self._presence.update(key, snapshot.SerializeToString(), entry.revision if entry else 0)
                return
            except RevisionConflict:
                continue
        raise Refused(f"the presence of player {player_id!r} kept changing under this event; resend it")

    # -- entities --------------------------------------------------------------------------------

    async def _spawned(self, event: pb.EngineEvent, ids: EventIds) -> None:
        kind = _events.attribute(event, _events.ENTITY_KIND) or _events.DEFAULT_ENTITY_KIND
        extra = [item for item in event.attributes if item.key != _events.ENTITY_KIND]
        try:
            await self._spawn(event.region_id, event.entity_id, kind, event.position, extra, ids.world_event("spawn"))
        except _AlreadyThere as there:
            raise Refused(str(there)) from there
        where = ws.Entity(entity_id=event.entity_id, region_id=event.region_id)
        await self._presence.put(entity_key(event.entity_id), where.SerializeToString())

    async def _destroyed(self, event: pb.EngineEvent, ids: EventIds) -> None:
        region_id = event.region_id
        if not region_id:
            entry = await self._presence.get(entity_key(event.entity_id))
            if entry is None:
                raise Refused(f"region_id missing for ENTITY_DESTROYED, and entity {event.entity_id!r} was not "
                              "spawned through the bridge")
            region_id = ws.Entity.FromString(entry.value).region_id
        await self._despawn(region_id, event.entity_id, ids.world_event("despawn"), missing_ok=False)
        with contextlib.suppress(RevisionConflict):
            await self._presence.delete(entity_key(event.entity_id))

    # -- world-state -----------------------------------------------------------------------------

    async def _spawn(
        self, region_id: str, entity_id: str, kind: str, position: common_pb2.Vector3,
        attributes: list[common_pb2.Attribute], event_id: str,
    ) -> None:
        spawn = ws.SpawnEntity(entity_id=entity_id, kind=kind, position=position, attributes=attributes)
        await self._apply(region_id, event_id, ws.WorldEvent(spawn=spawn))

    async def _move(self, region_id: str, entity_id: str, position: common_pb2.Vector3, event_id: str) -> None:
        move = ws.MoveEntity(entity_id=entity_id, position=position)
        await self._apply(region_id, event_id, ws.WorldEvent(move=move))

    async def _despawn(self, region_id: str, entity_id: str, event_id: str, *, missing_ok: bool) -> None:
        try:
            await self._apply(region_id, event_id, ws.WorldEvent(despawn=ws.DespawnEntity(entity_id=entity_id)))
        except _Missing:
            if not missing_ok:
                raise

    async def _apply(self, region_id: str, event_id: str, change: ws.WorldEvent) -> None:
        stub = world_state_pb2_grpc.WorldStateServiceStub(self._channel(WORLD_STATE))
        request = ws.ApplyEventRequest(region_id=region_id, event_id=common_pb2.IdempotencyKey(key=event_id),
                                       event=change, actor_id=ACTOR)
        try:
            await stub.ApplyEvent(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as err:
            if is_down(err):
                raise DependencyError.down(WORLD_STATE, err) from err
            message = f"world-state refused it: {describe(err)}"
            if err.code() == grpc.StatusCode.ALREADY_EXISTS:
                raise _AlreadyThere(message) from err
            if err.code() == grpc.StatusCode.NOT_FOUND:
                raise _Missing(message) from err
            raise Refused(message) from err

    # -- event bus -------------------------------------------------------------------------------

    async def _publish(self, request: pb.IngestEventsRequest, ids: EventIds) -> None:
        assert self._topic_prefix is not None
        stub = event_bus_pb2_grpc.EventBusServiceStub(self._channel(EVENT_BUS))
        message = event_bus_pb2.PublishRequest(
            topic=_events.topic(self._topic_prefix, request.event),
            payload=request.event.SerializeToString(),
            content_type=CONTENT_TYPE,
            attributes=[common_pb2.Attribute(key="engine_sequence", value=str(request.sequence)),
                        common_pb2.Attribute(key="idempotency_key", value=request.idempotency_key.key)],
            message_id=ids.message_id,
        )
        try:
            await stub.Publish(message, timeout=self._timeout)
        except grpc.aio.AioRpcError as err:
            if is_down(err):
                raise DependencyError.down(EVENT_BUS, err) from err
            raise Refused(f"event-bus refused it: {describe(err)}") from err


class _Missing(Refused):
    """world-state has no such entity (or region)."""


class _AlreadyThere(Refused):
    """world-state already has an entity with that id."""


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(round(seconds * 1e9))
    return stamp
