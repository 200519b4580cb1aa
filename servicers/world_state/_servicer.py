"""WorldStateService: reads, events applied by compare-and-set, and watches, over one KV bucket."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable

import grpc
from gaming.common.v1 import common_pb2
from gaming.world_state.v1 import world_state_pb2, world_state_pb2_grpc
from google.protobuf import timestamp_pb2

from servicers import paging
from servicers.errors import aborted, not_found, revision_conflict, rpc_error
from servicers.named_store import NamedStore
from servicers.storage import Entry, KeyValue, RevisionConflict
from servicers.world_state._record import RegionRecord, region_key
from servicers.world_state._rules import apply_event, check_apply, check_id, trim_history

# Attempts at one event when other events keep landing on the region first: each lost
# compare-and-set re-reads the region and re-applies the event to its new state.
MAX_ATTEMPTS = 32


class WorldStateServicer(world_state_pb2_grpc.WorldStateServiceServicer):
    """Regions and their entities, changed only by validated, idempotent world events.

    Each region is one KV value (see ``_record``): an event is one compare-and-set of it, so it
    applies atomically or not at all. The value also keeps the region's latest events, which
    answer replays of an event id and let ``WatchRegion`` resume; an event id is therefore
    remembered for as long as its event is retained (``max_events`` per region).
    """

    def __init__(
        self,
        regions: KeyValue,
        *,
        clock: Callable[[], float],
        max_events: int,
        max_record_bytes: int,
    ) -> None:
        # A store outage is UNAVAILABLE, as world_state.proto promises, with a message naming the store.
        self._regions = NamedStore(regions, "the world-state store is unavailable")
        self._clock = clock
        self._max_events = max_events
        self._max_record_bytes = max_record_bytes

    def __repr__(self) -> str:
        return f"<WorldStateServicer regions={self._regions!r} max_events={self._max_events}>"

    async def GetRegion(
        self,
        request: world_state_pb2.GetRegionRequest,
        context: grpc.aio.ServicerContext[world_state_pb2.GetRegionRequest, world_state_pb2.GetRegionResponse],
    ) -> world_state_pb2.GetRegionResponse:
        """The region's metadata and current revision."""
        check_id("region_id", request.region_id)
        _, record = await self._read(request.region_id)
        return world_state_pb2.GetRegionResponse(region=record.region)

    async def ListEntities(
        self,
        request: world_state_pb2.ListEntitiesRequest,
        context: grpc.aio.ServicerContext[world_state_pb2.ListEntitiesRequest, world_state_pb2.ListEntitiesResponse],
    ) -> world_state_pb2.ListEntitiesResponse:
        """One page of the region's entities (of one kind, if asked), ordered by entity id."""
        check_id("region_id", request.region_id)
        size = paging.page_size(request.page)
        query = (request.region_id, request.kind)
        after = paging.decode_token(request.page.page_token, *query)
        _, record = await self._read(request.region_id)
        matching = sorted(
            entity_id
            for entity_id, entity in record.entities.items()
            if not request.kind or entity.kind == request.kind
        )
        following = [entity_id for entity_id in matching if after is None or entity_id > after]
        page = following[:size]
        more = len(following) > size
        return world_state_pb2.ListEntitiesResponse(
            entities=[record.entities[entity_id] for entity_id in page],
            page=common_pb2.PageResponse(
                next_page_token=paging.encode_token(page[-1], *query) if more else "",
                total_size=len(matching),
            ),
            region_revision=common_pb2.Revision(value=record.revision),
        )

    async def ApplyEvent(
        self,
        request: world_state_pb2.ApplyEventRequest,
        context: grpc.aio.ServicerContext[world_state_pb2.ApplyEventRequest, world_state_pb2.ApplyEventResponse],
    ) -> world_state_pb2.ApplyEventResponse:
        """Apply one event atomically; a replayed event id returns the first result."""
        check_apply(request)
        key = region_key(request.region_id)
        for _ in range(MAX_ATTEMPTS):
            entry, record = await self._read(request.region_id)
            # A replay is answered before the revision check: the first call may have moved the
            # region past the revision the client expected, and its retry must still succeed.
            replay = record.find_event(request.event_id.key)
            if replay is not None:
                return _response(replay, replayed=True)
            expected = request.expected_region_revision.value
            if request.HasField("expected_region_revision") and expected != record.revision:
                raise revision_conflict(RevisionConflict(request.region_id, expected, record.revision), "region")
            applied = apply_event(record, request, now=self._now(), new_entity_id=lambda: uuid.uuid4().hex)
            trim_history(record, max_events=self._max_events, max_bytes=self._max_record_bytes)
            try:
                await self._regions.update(key, record.encode(), entry.revision)
            except RevisionConflict:
                continue  # another event landed first: apply this one to the region as it is now
            return _response(applied, replayed=False)
        raise aborted(
            f"region {request.region_id!r} changed under {MAX_ATTEMPTS} attempts in a row; retry", "REGION_CONTENDED",
        )

    async def WatchRegion(
        self,
        request: world_state_pb2.WatchRegionRequest,
        context: grpc.aio.ServicerContext[world_state_pb2.WatchRegionRequest, world_state_pb2.WatchRegionResponse],
    ) -> AsyncIterator[world_state_pb2.WatchRegionResponse]:
        """The retained events after ``after_revision`` (or none: "from now on"), then live ones."""
        check_id("region_id", request.region_id)
        _, record = await self._read(request.region_id)
        sent = request.after_revision.value if request.HasField("after_revision") else record.revision
        changes = self._regions.watch(region_key(request.region_id), include_current=True)
        try:
            async for change in changes:
                if change.value is None:
                    raise not_found(f"region {request.region_id!r} was removed", "REGION_NOT_FOUND")
                record = RegionRecord.decode(change.value)
                if sent < record.history_base:
                    # Either asked for more than is kept, or this watch fell behind by more
                    # events than a region keeps (a lagging watch may skip stored versions).
                    raise rpc_error(
                        grpc.StatusCode.OUT_OF_RANGE,
                        f"region {request.region_id!r} keeps events after revision {record.history_base} "
                        f"only; list the entities and watch from the revision returned",
                        "HISTORY_EXPIRED",
                    )
                for item in record.history:
                    if item.applied_event.region_revision.value > sent:
                        yield item
                        sent = item.applied_event.region_revision.value
        finally:
            await changes.aclose()

    # -- store access --------------------------------------------------------------------------

    async def _read(self, region_id: str) -> tuple[Entry, RegionRecord]:
        entry = await self._regions.get(region_key(region_id))
        if entry is None:
            raise not_found(f"region {region_id!r} does not exist", "REGION_NOT_FOUND")
        return entry, RegionRecord.decode(entry.value)

    def _now(self) -> timestamp_pb2.Timestamp:
        now = timestamp_pb2.Timestamp()
        now.FromNanoseconds(round(self._clock() * 1e9))
        return now


def _response(item: world_state_pb2.WatchRegionResponse, *, replayed: bool) -> world_state_pb2.ApplyEventResponse:
    return world_state_pb2.ApplyEventResponse(
        applied_event=item.applied_event,
        entity=item.entity if item.HasField("entity") else None,
        replayed=replayed,
    )
