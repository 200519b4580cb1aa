"""WorldStateService: reads, events applied by compare-and-set, and watches, over one KV bucket."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from gaming.common.v1 import common_pb2
from gaming.world_state.v1 import world_state_pb2, world_state_pb2_grpc
from google.protobuf import timestamp_pb2

from servicers.errors import abort, abort_conflict, abort_invalid
from servicers.storage import Change, Entry, KeyValue, RevisionConflict
from servicers.world_state import _paging
from servicers.world_state._record import RegionRecord, region_key
from servicers.world_state._rules import InvalidArgument, RuleBroken, apply_event, check_apply, check_id, trim_history

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

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
        self._regions = regions
        self._clock = clock
        self._max_events = max_events
        self._max_record_bytes = max_record_bytes

    def __repr__(self) -> str:
        return f"<WorldStateServicer regions={self._regions!r} max_events={self._max_events}>"

    async def GetRegion(
        self, request: world_state_pb2.GetRegionRequest, context: grpc.aio.ServicerContext
    ) -> world_state_pb2.GetRegionResponse:
        """The region's metadata and current revision."""
        await _checked(context, check_id, "region_id", request.region_id)
        _, record = await self._read(context, request.region_id)
        return world_state_pb2.GetRegionResponse(region=record.region)

    async def ListEntities(
        self, request: world_state_pb2.ListEntitiesRequest, context: grpc.aio.ServicerContext
    ) -> world_state_pb2.ListEntitiesResponse:
        """One page of the region's entities (of one kind, if asked), ordered by entity id."""
        await _checked(context, check_id, "region_id", request.region_id)
        size = await _checked(context, _paging.page_size, request.page)
        query = (request.region_id, request.kind)
        after = await _checked(context, _paging.decode_token, request.page.page_token, *query)
        _, record = await self._read(context, request.region_id)
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
                next_page_token=_paging.encode_token(page[-1], *query) if more else "",
                total_size=len(matching),
            ),
            region_revision=common_pb2.Revision(value=record.revision),
        )

    async def ApplyEvent(
        self, request: world_state_pb2.ApplyEventRequest, context: grpc.aio.ServicerContext
    ) -> world_state_pb2.ApplyEventResponse:
        """Apply one event atomically; a replayed event id returns the first result."""
        await _checked(context, check_apply, request)
        key = region_key(request.region_id)
        for _ in range(MAX_ATTEMPTS):
            entry, record = await self._read(context, request.region_id)
            # A replay is answered before the revision check: the first call may have moved the
            # region past the revision the client expected, and its retry must still succeed.
            replay = record.find_event(request.event_id.key)
            if replay is not None:
                return _response(replay, replayed=True)
            expected = request.expected_region_revision.value
            if request.HasField("expected_region_revision") and expected != record.revision:
                await abort_conflict(context, RevisionConflict(request.region_id, expected, record.revision), "region")
            try:
                applied = apply_event(record, request, now=self._now(), new_entity_id=lambda: uuid.uuid4().hex)
                trim_history(record, max_events=self._max_events, max_bytes=self._max_record_bytes)
            except RuleBroken as broken:
                await abort(context, broken.code, broken.message, broken.reason)
            try:
                await self._stored(context, self._regions.update(key, record.encode(), entry.revision))
            except RevisionConflict:
                continue  # another event landed first: apply this one to the region as it is now
            return _response(applied, replayed=False)
        await abort(
            context,
            grpc.StatusCode.ABORTED,
            f"region {request.region_id!r} changed under {MAX_ATTEMPTS} attempts in a row; retry",
            "REGION_CONTENDED",
        )

    async def WatchRegion(
        self, request: world_state_pb2.WatchRegionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[world_state_pb2.WatchRegionResponse]:
        """The retained events after ``after_revision`` (or none: "from now on"), then live ones."""
        await _checked(context, check_id, "region_id", request.region_id)
        _, record = await self._read(context, request.region_id)
        sent = request.after_revision.value if request.HasField("after_revision") else record.revision
        changes = self._regions.watch(region_key(request.region_id), include_current=True)
        try:
            while True:
                change = await self._next_change(context, changes)
                if change is None:
                    return
                if change.value is None:
                    await abort(context, grpc.StatusCode.NOT_FOUND, f"region {request.region_id!r} was removed",
                                "REGION_NOT_FOUND")
                record = RegionRecord.decode(change.value)
                if sent < record.history_base:
                    # Either asked for more than is kept, or this watch fell behind by more
                    # events than a region keeps (a lagging watch may skip stored versions).
                    await abort(
                        context,
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
            await _close(changes)

    # -- store access: the one place store failures become UNAVAILABLE -------------------------

    async def _read(self, context: grpc.aio.ServicerContext, region_id: str) -> tuple[Entry, RegionRecord]:
        entry = await self._stored(context, self._regions.get(region_key(region_id)))
        if entry is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"region {region_id!r} does not exist", "REGION_NOT_FOUND")
        return entry, RegionRecord.decode(entry.value)

    async def _stored(self, context: grpc.aio.ServicerContext, operation: Awaitable[_T]) -> _T:
        try:
            return await operation
        except RevisionConflict:
            raise
        except Exception:
            # The storage protocol has no error type of its own: anything but a lost
            # compare-and-set means the store could not answer.
            _log.warning("world-state store call failed", exc_info=True)
            await abort(context, grpc.StatusCode.UNAVAILABLE, "the world-state store is unavailable",
                        "STORE_UNAVAILABLE")

    async def _next_change(self, context: grpc.aio.ServicerContext, changes: AsyncIterator[Change]) -> Change | None:
        try:
            return await anext(changes)
        except StopAsyncIteration:
            return None
        except Exception:
            _log.warning("world-state watch failed", exc_info=True)
            await abort(context, grpc.StatusCode.UNAVAILABLE, "the world-state store is unavailable",
                        "STORE_UNAVAILABLE")

    def _now(self) -> timestamp_pb2.Timestamp:
        now = timestamp_pb2.Timestamp()
        now.FromNanoseconds(round(self._clock() * 1e9))
        return now


async def _checked(context: grpc.aio.ServicerContext, check: Callable[..., _T], *args: Any) -> _T:
    """``check(*args)``, with an InvalidArgument it raises turned into INVALID_ARGUMENT."""
    try:
        return check(*args)
    except InvalidArgument as invalid:
        await abort_invalid(context, invalid.field, invalid.description)


async def _close(changes: AsyncIterator[Change]) -> None:
    """Stop a watch. ``KeyValue.watch`` is typed as returning an AsyncIterator, which promises
    no ``aclose``, though the JetStream one is an async generator that has it."""
    close = getattr(changes, "aclose", None)
    if close is not None:
        await close()


def _response(item: world_state_pb2.WatchRegionResponse, *, replayed: bool) -> world_state_pb2.ApplyEventResponse:
    return world_state_pb2.ApplyEventResponse(
        applied_event=item.applied_event,
        entity=item.entity if item.HasField("entity") else None,
        replayed=replayed,
    )
