"""RequireToken end to end: an auth server and a second, protected server on the same NATS; the
interceptor validates each call's bearer token with the auth service over the mesh."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import grpc
import pytest
from gaming.auth.v1 import auth_pb2, auth_pb2_grpc
from gaming.performance_mode.v1 import performance_mode_pb2 as pm
from gaming.performance_mode.v1 import performance_mode_pb2_grpc
from gaming.time_manager.v1 import time_manager_pb2 as tm
from gaming.time_manager.v1 import time_manager_pb2_grpc
from google.protobuf import timestamp_pb2
from nats.aio.client import Client

import nats_transport.aio
from mesh.jetstream_storage import JetStreamStorage
from servicers import auth, performance_mode
from servicers.auth import RequireToken, bearer_token, caller
from servicers.dependencies import Dependencies

GET_TIME = "/gaming.time_manager.v1.TimeManagerService/GetTime"
STREAM_TICKS = "/gaming.time_manager.v1.TimeManagerService/StreamTicks"
REPORT_METRICS = "/gaming.performance_mode.v1.PerformanceModeService/ReportMetrics"
PASSWORD = "correct horse battery"


class Times(time_manager_pb2_grpc.TimeManagerServiceServicer):
    """Answers with the caller's account id as the world id, and notes each call it handled."""

    def __init__(self) -> None:
        self.handled: list[str] = []

    def _who(self, method: str) -> str:
        self.handled.append(method)
        identity = caller()
        return identity.account_id if identity is not None else "anonymous"

    async def GetTime(self, request: tm.GetTimeRequest, context: Any) -> tm.GetTimeResponse:
        return tm.GetTimeResponse(clock=tm.Clock(world_id=self._who("GetTime")))

    async def SetScale(self, request: tm.SetScaleRequest, context: Any) -> tm.SetScaleResponse:
        return tm.SetScaleResponse(clock=tm.Clock(world_id=self._who("SetScale")))

    async def StreamTicks(self, request: tm.StreamTicksRequest, context: Any) -> AsyncIterator[tm.StreamTicksResponse]:
        who = self._who("StreamTicks")
        for sequence in (1, 2):
            yield tm.StreamTicksResponse(sequence=sequence, game_time=timestamp_pb2.Timestamp(seconds=len(who)))


class Mesh(NamedTuple):
    auth: Any
    times: Any
    metrics: Any
    handled: list[str]
    stop_auth: Any


@contextlib.asynccontextmanager
async def mesh(nc: Client) -> AsyncIterator[Mesh]:
    """The auth service and a protected server (time-manager and performance-mode) on one NATS."""
    targets = {auth.TARGET: f"auth-{uuid.uuid4().hex[:8]}", "protected": f"prot-{uuid.uuid4().hex[:8]}"}
    storage = JetStreamStorage(nc, prefix=f"t{uuid.uuid4().hex[:8]}_")
    deps = Dependencies(
        storage=storage,
        channel=lambda target: nats_transport.aio.channel(nc, targets[target]),
        settings={"scrypt_log2_n": "10"},
    )
    auth_server = nats_transport.aio.server(nc, targets[auth.TARGET])
    auth.add_to_server(await auth.create(deps), auth_server)
    guard = RequireToken.over(deps.channel(auth.TARGET), [GET_TIME, STREAM_TICKS, REPORT_METRICS])
    protected = nats_transport.aio.server(nc, targets["protected"], interceptors=[guard])
    times = Times()
    time_manager_pb2_grpc.add_TimeManagerServiceServicer_to_server(times, protected)
    performance_mode.add_to_server(await performance_mode.create(deps), protected)
    await auth_server.start()
    await protected.start()
    try:
        channel = nats_transport.aio.channel(nc, targets["protected"])
        yield Mesh(
            auth=auth_pb2_grpc.AuthServiceStub(deps.channel(auth.TARGET)),
            times=time_manager_pb2_grpc.TimeManagerServiceStub(channel),
            metrics=performance_mode_pb2_grpc.PerformanceModeServiceStub(channel),
            handled=times.handled,
            stop_auth=lambda: auth_server.stop(0),
        )
    finally:
        await protected.stop(0)
        await auth_server.stop(0)


@pytest.fixture
async def world(nc: Client) -> AsyncIterator[Mesh]:
    async with mesh(nc) as running:
        yield running


async def sign_in(world: Mesh) -> auth_pb2.LoginResponse:
    await world.auth.Register(
        auth_pb2.RegisterRequest(username="alice", password=PASSWORD, display_name="Alice"), timeout=5
    )
    session: auth_pb2.LoginResponse = await world.auth.Login(
        auth_pb2.LoginRequest(username="alice", password=PASSWORD), timeout=5
    )
    return session


def bearer(session: auth_pb2.LoginResponse) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {session.tokens.access_token}"),)


async def failure(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def ticks(world: Mesh, metadata: Any = None) -> list[tm.StreamTicksResponse]:
    return [tick async for tick in world.times.StreamTicks(tm.StreamTicksRequest(), metadata=metadata, timeout=5)]


def telemetry() -> list[pm.ReportMetricsRequest]:
    return [pm.ReportMetricsRequest(client_id="pc-1", frame_time_ms=10)]


async def test_a_call_with_a_valid_token_reaches_the_handler_which_knows_the_caller(world: Mesh) -> None:
    session = await sign_in(world)
    reply = await world.times.GetTime(tm.GetTimeRequest(), metadata=bearer(session), timeout=5)
    assert reply.clock.world_id == session.account_id
    scheme_in_any_case = (("authorization", f"bEaReR {session.tokens.access_token}"),)
    await world.times.GetTime(tm.GetTimeRequest(), metadata=scheme_in_any_case, timeout=5)


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        (None, "missing bearer token"),
        ((("authorization", "Basic YWxpY2U6cHc="),), "missing bearer token"),
        ((("authorization", "Bearer not-a-token"),), "malformed token"),
    ],
)
async def test_a_call_without_a_valid_token_is_refused_before_the_handler(
    world: Mesh, metadata: Any, message: str
) -> None:
    err = await failure(world.times.GetTime(tm.GetTimeRequest(), metadata=metadata, timeout=5))
    assert (err.code(), err.details()) == (grpc.StatusCode.UNAUTHENTICATED, message)
    assert world.handled == []


async def test_a_logout_shuts_the_door_at_once(world: Mesh) -> None:
    session = await sign_in(world)
    await world.times.GetTime(tm.GetTimeRequest(), metadata=bearer(session), timeout=5)
    await world.auth.Logout(auth_pb2.LogoutRequest(access_token=session.tokens.access_token), timeout=5)
    err = await failure(world.times.GetTime(tm.GetTimeRequest(), metadata=bearer(session), timeout=5))
    assert (err.code(), err.details()) == (grpc.StatusCode.UNAUTHENTICATED, "session revoked")


async def test_methods_not_named_pass_without_a_token_and_have_no_caller(world: Mesh) -> None:
    session = await sign_in(world)
    await world.times.GetTime(tm.GetTimeRequest(), metadata=bearer(session), timeout=5)
    reply = await world.times.SetScale(tm.SetScaleRequest(), timeout=5)
    assert reply.clock.world_id == "anonymous"


async def test_streaming_methods_are_guarded_like_unary_ones(world: Mesh) -> None:
    session = await sign_in(world)
    assert [tick.sequence for tick in await ticks(world, bearer(session))] == [1, 2]
    assert (await failure(ticks(world))).code() == grpc.StatusCode.UNAUTHENTICATED

    reply = await world.metrics.ReportMetrics(iter(telemetry()), metadata=bearer(session), timeout=5)
    assert reply.samples_rejected == 1  # it got through to the servicer
    err = await failure(world.metrics.ReportMetrics(iter(telemetry()), timeout=5))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert world.handled == ["StreamTicks"]


async def test_an_unreachable_auth_service_gives_unavailable_not_unauthenticated(world: Mesh) -> None:
    session = await sign_in(world)
    await world.stop_auth()
    err = await failure(world.times.GetTime(tm.GetTimeRequest(), metadata=bearer(session), timeout=5))
    assert (err.code(), err.details()) == (grpc.StatusCode.UNAVAILABLE, "the auth service cannot be reached")
    assert world.handled == []


def test_protected_methods_must_be_full_method_names() -> None:
    async def validate(request: Any, timeout: float) -> auth_pb2.ValidateResponse:
        raise AssertionError("not called")

    RequireToken(validate, [GET_TIME])
    for bad in ("GetTime", "gaming.time_manager.v1.TimeManagerService/GetTime", "/Service/"):
        with pytest.raises(ValueError, match="full method name"):
            RequireToken(validate, [bad])


@pytest.mark.parametrize(
    ("metadata", "token"),
    [
        ((("authorization", "Bearer abc"),), "abc"),
        ((("Authorization", "bearer  abc "),), "abc"),
        ((("x-other", "1"), ("authorization", "Bearer abc")), "abc"),
        ((("authorization", "Bearer"),), None),
        ((("authorization", "Bearer a b"),), None),
        ((("authorization", "Token abc"),), None),
        ((("authorization-bin", b"Bearer abc"),), None),
        ((), None),
        (None, None),
    ],
)
def test_bearer_tokens_are_read_from_authorization_metadata(metadata: Any, token: str | None) -> None:
    assert bearer_token(metadata) == token
