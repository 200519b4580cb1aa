"""weather-manager over NATS: a seeded simulation that every replica reproduces exactly, forecasts
that come true, streams of updates per 10-minute tick, and game time from the time-manager."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

import grpc
import pytest
from gaming.time_manager.v1 import time_manager_pb2, time_manager_pb2_grpc
from gaming.weather.v1 import weather_pb2 as wx
from gaming.weather.v1 import weather_pb2_grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nats.aio.client import Client

from servicers import weather
from servicers.dependencies import Dependencies
from servicers.weather import _simulation as sim
from tests._serving import served

START = 1_700_000_400.0  # a tick boundary (a multiple of 600 s)
REGIONS = {"harbor": "coastal", "peaks": "alpine", "dunes": "desert", "north-pole": "arctic"}


class FakeClock:
    """Game time the test moves by hand."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def no_channel(target: str) -> Any:
    raise AssertionError(f"weather asks no other service here (asked for {target!r})")


@contextlib.asynccontextmanager
async def weather_service(
    nc: Client, clock: FakeClock | None = None, channel: Any = no_channel, **settings: str
) -> AsyncIterator[weather_pb2_grpc.WeatherServiceAsyncStub]:
    settings = {"world_seed": "42", "regions": json.dumps(REGIONS), "stream_interval_seconds": "0.01", **settings}
    deps = Dependencies(storage=None, channel=channel, settings=settings, clock=clock or FakeClock())  # type: ignore[arg-type]
    async with served(nc, weather.add_to_server, await weather.create(deps)) as served_channel:
        yield cast("weather_pb2_grpc.WeatherServiceAsyncStub", weather_pb2_grpc.WeatherServiceStub(served_channel))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def stub(nc: Client, clock: FakeClock) -> AsyncIterator[weather_pb2_grpc.WeatherServiceAsyncStub]:
    async with weather_service(nc, clock) as found:
        yield found


def hours(value: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(value * 3600 * 1e9))
    return duration


@contextlib.contextmanager
def rpc_error(code: grpc.StatusCode, field: str | None = None, reason: str | None = None) -> Iterator[None]:
    """Expect an RPC error with ``code``; with ``field`` a BadRequest naming it; with ``reason`` an ErrorInfo."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        yield
    assert caught.value.code() == code, caught.value.details()
    status = rpc_status.from_call(caught.value)
    if field is not None:
        assert status is not None
        bad = error_details_pb2.BadRequest()
        assert status.details[0].Unpack(bad)
        assert bad.field_violations[0].field == field
    if reason is not None:
        assert status is not None
        info = error_details_pb2.ErrorInfo()
        assert status.details[0].Unpack(info)
        assert info.reason == reason


async def next_update(call: Any) -> wx.StreamWeatherResponse:
    response = await asyncio.wait_for(call.read(), 5.0)
    assert response is not grpc.aio.EOF
    return cast(wx.StreamWeatherResponse, response)


# -- the simulation ---------------------------------------------------------------------------


@pytest.mark.parametrize("climate", sorted(sim.CLIMATES))
def test_every_sample_keeps_the_proto_s_definitions(climate: str) -> None:
    seed = sim.region_seed("7", f"region-{climate}")
    times = [START + k * sim.TICK for k in range(6 * 24 * 60)]  # 60 game days
    samples = sim.series(seed, sim.CLIMATES[climate], times)
    for found in samples:
        assert found.wind_speed >= 0
        assert found.wind_gust >= found.wind_speed
        assert 0 <= found.wind_direction < 360
        assert 0 <= found.humidity <= 100
        assert 0 <= found.cloud_cover <= 100
        assert found.precipitation >= 0
        assert found.visibility >= 0
        match found.condition:
            case sim.Condition.CLEAR:
                assert found.cloud_cover < 20
                assert found.precipitation == 0
            case sim.Condition.CLOUDY | sim.Condition.FOG:
                assert found.precipitation == 0
            case sim.Condition.RAIN:
                assert found.precipitation > 0.1
                assert found.temperature > 0
            case sim.Condition.STORM:
                assert found.precipitation > 0.1
                assert found.wind_speed > 17
                assert found.temperature > 0
            case sim.Condition.SNOW:
                assert found.precipitation > 0
                assert found.temperature <= 0
        if found.condition is sim.Condition.FOG:
            assert found.visibility < 1000
    # The weather changes, but not every tick: a chain, not noise.
    changes = sum(a.condition != b.condition for a, b in itertools.pairwise(samples))
    assert 10 < changes < len(samples) / 3


def test_the_chain_is_the_same_whichever_hour_a_caller_starts_from() -> None:
    seed, climate = sim.region_seed("1", "harbor"), sim.CLIMATES["temperate"]
    first = round(START) // sim.HOUR
    walked = sim.regimes(seed, climate, first, first + 500)
    one_by_one = [sim.regimes(seed, climate, hour, hour)[0] for hour in range(first, first + 501)]
    assert walked == one_by_one


def test_seeds_depend_on_the_world_seed_and_the_region() -> None:
    assert sim.region_seed("42", "harbor") == sim.region_seed("42", "harbor")
    assert len({sim.region_seed("42", "harbor"), sim.region_seed("43", "harbor"), sim.region_seed("42", "peaks")}) == 3
    assert 0 <= sim.region_seed("42", "harbor") < 2**64


@pytest.mark.parametrize(
    ("text", "problem"),
    [("[]", "JSON object"), ('{"Harbor": "coastal"}', "not 1 to 64"), ('{"harbor": "lunar"}', "unknown climate")],
)
def test_a_bad_regions_setting_is_refused_at_creation(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        weather.configured_regions(text)


# -- GetWeather -------------------------------------------------------------------------------


async def test_every_replica_reports_the_same_weather_for_the_same_region_and_time(
    nc: Client, stub: weather_pb2_grpc.WeatherServiceAsyncStub, clock: FakeClock
) -> None:
    clock.now = START + 123.0  # inside a tick: the weather is that of the tick's start
    first = await stub.GetWeather(wx.GetWeatherRequest(region_id="harbor"))
    async with weather_service(nc, FakeClock(START + 599.0)) as replica:
        second = await replica.GetWeather(wx.GetWeatherRequest(region_id="harbor"))
    assert first == second
    assert first.seed == sim.region_seed("42", "harbor")
    assert first.weather.game_time.seconds == START
    assert first.weather.region_id == "harbor"
    assert first.weather.condition != wx.WEATHER_CONDITION_UNSPECIFIED
    expected = sim.sample(first.seed, sim.CLIMATES["coastal"], START)
    assert first.weather.temperature_celsius == expected.temperature


async def test_another_world_seed_gives_other_weather(
    nc: Client, stub: weather_pb2_grpc.WeatherServiceAsyncStub
) -> None:
    ours = await stub.GetWeather(wx.GetWeatherRequest(region_id="peaks"))
    async with weather_service(nc, world_seed="43") as other:
        theirs = await other.GetWeather(wx.GetWeatherRequest(region_id="peaks"))
    assert ours.seed != theirs.seed
    assert ours.weather != theirs.weather


async def test_the_weather_moves_with_game_time(
    stub: weather_pb2_grpc.WeatherServiceAsyncStub, clock: FakeClock
) -> None:
    seen = set()
    for day in range(10):
        clock.now = START + day * sim.DAY + 6 * sim.HOUR
        answer = await stub.GetWeather(wx.GetWeatherRequest(region_id="harbor"))
        seen.add((answer.weather.condition, answer.weather.temperature_celsius))
    assert len(seen) > 5


@pytest.mark.parametrize("region_id", ["", "Harbor", "har bor", "x" * 65, "région"])
async def test_a_malformed_region_id_is_invalid(stub: weather_pb2_grpc.WeatherServiceAsyncStub, region_id: str) -> None:
    with rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "region_id"):
        await stub.GetWeather(wx.GetWeatherRequest(region_id=region_id))


async def test_an_unknown_region_is_not_found(stub: weather_pb2_grpc.WeatherServiceAsyncStub) -> None:
    with rpc_error(grpc.StatusCode.NOT_FOUND, reason="REGION_NOT_FOUND"):
        await stub.GetWeather(wx.GetWeatherRequest(region_id="atlantis"))


async def test_without_configured_regions_every_well_formed_region_has_weather(nc: Client) -> None:
    async with weather_service(nc, regions="") as open_world:
        answer = await open_world.GetWeather(wx.GetWeatherRequest(region_id="atlantis"))
    seed = sim.region_seed("42", "atlantis")
    assert answer.seed == seed
    assert answer.weather.temperature_celsius == sim.sample(seed, sim.climate_for(seed), START).temperature


# -- Forecast ---------------------------------------------------------------------------------


async def test_a_forecast_comes_true(stub: weather_pb2_grpc.WeatherServiceAsyncStub, clock: FakeClock) -> None:
    clock.now = START + 42.0
    forecast = await stub.Forecast(wx.ForecastRequest(region_id="peaks", hours_ahead=24))
    assert forecast.region_id == "peaks"
    assert forecast.issue_time.seconds == START
    assert forecast.seed == sim.region_seed("42", "peaks")
    assert len(forecast.points) == 25  # unset step: one hour
    assert [p.weather.game_time.seconds for p in forecast.points] == [START + h * sim.HOUR for h in range(25)]
    for point in forecast.points[::6]:
        clock.now = point.weather.game_time.seconds
        now = await stub.GetWeather(wx.GetWeatherRequest(region_id="peaks"))
        assert now.weather == point.weather
    for point in forecast.points:
        assert 0 <= point.precipitation_probability <= 1
        if point.weather.condition in (wx.WEATHER_CONDITION_RAIN, wx.WEATHER_CONDITION_STORM,
                                       wx.WEATHER_CONDITION_SNOW):
            assert point.precipitation_probability == 1  # it is raining for the whole one-hour step


async def test_a_forecast_has_one_point_per_step(stub: weather_pb2_grpc.WeatherServiceAsyncStub) -> None:
    quarter = await stub.Forecast(wx.ForecastRequest(region_id="dunes", hours_ahead=1, step=hours(0.25)))
    assert len(quarter.points) == 5
    assert [p.weather.game_time.seconds - START for p in quarter.points] == [0, 900, 1800, 2700, 3600]
    # A point inside a tick carries the weather of that tick, as GetWeather will report it then.
    tick = sim.sample(sim.region_seed("42", "dunes"), sim.CLIMATES["desert"], START + sim.TICK)
    assert quarter.points[1].weather.temperature_celsius == tick.temperature
    daily = await stub.Forecast(wx.ForecastRequest(region_id="dunes", hours_ahead=168, step=hours(24)))
    assert len(daily.points) == 8
    uneven = await stub.Forecast(wx.ForecastRequest(region_id="dunes", hours_ahead=5, step=hours(2)))
    assert len(uneven.points) == 3  # floor(5 / 2) + 1


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"hours_ahead": 0}, "hours_ahead"),
        ({"hours_ahead": 169}, "hours_ahead"),
        ({"hours_ahead": -3}, "hours_ahead"),
        ({"step": hours(0.2)}, "step"),
        ({"step": hours(25)}, "step"),
        ({"region_id": "NOPE"}, "region_id"),
    ],
)
async def test_a_malformed_forecast_request_is_invalid(
    stub: weather_pb2_grpc.WeatherServiceAsyncStub, fields: dict[str, Any], field: str
) -> None:
    request = wx.ForecastRequest(region_id="harbor", hours_ahead=24)
    for name, value in fields.items():
        if name == "step":
            request.step.CopyFrom(value)
        else:
            setattr(request, name, value)
    with rpc_error(grpc.StatusCode.INVALID_ARGUMENT, field):
        await stub.Forecast(request)


async def test_forecasting_an_unknown_region_is_not_found(stub: weather_pb2_grpc.WeatherServiceAsyncStub) -> None:
    with rpc_error(grpc.StatusCode.NOT_FOUND):
        await stub.Forecast(wx.ForecastRequest(region_id="atlantis", hours_ahead=3))


# -- StreamWeather ----------------------------------------------------------------------------


def _condition_change_after(seed: int, climate: sim.Climate) -> float:
    """A tick after which the next tick's condition differs, found in the simulation."""
    t = START
    while sim.sample(seed, climate, t).condition == sim.sample(seed, climate, t + sim.TICK).condition:
        t += sim.TICK
    return t


async def test_a_stream_sends_each_region_now_and_again_at_every_new_tick(
    stub: weather_pb2_grpc.WeatherServiceAsyncStub, clock: FakeClock
) -> None:
    call = stub.StreamWeather(wx.StreamWeatherRequest(region_ids=["harbor", "peaks"]))
    first = [await next_update(call) for _ in range(2)]
    assert [u.weather.region_id for u in first] == ["harbor", "peaks"]
    assert all(not u.condition_changed and u.previous_condition == wx.WEATHER_CONDITION_UNSPECIFIED for u in first)
    assert all(u.weather.game_time.seconds == START for u in first)

    clock.now = START + sim.TICK + 5
    second = [await next_update(call) for _ in range(2)]
    assert [u.weather.game_time.seconds for u in second] == [START + sim.TICK] * 2
    for before, after in zip(first, second, strict=True):
        assert after.previous_condition == before.weather.condition
        assert after.condition_changed == (after.weather.condition != before.weather.condition)
    call.cancel()


async def test_a_stream_flags_a_condition_change(
    stub: weather_pb2_grpc.WeatherServiceAsyncStub, clock: FakeClock
) -> None:
    seed, climate = sim.region_seed("42", "harbor"), sim.CLIMATES["coastal"]
    clock.now = _condition_change_after(seed, climate)
    call = stub.StreamWeather(wx.StreamWeatherRequest(region_ids=["harbor"]))
    before = await next_update(call)
    clock.now += sim.TICK
    after = await next_update(call)
    assert after.condition_changed
    assert after.previous_condition == before.weather.condition != after.weather.condition
    call.cancel()


@pytest.mark.parametrize(
    ("region_ids", "field"),
    [
        ([], "region_ids"),
        ([f"r{i}" for i in range(101)], "region_ids"),
        (["harbor", "peaks", "harbor"], "region_ids[2]"),
        (["harbor", "Bad"], "region_ids[1]"),
    ],
)
async def test_a_malformed_stream_request_is_invalid(
    stub: weather_pb2_grpc.WeatherServiceAsyncStub, region_ids: list[str], field: str
) -> None:
    with rpc_error(grpc.StatusCode.INVALID_ARGUMENT, field):
        await next_update(stub.StreamWeather(wx.StreamWeatherRequest(region_ids=region_ids)))


async def test_streaming_an_unknown_region_is_not_found(stub: weather_pb2_grpc.WeatherServiceAsyncStub) -> None:
    with rpc_error(grpc.StatusCode.NOT_FOUND, reason="REGION_NOT_FOUND"):
        await next_update(stub.StreamWeather(wx.StreamWeatherRequest(region_ids=["harbor", "atlantis"])))


# -- game time from the time-manager -----------------------------------------------------------


class FakeTimeManager(time_manager_pb2_grpc.TimeManagerServiceServicer):
    """A time-manager whose one world's clock the test sets; it knows no other world."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.fail = False

    async def GetTime(
        self, request: time_manager_pb2.GetTimeRequest, context: grpc.aio.ServicerContext
    ) -> time_manager_pb2.GetTimeResponse:
        if request.world_id != "overworld" or self.fail:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such world")
        clock = time_manager_pb2.Clock(world_id=request.world_id, time_scale=60.0)
        clock.game_time.FromNanoseconds(int(self.now * 1e9))
        return time_manager_pb2.GetTimeResponse(clock=clock)

    async def SetScale(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this fake")

    async def StreamTicks(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[time_manager_pb2.StreamTicksResponse]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this fake")
        yield time_manager_pb2.StreamTicksResponse()  # never reached: makes this a stream handler


async def test_game_time_can_come_from_the_time_manager(nc: Client) -> None:
    keeper = FakeTimeManager(START + 7 * sim.DAY)
    async with served(nc, time_manager_pb2_grpc.add_TimeManagerServiceServicer_to_server, keeper) as tm:
        channels = {"time-manager": tm}
        async with weather_service(nc, FakeClock(0.0), channels.__getitem__, world_id="overworld") as stub:
            answer = await stub.GetWeather(wx.GetWeatherRequest(region_id="harbor"))
            assert answer.weather.game_time.seconds == START + 7 * sim.DAY
            call = stub.StreamWeather(wx.StreamWeatherRequest(region_ids=["harbor"]))
            assert (await next_update(call)).weather.game_time.seconds == START + 7 * sim.DAY
            keeper.now += sim.TICK
            assert (await next_update(call)).weather.game_time.seconds == START + 7 * sim.DAY + sim.TICK
            keeper.fail = True  # the time source is lost mid-stream
            with rpc_error(grpc.StatusCode.UNAVAILABLE, reason="TIME_SOURCE_UNAVAILABLE"):
                await next_update(call)


async def test_an_unreachable_time_manager_makes_every_call_unavailable(nc: Client) -> None:
    import nats_transport.aio

    nowhere = nats_transport.aio.channel(nc, "no-time-manager-here")
    async with weather_service(nc, channel=lambda target: nowhere, world_id="overworld") as stub:
        with rpc_error(grpc.StatusCode.UNAVAILABLE, reason="TIME_SOURCE_UNAVAILABLE"):
            await stub.GetWeather(wx.GetWeatherRequest(region_id="harbor"))
        with rpc_error(grpc.StatusCode.UNAVAILABLE):
            await stub.Forecast(wx.ForecastRequest(region_id="harbor", hours_ahead=2))
        with rpc_error(grpc.StatusCode.UNAVAILABLE):
            await next_update(stub.StreamWeather(wx.StreamWeatherRequest(region_ids=["harbor"])))


async def test_a_restarted_service_reports_the_same_weather(nc: Client, clock: FakeClock) -> None:
    # Nothing is stored: a new servicer (a restart, or another replica) derives the same answers.
    async with weather_service(nc, clock) as before:
        forecast = await before.Forecast(wx.ForecastRequest(region_id="north-pole", hours_ahead=48, step=hours(3)))
    async with weather_service(nc, FakeClock(START)) as after:
        again = await after.Forecast(wx.ForecastRequest(region_id="north-pole", hours_ahead=48, step=hours(3)))
    assert forecast == again
    assert not math.isnan(again.points[-1].weather.temperature_celsius)
