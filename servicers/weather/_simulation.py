"""The weather model: a pure, deterministic function of (region seed, climate, game time).

No state, no randomness from the process: every random draw is a hash of the seed, a stream name
and an index (the game hour, or a knot of a smooth noise curve), so any replica, at any time,
computes the same weather for the same inputs.

Sky regime: a Markov chain over game hours. Each hour, with probability ``RESET`` the regime is
drawn afresh from the climate's distribution; otherwise it moves to a neighbouring regime (clear
-> cloudy -> rain -> storm, fog beside clear and cloudy) with the climate's ``change``
probability, or stays. A reset forgets the past, so the regime at hour ``h`` is found by walking
back to the latest reset (on average 1/RESET hours; bounded by ``LOOKBACK``) and stepping
forward from there: the same chain whichever hour a caller starts from.

Continuous values (temperature, wind, humidity, cloud, visibility, precipitation) are the
climate's seasonal and daily cycles plus smooth noise (hashed knots, smoothstep-interpolated),
shaped by the hour's regime; the reported condition then follows the proto's definitions
(precipitation at or below 0 degrees Celsius is snow, and so on).
"""

from __future__ import annotations

import enum
import hashlib
import math
import struct
from dataclasses import dataclass

TICK = 600  # the weather is recomputed every 10 minutes of game time
HOUR = 3600
DAY = 86_400
YEAR = 365.25 * DAY
RESET = 0.06
LOOKBACK = 1000  # hours; no reset in 1000 hours has probability (1 - RESET) ** 1000 < 1e-26


class Regime(enum.IntEnum):
    """The sky regime the Markov chain walks over (precipitation becomes rain or snow later)."""

    CLEAR = 0
    CLOUDY = 1
    FOG = 2
    PRECIPITATION = 3
    STORM = 4


class Condition(enum.IntEnum):
    """The reported condition; values match ``gaming.weather.v1.WeatherCondition``."""

    CLEAR = 1
    CLOUDY = 2
    RAIN = 3
    STORM = 4
    SNOW = 5
    FOG = 6


# Neighbours of each regime and their base weights, re-weighted by the climate's distribution.
_MOVES: dict[Regime, dict[Regime, float]] = {
    Regime.CLEAR: {Regime.CLOUDY: 0.8, Regime.FOG: 0.2},
    Regime.CLOUDY: {Regime.CLEAR: 0.45, Regime.PRECIPITATION: 0.45, Regime.FOG: 0.1},
    Regime.FOG: {Regime.CLEAR: 0.5, Regime.CLOUDY: 0.5},
    Regime.PRECIPITATION: {Regime.CLOUDY: 0.75, Regime.STORM: 0.25},
    Regime.STORM: {Regime.PRECIPITATION: 1.0},
}


@dataclass(frozen=True, slots=True)
class Climate:
    """What makes one region's weather differ from another's, beside its seed.

    Temperatures in degrees Celsius: ``mean`` over the year, ``seasonal`` and ``daily`` the
    half-amplitudes of the yearly and daily cycles. ``regimes`` weighs CLEAR, CLOUDY, FOG,
    PRECIPITATION, STORM; ``change`` is the hourly chance of moving to a neighbouring regime.
    """

    name: str
    mean: float
    seasonal: float
    daily: float
    humidity: float
    wind: float
    regimes: tuple[float, float, float, float, float]
    change: float = 0.12


CLIMATES: dict[str, Climate] = {
    c.name: c
    for c in (
        Climate("temperate", 11.0, 9.0, 5.0, 70.0, 4.5, (0.30, 0.35, 0.07, 0.22, 0.06)),
        Climate("coastal", 13.0, 6.0, 3.5, 80.0, 7.0, (0.25, 0.33, 0.12, 0.22, 0.08)),
        Climate("arctic", -12.0, 12.0, 3.0, 75.0, 6.5, (0.30, 0.35, 0.10, 0.20, 0.05)),
        Climate("alpine", 2.0, 10.0, 6.0, 65.0, 8.0, (0.30, 0.30, 0.12, 0.20, 0.08)),
        Climate("desert", 26.0, 9.0, 12.0, 20.0, 5.0, (0.74, 0.16, 0.02, 0.06, 0.02), 0.08),
        Climate("tropical", 27.0, 2.0, 4.5, 85.0, 3.5, (0.22, 0.28, 0.05, 0.33, 0.12), 0.16),
    )
}


@dataclass(frozen=True, slots=True)
class Sample:
    """The simulated weather of one region at one game time (units as in the proto)."""

    game_time: float
    condition: Condition
    temperature: float
    wind_speed: float
    wind_gust: float
    wind_direction: float
    precipitation: float
    humidity: float
    cloud_cover: float
    visibility: float


def region_seed(world_seed: str, region_id: str) -> int:
    """The region's simulation seed (uint64): a hash of the world seed and the region id."""
    digest = hashlib.blake2b(f"{world_seed}\x00{region_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def climate_for(seed: int) -> Climate:
    """A climate for a region that configuration gives none, chosen by its seed."""
    names = sorted(CLIMATES)
    return CLIMATES[names[seed % len(names)]]


def tick_of(game_time: float) -> float:
    """The start of the 10-minute tick ``game_time`` falls in: the time weather is computed for."""
    return math.floor(game_time / TICK) * TICK


def _unit(seed: int, stream: int, index: int) -> float:
    """A uniform draw in [0, 1) fixed by (seed, stream, index)."""
    digest = hashlib.blake2b(struct.pack("<QIq", seed, stream, index), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


# Streams of draws, one per use, so that no two quantities share a draw.
_RESET, _DRAW, _MOVE, _TEMP, _WIND, _DIRECTION, _HUMIDITY, _CLOUD, _RAIN, _SIGHT, _GUST = range(11)


def _pick(weights: dict[Regime, float], u: float) -> Regime:
    total = sum(weights.values())
    acc = 0.0
    for regime, weight in weights.items():
        acc += weight / total
        if u < acc:
            return regime
    return regime  # u within rounding of 1.0: the last one


def _fresh(seed: int, climate: Climate, hour: int) -> Regime:
    return _pick(dict(zip(Regime, climate.regimes, strict=True)), _unit(seed, _DRAW, hour))


def _step(seed: int, climate: Climate, hour: int, previous: Regime) -> Regime:
    u = _unit(seed, _RESET, hour)
    if u < RESET:
        return _fresh(seed, climate, hour)
    if u < RESET + climate.change:
        neighbours = {r: w * climate.regimes[r] for r, w in _MOVES[previous].items()}
        return _pick(neighbours, _unit(seed, _MOVE, hour))
    return previous


def regimes(seed: int, climate: Climate, first_hour: int, last_hour: int) -> list[Regime]:
    """The chain's regimes for game hours ``first_hour`` to ``last_hour`` inclusive."""
    start = first_hour
    while start > first_hour - LOOKBACK and _unit(seed, _RESET, start) >= RESET:
        start -= 1
    regime = _fresh(seed, climate, start)  # a reset hour (or, never in practice, the bound)
    for hour in range(start + 1, first_hour + 1):
        regime = _step(seed, climate, hour, regime)
    found = [regime]
    for hour in range(first_hour + 1, last_hour + 1):
        regime = _step(seed, climate, hour, regime)
        found.append(regime)
    return found


def _noise(seed: int, stream: int, t: float, period: float) -> float:
    """Smooth noise in [-1, 1]: hashed knots every ``period`` seconds, smoothstep between."""
    position = t / period
    knot = math.floor(position)
    f = position - knot
    f = f * f * (3 - 2 * f)
    a = _unit(seed, stream, knot) * 2 - 1
    b = _unit(seed, stream, knot + 1) * 2 - 1
    return a + (b - a) * f


_CLOUD_COVER = {
    Regime.CLEAR: 8.0, Regime.CLOUDY: 68.0, Regime.FOG: 92.0, Regime.PRECIPITATION: 90.0, Regime.STORM: 98.0
}
_WARMTH = {Regime.CLEAR: 1.0, Regime.CLOUDY: 0.0, Regime.FOG: -1.0, Regime.PRECIPITATION: -2.0, Regime.STORM: -3.0}
_WINDINESS = {Regime.CLEAR: 0.8, Regime.CLOUDY: 1.0, Regime.FOG: 0.3, Regime.PRECIPITATION: 1.3, Regime.STORM: 1.0}


def _clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


def sample(seed: int, climate: Climate, game_time: float, regime: Regime | None = None) -> Sample:
    """The weather at ``game_time`` exactly (callers pass tick times); ``regime`` if known."""
    t = game_time
    if regime is None:
        hour = math.floor(t / HOUR)
        regime = regimes(seed, climate, hour, hour)[0]
    cloud = _clamp(_CLOUD_COVER[regime] + 10 * _noise(seed, _CLOUD, t, 3 * HOUR), 0, 100)
    if regime is Regime.CLEAR:
        cloud = _clamp(cloud, 0, 19)  # the proto's CLEAR: cloud cover under 20%

    season = -math.cos(2 * math.pi * ((t % YEAR) / YEAR - 15 / 365.25))  # coldest mid-January
    day = math.cos(2 * math.pi * ((t % DAY) / DAY - 15 / 24))  # warmest at 15:00
    temperature = (
        climate.mean
        + climate.seasonal * season
        + climate.daily * day * (1 - 0.6 * cloud / 100)  # clouds damp the daily cycle
        + 3.0 * _noise(seed, _TEMP, t, 6 * HOUR)
        + _WARMTH[regime]
    )

    speed = climate.wind * _WINDINESS[regime] * (1 + 0.5 * _noise(seed, _WIND, t, 4 * HOUR))
    if regime is Regime.STORM:
        speed = 18.0 + 6.0 * (1 + _noise(seed, _WIND, t, 2 * HOUR))  # over 17 m/s, as the proto says
    speed = max(0.0, speed)
    gust = speed * (1.25 + 0.35 * _unit(seed, _GUST, math.floor(t / TICK)))
    prevailing = 360.0 * _unit(seed, _DIRECTION, -1)
    direction = (prevailing + 120.0 * _noise(seed, _DIRECTION, t, 8 * HOUR)) % 360.0

    precipitation = 0.0
    if regime is Regime.PRECIPITATION:
        precipitation = 0.3 + 3.5 * (1 + _noise(seed, _RAIN, t, 2 * HOUR)) / 2
    elif regime is Regime.STORM:
        precipitation = 8.0 + 20.0 * (1 + _noise(seed, _RAIN, t, HOUR)) / 2

    humidity = climate.humidity + 8 * _noise(seed, _HUMIDITY, t, 5 * HOUR)
    if regime is Regime.CLEAR:
        humidity -= 12
    elif regime is Regime.FOG:
        humidity = max(humidity, 96.0)
    elif regime in (Regime.PRECIPITATION, Regime.STORM):
        humidity = max(humidity, 85.0)
    humidity = _clamp(humidity, 0, 100)

    sight = (1 + _noise(seed, _SIGHT, t, 3 * HOUR)) / 2  # 0..1
    visibility = {
        Regime.CLEAR: 20_000 + 20_000 * sight,
        Regime.CLOUDY: 10_000 + 15_000 * sight,
        Regime.FOG: 80 + 820 * sight,  # under 1000 m: the proto's FOG
        Regime.PRECIPITATION: 2_000 + 6_000 * sight,
        Regime.STORM: 400 + 2_000 * sight,
    }[regime]

    temperature = round(temperature, 2)  # the condition follows the reported value
    return Sample(
        game_time=game_time,
        condition=_condition(regime, temperature),
        temperature=temperature,
        wind_speed=round(speed, 2),
        wind_gust=round(max(gust, speed), 2),
        wind_direction=round(direction, 1) % 360.0,
        precipitation=round(precipitation, 2),
        humidity=round(humidity, 1),
        cloud_cover=round(cloud, 1),
        visibility=round(visibility),
    )


def _condition(regime: Regime, temperature: float) -> Condition:
    if regime in (Regime.PRECIPITATION, Regime.STORM) and temperature <= 0:
        return Condition.SNOW  # the proto's SNOW: precipitation at or below 0 degrees Celsius
    return {
        Regime.CLEAR: Condition.CLEAR,
        Regime.CLOUDY: Condition.CLOUDY,
        Regime.FOG: Condition.FOG,
        Regime.PRECIPITATION: Condition.RAIN,
        Regime.STORM: Condition.STORM,
    }[regime]


def series(seed: int, climate: Climate, times: list[float]) -> list[Sample]:
    """Samples at increasing ``times``, walking the regime chain once for all of them."""
    if not times:
        return []
    first, last = math.floor(times[0] / HOUR), math.floor(times[-1] / HOUR)
    chain = regimes(seed, climate, first, last)
    return [sample(seed, climate, t, chain[math.floor(t / HOUR) - first]) for t in times]


def precipitation_probability(seed: int, climate: Climate, start: float, length: float) -> float:
    """The share of game hours overlapping [start, start + length) whose regime precipitates.

    The model is deterministic, so this is a certainty averaged over the step, not a guess.
    """
    first = math.floor(start / HOUR)
    last = max(first, math.ceil((start + length) / HOUR) - 1)
    chain = regimes(seed, climate, first, last)
    wet = sum(r in (Regime.PRECIPITATION, Regime.STORM) for r in chain)
    return wet / len(chain)
