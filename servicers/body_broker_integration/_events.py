"""Engine events as pure data: what makes one acceptable, and the names they travel under.

An event that breaks these rules is rejected in its acknowledgement (``accepted`` false, the
reason in ``error``); the stream goes on.
"""

from __future__ import annotations

import math
import re

from gaming.body_broker_integration.v1 import body_broker_integration_pb2 as pb

MAX_ID_CHARS = 128
MAX_ATTRIBUTES = 32
MAX_ATTRIBUTE_VALUE_CHARS = 1024
# The attribute naming a CUSTOM event's meaning, and the one naming a spawned entity's kind.
CUSTOM_KIND = "custom_kind"
ENTITY_KIND = "entity_kind"
DEFAULT_ENTITY_KIND = "npc"
AVATAR_KIND = "player_avatar"
_PRINTABLE_KEY = re.compile(r"[\x20-\x7e]{1,128}")
_TOPIC_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")

# What each kind needs besides the idempotency key: policy as data.
_REQUIRED: dict[int, tuple[str, ...]] = {
    pb.ENGINE_EVENT_KIND_PLAYER_JOINED: ("player_id", "region_id"),
    pb.ENGINE_EVENT_KIND_PLAYER_LEFT: ("player_id",),
    pb.ENGINE_EVENT_KIND_PLAYER_MOVED: ("player_id", "region_id", "position"),
    pb.ENGINE_EVENT_KIND_ENTITY_SPAWNED: ("entity_id", "region_id", "position"),
    pb.ENGINE_EVENT_KIND_ENTITY_DESTROYED: ("entity_id",),
    pb.ENGINE_EVENT_KIND_CUSTOM: (),
}


def attribute(event: pb.EngineEvent, key: str) -> str | None:
    """The value of the event's attribute ``key``, if it has one."""
    for item in event.attributes:
        if item.key == key:
            return item.value
    return None


def problem(request: pb.IngestEventsRequest) -> str | None:
    """Why the request's event cannot be accepted, or None."""
    key = request.idempotency_key.key
    if not key:
        return "idempotency_key is required"
    if not _PRINTABLE_KEY.fullmatch(key):
        return "idempotency_key must be 1 to 128 printable ASCII characters"
    if not request.HasField("event"):
        return "event is required"
    event = request.event
    kind = pb.EngineEventKind.Name(event.kind) if event.kind in pb.EngineEventKind.values() else str(event.kind)
    needs = _REQUIRED.get(event.kind)
    if needs is None:
        return f"kind {kind} is not an event kind the bridge handles"
    for name in needs:
        if name == "position" and not event.HasField("position"):
            return f"position missing for {kind.removeprefix('ENGINE_EVENT_KIND_')}"
        if name != "position" and not getattr(event, name):
            return f"{name} missing for {kind.removeprefix('ENGINE_EVENT_KIND_')}"
    for name in ("player_id", "entity_id", "region_id"):
        if len(getattr(event, name)) > MAX_ID_CHARS:
            return f"{name} must be at most {MAX_ID_CHARS} characters"
    if event.HasField("position") and not all(math.isfinite(v) for v in (event.position.x, event.position.y,
                                                                          event.position.z)):
        return "position must be finite"
    if len(event.attributes) > MAX_ATTRIBUTES:
        return f"at most {MAX_ATTRIBUTES} attributes, got {len(event.attributes)}"
    for item in event.attributes:
        if len(item.value) > MAX_ATTRIBUTE_VALUE_CHARS:
            return f"attribute {item.key!r} is longer than {MAX_ATTRIBUTE_VALUE_CHARS} characters"
    if event.kind == pb.ENGINE_EVENT_KIND_CUSTOM:
        custom = attribute(event, CUSTOM_KIND)
        if not custom or not _TOPIC_TOKEN.fullmatch(custom):
            return f"a CUSTOM event needs a {CUSTOM_KIND!r} attribute of 1 to 64 characters of [A-Za-z0-9_-]"
    return None


def topic(prefix: str, event: pb.EngineEvent) -> str:
    """The event-bus topic of an accepted event: ``<prefix>.player_moved``, or
    ``<prefix>.custom.<custom_kind>`` for a CUSTOM one."""
    if event.kind == pb.ENGINE_EVENT_KIND_CUSTOM:
        return f"{prefix}.custom.{attribute(event, CUSTOM_KIND)}"
    return f"{prefix}.{pb.EngineEventKind.Name(event.kind).removeprefix('ENGINE_EVENT_KIND_').lower()}"
