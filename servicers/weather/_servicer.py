"""WeatherService: validation, game time, and the wire form of the simulation's samples."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, cast

import grpc
from gaming.time_manager.v1 import time_manager_pb2, time_manager_pb2_grpc
from gaming.weather.v1 import weather_pb2, weather_pb2_grpc
from google.protobuf import timestamp_pb2

from servicers.errors import invalid_argument, not_found, unavailable
from servicers.weather._simulation import (
    HOUR,
    Climate,
    Condition,
    Sample,
    climate_for,
    precipitation_probability,
    region_seed,
    sample,
    series,
    tick_of,
)

REGION_ID = re.compile(r"[a-z0-9-]{1,64}")
MAX_HOURS_AHEAD = 168
STEP_RANGE_NS = (15 * 60 * 10**9, 24 * 3600 * 10**9)
MAX_STREAM_REGIONS = 100
TIME_MANAGER = "time-manager"


def _check_id(region_id: str, field: str) -> None:
    if not REGION_ID.fullmatch(region_id):
        raise invalid_argument(field, "must be 1 to 64 characters of [a-z0-9-]")


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(round(seconds * 1e9))
    return stamp


def weather_message(region_id: str, found: Sample, game_time: float | None = None) -> weather_pb2.Weather:
    """The wire form of a sample; ``game_time`` overrides the time it is reported for."""
    return weather_pb2.Weather(
        region_id=region_id,
        game_time=_timestamp(found.game_time if game_time is None else game_time),
        condition=cast(weather_pb2.WeatherCondition.ValueType, int(found.condition)),
        temperature_celsius=found.temperature,
        wind=weather_pb2.Wind(
            speed_mps=found.wind_speed, gust_mps=found.wind_gust, direction_degrees=found.wind_direction
        ),
        precipitation_mm_per_hour=found.precipitation,
        humidity_percent=found.humidity,
        cloud_cover_percent=found.cloud_cover,
        visibility_meters=found.visibility,
    )


class WeatherServicer(weather_pb2_grpc.WeatherServiceServicer):
    """Answers from the deterministic simulation; holds no state, so replicas always agree.

    Args:
        world_seed: mixed into every region's seed.
        regions: the known regions and their climates; None: every well-formed id is a region,
            with a climate chosen by its seed.
        clock: game time in seconds, when ``world_id`` is None.
        channel: channels to other targets (the time-manager, when ``world_id`` is set).
        world_id: the world whose game clock the time-manager keeps; None to use ``clock``.
        stream_interval: real seconds between two looks at the game time in StreamWeather.
        time_timeout: seconds to wait for the time-manager.
    """

    def __init__(
        self,
        *,
        world_seed: str,
        regions: Mapping[str, Climate] | None,
        clock: Callable[[], float],
        channel: Callable[[str], Any],
        world_id: str | None = None,
        stream_interval: float = 1.0,
        time_timeout: float = 2.0,
    ) -> None:
        self._world_seed = world_seed
        self._regions = dict(regions) if regions is not None else None
        self._clock = clock
        self._channel = channel
        self._world_id = world_id
        self._stream_interval = stream_interval
        self._time_timeout = time_timeout

    def __repr__(self) -> str:
        regions = "any" if self._regions is None else len(self._regions)
        source = f"time-manager:{self._world_id}" if self._world_id is not None else "clock"
        return f"<WeatherServicer world_seed={self._world_seed!r} regions={regions} time={source}>"

    async def _game_time(self) -> float:
        if self._world_id is None:
            return self._clock()
        stub = time_manager_pb2_grpc.TimeManagerServiceStub(self._channel(TIME_MANAGER))
        try:
            reply = await stub.GetTime(
                time_manager_pb2.GetTimeRequest(world_id=self._world_id), timeout=self._time_timeout
            )
        except grpc.RpcError as err:
            # Whatever went wrong there (down, unknown world), this call has no game time.
            code = err.code() if callable(getattr(err, "code", None)) else None
            what = code.name if isinstance(code, grpc.StatusCode) else type(err).__name__
            raise unavailable(f"time-manager: {what}", "TIME_SOURCE_UNAVAILABLE") from err
        return float(reply.clock.game_time.ToNanoseconds()) / 1e9

    def _region(self, region_id: str) -> tuple[int, Climate]:
        """The region's seed and climate; NOT_FOUND if configuration does not know it."""
        seed = region_seed(self._world_seed, region_id)
        if self._regions is None:
            return seed, climate_for(seed)
        climate = self._regions.get(region_id)
        if climate is None:
            raise not_found(f"no region {region_id!r}", "REGION_NOT_FOUND")
        return seed, climate

    async def GetWeather(
        self,
        request: weather_pb2.GetWeatherRequest,
        context: grpc.aio.ServicerContext[weather_pb2.GetWeatherRequest, weather_pb2.GetWeatherResponse],
    ) -> weather_pb2.GetWeatherResponse:
        """The region's weather at the current game time (its 10-minute tick)."""
        _check_id(request.region_id, "region_id")
        seed, climate = self._region(request.region_id)
        now = tick_of(await self._game_time())
        found = sample(seed, climate, now)
        return weather_pb2.GetWeatherResponse(weather=weather_message(request.region_id, found), seed=seed)

    async def Forecast(
        self,
        request: weather_pb2.ForecastRequest,
        context: grpc.aio.ServicerContext[weather_pb2.ForecastRequest, weather_pb2.ForecastResponse],
    ) -> weather_pb2.ForecastResponse:
        """Points from now to ``hours_ahead`` hours ahead, one per ``step``; exact, not guessed."""
        _check_id(request.region_id, "region_id")
        if not 1 <= request.hours_ahead <= MAX_HOURS_AHEAD:
            raise invalid_argument("hours_ahead", f"must be from 1 to {MAX_HOURS_AHEAD}")
        step_ns = request.step.ToNanoseconds() if request.HasField("step") else HOUR * 10**9
        if not STEP_RANGE_NS[0] <= step_ns <= STEP_RANGE_NS[1]:
            raise invalid_argument("step", "must be from 15 minutes to 24 hours")
        seed, climate = self._region(request.region_id)
        issue = tick_of(await self._game_time())
        count = (request.hours_ahead * HOUR * 10**9) // step_ns + 1
        times = [issue + k * step_ns / 1e9 for k in range(count)]
        # Each point holds the weather GetWeather will report then: that of the tick it falls in.
        samples = series(seed, climate, [tick_of(t) for t in times])
        step = step_ns / 1e9
        points = [
            weather_pb2.ForecastPoint(
                weather=weather_message(request.region_id, found, t),
                precipitation_probability=precipitation_probability(seed, climate, t, step),
            )
            for t, found in zip(times, samples, strict=True)
        ]
        return weather_pb2.ForecastResponse(
            region_id=request.region_id, issue_time=_timestamp(issue), points=points, seed=seed
        )

    async def StreamWeather(
        self,
        request: weather_pb2.StreamWeatherRequest,
        context: grpc.aio.ServicerContext[weather_pb2.StreamWeatherRequest, weather_pb2.StreamWeatherResponse],
    ) -> AsyncIterator[weather_pb2.StreamWeatherResponse]:
        """Each region's current weather, then an update per region at every new 10-minute tick."""
        ids = list(request.region_ids)
        if not 1 <= len(ids) <= MAX_STREAM_REGIONS:
            raise invalid_argument("region_ids", f"must hold 1 to {MAX_STREAM_REGIONS} region ids")
        for index, region_id in enumerate(ids):
            _check_id(region_id, f"region_ids[{index}]")
            if region_id in ids[:index]:
                raise invalid_argument(f"region_ids[{index}]", f"duplicates {region_id!r}")
        regions = [(region_id, *self._region(region_id)) for region_id in ids]
        previous: dict[str, Condition] = {}
        last_tick = math.nan
        while True:
            tick = tick_of(await self._game_time())
            if tick != last_tick:  # also when game time went back (a reset world clock)
                last_tick = tick
                for region_id, seed, climate in regions:
                    found = sample(seed, climate, tick)
                    before = previous.get(region_id)
                    previous[region_id] = found.condition
                    yield weather_pb2.StreamWeatherResponse(
                        weather=weather_message(region_id, found),
                        condition_changed=before is not None and before != found.condition,
                        previous_condition=cast(weather_pb2.WeatherCondition.ValueType, int(before or 0)),
                    )
            # Game time is polled, not pushed: one look per interval costs nothing when idle.
            await asyncio.sleep(self._stream_interval)
