"""The performance-mode service over NATS: profiles, AUTO/MANUAL with compare-and-set, and tier
recommendations from a client stream of telemetry, plus the recommendation rule on its own."""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import grpc
import nats
import pytest
from gaming.common.v1 import common_pb2
from gaming.performance_mode.v1 import performance_mode_pb2 as pm
from gaming.performance_mode.v1 import performance_mode_pb2_grpc
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nats.aio.client import Client

from mesh.jetstream_storage import JetStreamStorage
from nats_transport.testing import NatsServer
from servicers import performance_mode
from servicers.dependencies import Dependencies
from servicers.performance_mode import Sample, p95, recommend
from tests._serving import served

NOW = 1_700_000_000.0
LOW, MEDIUM, HIGH, ULTRA = (pm.QUALITY_TIER_LOW, pm.QUALITY_TIER_MEDIUM, pm.QUALITY_TIER_HIGH, pm.QUALITY_TIER_ULTRA)
AUTO, MANUAL = pm.PERFORMANCE_MODE_AUTO, pm.PERFORMANCE_MODE_MANUAL


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}_"


def dependencies(nc: Client, prefix: str) -> Dependencies:
    return Dependencies(
        storage=JetStreamStorage(nc, prefix=prefix), channel=_no_channel, settings={"memory_limit_mb": "4096"},
        clock=lambda: NOW,
    )


def _no_channel(target: str) -> Any:
    raise AssertionError(f"performance-mode calls no other service, yet asked for {target!r}")


@contextlib.asynccontextmanager
async def service(nc: Client, prefix: str) -> AsyncIterator[Any]:
    servicer = await performance_mode.create(dependencies(nc, prefix))
    async with served(nc, performance_mode.add_to_server, servicer) as channel:
        yield performance_mode_pb2_grpc.PerformanceModeServiceStub(channel)


@pytest.fixture
async def stub(nc: Client, prefix: str) -> AsyncIterator[Any]:
    async with service(nc, prefix) as client:
        yield client


def at(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(round(seconds * 1e9))
    return stamp


def samples(
    count: int, *, client_id: str = "pc-1", frame: float = 14.0, gpu: float = 12.0, cpu: float = 6.0,
    memory: float = 2000.0, temperature: float = 60.0,
) -> Iterator[pm.ReportMetricsRequest]:
    """``count`` samples, the first naming the client (later ones may leave it out)."""
    for index in range(count):
        yield pm.ReportMetricsRequest(
            client_id=client_id if index == 0 else "", sample_time=at(NOW - 1), frame_time_ms=frame,
            gpu_time_ms=gpu, cpu_time_ms=cpu, memory_mb=memory, temperature_celsius=temperature,
        )


async def report(stub: Any, requests: Iterable[pm.ReportMetricsRequest]) -> pm.ReportMetricsResponse:
    reply: pm.ReportMetricsResponse = await stub.ReportMetrics(iter(requests), timeout=10)
    return reply


async def profile_of(stub: Any, client_id: str = "pc-1") -> pm.Profile:
    reply = await stub.GetProfile(pm.GetProfileRequest(client_id=client_id), timeout=5)
    profile: pm.Profile = reply.profile
    return profile


async def set_mode(stub: Any, mode: int, tier: int = 0, client_id: str = "pc-1", **fields: Any) -> pm.Profile:
    request = pm.SetModeRequest(client_id=client_id, mode=mode, manual_tier=tier, **fields)  # type: ignore[arg-type]
    reply = await stub.SetMode(request, timeout=5)
    profile: pm.Profile = reply.profile
    return profile


async def failure(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def bad_field_of(err: grpc.aio.AioRpcError) -> str:
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    status = rpc_status.from_call(err)
    assert status is not None
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    return str(bad.field_violations[0].field)


# -- profiles and modes ----------------------------------------------------------------------------


async def test_a_client_that_never_reported_gets_the_default_profile(stub: Any) -> None:
    profile = await profile_of(stub, "new.client-7")
    assert (profile.client_id, profile.mode, profile.tier) == ("new.client-7", AUTO, MEDIUM)
    assert (profile.manual_tier, profile.recommended_tier) == (pm.QUALITY_TIER_UNSPECIFIED,) * 2
    assert profile.settings == performance_mode.TIER_SETTINGS[MEDIUM]
    assert profile.settings.target_fps == 60
    assert profile.revision.value == 0


@pytest.mark.parametrize("client_id", ["", "has space", "x" * 129, "émile"])
async def test_get_profile_rejects_empty_and_malformed_client_ids(stub: Any, client_id: str) -> None:
    err = await failure(stub.GetProfile(pm.GetProfileRequest(client_id=client_id), timeout=5))
    assert bad_field_of(err) == "client_id"


async def test_manual_mode_pins_a_tier_and_auto_mode_follows_the_latest_recommendation(stub: Any) -> None:
    pinned = await set_mode(stub, MANUAL, HIGH)
    assert (pinned.mode, pinned.tier, pinned.manual_tier) == (MANUAL, HIGH, HIGH)
    assert pinned.settings == performance_mode.TIER_SETTINGS[HIGH]
    assert pinned.revision.value > 0
    assert pinned.update_time.seconds == NOW
    assert await profile_of(stub) == pinned

    # Telemetry in MANUAL mode only records a recommendation.
    fast = await report(stub, samples(40, frame=9.0, gpu=8.0))
    assert (fast.recommended_tier, fast.reason, fast.applied) == (ULTRA, pm.RECOMMENDATION_REASON_HEADROOM, False)
    assert (fast.profile.tier, fast.profile.recommended_tier) == (HIGH, ULTRA)

    back = await set_mode(stub, AUTO)
    assert (back.mode, back.tier, back.manual_tier) == (AUTO, ULTRA, pm.QUALITY_TIER_UNSPECIFIED)


async def test_switching_to_auto_before_any_recommendation_keeps_the_current_tier(stub: Any) -> None:
    await set_mode(stub, MANUAL, LOW)
    assert (await set_mode(stub, AUTO)).tier == LOW


@pytest.mark.parametrize(
    ("mode", "tier", "field"),
    [
        (pm.PERFORMANCE_MODE_UNSPECIFIED, 0, "mode"),
        (7, 0, "mode"),
        (MANUAL, 0, "manual_tier"),
        (MANUAL, 9, "manual_tier"),
        (AUTO, HIGH, "manual_tier"),
    ],
)
async def test_set_mode_rejects_inconsistent_requests_naming_the_field(
    stub: Any, mode: int, tier: int, field: str
) -> None:
    assert bad_field_of(await failure(set_mode(stub, mode, tier))) == field


async def test_set_mode_at_a_stale_revision_is_aborted_with_the_current_one(stub: Any) -> None:
    created = await set_mode(stub, MANUAL, LOW, expected_revision=common_pb2.Revision(value=0))
    changed = await set_mode(stub, MANUAL, HIGH, expected_revision=created.revision)
    assert changed.revision.value > created.revision.value

    for stale in (created.revision, common_pb2.Revision(value=0)):
        err = await failure(set_mode(stub, MANUAL, ULTRA, expected_revision=stale))
        assert err.code() == grpc.StatusCode.ABORTED
        status = rpc_status.from_call(err)
        assert status is not None
        info = error_details_pb2.ErrorInfo()
        assert status.details[0].Unpack(info)
        assert info.reason == "REVISION_CONFLICT"
        assert info.metadata["current_revision"] == str(changed.revision.value)
    assert (await profile_of(stub)).tier == HIGH


async def test_concurrent_unconditional_mode_changes_all_apply(stub: Any) -> None:
    tiers = [LOW, MEDIUM, HIGH, ULTRA, LOW, HIGH]
    done = await asyncio.gather(*(set_mode(stub, MANUAL, tier) for tier in tiers))
    assert len({profile.revision.value for profile in done}) == len(tiers)
    final = await profile_of(stub)
    assert final.revision.value == max(profile.revision.value for profile in done)


# -- telemetry reports -----------------------------------------------------------------------------


async def test_an_auto_client_over_its_gpu_budget_drops_a_tier_at_once(stub: Any) -> None:
    reply = await report(stub, samples(60, frame=21.3, gpu=20.0, cpu=7.0))
    assert (reply.recommended_tier, reply.reason, reply.applied) == (LOW, pm.RECOMMENDATION_REASON_GPU_BOUND, True)
    assert reply.reason_detail == "p95 frame time 21.3 ms exceeds 16.7 ms budget (p95 GPU time 20.0 ms)"
    assert (reply.samples_counted, reply.samples_rejected) == (60, 0)
    assert (reply.profile.tier, reply.profile.recommended_tier) == (LOW, LOW)
    assert reply.profile.settings.target_fps == 30
    assert await profile_of(stub) == reply.profile


async def test_the_reply_carries_the_means_and_the_p95_frame_time(stub: Any) -> None:
    stream = [*samples(19, frame=10.0, gpu=5.0, cpu=3.0, memory=1000.0, temperature=50.0)]
    stream += [*samples(1, client_id="", frame=40.0, gpu=9.0, cpu=7.0, memory=3000.0, temperature=70.0)]
    means = (await report(stub, stream)).averages
    assert means.frame_time_ms == pytest.approx(11.5)
    assert means.frame_time_p95_ms == 10.0  # nearest rank: the 19th of 20
    assert [means.gpu_time_ms, means.cpu_time_ms] == pytest.approx([5.2, 3.2])
    assert [means.memory_mb, means.temperature_celsius] == pytest.approx([1100.0, 51.0])


async def test_a_report_that_changes_nothing_does_not_bump_the_revision(stub: Any) -> None:
    first = await report(stub, samples(40))  # 14 ms at MEDIUM: stable
    assert first.reason == pm.RECOMMENDATION_REASON_STABLE
    again = await report(stub, samples(40))
    assert again.profile.revision == first.profile.revision
    assert not again.applied


async def test_stale_and_implausible_samples_are_skipped_and_counted(stub: Any) -> None:
    bad = [
        pm.ReportMetricsRequest(client_id="pc-1", sample_time=at(NOW - 601), frame_time_ms=10),
        pm.ReportMetricsRequest(sample_time=at(NOW + 601), frame_time_ms=10),
        pm.ReportMetricsRequest(frame_time_ms=10),  # no sample time
        pm.ReportMetricsRequest(sample_time=at(NOW), frame_time_ms=0),
        pm.ReportMetricsRequest(sample_time=at(NOW), frame_time_ms=-3),
        pm.ReportMetricsRequest(sample_time=at(NOW), frame_time_ms=math.nan),
        pm.ReportMetricsRequest(sample_time=at(NOW), frame_time_ms=10, gpu_time_ms=math.inf),
        pm.ReportMetricsRequest(sample_time=at(NOW), frame_time_ms=10, memory_mb=-1),
        pm.ReportMetricsRequest(sample_time=at(NOW), frame_time_ms=10, temperature_celsius=1000),
    ]
    reply = await report(stub, [*bad, *samples(30, client_id="")])
    assert (reply.samples_counted, reply.samples_rejected) == (30, len(bad))
    assert reply.reason == pm.RECOMMENDATION_REASON_STABLE


async def test_fewer_than_thirty_valid_samples_keep_the_tier_and_store_nothing(stub: Any) -> None:
    reply = await report(stub, samples(29, frame=50.0, gpu=45.0))
    assert (reply.recommended_tier, reply.reason) == (MEDIUM, pm.RECOMMENDATION_REASON_INSUFFICIENT_SAMPLES)
    assert not reply.applied
    assert reply.profile.revision.value == 0
    assert (await profile_of(stub)).recommended_tier == pm.QUALITY_TIER_UNSPECIFIED


async def test_a_report_must_name_one_client_throughout(stub: Any) -> None:
    assert bad_field_of(await failure(report(stub, samples(3, client_id="")))) == "client_id"
    assert bad_field_of(await failure(report(stub, []))) == "client_id"
    assert bad_field_of(await failure(report(stub, samples(3, client_id="bad id")))) == "client_id"
    switching = [*samples(3), pm.ReportMetricsRequest(client_id="pc-2", sample_time=at(NOW), frame_time_ms=10)]
    assert bad_field_of(await failure(report(stub, switching))) == "client_id"
    repeating = [*samples(30), pm.ReportMetricsRequest(client_id="pc-1", sample_time=at(NOW), frame_time_ms=14)]
    assert (await report(stub, repeating)).samples_counted == 31


async def test_more_than_ten_thousand_samples_in_one_stream_are_refused(stub: Any) -> None:
    err = await failure(report(stub, samples(10_001)))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_a_restart_keeps_acknowledged_profiles(nc: Client, nats_server: NatsServer, prefix: str) -> None:
    async with service(nc, prefix) as stub:
        await set_mode(stub, MANUAL, ULTRA, client_id="console")
        reported = (await report(stub, samples(30, client_id="laptop", frame=25.0, gpu=10.0, cpu=24.0))).profile

    nc2 = await nats.connect(nats_server.url)
    try:
        async with service(nc2, prefix) as stub:
            console = await profile_of(stub, "console")
            assert (console.mode, console.tier) == (MANUAL, ULTRA)
            assert await profile_of(stub, "laptop") == reported
            assert reported.tier == LOW
    finally:
        await nc2.close()


async def test_every_rpc_answers_unavailable_when_the_store_cannot_be_reached(
    nc: Client, nats_server: NatsServer, prefix: str
) -> None:
    store_connection = await nats.connect(nats_server.url)
    servicer = await performance_mode.create(dependencies(store_connection, prefix))
    async with served(nc, performance_mode.add_to_server, servicer) as channel:
        stub = performance_mode_pb2_grpc.PerformanceModeServiceStub(channel)
        await profile_of(stub)
        await store_connection.close()
        for call in (profile_of(stub), set_mode(stub, MANUAL, LOW), report(stub, samples(30))):
            assert (await failure(call)).code() == grpc.StatusCode.UNAVAILABLE


# -- the rule --------------------------------------------------------------------------------------


def _samples(count: int = 40, **values: float) -> list[Sample]:
    base = {"frame_time_ms": 14.0, "gpu_time_ms": 12.0, "cpu_time_ms": 6.0, "memory_mb": 2000.0,
            "temperature_celsius": 60.0}
    return [Sample(**{**base, **values})] * count


@pytest.mark.parametrize(
    ("current", "values", "tier", "reason"),
    [
        (MEDIUM, {"frame_time_ms": 20, "gpu_time_ms": 8, "cpu_time_ms": 18}, LOW, pm.RECOMMENDATION_REASON_CPU_BOUND),
        (MEDIUM, {"temperature_celsius": 85}, LOW, pm.RECOMMENDATION_REASON_THERMAL),
        (HIGH, {"memory_mb": 3700}, MEDIUM, pm.RECOMMENDATION_REASON_MEMORY_PRESSURE),  # >= 90 % of 4096
        (LOW, {"frame_time_ms": 40, "gpu_time_ms": 39}, LOW, pm.RECOMMENDATION_REASON_GPU_BOUND),  # no lower tier
        (LOW, {"frame_time_ms": 11.6}, MEDIUM, pm.RECOMMENDATION_REASON_HEADROOM),  # <= 70 % of 16.7 ms
        # Hysteresis: between the down and up thresholds the tier stays.
        (LOW, {"frame_time_ms": 20}, LOW, pm.RECOMMENDATION_REASON_STABLE),
        (HIGH, {"frame_time_ms": 13}, HIGH, pm.RECOMMENDATION_REASON_STABLE),
        (MEDIUM, {"frame_time_ms": 9, "temperature_celsius": 80}, MEDIUM, pm.RECOMMENDATION_REASON_STABLE),
        (MEDIUM, {"frame_time_ms": 9, "memory_mb": 3300}, MEDIUM, pm.RECOMMENDATION_REASON_STABLE),
        (ULTRA, {"frame_time_ms": 5}, ULTRA, pm.RECOMMENDATION_REASON_STABLE),  # no higher tier
    ],
)
def test_the_recommendation_rule(current: int, values: dict[str, float], tier: int, reason: int) -> None:
    advice = recommend(current, _samples(**values), memory_limit_mb=4096)  # type: ignore[arg-type]
    assert (advice.tier, advice.reason) == (tier, reason), advice.detail


def test_a_few_slow_frames_under_five_percent_do_not_move_the_p95() -> None:
    assert p95(list(range(1, 101))) == 95
    spiky = _samples(95) + _samples(5, frame_time_ms=100)
    assert recommend(MEDIUM, spiky, 4096).reason == pm.RECOMMENDATION_REASON_STABLE
    spikier = _samples(94) + _samples(6, frame_time_ms=100)
    assert recommend(MEDIUM, spikier, 4096).reason == pm.RECOMMENDATION_REASON_GPU_BOUND
