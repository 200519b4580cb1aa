"""world-state: regions and their entities, changed atomically by idempotent world events.

The API has no call that creates a region: the world's regions come from configuration and are
created by ``create()`` when missing (an existing region is left as it is, entities and all, so
a restart or a second replica never resets the world).

A region's revision counts the events applied to it: 0 for a region no event has touched yet,
then one more per event (it is not the KV revision, which is shared by the whole bucket), and
``expected_region_revision`` compares against it. Entity ids are checked for uniqueness within
their region only (a world-wide check would need a second key updated in the same atomic step);
ids the server assigns are random UUIDs, unique in practice.

Settings (``deps.settings``; ``MESH_WORLD_STATE_REGIONS`` and ``MESH_WORLD_STATE_EVENT_HISTORY`` in the host):
    regions: a JSON list of ``gaming.world_state.v1.Region`` objects in protobuf's JSON form,
        e.g. ``[{"regionId": "harbor", "boundsMin": {"x": -100, "y": -10, "z": -100},
        "boundsMax": {"x": 100, "y": 50, "z": 100}, "maxEntities": 500}]``; a missing
        ``maxEntities`` means 1000. Default: one region, ``overworld`` (see ``DEFAULT_REGIONS``).
    event_history: how many recent events each region keeps (default 256). They answer replays
        of an event id and let a watch resume, so this is also the idempotency window.
"""

from __future__ import annotations

import contextlib
import json

from gaming.world_state.v1 import world_state_pb2, world_state_pb2_grpc
from google.protobuf import json_format

from servicers.dependencies import Dependencies
from servicers.errors import InvalidArgument
from servicers.storage import RevisionConflict
from servicers.world_state._record import RegionRecord, region_key
from servicers.world_state._rules import check_region
from servicers.world_state._servicer import WorldStateServicer

__all__ = [
    "DEFAULT_REGIONS", "SERVICE_NAMES", "TARGET", "WorldStateServicer", "add_to_server", "configured_regions", "create",
]

TARGET = "world-state"
SERVICE_NAMES = ("gaming.world_state.v1.WorldStateService",)
add_to_server = world_state_pb2_grpc.add_WorldStateServiceServicer_to_server

BUCKET = "world_state_regions"
# One value per region, and only its latest version matters: a watch resumes from the events
# kept inside the value, not from KV history.
BUCKET_HISTORY = 1
BUCKET_MAX_BYTES = 256 * 1024 * 1024
# A region must fit one NATS message (1 MiB max_payload by default, headers included).
MAX_RECORD_BYTES = 1_000_000
DEFAULT_MAX_ENTITIES = 1000
DEFAULT_EVENT_HISTORY = 256
DEFAULT_REGIONS = json.dumps([
    {
        "regionId": "overworld",
        "displayName": "Overworld",
        "boundsMin": {"x": -5000, "y": -500, "z": -5000},
        "boundsMax": {"x": 5000, "y": 2000, "z": 5000},
        "maxEntities": DEFAULT_MAX_ENTITIES,
    }
])


def configured_regions(text: str) -> list[world_state_pb2.Region]:
    """The regions a ``regions`` setting defines.

    Raises:
        ValueError: the setting is not a JSON list of valid regions (ids unique).
    """
    try:
        items = json.loads(text)
    except ValueError as err:
        raise ValueError(f"world-state regions setting is not JSON: {err}") from err
    if not isinstance(items, list):
        raise ValueError("world-state regions setting must be a JSON list of regions")
    regions = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        region = world_state_pb2.Region()
        try:
            json_format.ParseDict(item, region)
        except json_format.ParseError as err:
            raise ValueError(f"world-state region [{index}]: {err}") from err
        if not region.max_entities:
            region.max_entities = DEFAULT_MAX_ENTITIES
        try:
            check_region(region)
        except InvalidArgument as invalid:
            raise ValueError(f"world-state region [{index}]: {invalid}") from invalid
        if region.region_id in seen:
            raise ValueError(f"world-state region [{index}]: duplicate region id {region.region_id!r}")
        seen.add(region.region_id)
        regions.append(region)
    return regions


async def create(deps: Dependencies) -> WorldStateServicer:
    """Open the regions bucket, create the configured regions that are missing, and return a
    ready servicer.

    Raises:
        ValueError: a setting is malformed (fail at start-up, not at the first call).
    """
    regions = configured_regions(deps.settings.get("regions", DEFAULT_REGIONS))
    history_text = deps.settings.get("event_history", str(DEFAULT_EVENT_HISTORY))
    if not history_text.isdigit() or int(history_text) < 1:
        raise ValueError(f"world-state event_history must be a positive integer, not {history_text!r}")
    bucket = await deps.storage.key_value(BUCKET, history=BUCKET_HISTORY, max_bytes=BUCKET_MAX_BYTES)
    for region in regions:
        region.entity_count = 0
        region.revision.value = 0  # no events applied yet
        region.update_time.FromNanoseconds(round(deps.clock() * 1e9))
        # An existing region keeps its state: configuration only seeds the world.
        with contextlib.suppress(RevisionConflict):
            await bucket.update(region_key(region.region_id), RegionRecord(region).encode(), 0)
    return WorldStateServicer(
        bucket, clock=deps.clock, max_events=int(history_text), max_record_bytes=MAX_RECORD_BYTES
    )
