"""EnvironmentalNarrativeService: asks its three dependencies at once, then composes."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from gaming.environmental_narrative.v1 import environmental_narrative_pb2 as pb
from gaming.environmental_narrative.v1 import environmental_narrative_pb2_grpc
from gaming.time_manager.v1 import time_manager_pb2 as tm
from gaming.time_manager.v1 import time_manager_pb2_grpc
from gaming.weather.v1 import weather_pb2, weather_pb2_grpc
from gaming.world_state.v1 import world_state_pb2 as ws
from gaming.world_state.v1 import world_state_pb2_grpc
from google.protobuf import timestamp_pb2

from servicers.environmental_narrative import _compose
from servicers.environmental_narrative._compose import Conditions
from servicers.errors import RpcError, invalid_argument, not_found, unavailable

_log = logging.getLogger(__name__)
_Reply = TypeVar("_Reply")

WORLD_STATE = "world-state"
WEATHER = "weather-manager"
TIME = "time-manager"
# Each dependency call gets this share of the caller's remaining time. They run in parallel, so
# the whole wait is one share; the rest is left for composing and for the reply's trip back.
DEPENDENCY_SHARE = 0.75
# grpcio's time_remaining() when a call has no deadline is ~9.2e18: none.
_NO_DEADLINE = 1e9
MAX_REGION_ID = 128  # world-state's limit on region ids
MAX_INTERVAL = 600.0
DEFAULT_INTERVAL = 30.0
# BCP 47 in outline: a 2-3 letter language, then subtags of 1-8 letters or digits.
LOCALE = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*")
MAX_LOCALE = 35
DEGRADED_KEY = "narrative-degraded"
LANGUAGE_KEY = "content-language"


@dataclass(frozen=True, slots=True)
class Observation:
    """The conditions of a region now, and the optional dependencies that could not say."""

    conditions: Conditions
    missing: tuple[str, ...]


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(round(seconds * 1e9))
    return stamp


class EnvironmentalNarrativeServicer(environmental_narrative_pb2_grpc.EnvironmentalNarrativeServiceServicer):
    """Describes regions from weather-manager, time-manager and world-state, asked in parallel.

    Args:
        channel: channels to the three dependencies, by target name.
        clock: wall-clock seconds, for ``generate_time``.
        world_id: the world whose clock time-manager keeps.
        dependency_timeout: the longest any dependency call may take, in seconds, when the
            caller's deadline allows more (or the call has none, as streams usually do).
        min_interval: the shortest StreamAmbience interval accepted, in seconds.
        entities_scanned: how many entities (the first by id) are read to find the notable ones.
    """

    def __init__(
        self,
        *,
        channel: Callable[[str], Any],
        clock: Callable[[], float],
        world_id: str,
        dependency_timeout: float,
        min_interval: float,
        entities_scanned: int,
    ) -> None:
        self._channel = channel
        self._clock = clock
        self._world_id = world_id
        self._dependency_timeout = dependency_timeout
        self._min_interval = min_interval
        self._entities_scanned = entities_scanned
        self.active_streams = 0

    def __repr__(self) -> str:
        return (
            f"<EnvironmentalNarrativeServicer world_id={self._world_id!r} "
            f"dependency_timeout={self._dependency_timeout} active_streams={self.active_streams}>"
        )

    # -- the RPCs ------------------------------------------------------------------------------

    async def Describe(
        self, request: pb.DescribeRequest, context: grpc.aio.ServicerContext[pb.DescribeRequest, pb.DescribeResponse]
    ) -> pb.DescribeResponse:
        """The region as it is now; a missing weather or time is left out, not an error."""
        _check_region(request.region_id)
        language = _checked_language(request.locale.tag, "locale.tag")
        detail = _checked_detail(request.detail_level, pb.DETAIL_LEVEL_STANDARD)
        observation = await self._observe(context, request.region_id, language)
        used, templates = _compose.templates_for(language)
        trailing = [(LANGUAGE_KEY, used)]
        if observation.missing:
            trailing.append((DEGRADED_KEY, ",".join(observation.missing)))
        context.set_trailing_metadata(tuple(trailing))
        return pb.DescribeResponse(
            description=_compose.describe(observation.conditions, templates, detail),
            inputs=observation.conditions.inputs(),
            generate_time=_timestamp(self._clock()),
        )

    async def StreamAmbience(
        self,
        request: pb.StreamAmbienceRequest,
        context: grpc.aio.ServicerContext[pb.StreamAmbienceRequest, pb.StreamAmbienceResponse],
    ) -> AsyncIterator[pb.StreamAmbienceResponse]:
        """A line now, then one per change of weather, phase or notable entities, polled."""
        _check_region(request.region_id)
        interval = DEFAULT_INTERVAL
        if request.HasField("interval"):
            interval = request.interval.ToNanoseconds() / 1e9
            if not self._min_interval <= interval <= MAX_INTERVAL:
                raise invalid_argument("interval", f"must be from {self._min_interval:g} s to 10 minutes")
        language = _checked_language(request.locale.tag, "locale.tag")
        detail = _checked_detail(request.detail_level, pb.DETAIL_LEVEL_BRIEF)
        used, templates = _compose.templates_for(language)
        await context.send_initial_metadata(((LANGUAGE_KEY, used),))
        self.active_streams += 1
        try:
            sequence = 0
            last: tuple[object, ...] | None = None
            while True:
                observation = await self._observe(context, request.region_id, language)
                key = observation.conditions.change_key()
                if key != last:
                    last = key
                    yield pb.StreamAmbienceResponse(
                        sequence=sequence,
                        text=_compose.describe(observation.conditions, templates, detail),
                        inputs=observation.conditions.inputs(),
                        generate_time=_timestamp(self._clock()),
                    )
                    sequence += 1
                # Conditions are polled, not pushed: weather and time change on their own, with
                # no event to watch, so one look per interval is the whole cost of a quiet stream.
                await asyncio.sleep(interval)
        finally:
            # Reached on the client's cancel too (the task is cancelled at the await).
            self.active_streams -= 1

    # -- asking the dependencies ---------------------------------------------------------------

    def _timeout(self, context: grpc.aio.ServicerContext[Any, Any]) -> float:
        remaining: float | None = context.time_remaining()
        if remaining is None or remaining > _NO_DEADLINE:
            return self._dependency_timeout
        return max(0.001, min(self._dependency_timeout, remaining * DEPENDENCY_SHARE))

    async def _observe(self, context: grpc.aio.ServicerContext[Any, Any], region_id: str, language: str) -> Observation:
        """Ask all four calls at once; fail the RPC only for what world-state says."""
        timeout = self._timeout(context)
        world = world_state_pb2_grpc.WorldStateServiceStub(self._channel(WORLD_STATE))
        weather = weather_pb2_grpc.WeatherServiceStub(self._channel(WEATHER))
        clock = time_manager_pb2_grpc.TimeManagerServiceStub(self._channel(TIME))
        page = ws.ListEntitiesRequest(region_id=region_id)
        page.page.page_size = self._entities_scanned
        region, entities, forecast, time = await asyncio.gather(
            _asked(world.GetRegion(ws.GetRegionRequest(region_id=region_id), timeout=timeout)),
            _asked(world.ListEntities(page, timeout=timeout)),
            _asked(weather.GetWeather(weather_pb2.GetWeatherRequest(region_id=region_id), timeout=timeout)),
            _asked(clock.GetTime(tm.GetTimeRequest(world_id=self._world_id), timeout=timeout)),
        )
        if isinstance(region, grpc.aio.AioRpcError):
            raise _world_state_failed(region_id, region) from region
        if isinstance(entities, grpc.aio.AioRpcError):
            raise _world_state_failed(region_id, entities) from entities
        missing = []
        sky = None
        if isinstance(forecast, grpc.aio.AioRpcError):
            _log.warning("no weather for %r: %s %s", region_id, forecast.code().name, forecast.details())
            missing.append(WEATHER)
        else:
            sky = _compose.sky_of(forecast.weather)
        phase = None
        if isinstance(time, grpc.aio.AioRpcError):
            _log.warning("no game time for world %r: %s %s", self._world_id, time.code().name, time.details())
            missing.append(TIME)
        else:
            phase = _compose.phase_of(time.clock)
        conditions = Conditions(
            region_name=region.region.display_name or region_id,
            sky=sky,
            phase=phase,
            notables=_compose.notables(entities.entities, language),
            revision=entities.region_revision.value,
        )
        return Observation(conditions, tuple(missing))


async def _asked(call: Awaitable[_Reply]) -> _Reply | grpc.aio.AioRpcError:
    """The reply, or the call's error as a value, so one failure does not cancel the others."""
    try:
        return await call
    except grpc.aio.AioRpcError as err:
        return err


def _world_state_failed(region_id: str, err: grpc.aio.AioRpcError) -> RpcError:
    """How world-state's failure is answered: the region is required, so it fails the call."""
    code = err.code()
    if code == grpc.StatusCode.NOT_FOUND:
        return not_found(f"no region {region_id!r}", "REGION_NOT_FOUND")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return invalid_argument("region_id", f"world-state refused it: {err.details()}")
    # Without the region there is nothing to describe: down, too slow or failing alike.
    _log.warning("world-state failed for %r: %s %s", region_id, code.name, err.details())
    return unavailable(f"world-state is unavailable ({code.name})", "DEPENDENCY_UNAVAILABLE")


def _check_region(region_id: str) -> None:
    if not region_id:
        raise invalid_argument("region_id", "is required")
    if len(region_id) > MAX_REGION_ID:
        raise invalid_argument("region_id", f"must be at most {MAX_REGION_ID} characters")


def _checked_language(tag: str, field: str) -> str:
    if tag and (len(tag) > MAX_LOCALE or not LOCALE.fullmatch(tag)):
        raise invalid_argument(field, "must be a BCP 47 language tag such as en-US")
    return _compose.language_of(tag)


def _checked_detail(detail: pb.DetailLevel.ValueType, default: pb.DetailLevel.ValueType) -> pb.DetailLevel.ValueType:
    if detail not in pb.DetailLevel.values():
        raise invalid_argument("detail_level", f"unknown detail level {int(detail)}")
    return default if detail == pb.DETAIL_LEVEL_UNSPECIFIED else detail
