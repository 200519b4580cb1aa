"""environmental-narrative: ambient descriptions of a region from its weather, time and entities.

Each description asks four things at once (``asyncio.gather``): world-state's GetRegion and
ListEntities for the region, weather-manager's GetWeather for it, and time-manager's GetTime for
the configured world. Each call gets ``DEPENDENCY_SHARE`` (3/4) of the caller's remaining
deadline, capped by ``dependency_timeout_seconds``, so a dead or slow dependency costs at most
one share and the answer still arrives in time. The text comes from fixed templates (see
``templates`` for the phrases and ``_compose`` for how inputs become sentences): the same inputs
always give the same text, so replicas agree and nothing is stored. The service keeps no state.

When a dependency fails (a documented choice, tested):
    world-state: the call fails. NOT_FOUND stays NOT_FOUND (unknown region); anything else
        (down, too slow, failing) is UNAVAILABLE naming world-state, since without the region
        there is nothing to describe.
    weather-manager or time-manager: the description is degraded, not failed. The weather
        sentences (or the time-of-day ones) are left out, ``inputs`` reports the input as
        UNSPECIFIED (the proto's "unknown"), and Describe's trailing metadata carries
        ``narrative-degraded: weather-manager`` (comma-separated when both are missing).
        In StreamAmbience the same degraded line is sent when it is a change, and the full one
        again when the dependency is back: the proto's "UNAVAILABLE if a dependency is down" is
        read as world-state only, as for Describe.
    The proto also names ai-integration: this version writes from templates and never calls it.

Localisation: templates exist for ``en`` and ``fr``; any other language falls back to ``en``.
The language used is sent as ``content-language`` metadata (Describe: trailing; StreamAmbience:
initial). Entity names use the requested language (``name_<language>`` attributes) even when the
templates fall back.

StreamAmbience polls the dependencies every ``interval`` and sends a line only when the weather
condition, the day phase or the set of notable entities (ids, names, kinds) changed; entity
moves and other world events do not count. It runs until the client cancels, or ends with
NOT_FOUND / UNAVAILABLE when world-state says so.

Settings (``deps.settings``):
    world_id: the time-manager world whose clock gives the day phase (default ``main``).
    dependency_timeout_seconds: the longest one dependency call may take (default 2).
    min_interval_seconds: the shortest StreamAmbience interval accepted (default 1, the proto's
        bound; tests lower it so streams poll fast).
    entities_scanned: how many entities, the first by id, are read to pick the notable ones
        (default 200, at most 1000, ListEntities' page limit).
"""

from __future__ import annotations

from collections.abc import Mapping

from gaming.environmental_narrative.v1 import environmental_narrative_pb2_grpc

from servicers.dependencies import Dependencies
from servicers.environmental_narrative._servicer import (
    DEGRADED_KEY,
    DEPENDENCY_SHARE,
    LANGUAGE_KEY,
    TIME,
    WEATHER,
    WORLD_STATE,
    EnvironmentalNarrativeServicer,
)

__all__ = [
    "DEGRADED_KEY", "DEPENDENCY_SHARE", "LANGUAGE_KEY", "SERVICE_NAMES", "TARGET", "TIME", "WEATHER", "WORLD_STATE",
    "EnvironmentalNarrativeServicer", "add_to_server", "create",
]

TARGET = "environmental-narrative"
SERVICE_NAMES = ("gaming.environmental_narrative.v1.EnvironmentalNarrativeService",)
add_to_server = environmental_narrative_pb2_grpc.add_EnvironmentalNarrativeServiceServicer_to_server

DEFAULT_WORLD = "main"
MAX_ENTITIES_SCANNED = 1000


def _positive(settings: Mapping[str, str], name: str, default: float) -> float:
    text = settings.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"environmental-narrative setting {name}={text!r} is not a number") from None
    if not value > 0:
        raise ValueError(f"environmental-narrative setting {name}={text!r} must be positive")
    return value


async def create(deps: Dependencies) -> EnvironmentalNarrativeServicer:
    """A servicer configured from ``deps.settings`` (it opens no bucket: it keeps no state).

    Raises:
        ValueError: a setting is malformed (fail at start-up, not at the first call).
    """
    scanned = _positive(deps.settings, "entities_scanned", 200)
    if scanned != int(scanned) or scanned > MAX_ENTITIES_SCANNED:
        raise ValueError(f"environmental-narrative setting entities_scanned must be an integer from 1 to "
                         f"{MAX_ENTITIES_SCANNED}")
    world_id = deps.settings.get("world_id", DEFAULT_WORLD)
    if not world_id:
        raise ValueError("environmental-narrative setting world_id must not be empty")
    return EnvironmentalNarrativeServicer(
        channel=deps.channel,
        clock=deps.clock,
        world_id=world_id,
        dependency_timeout=_positive(deps.settings, "dependency_timeout_seconds", 2.0),
        min_interval=_positive(deps.settings, "min_interval_seconds", 1.0),
        entities_scanned=int(scanned),
    )
