"""World rules, as pure code: what a valid request is, and how an event changes a region.

Nothing here does I/O. Problems are raised as ``InvalidArgument`` (the request itself is wrong)
or ``RuleBroken`` (the request is fine, but the region's current state refuses it); both are
``RpcError`` kinds, which the error boundary answers with their statuses.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import grpc
from gaming.common.v1 import common_pb2
from gaming.world_state.v1 import world_state_pb2
from google.protobuf import timestamp_pb2

from servicers.auth.call_identity import recorded_actor
from servicers.errors import InvalidArgument, RpcError, rpc_error
from servicers.world_state._record import RegionRecord

MAX_ID_LENGTH = 128
MAX_ATTRIBUTES = 64
MAX_ATTRIBUTE_KEY_LENGTH = 64
MAX_ATTRIBUTE_VALUE_LENGTH = 4096
_LOWER_SNAKE_CASE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]+")


class RuleBroken(RpcError):
    """The region's state refuses the event: NOT_FOUND, ALREADY_EXISTS or FAILED_PRECONDITION,
    with an ErrorInfo ``reason``."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str) -> None:
        super().__init__(code, message, rpc_error(code, message, reason).details)


def check_id(field: str, value: str, *, required: bool = True) -> None:
    """An id of 1 to 128 characters (or empty, when not required)."""
    if not value:
        if required:
            raise InvalidArgument(field, "is required")
        return
    if len(value) > MAX_ID_LENGTH:
        raise InvalidArgument(field, f"must be at most {MAX_ID_LENGTH} characters")


def check_apply(request: world_state_pb2.ApplyEventRequest) -> None:
    """Everything about an ApplyEvent request that does not depend on the region's state."""
    check_id("region_id", request.region_id)
    key = request.event_id.key
    if not key:
        raise InvalidArgument("event_id.key", "is required")
    if len(key) > MAX_ID_LENGTH or not _PRINTABLE_ASCII.fullmatch(key):
        raise InvalidArgument("event_id.key", f"must be 1 to {MAX_ID_LENGTH} printable ASCII characters")
    check_id("actor_id", request.actor_id, required=False)
    if not request.HasField("event"):
        raise InvalidArgument("event", "is required")
    event = request.event
    change = event.WhichOneof("change")
    if change == "spawn":
        check_id("event.spawn.entity_id", event.spawn.entity_id, required=False)
        if not event.spawn.kind:
            raise InvalidArgument("event.spawn.kind", "is required")
        if not _LOWER_SNAKE_CASE.fullmatch(event.spawn.kind):
            raise InvalidArgument("event.spawn.kind", "must be lower_snake_case")
        _check_position("event.spawn.position", event.spawn.position)
        _check_attributes("event.spawn.attributes", event.spawn.attributes)
    elif change == "move":
        check_id("event.move.entity_id", event.move.entity_id)
        if not event.move.HasField("position"):
            raise InvalidArgument("event.move.position", "is required")
        _check_position("event.move.position", event.move.position)
    elif change == "despawn":
        check_id("event.despawn.entity_id", event.despawn.entity_id)
    elif change == "set_attribute":
        check_id("event.set_attribute.entity_id", event.set_attribute.entity_id)
        if not event.set_attribute.HasField("attribute"):
            raise InvalidArgument("event.set_attribute.attribute", "is required")
        _check_attribute("event.set_attribute.attribute", event.set_attribute.attribute)
    else:
        raise InvalidArgument("event", "exactly one of spawn, move, despawn, set_attribute must be set")


def _check_position(field: str, position: common_pb2.Vector3) -> None:
    for axis in ("x", "y", "z"):
        if not math.isfinite(getattr(position, axis)):
            raise InvalidArgument(f"{field}.{axis}", "must be a finite number")


def _check_attribute(field: str, attribute: common_pb2.Attribute) -> None:
    if not attribute.key:
        raise InvalidArgument(f"{field}.key", "is required")
    if len(attribute.key) > MAX_ATTRIBUTE_KEY_LENGTH or not _LOWER_SNAKE_CASE.fullmatch(attribute.key):
        raise InvalidArgument(
            f"{field}.key", f"must be lower_snake_case, at most {MAX_ATTRIBUTE_KEY_LENGTH} characters"
        )
    if len(attribute.value) > MAX_ATTRIBUTE_VALUE_LENGTH:
        raise InvalidArgument(f"{field}.value", f"must be at most {MAX_ATTRIBUTE_VALUE_LENGTH} characters")


def _check_attributes(field: str, attributes: Sequence[common_pb2.Attribute]) -> None:
    if len(attributes) > MAX_ATTRIBUTES:
        raise InvalidArgument(field, f"must hold at most {MAX_ATTRIBUTES} attributes")
    seen: set[str] = set()
    for index, attribute in enumerate(attributes):
        _check_attribute(f"{field}[{index}]", attribute)
        if attribute.key in seen:
            raise InvalidArgument(f"{field}[{index}].key", f"duplicate key {attribute.key!r}")
        seen.add(attribute.key)


def check_region(region: world_state_pb2.Region) -> None:
    """A region definition (from configuration) that a world can be built on."""
    check_id("region_id", region.region_id)
    _check_position("bounds_min", region.bounds_min)
    _check_position("bounds_max", region.bounds_max)
    for axis in ("x", "y", "z"):
        if getattr(region.bounds_min, axis) > getattr(region.bounds_max, axis):
            raise InvalidArgument(f"bounds_min.{axis}", "must not exceed bounds_max")
    if region.max_entities <= 0:
        raise InvalidArgument("max_entities", "must be positive")


def apply_event(
    record: RegionRecord,
    request: world_state_pb2.ApplyEventRequest,
    *,
    now: timestamp_pb2.Timestamp,
    new_entity_id: Callable[[], str],
) -> world_state_pb2.WatchRegionResponse:
    """Apply a checked event to ``record`` in place, record it in the history, and return it.

    Raises:
        RuleBroken: the event does not fit the region as it is now; ``record`` is unchanged.
    """
    event = world_state_pb2.WorldEvent()
    event.CopyFrom(request.event)
    revision = record.revision + 1
    change = event.WhichOneof("change")
    entity: world_state_pb2.Entity | None
    if change == "spawn":
        if not event.spawn.entity_id:
            event.spawn.entity_id = new_entity_id()  # recorded, so a replay returns the same id
        entity = _spawn(record, event.spawn, revision, now)
    elif change == "move":
        entity = _existing(record, event.move.entity_id)
        _check_inside(record.region, event.move.position, "event.move.position")
        entity.position.CopyFrom(event.move.position)
    elif change == "set_attribute":
        entity = _existing(record, event.set_attribute.entity_id)
        _set_attribute(entity, event.set_attribute)
    else:
        del record.entities[_existing(record, event.despawn.entity_id).entity_id]
        entity = None
    if entity is not None:
        entity.revision.value = revision
        entity.update_time.CopyFrom(now)
        record.entities[entity.entity_id] = entity

    region = record.region
    region.revision.value = revision
    region.update_time.CopyFrom(now)
    region.entity_count = len(record.entities)
    applied = world_state_pb2.WatchRegionResponse(
        applied_event=world_state_pb2.AppliedEvent(
            event_id=request.event_id.key,
            region_id=region.region_id,
            event=event,
            region_revision=common_pb2.Revision(value=revision),
            audit=common_pb2.AuditInfo(actor_id=recorded_actor(request.actor_id), update_time=now),
        ),
        entity=entity,
    )
    record.history.append(applied)
    return applied


def _existing(record: RegionRecord, entity_id: str) -> world_state_pb2.Entity:
    """A copy of the entity (so a rule broken later leaves the record unchanged)."""
    found = record.entities.get(entity_id)
    if found is None:
        raise RuleBroken(
            grpc.StatusCode.NOT_FOUND,
            f"entity {entity_id!r} is not in region {record.region.region_id!r}",
            "ENTITY_NOT_FOUND",
        )
    copy = world_state_pb2.Entity()
    copy.CopyFrom(found)
    return copy


def _spawn(
    record: RegionRecord, spawn: world_state_pb2.SpawnEntity, revision: int, now: timestamp_pb2.Timestamp
) -> world_state_pb2.Entity:
    region = record.region
    if spawn.entity_id in record.entities:
        raise RuleBroken(
            grpc.StatusCode.ALREADY_EXISTS,
            f"entity {spawn.entity_id!r} already exists in region {region.region_id!r}",
            "ENTITY_EXISTS",
        )
    if len(record.entities) >= region.max_entities:
        raise RuleBroken(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"region {region.region_id!r} holds its maximum of {region.max_entities} entities",
            "REGION_FULL",
        )
    _check_inside(region, spawn.position, "event.spawn.position")
    return world_state_pb2.Entity(
        entity_id=spawn.entity_id,
        region_id=region.region_id,
        kind=spawn.kind,
        position=spawn.position,
        attributes=spawn.attributes,
        create_time=now,
    )


def _check_inside(region: world_state_pb2.Region, position: common_pb2.Vector3, field: str) -> None:
    low, high = region.bounds_min, region.bounds_max
    if not (low.x <= position.x <= high.x and low.y <= position.y <= high.y and low.z <= position.z <= high.z):
        raise RuleBroken(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"{field} ({position.x}, {position.y}, {position.z}) is outside the bounds of region "
            f"{region.region_id!r}",
            "OUT_OF_BOUNDS",
        )


def _set_attribute(entity: world_state_pb2.Entity, change: world_state_pb2.SetAttribute) -> None:
    key = change.attribute.key
    kept = [attribute for attribute in entity.attributes if attribute.key != key]
    if change.remove:
        # Removing an absent attribute is not an error: the entity ends as asked.
        del entity.attributes[:]
        entity.attributes.extend(kept)
        return
    for attribute in entity.attributes:
        if attribute.key == key:
            attribute.value = change.attribute.value
            return
    if len(entity.attributes) >= MAX_ATTRIBUTES:
        raise RuleBroken(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"entity {entity.entity_id!r} already has the maximum of {MAX_ATTRIBUTES} attributes",
            "TOO_MANY_ATTRIBUTES",
        )
    entity.attributes.append(change.attribute)


def trim_history(record: RegionRecord, *, max_events: int, max_bytes: int) -> None:
    """Keep the newest ``max_events`` events, fewer if the stored value would exceed ``max_bytes``.

    The newest event always stays (it is what makes a replay of it safe).

    Raises:
        RuleBroken: even with only the newest event the region would exceed ``max_bytes``.
    """
    dropped = max(0, len(record.history) - max_events)
    # Sizes are added up rather than re-encoding the record once per dropped event; a repeated
    # field costs its message plus a tag and a length prefix (at most 1 + 5 bytes).
    excess = len(record.encode()) - max_bytes
    for item in record.history[:dropped]:
        excess -= item.ByteSize() + 6
    while excess > 0 and dropped < len(record.history) - 1:
        excess -= record.history[dropped].ByteSize() + 6
        dropped += 1
    if excess > 0:
        raise RuleBroken(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"region {record.region.region_id!r} would exceed its storage limit of {max_bytes} bytes",
            "REGION_TOO_LARGE",
        )
    if dropped:
        del record.history[:dropped]
        record.history_base = record.history[0].applied_event.region_revision.value - 1
