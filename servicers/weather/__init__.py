"""weather-manager: per-region weather from a seeded, deterministic simulation.

The weather of a region is a pure function of the world seed, the region id, its climate and
the game time (see ``_simulation``), so every replica answers the same without sharing state,
and a forecast is exactly what GetWeather will later report. Nothing is stored.

Settings (``deps.settings``):
    world_seed: mixed into every region's seed (default ``"0"``).
    regions: a JSON object of region id -> climate name (``temperate``, ``coastal``, ``arctic``,
        ``alpine``, ``desert``, ``tropical``), e.g. ``{"harbor": "coastal", "peaks": "alpine"}``;
        other ids are NOT_FOUND. Unset: every well-formed id is a region, its climate chosen by
        its seed.
    world_id: when set, game time is that world's clock on the time-manager target (UNAVAILABLE
        when it cannot be reached); unset, game time is ``deps.clock()``.
    stream_interval_seconds: real seconds between two looks at the game time in StreamWeather
        (default 1; tests make it small).
"""

from __future__ import annotations

import json

from gaming.weather.v1 import weather_pb2_grpc

from servicers.dependencies import Dependencies
from servicers.weather._servicer import REGION_ID, WeatherServicer
from servicers.weather._simulation import CLIMATES, Climate

__all__ = ["SERVICE_NAMES", "TARGET", "WeatherServicer", "add_to_server", "configured_regions", "create"]

TARGET = "weather-manager"
SERVICE_NAMES = ("gaming.weather.v1.WeatherService",)


def configured_regions(text: str | None) -> dict[str, Climate] | None:
    """The ``regions`` setting parsed and checked; None when unset.

    Raises:
        ValueError: not a JSON object of valid region ids to known climate names.
    """
    if not text:
        return None
    found = json.loads(text)
    if not isinstance(found, dict):
        raise ValueError("regions must be a JSON object of region id -> climate name")
    regions: dict[str, Climate] = {}
    for region_id, climate in found.items():
        if not REGION_ID.fullmatch(region_id):
            raise ValueError(f"region id {region_id!r} is not 1 to 64 characters of [a-z0-9-]")
        if climate not in CLIMATES:
            raise ValueError(f"region {region_id!r}: unknown climate {climate!r} (known: {sorted(CLIMATES)})")
        regions[region_id] = CLIMATES[climate]
    return regions


async def create(deps: Dependencies) -> WeatherServicer:
    """A weather servicer configured from ``deps.settings`` (it opens no bucket: it has no state)."""
    interval = float(deps.settings.get("stream_interval_seconds", "1"))
    if not interval > 0:
        raise ValueError("stream_interval_seconds must be above 0")
    return WeatherServicer(
        world_seed=deps.settings.get("world_seed", "0"),
        regions=configured_regions(deps.settings.get("regions")),
        clock=deps.clock,
        channel=deps.channel,
        world_id=deps.settings.get("world_id") or None,
        stream_interval=interval,
    )


add_to_server = weather_pb2_grpc.add_WeatherServiceServicer_to_server
