"""time-manager over NATS: game time from a stored clock and a (fake) wall clock, day phases,
scale and pause changes, replicas that agree, tick streams, and state that outlives the servicer."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
import nats
import pytest
from gaming.time_manager.v1 import time_manager_pb2 as tm
from gaming.time_manager.v1 import time_manager_pb2_grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nats.aio.client import Client

from mesh.jetstream_storage import JetStreamStorage
from nats_transport.testing import NatsServer
from servicers import time_manager
from servicers.dependencies import Dependencies
from servicers.time_manager._clock import HOUR_NS, NS, ClockState, day_number, game_timestamp, phase_at
from tests._serving import served
from tests._waiting import wait_for

if TYPE_CHECKING:  # the async stub type exists only in the generated .pyi
    Stub: TypeAlias = time_manager_pb2_grpc.TimeManagerServiceAsyncStub

START = 1_700_000_000.0
SETTINGS = {"worlds": "alpha,beta-2", "time_scale": "60", "clocks_max_bytes": str(1024 * 1024)}
NIGHT, DAWN, DAY, DUSK = tm.DAY_PHASE_NIGHT, tm.DAY_PHASE_DAWN, tm.DAY_PHASE_DAY, tm.DAY_PHASE_DUSK


class FakeClock:
    """Wall-clock seconds that move only when the test says so."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class ShiftedClock:
    """The real wall clock, plus a jump the test may add (game time leaps, ticks stay real)."""

    def __init__(self) -> None:
        self.shift = 0.0

    def __call__(self) -> float:
        return time.time() + self.shift


def no_channel(target: str) -> Any:
    raise AssertionError(f"time-manager calls no other service (asked for {target!r})")


def deps(storage: Any, clock: Any, **settings: str) -> Dependencies:
    return Dependencies(storage=storage, channel=no_channel, settings={**SETTINGS, **settings}, clock=clock)


@contextlib.asynccontextmanager
async def clocks(nc: Client, storage: Any, clock: Any, **settings: str) -> AsyncIterator[Stub]:
    servicer = await time_manager.create(deps(storage, clock, **settings))
    async with served(nc, time_manager.add_to_server, servicer) as channel:
        yield time_manager_pb2_grpc.TimeManagerServiceStub(channel)


@pytest.fixture
def fake() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def stub(nc: Client, storage: JetStreamStorage, fake: FakeClock) -> AsyncIterator[Stub]:
    async with clocks(nc, storage, fake) as stub:
        yield stub


async def rpc_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def bad_field(err: grpc.aio.AioRpcError) -> str:
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    status = rpc_status.from_call(err)
    assert status is not None
    violations = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(violations)
    return violations.field_violations[0].field


async def clock_of(stub: Stub, world: str = "alpha") -> tm.Clock:
    return (await stub.GetTime(tm.GetTimeRequest(world_id=world), timeout=10)).clock


def game_ns(clock: tm.Clock | tm.StreamTicksResponse) -> int:
    """Game nanoseconds since day 1, 00:00."""
    return clock.game_time.ToNanoseconds() - game_timestamp(0).ToNanoseconds()


def game_seconds(clock: tm.Clock | tm.StreamTicksResponse) -> float:
    return game_ns(clock) / NS


async def set_scale(stub: Stub, world: str = "alpha", scale: float = 0, paused: bool = False,
                    expected: int | None = None, reason: str = "test") -> tm.SetScaleResponse:
    request = tm.SetScaleRequest(world_id=world, time_scale=scale, paused=paused, reason=reason)
    if expected is not None:
        request.expected_revision.value = expected
    return await stub.SetScale(request, timeout=10)


# -- the clock as data -----------------------------------------------------------------------------


@pytest.mark.parametrize(("hour", "phase"), [
    (0, NIGHT), (4.9999, NIGHT), (5, DAWN), (6.99, DAWN), (7, DAY), (12, DAY), (17.99, DAY), (18, DUSK),
    (19.99, DUSK), (20, NIGHT), (23.99, NIGHT), (24 + 5, DAWN), (24 * 30 + 19, DUSK),
])
def test_phases_follow_the_game_hour_as_the_proto_documents(hour: float, phase: int) -> None:
    assert phase_at(int(hour * HOUR_NS)) == phase


@pytest.mark.parametrize(("hours", "day"), [(0, 1), (23.99, 1), (24, 2), (24 * 365, 366)])
def test_days_are_numbered_from_one(hours: float, day: int) -> None:
    assert day_number(int(hours * HOUR_NS)) == day


def test_game_time_zero_is_day_one_midnight_of_year_one() -> None:
    assert game_timestamp(0).ToJsonString() == "0001-01-01T00:00:00Z"
    assert game_timestamp(HOUR_NS * 30 + 5).ToJsonString() == "0001-01-02T06:00:00.000000005Z"


def test_game_time_runs_at_the_scale_stands_still_when_paused_and_never_runs_backwards() -> None:
    running = ClockState(epoch=100.0, game_at_epoch=HOUR_NS, scale=60, paused=False)
    assert running.game_ns(160.0) == 2 * HOUR_NS
    assert running.game_ns(40.0) == HOUR_NS  # a lagging replica's clock
    assert ClockState(100.0, HOUR_NS, 60, True).game_ns(10_000.0) == HOUR_NS
    changed = running.changed(220.0, scale=120, paused=False)
    assert (changed.game_at_epoch, changed.game_ns(250.0)) == (3 * HOUR_NS, 4 * HOUR_NS)
    assert ClockState.decode(changed.encode("w")) == changed


# -- GetTime ---------------------------------------------------------------------------------------


async def test_a_configured_world_starts_on_day_one_at_midnight_at_the_configured_scale(stub: Stub) -> None:
    clock = await clock_of(stub)
    assert clock.world_id == "alpha"
    assert clock.game_time.ToJsonString() == "0001-01-01T00:00:00Z"
    assert (clock.time_scale, clock.paused, clock.phase, clock.day_number) == (60, False, NIGHT, 1)
    assert clock.day_length == duration_pb2.Duration(seconds=86_400)
    assert clock.real_time.ToNanoseconds() == int(START * NS)
    assert clock.revision.value > 0
    assert (await clock_of(stub, "beta-2")).world_id == "beta-2"


@pytest.mark.parametrize(("real_minutes", "phase", "day"), [
    (4.99, NIGHT, 1), (5, DAWN, 1), (7, DAY, 1), (18, DUSK, 1), (20, NIGHT, 1), (24, NIGHT, 2), (24 + 6, DAWN, 2),
])
async def test_game_time_and_phase_follow_the_wall_clock_at_the_scale(
    stub: Stub, fake: FakeClock, real_minutes: float, phase: int, day: int
) -> None:
    fake.now = START + real_minutes * 60  # scale 60: a game hour per real minute
    clock = await clock_of(stub)
    assert game_seconds(clock) == pytest.approx(real_minutes * 3600)
    assert (clock.phase, clock.day_number) == (phase, day)


@pytest.mark.parametrize("world", ["", "Alpha", "a" * 65, "bad_id", "a.b"])
async def test_a_malformed_world_id_is_invalid_argument(stub: Stub, world: str) -> None:
    assert bad_field(await rpc_error(stub.GetTime(tm.GetTimeRequest(world_id=world), timeout=10))) == "world_id"


async def test_a_world_without_a_clock_is_not_found(stub: Stub) -> None:
    err = await rpc_error(stub.GetTime(tm.GetTimeRequest(world_id="nowhere"), timeout=10))
    assert err.code() == grpc.StatusCode.NOT_FOUND


# -- SetScale --------------------------------------------------------------------------------------


async def test_set_scale_keeps_the_game_time_and_changes_only_the_rate(stub: Stub, fake: FakeClock) -> None:
    fake.now = START + 60  # 01:00
    before = await clock_of(stub)
    response = await set_scale(stub, scale=120, reason="festival")
    assert game_seconds(response.clock) == 3600
    assert response.clock.time_scale == 120
    assert response.clock.revision.value > before.revision.value
    assert response.audit.update_time.ToNanoseconds() == int(fake.now * NS)
    fake.now += 60
    assert game_seconds(await clock_of(stub)) == 3600 + 2 * 3600


async def test_pause_freezes_game_time_and_resume_continues_from_there(stub: Stub, fake: FakeClock) -> None:
    fake.now = START + 90
    paused = (await set_scale(stub, paused=True)).clock
    assert (paused.paused, paused.time_scale) == (True, 60)  # scale 0 keeps the current scale
    fake.now += 600
    assert game_seconds(await clock_of(stub)) == 90 * 60
    assert (await set_scale(stub, paused=False)).clock.paused is False
    fake.now += 1
    assert game_seconds(await clock_of(stub)) == 90 * 60 + 60


@pytest.mark.parametrize("scale", [-1.0, 10_000.001, math.nan, math.inf, -math.inf])
async def test_a_scale_out_of_range_is_invalid_argument(stub: Stub, scale: float) -> None:
    assert bad_field(await rpc_error(set_scale(stub, scale=scale))) == "time_scale"


async def test_the_largest_scale_is_accepted(stub: Stub) -> None:
    assert (await set_scale(stub, scale=10_000)).clock.time_scale == 10_000


async def test_a_reason_over_256_characters_is_invalid_argument(stub: Stub) -> None:
    assert bad_field(await rpc_error(set_scale(stub, scale=2, reason="x" * 257))) == "reason"


async def test_set_scale_on_a_world_without_a_clock_is_not_found(stub: Stub) -> None:
    assert (await rpc_error(set_scale(stub, "nowhere", 2))).code() == grpc.StatusCode.NOT_FOUND
    assert (await rpc_error(set_scale(stub, "nowhere", 2, expected=3))).code() == grpc.StatusCode.NOT_FOUND


async def test_expected_revision_zero_creates_the_clock_of_a_new_world(stub: Stub, fake: FakeClock) -> None:
    created = (await set_scale(stub, "gamma", 30, expected=0)).clock
    assert (game_seconds(created), created.time_scale, created.day_number) == (0, 30, 1)
    fake.now += 2
    assert game_seconds(await clock_of(stub, "gamma")) == 60
    default = (await set_scale(stub, "delta", expected=0)).clock
    assert default.time_scale == 60  # scale 0: the configured default


def conflict_revisions(err: grpc.aio.AioRpcError) -> tuple[str, str]:
    assert err.code() == grpc.StatusCode.ABORTED, err
    status = rpc_status.from_call(err)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info.metadata["expected_revision"], info.metadata["current_revision"]


async def test_a_stale_expected_revision_is_aborted_with_the_current_revision(stub: Stub) -> None:
    revision = (await clock_of(stub)).revision.value
    changed = await set_scale(stub, scale=2, expected=revision)
    assert changed.clock.revision.value > revision
    err = await rpc_error(set_scale(stub, scale=3, expected=revision))
    assert conflict_revisions(err) == (str(revision), str(changed.clock.revision.value))
    err = await rpc_error(set_scale(stub, scale=3, expected=0))  # "must not exist yet"
    assert conflict_revisions(err) == ("0", str(changed.clock.revision.value))
    assert (await clock_of(stub)).time_scale == 2


async def test_concurrent_unconditional_changes_all_apply_one_revision_at_a_time(stub: Stub) -> None:
    start = (await clock_of(stub)).revision.value
    responses = await asyncio.gather(*(set_scale(stub, scale=n) for n in range(1, 11)))
    revisions = sorted(r.clock.revision.value for r in responses)
    assert len(set(revisions)) == 10
    assert revisions[0] > start
    last = max(responses, key=lambda r: r.clock.revision.value)
    assert (await clock_of(stub)).time_scale == last.clock.time_scale


async def test_replicas_on_one_store_report_the_same_clock(nc: Client, storage: Any, fake: FakeClock) -> None:
    async with clocks(nc, storage, fake) as one, clocks(nc, storage, fake) as two:
        fake.now += 123
        await set_scale(one, scale=500)
        fake.now += 7
        first, second = await clock_of(one), await clock_of(two)
        assert first == second
        assert game_seconds(second) == 123 * 60 + 7 * 500


# -- StreamTicks -----------------------------------------------------------------------------------


async def read(call: Any) -> tm.StreamTicksResponse:
    tick = await asyncio.wait_for(call.read(), 5)
    assert isinstance(tick, tm.StreamTicksResponse), tick
    return tick


def ticks(stub: Stub, world: str = "alpha", interval_seconds: int = 60) -> Any:
    request = tm.StreamTicksRequest(world_id=world, tick_interval=duration_pb2.Duration(seconds=interval_seconds))
    return stub.StreamTicks(request, timeout=20)


@pytest.fixture
def shifted() -> ShiftedClock:
    return ShiftedClock()


async def test_ticks_come_every_interval_of_game_time_starting_with_a_snapshot(
    nc: Client, storage: Any, shifted: ShiftedClock
) -> None:
    # Scale 1200 and a 60 s interval: a tick every 50 ms of real time.
    async with clocks(nc, storage, shifted, time_scale="1200") as stub:
        call = ticks(stub)
        received = [await read(call) for _ in range(4)]
        call.cancel()
    assert [tick.sequence for tick in received] == [0, 1, 2, 3]
    first = received[0]
    assert (first.phase, first.phase_changed, first.previous_phase) == (NIGHT, False, tm.DAY_PHASE_UNSPECIFIED)
    assert (first.time_scale, first.paused, first.day_number) == (1200, False, 1)
    steps = [game_ns(b) - game_ns(a) for a, b in itertools.pairwise(received)]
    # On the 60 s grid from the opening tick; a late wake-up may coalesce two steps into one.
    assert all(step > 0 and step % (60 * NS) == 0 for step in steps), steps


async def test_a_tick_crossing_into_dawn_flags_the_phase_change(nc: Client, storage: Any,
                                                                 shifted: ShiftedClock) -> None:
    async with clocks(nc, storage, shifted, time_scale="1200") as stub:
        # Jump the wall clock so the game reads 04:58: dawn is two game minutes (100 ms) away.
        shifted.shift += (4 * 3600 + 58 * 60 - game_seconds(await clock_of(stub))) / 1200
        call = ticks(stub)
        seen = [await read(call)]
        while not seen[-1].phase_changed and len(seen) < 40:
            seen.append(await read(call))
        call.cancel()
    assert seen[-1].phase_changed, [(t.sequence, t.phase) for t in seen]
    assert (seen[-1].previous_phase, seen[-1].phase) == (NIGHT, DAWN)
    assert all(tick.phase == NIGHT and not tick.phase_changed for tick in seen[:-1])


async def test_a_scale_or_pause_change_sends_a_tick_at_once(nc: Client, storage: Any, shifted: ShiftedClock) -> None:
    # Scale 1 and an hour's interval: no regular tick would come for an hour of real time.
    async with clocks(nc, storage, shifted, time_scale="1") as stub:
        call = ticks(stub, interval_seconds=3600)
        opening = await read(call)
        await set_scale(stub, scale=2)
        faster = await read(call)
        assert (faster.sequence, faster.time_scale, faster.paused, faster.phase_changed) == (1, 2, False, False)
        assert game_ns(faster) >= game_ns(opening)
        await set_scale(stub, paused=True)
        paused = await read(call)
        assert (paused.sequence, paused.paused) == (2, True)
        await set_scale(stub, paused=True)  # no change: no tick
        await set_scale(stub, scale=1200, paused=True)  # a rate change while paused still reports
        assert ((tick := await read(call)).sequence, tick.paused, tick.time_scale) == (3, True, 1200)
        assert tick.game_time == paused.game_time
        await set_scale(stub, scale=1, paused=False)
        resumed = await read(call)
        assert (resumed.sequence, resumed.paused, resumed.time_scale) == (4, False, 1)
        call.cancel()


async def test_no_ticks_are_sent_while_the_clock_is_paused(nc: Client, storage: Any, shifted: ShiftedClock) -> None:
    async with clocks(nc, storage, shifted, time_scale="1200") as stub:
        call = ticks(stub)  # a tick every 50 ms while running
        await read(call)
        await set_scale(stub, paused=True)
        paused = await read(call)
        while not paused.paused:  # regular ticks sent before the pause landed
            paused = await read(call)
        following = asyncio.ensure_future(read(call))
        # Proving an absence takes time: five tick periods pass without a tick.
        done, _ = await asyncio.wait({following}, timeout=0.25)
        assert not done
        await set_scale(stub, paused=False)
        resumed = await following
        assert (resumed.sequence, resumed.paused) == (paused.sequence + 1, False)
        assert game_ns(resumed) >= game_ns(paused)
        call.cancel()


@pytest.mark.parametrize("interval", [None, duration_pb2.Duration(nanos=999_999_999),
                                      duration_pb2.Duration(seconds=86_401), duration_pb2.Duration(seconds=-5)])
async def test_a_tick_interval_out_of_range_is_invalid_argument(stub: Stub, interval: Any) -> None:
    request = tm.StreamTicksRequest(world_id="alpha", tick_interval=interval)
    call = stub.StreamTicks(request, timeout=10)
    assert bad_field(await rpc_error(call.read())) == "tick_interval"


@pytest.mark.parametrize(("world", "code"), [("nowhere", grpc.StatusCode.NOT_FOUND),
                                             ("Bad", grpc.StatusCode.INVALID_ARGUMENT)])
async def test_streaming_ticks_of_a_missing_or_malformed_world_fails(stub: Stub, world: str,
                                                                     code: grpc.StatusCode) -> None:
    err = await rpc_error(ticks(stub, world).read())
    assert err.code() == code


async def test_a_change_through_another_replica_reaches_the_stream(nc: Client, storage: Any,
                                                                    shifted: ShiftedClock) -> None:
    async with clocks(nc, storage, shifted, time_scale="1") as one, clocks(nc, storage, shifted) as two:
        call = ticks(one, interval_seconds=3600)
        await read(call)
        await set_scale(two, scale=7)
        assert (await read(call)).time_scale == 7
        call.cancel()


# -- durability and failures -----------------------------------------------------------------------


async def test_a_restart_keeps_acknowledged_state(nc: Client, nats_server: NatsServer, fake: FakeClock) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}_"
    async with clocks(nc, JetStreamStorage(nc, prefix=prefix), fake) as stub:
        fake.now += 60
        await set_scale(stub, scale=240, reason="before restart")
        await set_scale(stub, "gamma", 5, expected=0)
        before = await clock_of(stub)
    fake.now += 30
    nc2 = await nats.connect(nats_server.url, max_reconnect_attempts=0)
    try:
        async with clocks(nc2, JetStreamStorage(nc2, prefix=prefix), fake) as stub:
            after = await clock_of(stub)
            assert (after.time_scale, after.revision) == (240, before.revision)
            assert game_seconds(after) == 3600 + 30 * 240
            assert (await clock_of(stub, "gamma")).time_scale == 5
    finally:
        await nc2.close()


async def test_an_unreachable_store_is_unavailable(nc: Client, nats_server: NatsServer, fake: FakeClock) -> None:
    store_connection = await nats.connect(nats_server.url, max_reconnect_attempts=0)
    servicer = await time_manager.create(deps(JetStreamStorage(store_connection, prefix=f"t{uuid.uuid4().hex[:8]}_"),
                                              fake))
    async with served(nc, time_manager.add_to_server, servicer) as channel:
        stub = time_manager_pb2_grpc.TimeManagerServiceStub(channel)
        await clock_of(stub)
        await store_connection.close()
        for call in (clock_of(stub), set_scale(stub, scale=2), ticks(stub).read()):
            assert (await rpc_error(call)).code() == grpc.StatusCode.UNAVAILABLE


async def test_a_stream_whose_store_goes_away_ends_unavailable(nc: Client, nats_server: NatsServer,
                                                               fake: FakeClock) -> None:
    store_connection = await nats.connect(nats_server.url, max_reconnect_attempts=0)
    servicer = await time_manager.create(deps(JetStreamStorage(store_connection, prefix=f"t{uuid.uuid4().hex[:8]}_"),
                                              fake, time_scale="1", stream_store_check_seconds="0.05"))
    async with served(nc, time_manager.add_to_server, servicer) as channel:
        stub = time_manager_pb2_grpc.TimeManagerServiceStub(channel)
        call = ticks(stub, interval_seconds=3600)
        await read(call)
        await set_scale(stub, scale=2)
        await read(call)  # the change came through the watch: it is established
        await store_connection.close()
        assert (await rpc_error(call.read())).code() == grpc.StatusCode.UNAVAILABLE



class WatchCounting:
    """Storage whose buckets count the watches open on them."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.open = 0

    async def key_value(self, name: str, **limits: Any) -> Any:
        return _CountedBucket(await self._inner.key_value(name, **limits), self)


class _CountedBucket:
    def __init__(self, inner: Any, counter: WatchCounting) -> None:
        self._inner = inner
        self._counter = counter

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def watch(self, pattern: str, *, include_current: bool = True) -> AsyncIterator[Any]:
        self._counter.open += 1
        try:
            async for change in self._inner.watch(pattern, include_current=include_current):
                yield change
        finally:
            self._counter.open -= 1


async def test_cancelling_a_tick_stream_closes_its_watch(nc: Client, storage: Any, shifted: ShiftedClock) -> None:
    counting = WatchCounting(storage)
    async with clocks(nc, counting, shifted, time_scale="1") as stub:
        call = ticks(stub, interval_seconds=3600)
        await read(call)
        await wait_for(lambda: counting.open == 1)
        call.cancel()
        await wait_for(lambda: counting.open == 0)
