"""The performance-mode service: a graphics quality tier per game client.

A client's ``Profile`` lives in the ``performance_mode_profiles`` bucket under its client id
(base64url, since ids may contain dots). A client with no stored profile has the default one
(AUTO, MEDIUM) at revision 0. SetMode pins a tier (MANUAL) or hands it back to telemetry (AUTO);
ReportMetrics turns a stream of samples into a recommendation, applied in AUTO mode.

The recommendation rule, from the valid samples of one report, checked in this order:

1. fewer than 30 valid samples: keep the current tier (INSUFFICIENT_SAMPLES); nothing stored;
2. mean temperature >= 85 °C: one tier down (THERMAL);
3. mean memory >= 90 % of ``memory_limit_mb``: one tier down (MEMORY_PRESSURE);
4. p95 frame time > the current tier's frame budget (1000 / target_fps ms): one tier down,
   GPU_BOUND if the p95 GPU time is at least the p95 CPU time, else CPU_BOUND;
5. p95 frame time <= 70 % of the *next* tier's budget, with temperature < 75 °C and memory
   < 75 % of the limit: one tier up (HEADROOM);
6. otherwise keep the tier (STABLE).

Hysteresis comes from the gaps between the down and up thresholds (frame time 100 % vs 70 % of
a budget, 85 vs 75 °C, 90 vs 75 % memory): a client settles instead of flapping between two
tiers. The tier moves one step per report, never below LOW nor above ULTRA. p95 is the
nearest-rank percentile.

Settings: ``memory_limit_mb``, the device memory budget (default 8192).
"""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeAlias

import grpc
from gaming.common.v1 import common_pb2
from gaming.performance_mode.v1 import performance_mode_pb2 as pm
from gaming.performance_mode.v1 import performance_mode_pb2_grpc

from servicers.dependencies import Dependencies
from servicers.errors import aborted, invalid_argument, revision_conflict, rpc_error
from servicers.named_store import NamedStore
from servicers.storage import Entry, KeyValue, RevisionConflict, key_token

TARGET = "performance-mode"
SERVICE_NAMES = ("gaming.performance_mode.v1.PerformanceModeService",)

Tier: TypeAlias = pm.QualityTier.ValueType
Reason: TypeAlias = pm.RecommendationReason.ValueType

MIN_SAMPLES = 30
MAX_SAMPLES = 10_000
STALE_AFTER = 600.0  # seconds between a sample's time and the server's, either way
HEADROOM = 0.70
THERMAL_DOWN, THERMAL_UP_BELOW = 85.0, 75.0
MEMORY_DOWN, MEMORY_UP_BELOW = 0.90, 0.75
CAS_ATTEMPTS = 8

_CLIENT_ID = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_MiB = 1024 * 1024

# What each tier means on the client: the frame rate it aims for sets the frame budget.
TIER_SETTINGS: dict[Tier, pm.QualitySettings] = {
    pm.QUALITY_TIER_LOW: pm.QualitySettings(
        target_fps=30, render_scale=0.75, shadow_quality=pm.SHADOW_QUALITY_OFF,
        view_distance_meters=500, max_texture_size=1024,
    ),
    pm.QUALITY_TIER_MEDIUM: pm.QualitySettings(
        target_fps=60, render_scale=1.0, shadow_quality=pm.SHADOW_QUALITY_LOW,
        view_distance_meters=1500, max_texture_size=2048,
    ),
    pm.QUALITY_TIER_HIGH: pm.QualitySettings(
        target_fps=60, render_scale=1.0, shadow_quality=pm.SHADOW_QUALITY_MEDIUM,
        view_distance_meters=3000, max_texture_size=4096,
    ),
    pm.QUALITY_TIER_ULTRA: pm.QualitySettings(
        target_fps=60, render_scale=1.5, shadow_quality=pm.SHADOW_QUALITY_HIGH,
        view_distance_meters=5000, max_texture_size=4096,
    ),
}
LOWEST, HIGHEST = pm.QUALITY_TIER_LOW, pm.QUALITY_TIER_ULTRA


class Sample(NamedTuple):
    """One valid telemetry sample (milliseconds, MiB, °C)."""

    frame_time_ms: float
    gpu_time_ms: float
    cpu_time_ms: float
    memory_mb: float
    temperature_celsius: float


@dataclass(frozen=True, slots=True)
class Recommendation:
    """A tier, the main reason for it, and an explanation for humans."""

    tier: Tier
    reason: Reason
    detail: str


def budget_ms(tier: Tier) -> float:
    """The frame budget of ``tier``: the time one frame may take at its target frame rate."""
    return 1000.0 / TIER_SETTINGS[tier].target_fps


def p95(values: Sequence[float]) -> float:
    """The nearest-rank 95th percentile of ``values`` (not empty)."""
    ordered = sorted(values)
    return ordered[math.ceil(0.95 * len(ordered)) - 1]


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else 0.0


def averages(samples: Sequence[Sample]) -> pm.MetricAverages:
    """The means (and p95 frame time) of ``samples``; zeros when there are none."""
    if not samples:
        return pm.MetricAverages()
    columns = list(zip(*samples, strict=True))
    return pm.MetricAverages(
        frame_time_ms=_mean(columns[0]),
        frame_time_p95_ms=p95(columns[0]),
        gpu_time_ms=_mean(columns[1]),
        cpu_time_ms=_mean(columns[2]),
        memory_mb=_mean(columns[3]),
        temperature_celsius=_mean(columns[4]),
    )


def recommend(current: Tier, samples: Sequence[Sample], memory_limit_mb: float) -> Recommendation:
    """The tier ``samples`` call for, taken at tier ``current`` (the rule in the module docstring)."""
    if len(samples) < MIN_SAMPLES:
        return Recommendation(
            current, pm.RECOMMENDATION_REASON_INSUFFICIENT_SAMPLES,
            f"{len(samples)} valid samples, {MIN_SAMPLES} needed",
        )
    down, up = Tier(max(current - 1, LOWEST)), Tier(min(current + 1, HIGHEST))
    temperature = _mean([s.temperature_celsius for s in samples])
    memory = _mean([s.memory_mb for s in samples])
    frame, gpu, cpu = (p95([s[i] for s in samples]) for i in range(3))
    budget = budget_ms(current)
    if temperature >= THERMAL_DOWN:
        return Recommendation(
            down, pm.RECOMMENDATION_REASON_THERMAL, f"mean temperature {temperature:.1f} °C >= {THERMAL_DOWN:.0f} °C"
        )
    if memory >= MEMORY_DOWN * memory_limit_mb:
        return Recommendation(
            down, pm.RECOMMENDATION_REASON_MEMORY_PRESSURE,
            f"mean memory {memory:.0f} MiB >= {MEMORY_DOWN:.0%} of {memory_limit_mb:.0f} MiB",
        )
    if frame > budget:
        reason, part, value = (
            (pm.RECOMMENDATION_REASON_GPU_BOUND, "GPU", gpu) if gpu >= cpu
            else (pm.RECOMMENDATION_REASON_CPU_BOUND, "CPU", cpu)
        )
        detail = f"p95 frame time {frame:.1f} ms exceeds {budget:.1f} ms budget (p95 {part} time {value:.1f} ms)"
        return Recommendation(down, reason, detail)
    target = HEADROOM * budget_ms(up)
    cool = temperature < THERMAL_UP_BELOW and memory < MEMORY_UP_BELOW * memory_limit_mb
    if up != current and frame <= target and cool:
        return Recommendation(
            up, pm.RECOMMENDATION_REASON_HEADROOM,
            f"p95 frame time {frame:.1f} ms is within {HEADROOM:.0%} of the next tier's {budget_ms(up):.1f} ms budget",
        )
    return Recommendation(
        current, pm.RECOMMENDATION_REASON_STABLE, f"p95 frame time {frame:.1f} ms within {budget:.1f} ms budget"
    )


def plausible(sample: pm.ReportMetricsRequest, now: float) -> Sample | None:
    """The sample's values if it is recent (within 10 minutes of ``now``, either way: an unset
    time counts as stale) and physically possible; None if it must be skipped."""
    taken = sample.sample_time.seconds + sample.sample_time.nanos / 1e9
    if not sample.HasField("sample_time") or abs(now - taken) > STALE_AFTER:
        return None
    values = Sample(
        sample.frame_time_ms, sample.gpu_time_ms, sample.cpu_time_ms, sample.memory_mb, sample.temperature_celsius
    )
    if not all(math.isfinite(v) for v in values):
        return None
    if not 0 < values.frame_time_ms <= 60_000 or min(values[1:4]) < 0 or not -50 <= values.temperature_celsius <= 150:
        return None
    return values


def default_profile(client_id: str) -> pm.Profile:
    """The profile of a client that never reported nor set anything."""
    return pm.Profile(client_id=client_id, mode=pm.PERFORMANCE_MODE_AUTO, tier=pm.QUALITY_TIER_MEDIUM)


class PerformanceModeServicer(performance_mode_pb2_grpc.PerformanceModeServiceServicer):
    """Keeps a quality profile per game client; see the module docstring for the rule."""

    def __init__(self, profiles: KeyValue, *, clock: Any, memory_limit_mb: float = 8192.0) -> None:
        # A store outage is UNAVAILABLE, as performance_mode.proto promises, with a message naming the store.
        self._profiles = NamedStore(profiles, "the profile store cannot be reached")
        self._clock = clock
        self._memory_limit_mb = memory_limit_mb

    def __repr__(self) -> str:
        return f"<PerformanceModeServicer memory_limit_mb={self._memory_limit_mb:g}>"

    async def GetProfile(self, request: pm.GetProfileRequest, context: Any) -> pm.GetProfileResponse:
        """The client's profile, or the default one."""
        _check_client_id(request.client_id)
        entry = await self._read(request.client_id)
        return pm.GetProfileResponse(profile=_profile_of(request.client_id, entry))

    async def SetMode(self, request: pm.SetModeRequest, context: Any) -> pm.SetModeResponse:
        """Pin a tier (MANUAL) or follow telemetry (AUTO), optionally at an expected revision."""
        _check_client_id(request.client_id)
        if request.mode not in (pm.PERFORMANCE_MODE_AUTO, pm.PERFORMANCE_MODE_MANUAL):
            raise invalid_argument("mode", "must be PERFORMANCE_MODE_AUTO or PERFORMANCE_MODE_MANUAL")
        manual = request.mode == pm.PERFORMANCE_MODE_MANUAL
        if manual and request.manual_tier not in TIER_SETTINGS:
            raise invalid_argument("manual_tier", "must name a tier in MANUAL mode")
        if not manual and request.manual_tier != pm.QUALITY_TIER_UNSPECIFIED:
            raise invalid_argument("manual_tier", "must be unspecified in AUTO mode")
        expected = request.expected_revision.value if request.HasField("expected_revision") else None
        for _ in range(CAS_ATTEMPTS):
            entry = await self._read(request.client_id)
            profile = _profile_of(request.client_id, entry)
            revision = profile.revision.value
            if expected is not None and expected != revision:
                raise revision_conflict(RevisionConflict(key_token(request.client_id), expected, revision), "profile")
            profile.mode = request.mode
            profile.manual_tier = request.manual_tier
            # Back in AUTO, follow the latest recommendation, if there has been one.
            profile.tier = request.manual_tier if manual else (profile.recommended_tier or profile.tier)
            try:
                written = await self._write(profile, revision)
            except RevisionConflict as lost:
                if expected is not None:
                    raise revision_conflict(lost, "profile") from lost
                continue  # an unconditional change: apply it on top of the newer profile
            return pm.SetModeResponse(profile=written)
        raise aborted("profile changed too often under this call; retry", "BUSY")

    async def ReportMetrics(
        self, request_iterator: AsyncIterator[pm.ReportMetricsRequest], context: Any
    ) -> pm.ReportMetricsResponse:
        """Recommend a tier from a stream of samples; apply it in AUTO mode."""
        client_id = ""
        samples: list[Sample] = []
        received = 0
        async for request in request_iterator:
            received += 1
            if received > MAX_SAMPLES:
                raise rpc_error(
                    grpc.StatusCode.RESOURCE_EXHAUSTED, f"more than {MAX_SAMPLES} samples in one stream",
                    "TOO_MANY_SAMPLES",
                )
            if not client_id:
                if not request.client_id:
                    raise invalid_argument("client_id", "is required on the first message")
                _check_client_id(request.client_id)
                client_id = request.client_id
            elif request.client_id and request.client_id != client_id:
                raise invalid_argument("client_id", f"must stay {client_id!r} for the whole stream")
            sample = plausible(request, self._clock())
            if sample is not None:
                samples.append(sample)
        if not client_id:
            raise invalid_argument("client_id", "is required on the first message (the stream was empty)")

        for _ in range(CAS_ATTEMPTS):
            entry = await self._read(client_id)
            profile = _profile_of(client_id, entry)
            previous_tier = profile.tier
            advice = recommend(profile.tier, samples, self._memory_limit_mb)
            counted = advice.reason != pm.RECOMMENDATION_REASON_INSUFFICIENT_SAMPLES
            if counted:
                profile.recommended_tier = advice.tier
                if profile.mode == pm.PERFORMANCE_MODE_AUTO:
                    profile.tier = advice.tier
            changed = counted and (entry is None or profile != _profile_of(client_id, entry))
            if changed:
                try:
                    profile = await self._write(profile, profile.revision.value)
                except RevisionConflict:
                    continue  # the profile changed meanwhile: judge the samples against it
            return pm.ReportMetricsResponse(
                recommended_tier=advice.tier,
                reason=advice.reason,
                reason_detail=advice.detail,
                averages=averages(samples),
                samples_counted=len(samples),
                samples_rejected=received - len(samples),
                applied=profile.tier != previous_tier,
                profile=profile,
            )
        raise aborted("profile changed too often under this call; retry", "BUSY")

    # -- storage -------------------------------------------------------------------------

    async def _read(self, client_id: str) -> Entry | None:
        return await self._profiles.get(key_token(client_id))

    async def _write(self, profile: pm.Profile, revision: int) -> pm.Profile:
        """Store ``profile`` if the key is still at ``revision``; the profile as now stored."""
        stored = pm.Profile()
        stored.CopyFrom(profile)
        stored.update_time.FromNanoseconds(round(self._clock() * 1e9))
        # Revision and settings are derived on read (from the entry and the tier table).
        stored.ClearField("revision")
        stored.ClearField("settings")
        # Client ids may contain '.', the KV token separator: keys are their base64url.
        key, value = key_token(profile.client_id), stored.SerializeToString()
        new_revision = await self._profiles.update(key, value, revision)
        return _profile_of(profile.client_id, Entry(key, value, new_revision))


def _profile_of(client_id: str, entry: Entry | None) -> pm.Profile:
    profile = pm.Profile.FromString(entry.value) if entry is not None else default_profile(client_id)
    profile.revision.CopyFrom(common_pb2.Revision(value=entry.revision if entry is not None else 0))
    profile.settings.CopyFrom(TIER_SETTINGS.get(profile.tier, pm.QualitySettings()))
    return profile


def _check_client_id(client_id: str) -> None:
    if not _CLIENT_ID.fullmatch(client_id):
        raise invalid_argument("client_id", "must be 1 to 128 characters of A-Z, a-z, 0-9, _, . and -")


async def create(deps: Dependencies) -> PerformanceModeServicer:
    """A PerformanceModeServicer with its profile bucket open."""
    profiles = await deps.storage.key_value("performance_mode_profiles", history=1, max_bytes=64 * _MiB)
    limit = float(deps.settings.get("memory_limit_mb", "8192"))
    if not limit > 0:
        raise ValueError("memory_limit_mb must be positive")
    return PerformanceModeServicer(profiles, clock=deps.clock, memory_limit_mb=limit)


add_to_server = performance_mode_pb2_grpc.add_PerformanceModeServiceServicer_to_server
