"""environmental-narrative over NATS: descriptions composed from the real world-state,
weather-manager and time-manager servicers asked in parallel, degraded or failed answers when one
of them is down or slow, localisation, and ambience streams that speak only on change.

Every dependency runs on the same nats-server under per-test target names (a channel factory maps
"world-state" to "world-state-<test id>"), behind a thin proxy that records each call's
time_remaining() and can hold calls, so a test sees the deadline share each one got and can make
a dependency hang. The time-manager runs on a fake wall clock the test moves; the weather-manager
on a fixed one, so its weather stays put unless a test says otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from gaming.common.v1 import common_pb2
from gaming.environmental_narrative.v1 import environmental_narrative_pb2 as pb
from gaming.environmental_narrative.v1 import environmental_narrative_pb2_grpc
from gaming.time_manager.v1 import time_manager_pb2 as tm
from gaming.weather.v1 import weather_pb2, weather_pb2_grpc
from gaming.world_state.v1 import world_state_pb2 as ws
from gaming.world_state.v1 import world_state_pb2_grpc
from google.protobuf import duration_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nats.aio.client import Client

import nats_transport
from nats_transport._status import NO_SERVER
from servicers import environmental_narrative as narrative
from servicers import time_manager, weather, world_state
from servicers.dependencies import Dependencies
from servicers.environmental_narrative import _compose
from servicers.environmental_narrative.templates import LANGUAGES
from servicers.error_boundary import ErrorBoundary
from tests._waiting import wait_for

REGIONS = [
    {"regionId": "harbor", "displayName": "Harbor", "boundsMin": {"x": -100, "y": -10, "z": -100},
     "boundsMax": {"x": 100, "y": 50, "z": 100}},
    {"regionId": "sunken-vault", "displayName": "Sunken Vault", "boundsMin": {"x": -10, "y": -10, "z": -10},
     "boundsMax": {"x": 10, "y": 10, "z": 10}},
]
START = 1_700_000_000.0
GAME_HOUR = 60.0  # real seconds per game hour at the time-manager's scale of 60
NARRATIVE_SETTINGS = {"min_interval_seconds": "0.01", "dependency_timeout_seconds": "2"}
FAST = duration_pb2.Duration(nanos=20_000_000)  # 20 ms between two looks at the conditions
CLEAR, WINDY = pb.WEATHER_CONDITION_CLEAR, pb.WEATHER_CONDITION_WINDY
NIGHT, DAWN, MORNING, AFTERNOON, DUSK = (pb.DAY_PHASE_NIGHT, pb.DAY_PHASE_DAWN, pb.DAY_PHASE_MORNING,
                                         pb.DAY_PHASE_AFTERNOON, pb.DAY_PHASE_DUSK)


class FakeClock:
    """Wall-clock seconds that move only when the test says so."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- the dependencies, observed -------------------------------------------------------------------


@dataclass
class Observed:
    """A real servicer behind a proxy: its unary ``methods`` record each call's time_remaining()
    and wait while ``held`` (until ``release`` is set); everything else passes straight through.

    ``gate`` (shared by several proxies) holds each call until ``gate_size`` calls have arrived
    across all of them: it only opens if they are in flight at the same time.
    """

    real: Any
    methods: tuple[str, ...]
    seen: list[tuple[str, float | None]] = field(default_factory=list)
    held: bool = False
    release: asyncio.Event = field(default_factory=asyncio.Event)
    gate: Gate | None = None

    def count(self, method: str) -> int:
        return sum(1 for name, _ in self.seen if name == method)

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.real, name)
        if name not in self.methods:
            return attribute

        async def observed(request: Any, context: Any) -> Any:
            self.seen.append((name, context.time_remaining()))
            if self.gate is not None:
                await self.gate.arrive()
            if self.held:
                await self.release.wait()
            return await attribute(request, context)

        return observed


@dataclass
class Gate:
    """Opens once ``size`` calls have arrived; callers wait until then."""

    size: int
    arrived: int = 0
    opened: asyncio.Event = field(default_factory=asyncio.Event)

    async def arrive(self) -> None:
        self.arrived += 1
        if self.arrived >= self.size:
            self.opened.set()
        await self.opened.wait()


class Mesh:
    """The targets of one test: logical names mapped to unique ones on the shared nats-server."""

    def __init__(self, nc: Client, stack: contextlib.AsyncExitStack) -> None:
        self.nc = nc
        self.suffix = uuid.uuid4().hex[:8]
        self.servers: dict[str, Any] = {}
        self._stack = stack

    def name(self, target: str) -> str:
        return f"{target}-{self.suffix}"

    def channel(self, target: str) -> Any:
        return nats_transport.aio.channel(self.nc, self.name(target))

    async def host(self, target: str, add: Callable[[Any, Any], None], servicer: Any) -> None:
        server = nats_transport.aio.server(self.nc, self.name(target), interceptors=[ErrorBoundary()])
        add(servicer, server)
        await server.start()
        self.servers[target] = server
        self._stack.push_async_callback(server.stop, 0)

    async def stop(self, target: str) -> None:
        await self.servers[target].stop(0)


@dataclass
class World:
    """One test's running services and handles on them."""

    mesh: Mesh
    time_clock: FakeClock
    world: Observed
    weather: Observed
    time: Observed
    narrative: narrative.EnvironmentalNarrativeServicer
    stub: Any
    world_stub: Any

    async def spawn(self, entity_id: str, kind: str, **attributes: str) -> None:
        await self.world_stub.ApplyEvent(ws.ApplyEventRequest(
            region_id="harbor",
            event_id=common_pb2.IdempotencyKey(key=uuid.uuid4().hex),
            event=ws.WorldEvent(spawn=ws.SpawnEntity(
                entity_id=entity_id, kind=kind, position=common_pb2.Vector3(x=1, y=2, z=3),
                attributes=[common_pb2.Attribute(key=k, value=v) for k, v in attributes.items()],
            )),
        ), timeout=5)

    async def move(self, entity_id: str, x: float) -> None:
        await self.world_stub.ApplyEvent(ws.ApplyEventRequest(
            region_id="harbor",
            event_id=common_pb2.IdempotencyKey(key=uuid.uuid4().hex),
            event=ws.WorldEvent(move=ws.MoveEntity(entity_id=entity_id, position=common_pb2.Vector3(x=x))),
        ), timeout=5)

    async def weather_now(self, region_id: str = "harbor") -> weather_pb2.Weather:
        stub = weather_pb2_grpc.WeatherServiceStub(self.mesh.channel(weather.TARGET))
        reply: weather_pb2.GetWeatherResponse = await stub.GetWeather(
            weather_pb2.GetWeatherRequest(region_id=region_id), timeout=5
        )
        return reply.weather

    def release_all(self) -> None:
        for observed in (self.world, self.weather, self.time):
            observed.release.set()


@contextlib.asynccontextmanager
async def running(nc: Client, storage: Any, *, host: tuple[str, ...] = ("world-state", "weather-manager",
                                                                        "time-manager")) -> AsyncIterator[World]:
    async with contextlib.AsyncExitStack() as stack:
        mesh = Mesh(nc, stack)
        time_clock = FakeClock()
        observed_world = Observed(
            await world_state.create(Dependencies(
                storage=storage, channel=mesh.channel, settings={"regions": json.dumps(REGIONS)}, clock=lambda: START,
            )),
            ("GetRegion", "ListEntities"),
        )
        observed_weather = Observed(
            await weather.create(Dependencies(storage=storage, channel=mesh.channel, clock=FakeClock())),
            ("GetWeather",),
        )
        observed_time = Observed(
            await time_manager.create(Dependencies(
                storage=storage, channel=mesh.channel, clock=time_clock,
                settings={"worlds": "main", "time_scale": "60", "clocks_max_bytes": str(1024 * 1024)},
            )),
            ("GetTime",),
        )
        modules = {world_state.TARGET: (world_state, observed_world), weather.TARGET: (weather, observed_weather),
                   time_manager.TARGET: (time_manager, observed_time)}
        for target, (module, observed) in modules.items():
            if target in host:
                await mesh.host(target, module.add_to_server, observed)
        servicer = await narrative.create(
            Dependencies(storage=storage, channel=mesh.channel, settings=NARRATIVE_SETTINGS, clock=lambda: START)
        )
        await mesh.host(narrative.TARGET, narrative.add_to_server, servicer)
        world = World(
            mesh=mesh, time_clock=time_clock, world=observed_world, weather=observed_weather, time=observed_time,
            narrative=servicer,
            stub=environmental_narrative_pb2_grpc.EnvironmentalNarrativeServiceStub(mesh.channel(narrative.TARGET)),
            world_stub=world_state_pb2_grpc.WorldStateServiceStub(mesh.channel(world_state.TARGET)),
        )
        try:
            yield world
        finally:
            world.release_all()  # held handlers finish before their servers stop


@pytest.fixture
async def world(nc: Client, storage: Any) -> AsyncIterator[World]:
    async with running(nc, storage) as running_world:
        yield running_world


async def describe(world: World, region_id: str = "harbor", *, locale: str = "",
                   detail: pb.DetailLevel.ValueType = pb.DETAIL_LEVEL_STANDARD,
                   timeout: float = 5) -> tuple[pb.DescribeResponse, dict[str, str]]:
    call = world.stub.Describe(
        pb.DescribeRequest(region_id=region_id, locale=common_pb2.LocaleTag(tag=locale), detail_level=detail),
        timeout=timeout,
    )
    reply = await call
    return reply, dict(await call.trailing_metadata() or ())


def dependency_failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The dependency calls environmental-narrative did without, as it logged them."""
    return [record.getMessage() for record in caplog.records
            if record.name == "servicers.environmental_narrative._servicer" and record.levelname == "WARNING"]


async def failure(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def violation(err: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(err)
    assert status is not None
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    return str(bad.field_violations[0].field)


def expected_condition(found: weather_pb2.Weather) -> pb.WeatherCondition.ValueType:
    sky = _compose.sky_of(found)
    assert sky is not None
    return sky.condition


# -- Describe -------------------------------------------------------------------------------------


async def test_describe_composes_the_weather_the_time_of_day_and_the_notable_entities(world: World) -> None:
    await world.spawn("lighthouse", "landmark", name="Old Lighthouse")
    await world.spawn("mira", "npc", name="Mira")
    await world.spawn("p1", "player_avatar", name="Somebody")
    await world.spawn("crate", "item", name="Crate", notable="false")
    reply, trailing = await describe(world)
    forecast = await world.weather_now()
    inputs = reply.inputs
    assert inputs.weather_condition == expected_condition(forecast)
    assert inputs.day_phase == NIGHT  # the clock starts at day 1, 00:00
    assert [(e.entity_id, e.display_name, e.kind) for e in inputs.notable_entities] == [
        ("lighthouse", "Old Lighthouse", "landmark"), ("mira", "Mira", "npc")]
    assert inputs.notable_entities[0].position == common_pb2.Vector3(x=1, y=2, z=3)
    assert inputs.world_state_revision.value == 4
    assert reply.description.startswith("Night has fallen over Harbor.")
    sky_line = LANGUAGES["en"].night_sky.get(inputs.weather_condition, LANGUAGES["en"].sky[inputs.weather_condition])
    assert sky_line in reply.description
    assert reply.description.endswith("Close by: Old Lighthouse and Mira.")
    assert reply.generate_time == timestamp_pb2.Timestamp(seconds=int(START))
    assert trailing.get("content-language") == "en"
    assert narrative.DEGRADED_KEY not in trailing


async def test_descriptions_are_localised_and_unknown_languages_fall_back_to_english(world: World) -> None:
    await world.spawn("lighthouse", "landmark", name="Old Lighthouse", name_fr="Vieux Phare")
    french, french_trailing = await describe(world, locale="fr-CA")
    assert french.description.startswith("La nuit est tombée sur Harbor.")
    assert french.description.endswith("Vieux Phare se trouve tout près.")
    assert french.inputs.notable_entities[0].display_name == "Vieux Phare"
    assert french_trailing["content-language"] == "fr"
    german, german_trailing = await describe(world, locale="de-DE")
    assert german.description.startswith("Night has fallen over Harbor.")
    assert german_trailing["content-language"] == "en"


async def test_detail_levels_range_from_a_banner_to_a_paragraph(world: World) -> None:
    await world.spawn("lighthouse", "landmark", name="Old Lighthouse")
    brief, _ = await describe(world, detail=pb.DETAIL_LEVEL_BRIEF)
    standard, _ = await describe(world, detail=pb.DETAIL_LEVEL_UNSPECIFIED)
    rich, _ = await describe(world, detail=pb.DETAIL_LEVEL_RICH)
    assert len(brief.description) <= 150
    assert brief.description.endswith("in Harbor, near Old Lighthouse.")
    assert standard.description == (await describe(world))[0].description
    assert len(rich.description) <= 2000
    assert "°C" in rich.description
    assert "Old Lighthouse (landmark)" in rich.description
    assert rich.description.endswith(LANGUAGES["en"].mood[NIGHT])


async def test_the_day_phase_follows_the_game_clock(world: World) -> None:
    for hour, phase in ((6, DAWN), (9, MORNING), (13, AFTERNOON), (19, DUSK), (23, NIGHT)):
        world.time_clock.now = START + hour * GAME_HOUR
        reply, _ = await describe(world)
        assert reply.inputs.day_phase == phase, hour


async def test_the_four_calls_run_in_parallel_each_with_a_share_of_the_callers_deadline(world: World) -> None:
    # Each call is held until all four have arrived: sequential calls would never get there.
    gate = Gate(size=4)
    for observed in (world.world, world.weather, world.time):
        observed.gate = gate
    reply, trailing = await describe(world, timeout=1.0)
    assert gate.opened.is_set()
    assert narrative.DEGRADED_KEY not in trailing
    assert reply.inputs.day_phase == NIGHT
    seen = world.world.seen + world.weather.seen + world.time.seen
    assert sorted(name for name, _ in seen) == ["GetRegion", "GetTime", "GetWeather", "ListEntities"]
    for name, remaining in seen:
        assert remaining is not None, name
        # The downstream saw no more than its share (3/4) of the caller's 1 s.
        assert remaining <= 1.0 * narrative.DEPENDENCY_SHARE + 0.01, (name, remaining)


async def test_a_stopped_weather_service_leaves_the_weather_out_and_says_so(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    await world.mesh.stop(weather.TARGET)
    reply, trailing = await describe(world, detail=pb.DETAIL_LEVEL_RICH, timeout=2)  # answered: within 2 s
    # No responders, known at once: not a wait for the weather call's share of the deadline.
    assert dependency_failures(caplog) == [f"no weather for 'harbor': UNAVAILABLE {NO_SERVER[1]}"]
    assert reply.inputs.weather_condition == pb.WEATHER_CONDITION_UNSPECIFIED
    assert reply.inputs.day_phase == NIGHT
    assert trailing[narrative.DEGRADED_KEY] == "weather-manager"
    assert "°C" not in reply.description
    assert reply.description == "Night has fallen over Harbor. Only the bold are still about."


async def test_a_hanging_time_manager_costs_one_share_of_the_deadline_then_the_time_is_left_out(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.time.held = True
    reply, trailing = await describe(world, timeout=1.0)  # answered: within the caller's second
    assert world.time.count("GetTime") == 1
    # The held GetTime had its share of the caller's second, and ran out of it.
    ((_, remaining),) = world.time.seen
    assert remaining is not None
    assert 0 < remaining <= 1.0 * narrative.DEPENDENCY_SHARE + 0.01
    assert [line.split(": ")[1].split()[0] for line in dependency_failures(caplog)] == ["DEADLINE_EXCEEDED"]
    assert reply.inputs.day_phase == pb.DAY_PHASE_UNSPECIFIED
    assert reply.inputs.weather_condition != pb.WEATHER_CONDITION_UNSPECIFIED
    assert trailing[narrative.DEGRADED_KEY] == "time-manager"
    assert reply.description.startswith("You stand in Harbor.")


async def test_both_optional_dependencies_down_still_describe_the_region(nc: Client, storage: Any) -> None:
    async with running(nc, storage, host=("world-state",)) as world:
        reply, trailing = await describe(world, detail=pb.DETAIL_LEVEL_BRIEF)
    assert reply.description == "All is quiet in Harbor."
    assert trailing[narrative.DEGRADED_KEY] == "weather-manager,time-manager"


async def test_world_state_down_is_unavailable_naming_it_within_the_deadline(
    nc: Client, storage: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(nc, storage, host=("weather-manager", "time-manager")) as world:
        err = await failure(world.stub.Describe(pb.DescribeRequest(region_id="harbor"), timeout=2))
    # UNAVAILABLE, not DEADLINE_EXCEEDED: answered within the deadline, on no responders.
    assert (err.code(), err.details()) == (grpc.StatusCode.UNAVAILABLE, "world-state is unavailable (UNAVAILABLE)")
    assert f"world-state failed for 'harbor': UNAVAILABLE {NO_SERVER[1]}" in dependency_failures(caplog)


async def test_a_hanging_world_state_is_unavailable_before_the_callers_deadline(world: World) -> None:
    world.world.held = True
    err = await failure(world.stub.Describe(pb.DescribeRequest(region_id="harbor"), timeout=1.0))
    # UNAVAILABLE, not DEADLINE_EXCEEDED: the caller heard before its deadline that world-state's
    # share of it had run out.
    assert (err.code(), err.details()) == (grpc.StatusCode.UNAVAILABLE,
                                           "world-state is unavailable (DEADLINE_EXCEEDED)")
    for name, remaining in world.world.seen:
        assert remaining is not None, name
        assert 0 < remaining <= 1.0 * narrative.DEPENDENCY_SHARE + 0.01, (name, remaining)


async def test_an_unknown_region_is_not_found(world: World) -> None:
    err = await failure(world.stub.Describe(pb.DescribeRequest(region_id="atlantis"), timeout=5))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "atlantis" in (err.details() or "")


@pytest.mark.parametrize(
    ("request_fields", "field_path"),
    [
        ({"region_id": ""}, "region_id"),
        ({"region_id": "x" * 129}, "region_id"),
        ({"region_id": "harbor", "locale": common_pb2.LocaleTag(tag="not a tag")}, "locale.tag"),
        ({"region_id": "harbor", "detail_level": 42}, "detail_level"),
    ],
)
async def test_describe_rejects_bad_requests_naming_the_field(
    world: World, request_fields: dict[str, Any], field_path: str
) -> None:
    err = await failure(world.stub.Describe(pb.DescribeRequest(**request_fields), timeout=5))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violation(err) == field_path


async def test_replicas_describe_the_same_region_in_the_same_words(world: World, storage: Any) -> None:
    await world.spawn("lighthouse", "landmark", name="Old Lighthouse")
    other = await narrative.create(
        Dependencies(storage=storage, channel=world.mesh.channel, settings=NARRATIVE_SETTINGS, clock=lambda: START)
    )
    async with contextlib.AsyncExitStack() as stack:
        mesh = Mesh(world.mesh.nc, stack)
        await mesh.host(narrative.TARGET, narrative.add_to_server, other)
        stub = environmental_narrative_pb2_grpc.EnvironmentalNarrativeServiceStub(mesh.channel(narrative.TARGET))
        second = await stub.Describe(pb.DescribeRequest(region_id="harbor", detail_level=pb.DETAIL_LEVEL_RICH),
                                     timeout=5)
    first, _ = await describe(world, detail=pb.DETAIL_LEVEL_RICH)
    assert (first.description, first.inputs) == (second.description, second.inputs)


# -- StreamAmbience -------------------------------------------------------------------------------


@dataclass
class Listener:
    """Reads an ambience stream in the background."""

    call: Any
    lines: list[pb.StreamAmbienceResponse] = field(default_factory=list)
    error: grpc.aio.AioRpcError | None = None
    task: asyncio.Task[None] | None = None

    async def _read(self) -> None:
        try:
            async for line in self.call:
                self.lines.append(line)
        except grpc.aio.AioRpcError as err:
            self.error = err

    def start(self) -> Listener:
        self.task = asyncio.create_task(self._read())
        return self

    async def stop(self) -> None:
        self.call.cancel()
        assert self.task is not None
        await asyncio.gather(self.task, return_exceptions=True)


def listen(world: World, region_id: str = "harbor", **fields: Any) -> Listener:
    request = pb.StreamAmbienceRequest(region_id=region_id, interval=FAST, **fields)
    return Listener(world.stub.StreamAmbience(request)).start()


async def quiet_polls(world: World, polls: int = 5) -> None:
    """Wait until the stream has looked at the region ``polls`` more times."""
    target = world.world.count("ListEntities") + polls
    await wait_for(lambda: world.world.count("ListEntities") >= target)


async def test_ambience_sends_a_line_at_once_then_only_when_conditions_change(world: World) -> None:
    listener = listen(world)
    try:
        await wait_for(lambda: len(listener.lines) == 1)
        first = listener.lines[0]
        assert first.sequence == 0
        assert first.inputs.day_phase == NIGHT
        assert len(first.text) <= 150  # brief by default
        assert first.generate_time == timestamp_pb2.Timestamp(seconds=int(START))
        await quiet_polls(world)
        assert len(listener.lines) == 1  # nothing changed, nothing said

        await world.spawn("lighthouse", "landmark", name="Old Lighthouse")
        await wait_for(lambda: len(listener.lines) == 2)
        assert listener.lines[1].sequence == 1
        assert [e.entity_id for e in listener.lines[1].inputs.notable_entities] == ["lighthouse"]
        assert listener.lines[1].text.endswith("near Old Lighthouse.")

        await world.move("lighthouse", 50)  # a move is not a change of ambience
        await quiet_polls(world)
        assert len(listener.lines) == 2

        world.time_clock.now = START + 6 * GAME_HOUR  # 06:00, dawn
        await wait_for(lambda: len(listener.lines) == 3)
        assert (listener.lines[2].sequence, listener.lines[2].inputs.day_phase) == (2, DAWN)
        assert listener.error is None
    finally:
        await listener.stop()
    await wait_for(lambda: world.narrative.active_streams == 0)


async def test_ambience_lines_are_localised_and_announce_their_language(world: World) -> None:
    request = pb.StreamAmbienceRequest(region_id="harbor", interval=FAST, locale=common_pb2.LocaleTag(tag="fr"),
                                       detail_level=pb.DETAIL_LEVEL_STANDARD)
    call = world.stub.StreamAmbience(request)
    try:
        assert dict(await call.initial_metadata())["content-language"] == "fr"
        line = await call.read()
        assert line.text.startswith("La nuit est tombée sur Harbor.")
    finally:
        call.cancel()


async def test_cancelling_the_stream_stops_its_polling(world: World) -> None:
    listener = listen(world)
    await wait_for(lambda: len(listener.lines) == 1)
    assert world.narrative.active_streams == 1
    await listener.stop()
    await wait_for(lambda: world.narrative.active_streams == 0)
    assert listener.error is None


async def test_a_weather_outage_mid_stream_sends_the_degraded_line(world: World) -> None:
    listener = listen(world, detail_level=pb.DETAIL_LEVEL_STANDARD)
    try:
        await wait_for(lambda: len(listener.lines) == 1)
        assert listener.lines[0].inputs.weather_condition != pb.WEATHER_CONDITION_UNSPECIFIED
        await world.mesh.stop(weather.TARGET)
        await wait_for(lambda: len(listener.lines) == 2)
        assert listener.lines[1].inputs.weather_condition == pb.WEATHER_CONDITION_UNSPECIFIED
        assert listener.lines[1].text == "Night has fallen over Harbor."
        assert listener.error is None
    finally:
        await listener.stop()


async def test_the_stream_ends_unavailable_when_world_state_stops(world: World) -> None:
    listener = listen(world)
    await wait_for(lambda: len(listener.lines) == 1)
    await world.mesh.stop(world_state.TARGET)
    await wait_for(lambda: listener.error is not None)
    assert listener.error is not None
    assert listener.error.code() == grpc.StatusCode.UNAVAILABLE
    assert "world-state" in (listener.error.details() or "")
    await wait_for(lambda: world.narrative.active_streams == 0)


async def test_a_stream_for_an_unknown_region_is_not_found(world: World) -> None:
    listener = listen(world, "atlantis")
    assert listener.task is not None
    await listener.task
    assert listener.error is not None
    assert listener.error.code() == grpc.StatusCode.NOT_FOUND
    assert listener.lines == []


@pytest.mark.parametrize(
    ("request_fields", "field_path"),
    [
        ({"region_id": "", "interval": FAST}, "region_id"),
        ({"region_id": "harbor", "interval": duration_pb2.Duration(nanos=1_000_000)}, "interval"),
        ({"region_id": "harbor", "interval": duration_pb2.Duration(seconds=601)}, "interval"),
        ({"region_id": "harbor", "interval": FAST, "locale": common_pb2.LocaleTag(tag="-")}, "locale.tag"),
    ],
)
async def test_stream_rejects_bad_requests_naming_the_field(
    world: World, request_fields: dict[str, Any], field_path: str
) -> None:
    call = world.stub.StreamAmbience(pb.StreamAmbienceRequest(**request_fields))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violation(caught.value) == field_path


# -- composition, as data -------------------------------------------------------------------------

ALL_CONDITIONS = [c for c in pb.WeatherCondition.values() if c != pb.WEATHER_CONDITION_UNSPECIFIED]
ALL_PHASES: list[Any] = [p for p in pb.DayPhase.values() if p != pb.DAY_PHASE_UNSPECIFIED] + [None]
DETAILS = {pb.DETAIL_LEVEL_BRIEF: 150, pb.DETAIL_LEVEL_STANDARD: 600, pb.DETAIL_LEVEL_RICH: 2000}


def notable(index: int, name: str | None = None) -> _compose.Notable:
    return _compose.Notable(f"e{index}", name or f"Entity {index}", "npc", (0.0, 0.0, 0.0))


@pytest.mark.parametrize("language", sorted(LANGUAGES))
@pytest.mark.parametrize("detail", sorted(DETAILS))
def test_every_template_combination_renders_within_its_limit(language: str, detail: Any) -> None:
    templates = LANGUAGES[language]
    for condition in [*ALL_CONDITIONS, None]:
        for phase in ALL_PHASES:
            for count in (0, 1, 2, 10):
                sky = None if condition is None else _compose.Sky(condition, -12.6, 14.0, 271.0)
                conditions = _compose.Conditions("Harbor", sky, phase, tuple(notable(i) for i in range(count)), 1)
                text = _compose.describe(conditions, templates, detail)
                assert text
                assert len(text) <= DETAILS[detail]
                assert "{" not in text
                assert "}" not in text
                assert "Harbor" in text


def test_a_region_name_too_long_for_a_banner_is_cut_with_an_ellipsis() -> None:
    conditions = _compose.Conditions("N" * 400, None, NIGHT, (notable(1),), 1)
    brief = _compose.describe(conditions, LANGUAGES["en"], pb.DETAIL_LEVEL_BRIEF)
    assert len(brief) == 150
    assert brief.endswith("…")
    standard = _compose.describe(conditions, LANGUAGES["en"], pb.DETAIL_LEVEL_STANDARD)
    assert len(standard) <= 600
    assert "Entity 1" in standard


def test_the_brief_line_names_an_entity_only_when_it_fits() -> None:
    long_name = _compose.Conditions("Harbor", None, NIGHT, (notable(1, "L" * 140),), 1)
    assert _compose.describe(long_name, LANGUAGES["en"], pb.DETAIL_LEVEL_BRIEF) == "Night in Harbor."


@pytest.mark.parametrize(
    ("condition", "wind", "expected"),
    [
        (weather_pb2.WEATHER_CONDITION_CLEAR, 3.0, CLEAR),
        (weather_pb2.WEATHER_CONDITION_CLEAR, 10.8, WINDY),
        (weather_pb2.WEATHER_CONDITION_CLOUDY, 15.0, WINDY),
        (weather_pb2.WEATHER_CONDITION_RAIN, 15.0, pb.WEATHER_CONDITION_RAIN),
        (weather_pb2.WEATHER_CONDITION_STORM, 25.0, pb.WEATHER_CONDITION_STORM),
        (weather_pb2.WEATHER_CONDITION_FOG, 0.0, pb.WEATHER_CONDITION_FOG),
        (weather_pb2.WEATHER_CONDITION_SNOW, 1.0, pb.WEATHER_CONDITION_SNOW),
    ],
)
def test_weather_conditions_map_onto_the_narratives_with_strong_dry_wind_as_windy(
    condition: Any, wind: float, expected: Any
) -> None:
    sky = _compose.sky_of(weather_pb2.Weather(condition=condition, wind=weather_pb2.Wind(speed_mps=wind)))
    assert sky is not None
    assert sky.condition == expected
    assert _compose.sky_of(weather_pb2.Weather()) is None


@pytest.mark.parametrize(
    ("phase", "hour", "expected"),
    [
        (tm.DAY_PHASE_NIGHT, 2, NIGHT), (tm.DAY_PHASE_DAWN, 5, DAWN), (tm.DAY_PHASE_DAY, 7, MORNING),
        (tm.DAY_PHASE_DAY, 11, MORNING), (tm.DAY_PHASE_DAY, 12, AFTERNOON), (tm.DAY_PHASE_DAY, 17, AFTERNOON),
        (tm.DAY_PHASE_DUSK, 18, DUSK), (tm.DAY_PHASE_UNSPECIFIED, 3, None),
    ],
)
def test_the_game_days_phases_map_onto_the_narratives(phase: Any, hour: int, expected: Any) -> None:
    game_time = timestamp_pb2.Timestamp(seconds=-62_135_596_800 + 40 * 86_400 + hour * 3600)
    assert _compose.phase_of(tm.Clock(game_time=game_time, phase=phase)) == expected


def test_notable_entities_are_ranked_marked_first_then_by_kind_then_by_id() -> None:
    def entity(entity_id: str, kind: str, **attributes: str) -> ws.Entity:
        return ws.Entity(entity_id=entity_id, kind=kind,
                         attributes=[common_pb2.Attribute(key=k, value=v) for k, v in attributes.items()])

    found = _compose.notables([
        entity("z-item", "item"), entity("b-npc", "npc"), entity("a-npc", "npc", name="Ann", name_fr="Anne"),
        entity("prop", "barrel"), entity("star", "barrel", notable="true"), entity("tower", "landmark"),
        entity("hidden", "landmark", notable="false"), entity("wolf", "creature"), entity("me", "player_avatar"),
    ], "fr")
    assert [(n.entity_id, n.display_name) for n in found] == [
        ("star", "star"), ("tower", "tower"), ("a-npc", "Anne"), ("b-npc", "b-npc"), ("wolf", "wolf"),
        ("z-item", "z-item")]
    many = _compose.notables([entity(f"n{i:02}", "npc") for i in range(25)], "en")
    assert len(many) == _compose.MAX_NOTABLE


@pytest.mark.parametrize(
    "settings",
    [{"dependency_timeout_seconds": "0"}, {"min_interval_seconds": "soon"}, {"entities_scanned": "1001"},
     {"entities_scanned": "2.5"}, {"world_id": ""}],
)
async def test_create_rejects_bad_settings(settings: dict[str, str]) -> None:
    def no_channel(target: str) -> Any:
        raise AssertionError(target)

    with pytest.raises(ValueError, match="environmental-narrative setting"):
        await narrative.create(Dependencies(storage=None, channel=no_channel, settings=settings))  # type: ignore[arg-type]
