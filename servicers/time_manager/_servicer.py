"""TimeManagerService over gRPC: reading, changing and following the stored game clocks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

from gaming.common.v1 import common_pb2
from gaming.time_manager.v1 import time_manager_pb2 as tm
from gaming.time_manager.v1 import time_manager_pb2_grpc

from servicers.auth.call_identity import audit_actor
from servicers.errors import invalid_argument, not_found, revision_conflict
from servicers.named_store import NamedStore
from servicers.storage import Change, Entry, KeyValue, RevisionConflict
from servicers.time_manager._clock import (
    DAY_NS,
    NS,
    ClockState,
    day_number,
    game_timestamp,
    phase_at,
    real_timestamp,
    valid_scale,
)

_log = logging.getLogger(__name__)

WORLD_ID = re.compile(r"[a-z0-9-]{1,64}")  # also a valid KV key token as it stands
MAX_REASON_CHARS = 256
MIN_TICK_GAP = 0.05  # real seconds: faster ticks are coalesced, as the proto says
STORE_CHECK_SECONDS = 5.0  # how often a tick stream re-reads its clock to notice a lost store
SET_ATTEMPTS = 50  # unconditional SetScale re-applies on a fresh read after losing a race


def clock_key(world_id: str) -> str:
    """The KV key of a world's clock."""
    return f"clock.{world_id}"


def _check_world(world_id: str) -> None:
    if not WORLD_ID.fullmatch(world_id):
        raise invalid_argument("world_id", "1 to 64 characters of [a-z0-9-]")


class _Ticker:
    """The ticks of one StreamTicks call: numbering, phase changes, and when the next is due.

    Regular ticks fall on a grid of game times, ``anchor + k * interval`` from the opening tick;
    when the real time between two would be under ``MIN_TICK_GAP``, the skipped grid points are
    coalesced into the latest one.
    """

    def __init__(self, interval_ns: int, monotonic: Callable[[], float]) -> None:
        self._interval = interval_ns
        self._monotonic = monotonic
        self._sequence = 0
        self._previous: tm.DayPhase.ValueType = tm.DAY_PHASE_UNSPECIFIED
        self._anchor = 0
        self._last_game = 0
        self._last_sent = -math.inf

    def tick(self, state: ClockState, game_ns: int) -> tm.StreamTicksResponse:
        """The next tick, at game time ``game_ns``."""
        phase = phase_at(game_ns)
        response = tm.StreamTicksResponse(
            sequence=self._sequence,
            game_time=game_timestamp(game_ns),
            phase=phase,
            phase_changed=self._sequence > 0 and phase != self._previous,
            previous_phase=self._previous,
            day_number=day_number(game_ns),
            time_scale=state.scale,
            paused=state.paused,
        )
        if self._sequence == 0:
            self._anchor = game_ns
        self._sequence += 1
        self._previous = phase
        self._last_game = game_ns
        self._last_sent = self._monotonic()
        return response

    def _next_due(self) -> int:
        return self._anchor + ((self._last_game - self._anchor) // self._interval + 1) * self._interval

    def wait(self, state: ClockState, game_ns: int) -> float | None:
        """Real seconds until the next regular tick; None while paused (only a change wakes us)."""
        if state.paused:
            return None
        until_due = (self._next_due() - game_ns) / NS / state.scale
        return max(until_due, self._last_sent + MIN_TICK_GAP - self._monotonic(), 0.0)

    def due(self, game_ns: int) -> int | None:
        """The game time of the regular tick to send at ``game_ns``, or None if none is due yet."""
        if game_ns < self._next_due():
            return None
        return self._anchor + (game_ns - self._anchor) // self._interval * self._interval


class TimeManagerServicer(time_manager_pb2_grpc.TimeManagerServiceServicer):
    """Game clocks per world, stored in KV and computed from the injected wall clock."""

    def __init__(self, clocks: KeyValue, *, clock: Callable[[], float], default_scale: float,
                 store_check: float = STORE_CHECK_SECONDS) -> None:
        # A store outage is UNAVAILABLE, as time_manager.proto promises, with a message naming the store.
        self._clocks = NamedStore(clocks, "the clock store is unavailable")
        self._clock = clock
        self._default_scale = default_scale
        self._store_check = store_check

    def __repr__(self) -> str:
        return f"<TimeManagerServicer clocks={self._clocks!r} default_scale={self._default_scale}>"

    async def _get(self, world_id: str) -> Entry | None:
        return await self._clocks.get(clock_key(world_id))

    async def _existing(self, world_id: str) -> Entry:
        entry = await self._get(world_id)
        if entry is None:
            raise not_found(f"world {world_id!r} has no clock", "CLOCK_NOT_FOUND")
        return entry

    async def GetTime(self, request: tm.GetTimeRequest, context: Any) -> tm.GetTimeResponse:
        """The clock of a world, now."""
        _check_world(request.world_id)
        entry = await self._existing(request.world_id)
        state = ClockState.decode(entry.value)
        return tm.GetTimeResponse(clock=state.snapshot(request.world_id, self._clock(), entry.revision))

    async def SetScale(self, request: tm.SetScaleRequest, context: Any) -> tm.SetScaleResponse:
        """Change the scale and/or pause state, keeping the game time reached so far.

        ``time_scale`` 0 (unset) keeps the current scale, so a pause or resume need not know it.
        ``expected_revision`` 0 on a world without a clock creates one.
        """
        world = request.world_id
        _check_world(world)
        if request.time_scale != 0 and not valid_scale(request.time_scale):
            raise invalid_argument("time_scale", "game seconds per real second, in (0, 10000]")
        if len(request.reason) > MAX_REASON_CHARS:
            raise invalid_argument("reason", f"at most {MAX_REASON_CHARS} characters")
        expected = request.expected_revision.value if request.HasField("expected_revision") else None
        for attempt in range(SET_ATTEMPTS):
            entry = await self._get(world)
            current = entry.revision if entry else 0
            if entry is None and expected != 0:
                raise not_found(f"world {world!r} has no clock", "CLOCK_NOT_FOUND")
            if expected is not None and expected != current:
                raise revision_conflict(RevisionConflict(clock_key(world), expected, current), "clock")
            now = self._clock()
            if entry is None:
                state = ClockState(now, 0, request.time_scale or self._default_scale, request.paused)
            else:
                old = ClockState.decode(entry.value)
                state = old.changed(now, scale=request.time_scale or old.scale, paused=request.paused)
            try:
                revision = await self._clocks.update(clock_key(world), state.encode(world), current)
            except RevisionConflict as conflict:
                if expected is not None or attempt + 1 == SET_ATTEMPTS:
                    raise revision_conflict(conflict, "clock") from conflict
                continue  # unconditional: apply the change on top of the winner's
            break
        actor = audit_actor()  # the verified caller: SetScale is for operators only
        # The audit log: who changed which clock, to what, and why.
        _log.info("clock %s set to scale %g%s at revision %d by %s: %s", world, state.scale,
                  " (paused)" if state.paused else "", revision, actor or "an unauthenticated caller", request.reason)
        return tm.SetScaleResponse(
            clock=state.snapshot(world, now, revision),
            audit=common_pb2.AuditInfo(actor_id=actor, update_time=real_timestamp(now)),
        )

    async def StreamTicks(self, request: tm.StreamTicksRequest, context: Any) -> AsyncIterator[tm.StreamTicksResponse]:
        """A tick per ``tick_interval`` of game time, and one at once on each scale or pause change."""
        world = request.world_id
        _check_world(world)
        interval = request.tick_interval.ToNanoseconds() if request.HasField("tick_interval") else 0
        if not NS <= interval <= DAY_NS:
            raise invalid_argument("tick_interval", "from 1 second to 24 hours of game time")
        entry = await self._existing(world)
        state, revision = ClockState.decode(entry.value), entry.revision
        monotonic = asyncio.get_running_loop().time
        ticker = _Ticker(interval, monotonic)
        # Opened after the read, with the current value first: a change made in between is seen.
        changes = self._clocks.watch(clock_key(world))
        pending: asyncio.Future[Change] = asyncio.ensure_future(anext(changes))
        next_check = monotonic() + self._store_check
        try:
            yield ticker.tick(state, state.game_ns(self._clock()))
            while True:
                timeout = ticker.wait(state, state.game_ns(self._clock()))
                check_in = max(next_check - monotonic(), 0.0)
                done, _ = await asyncio.wait({pending}, timeout=check_in if timeout is None else min(timeout, check_in))
                if pending in done:
                    try:
                        change = pending.result()
                    except StopAsyncIteration:  # a watch ends only when the store is gone
                        raise self._clocks.outage() from None
                    pending = asyncio.ensure_future(anext(changes))
                    value, version = change.value, change.revision
                elif monotonic() >= next_check:
                    # A watch does not notice a lost store connection (it just goes quiet), so
                    # read the clock now and then: a failure ends the stream with UNAVAILABLE.
                    found = await self._get(world)
                    next_check = monotonic() + self._store_check
                    value, version = (found.value, found.revision) if found else (None, revision)
                else:
                    due = ticker.due(state.game_ns(self._clock()))
                    if due is not None:
                        yield ticker.tick(state, due)
                    continue
                if value is None:
                    raise not_found(f"the clock of {world!r} was deleted", "CLOCK_NOT_FOUND")
                if version <= revision:
                    continue  # already known (the value read before the watch opened, or a check)
                new = ClockState.decode(value)
                changed = (new.scale, new.paused) != (state.scale, state.paused)
                state, revision = new, version
                if changed:
                    yield ticker.tick(state, state.game_ns(self._clock()))
        finally:
            pending.cancel()
            # The cancelled read ends the watch generator; whatever it raised no longer matters.
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, Exception):
                await pending
            await changes.aclose()
