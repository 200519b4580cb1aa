"""The game clock as data: what is stored, and the game time, day and phase it gives at an instant.

A clock is stored as four facts (``ClockState``): the real time of its last change (the epoch),
the game time at that epoch, the scale and whether it is paused. Game time is never stored as it
runs: every replica computes it from those facts and its own clock, so replicas agree without
writing anything per tick. Pure code, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gaming.common.v1 import common_pb2
from gaming.time_manager.v1 import time_manager_pb2 as tm
from google.protobuf import duration_pb2, timestamp_pb2

NS = 1_000_000_000
HOUR_NS = 3600 * NS
DAY_NS = 24 * HOUR_NS
MAX_SCALE = 10_000.0
# Game time uses Timestamp with its epoch (day 1, 00:00) at 0001-01-01T00:00:00Z, which is also
# the smallest Timestamp; the largest (9999-12-31T23:59:59.999999999Z) caps how far it can run.
GAME_EPOCH_SECONDS = -62_135_596_800
MAX_GAME_NS = (253_402_300_799 - GAME_EPOCH_SECONDS) * NS + NS - 1

# (first hour, phase) in order through the day, per DayPhase's documentation in the proto.
_PHASES = ((0, tm.DAY_PHASE_NIGHT), (5, tm.DAY_PHASE_DAWN), (7, tm.DAY_PHASE_DAY), (18, tm.DAY_PHASE_DUSK),
           (20, tm.DAY_PHASE_NIGHT))


def phase_at(game_ns: int) -> tm.DayPhase.ValueType:
    """The day phase a game time falls in: dawn [05:00, 07:00), day [07:00, 18:00), dusk
    [18:00, 20:00), night [20:00, 05:00)."""
    time_of_day = game_ns % DAY_NS
    phase = tm.DAY_PHASE_NIGHT
    for first_hour, candidate in _PHASES:
        if time_of_day >= first_hour * HOUR_NS:
            phase = candidate
    return phase


def day_number(game_ns: int) -> int:
    """The in-game day, starting at 1."""
    return game_ns // DAY_NS + 1


def game_timestamp(game_ns: int) -> timestamp_pb2.Timestamp:
    """Game time (nanoseconds since day 1, 00:00) as the proto's Timestamp."""
    seconds, nanos = divmod(game_ns, NS)
    return timestamp_pb2.Timestamp(seconds=GAME_EPOCH_SECONDS + seconds, nanos=nanos)


def real_timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    """Wall-clock seconds as a Timestamp."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(round(seconds * NS))
    return stamp


def valid_scale(scale: float) -> bool:
    """Whether ``scale`` is in the proto's range (0, 10000] (NaN is not)."""
    return math.isfinite(scale) and 0 < scale <= MAX_SCALE


@dataclass(frozen=True, slots=True)
class ClockState:
    """One world's stored clock.

    Attributes:
        epoch: real (wall-clock) seconds of the last change.
        game_at_epoch: game nanoseconds since day 1, 00:00, at ``epoch``.
        scale: game seconds per real second while running.
        paused: game time stands still at ``game_at_epoch``.
    """

    epoch: float
    game_at_epoch: int
    scale: float
    paused: bool

    def game_ns(self, now: float) -> int:
        """Game time at real time ``now``."""
        if self.paused:
            return self.game_at_epoch
        # A replica whose wall clock lags the writer's must not run game time backwards.
        elapsed = max(now - self.epoch, 0.0)
        return min(self.game_at_epoch + int(elapsed * self.scale * NS), MAX_GAME_NS)

    def changed(self, now: float, *, scale: float, paused: bool) -> ClockState:
        """The clock after a change at ``now``: game time so far is kept, only its rate changes."""
        return ClockState(now, self.game_ns(now), scale, paused)

    def snapshot(self, world_id: str, now: float, revision: int) -> tm.Clock:
        """The clock as GetTime reports it at real time ``now``."""
        game = self.game_ns(now)
        return tm.Clock(
            world_id=world_id,
            game_time=game_timestamp(game),
            time_scale=self.scale,
            paused=self.paused,
            phase=phase_at(game),
            day_number=day_number(game),
            day_length=duration_pb2.Duration(seconds=DAY_NS // NS),
            real_time=real_timestamp(now),
            revision=common_pb2.Revision(value=revision),
        )

    def encode(self, world_id: str) -> bytes:
        """The stored form: a Clock whose ``real_time`` is the epoch and ``game_time`` the game
        time at the epoch (the other fields are derived, so left unset)."""
        stored = tm.Clock(world_id=world_id, game_time=game_timestamp(self.game_at_epoch), time_scale=self.scale,
                          paused=self.paused, real_time=real_timestamp(self.epoch))
        return stored.SerializeToString(deterministic=True)

    @classmethod
    def decode(cls, data: bytes) -> ClockState:
        """The state stored as ``data``."""
        stored = tm.Clock.FromString(data)
        game = (stored.game_time.seconds - GAME_EPOCH_SECONDS) * NS + stored.game_time.nanos
        return cls(stored.real_time.ToNanoseconds() / NS, game, stored.time_scale, stored.paused)
