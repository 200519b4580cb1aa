"""time-manager: a game clock per world, with a time scale, pause, and day/night phases.

Each world's clock is one KV entry (``clock.<world_id>`` in ``time_manager_clocks``) holding the
real time of its last change, the game time then, the scale and the pause flag. Game time is
computed from those and ``deps.clock``, so every replica reports the same time without writing
per tick; SetScale rewrites the entry by compare-and-set, and StreamTicks watches it so a change
made through any replica reaches every stream at once.

Where clocks come from: ``create()`` makes a clock (day 1, 00:00, running at the default scale)
for each configured world that has none, and SetScale with ``expected_revision`` 0 (the common
Revision's "must not exist yet") creates one for a new world. Otherwise a world without a clock
is NOT_FOUND. Who may call SetScale is declared in time_manager.proto (operators only) and
enforced by the access interceptor; the servicer records the verified caller as the actor.

Interpretations of the proto: ``time_scale`` 0 (unset) in SetScale keeps the current scale, so
pausing or resuming need not restate it; other values outside (0, 10000] are INVALID_ARGUMENT.
The "audit log" of SetScale is a log record (logger ``servicers.time_manager._servicer``).
Game time saturates at the largest Timestamp (year 9999).

Settings (``deps.settings``): ``worlds``, comma-separated world ids to give a clock at start
(default ``main``); ``time_scale``, the scale of new clocks (default 60: an hour per minute);
``clocks_max_bytes`` (default 16 MiB); ``stream_store_check_seconds``, how often a tick stream
re-reads its clock so that a lost store ends it with UNAVAILABLE (default 5: a KV watch alone
goes quiet, not broken, when its connection is lost).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

from gaming.time_manager.v1 import time_manager_pb2_grpc

from servicers.dependencies import Dependencies
from servicers.storage import RevisionConflict
from servicers.time_manager._clock import ClockState, valid_scale
from servicers.time_manager._servicer import STORE_CHECK_SECONDS, WORLD_ID, TimeManagerServicer, clock_key

__all__ = ["SERVICE_NAMES", "TARGET", "TimeManagerServicer", "add_to_server", "create"]

TARGET = "time-manager"
SERVICE_NAMES = ("gaming.time_manager.v1.TimeManagerService",)

CLOCKS_BUCKET = "time_manager_clocks"
DEFAULT_WORLDS = "main"
DEFAULT_SCALE = 60.0


def _worlds(settings: Mapping[str, str]) -> list[str]:
    worlds = [world.strip() for world in settings.get("worlds", DEFAULT_WORLDS).split(",") if world.strip()]
    for world in worlds:
        if not WORLD_ID.fullmatch(world):
            raise ValueError(f"time-manager setting worlds: {world!r} is not 1 to 64 characters of [a-z0-9-]")
    return worlds


def _number(settings: Mapping[str, str], name: str, default: float) -> float:
    text = settings.get(name)
    if text is None:
        return default
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"time-manager setting {name}={text!r} is not a number") from None


async def create(deps: Dependencies) -> TimeManagerServicer:
    """Open (or create) the clocks bucket, give each configured world a clock if it has none,
    and return a ready servicer."""
    scale = _number(deps.settings, "time_scale", DEFAULT_SCALE)
    if not valid_scale(scale):
        raise ValueError(f"time-manager setting time_scale={scale} is outside (0, 10000]")
    max_bytes = int(_number(deps.settings, "clocks_max_bytes", 16 * 1024 * 1024))
    # history=1: readers need only the current clock; the revision is the compare-and-set token.
    clocks = await deps.storage.key_value(CLOCKS_BUCKET, history=1, max_bytes=max_bytes)
    now = deps.clock()
    for world in _worlds(deps.settings):
        # A conflict means the clock exists (a restart, or another replica got there first): keep it.
        with contextlib.suppress(RevisionConflict):
            await clocks.update(clock_key(world), ClockState(now, 0, scale, False).encode(world), 0)
    store_check = _number(deps.settings, "stream_store_check_seconds", STORE_CHECK_SECONDS)
    if not store_check > 0:
        raise ValueError(f"time-manager setting stream_store_check_seconds={store_check} must be positive")
    return TimeManagerServicer(clocks, clock=deps.clock, default_scale=scale, store_check=store_check)


add_to_server = time_manager_pb2_grpc.add_TimeManagerServiceServicer_to_server
