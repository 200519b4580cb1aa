"""The access policy: every RPC of the mesh declares who may call it, and ``AccessPolicy``
enforces it over a real nats-server, for all four call types, with a stand-in verifier."""

from __future__ import annotations

import contextlib
import importlib
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from gaming.ai_integration.v1 import ai_integration_pb2 as ai
from gaming.model_management.v1 import model_management_pb2 as mm
from gaming.model_management.v1 import model_management_pb2_grpc
from gaming.payment.v1 import payment_pb2, payment_pb2_grpc
from gaming.time_manager.v1 import time_manager_pb2 as tm
from gaming.time_manager.v1 import time_manager_pb2_grpc
from google.protobuf import descriptor_pool
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from nats.aio.client import Client

import nats_transport.aio
from mesh import catalogue
from servicers import model_management
from servicers.auth import AccessPolicy, caller, current_authorization
from servicers.auth.access import declared_access
from servicers.auth.identity import Identity, TokenRejected, VerifierUnavailable
from servicers.dependencies import Dependencies
from servicers.error_boundary import ErrorBoundary
from tests._non_catalogue import NON_CATALOGUE

SET_SCALE = "/gaming.time_manager.v1.TimeManagerService/SetScale"
GET_TIME = "/gaming.time_manager.v1.TimeManagerService/GetTime"
PUBLISH_BATCH = "/gaming.event_bus.v1.EventBusService/PublishBatch"
WATCH = "/gaming.state_manager.v1.StateManagerService/Watch"
INGEST = "/gaming.body_broker_integration.v1.BodyBrokerIntegrationService/IngestEvents"
UNDECLARED = "/test.v1.UndeclaredService/Call"
# One operator-only (or operator/service) method of each call type, served by stand-ins.
SCOPED = {"unary-unary": SET_SCALE, "stream-unary": PUBLISH_BATCH, "unary-stream": WATCH, "stream-stream": INGEST}
SERVICES = (
    "gaming.time_manager.v1.TimeManagerService",
    "gaming.event_bus.v1.EventBusService",
    "gaming.state_manager.v1.StateManagerService",
    "gaming.body_broker_integration.v1.BodyBrokerIntegrationService",
    "gaming.payment.v1.PaymentService",
    "gaming.model_management.v1.ModelManagementService",
)

PLAYER = Identity(subject="player-1", session_id="s1", scopes=("player",), expire_time=2e9)
OPERATOR = Identity(subject="operator-1", session_id="s2", scopes=("operator",), expire_time=2e9)


class StubVerifier:
    """A TokenVerifier that knows four tokens by name."""

    async def verify(self, token: str) -> Identity:
        if token == "player":
            return PLAYER
        if token == "operator":
            return OPERATOR
        if token == "down":
            raise VerifierUnavailable("no keys yet")
        raise TokenRejected("expired", "token expired")


# -- every RPC declares its access ----------------------------------------------------------------


def test_every_method_of_every_service_in_the_catalogue_declares_who_may_call_it() -> None:
    pool = descriptor_pool.Default()
    names = [name for target in catalogue.CATALOGUE for name in catalogue.load(target).SERVICE_NAMES]
    methods = [f"/{name}/{method.name}" for name in names for method in pool.FindServiceByName(name).methods]
    declared = declared_access(names)
    public = sorted(method for method, access in declared.items() if access.public)
    undeclared = sorted(set(methods) - set(declared))
    assert not undeclared, f"RPCs without an access option (closed to everyone): {undeclared}"
    scopeless = sorted(m for m, access in declared.items() if not access.public and not access.scopes)
    assert not scopeless, f"RPCs neither public nor scoped (closed to everyone): {scopeless}"
    assert len(declared) == len(methods) > 60, f"public RPCs: {public}"


def test_every_method_of_the_services_left_out_of_the_catalogue_declares_who_may_call_it() -> None:
    # Their hosts run no access policy today; the option still says who may call, should one
    # be put in front of them.
    for name in NON_CATALOGUE:
        importlib.import_module(f"{name.rpartition('.')[0]}.{name.split('.')[1]}_pb2")
    methods = [f"/{name}/{method.name}" for name in NON_CATALOGUE
               for method in descriptor_pool.Default().FindServiceByName(name).methods]
    assert methods
    assert sorted(declared_access(NON_CATALOGUE)) == sorted(methods)


def test_money_and_operator_methods_are_not_public() -> None:
    declared = declared_access(SERVICES)
    for method in ("Deposit", "Charge", "Refund"):
        assert "player" not in declared[f"/gaming.payment.v1.PaymentService/{method}"].scopes
    assert declared[SET_SCALE].scopes == ("operator",)
    assert declared["/gaming.model_management.v1.ModelManagementService/Register"].scopes == ("operator",)


# -- a server with stand-in handlers ---------------------------------------------------------------


def _who() -> bytes:
    identity = caller()
    subject = identity.subject if identity is not None else "anonymous"
    return f"{subject}|{current_authorization() or ''}".encode()


async def _unary(request: bytes, context: Any) -> bytes:
    return _who()


async def _stream_unary(requests: AsyncIterator[bytes], context: Any) -> bytes:
    async for _ in requests:
        pass
    return _who()


async def _unary_stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
    yield _who()


async def _stream_stream(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    async for _ in requests:
        yield _who()


def _handlers() -> list[Any]:
    by_service: dict[str, dict[str, Any]] = {}
    kinds = {
        SET_SCALE: grpc.unary_unary_rpc_method_handler(_unary),
        GET_TIME: grpc.unary_unary_rpc_method_handler(_unary),
        UNDECLARED: grpc.unary_unary_rpc_method_handler(_unary),
        PUBLISH_BATCH: grpc.stream_unary_rpc_method_handler(_stream_unary),
        WATCH: grpc.unary_stream_rpc_method_handler(_unary_stream),
        INGEST: grpc.stream_stream_rpc_method_handler(_stream_stream),
    }
    for method, handler in kinds.items():
        _, service, name = method.split("/")
        by_service.setdefault(service, {})[name] = handler
    return [grpc.method_handlers_generic_handler(service, methods) for service, methods in by_service.items()]


@contextlib.asynccontextmanager
async def guarded(nc: Client, *extra: tuple[Any, Any]) -> AsyncIterator[Any]:
    """A target behind AccessPolicy (stand-ins, health, reflection, and ``extra`` servicers)."""
    target = f"guarded-{uuid.uuid4().hex[:8]}"
    policy = AccessPolicy.for_services(SERVICES, StubVerifier())
    server = nats_transport.aio.server(nc, target, interceptors=[policy, ErrorBoundary()])
    server.add_generic_rpc_handlers(_handlers())
    health_pb2_grpc.add_HealthServicer_to_server(health_aio.HealthServicer(), server)
    reflection.enable_server_reflection((*SERVICES, reflection.SERVICE_NAME), server)
    for add, servicer in extra:
        add(servicer, server)
    await server.start()
    try:
        yield nats_transport.aio.channel(nc, target)
    finally:
        await server.stop(0)


@pytest.fixture
async def channel(nc: Client) -> AsyncIterator[Any]:
    async with guarded(nc) as channel:
        yield channel


def _metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token is not None else ()


async def _call(channel: Any, kind: str, method: str, token: str | None) -> bytes:
    metadata = _metadata(token)
    if kind == "unary-unary":
        reply: bytes = await channel.unary_unary(method)(b"", metadata=metadata, timeout=5)
        return reply
    if kind == "stream-unary":
        reply = await channel.stream_unary(method)(iter([b"", b""]), metadata=metadata, timeout=5)
        return reply
    if kind == "unary-stream":
        return b"".join([item async for item in channel.unary_stream(method)(b"", metadata=metadata, timeout=5)])
    replies = [item async for item in channel.stream_stream(method)(iter([b""]), metadata=metadata, timeout=5)]
    return b"".join(replies)


def _reason(err: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(err)
    assert status is not None, "refusals carry a google.rpc.Status"
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info.reason


@dataclass(frozen=True)
class Refused:
    token: str | None
    code: grpc.StatusCode
    reason: str
    says: str


REFUSALS = {
    "no token": Refused(None, grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING", "needs a bearer token"),
    "rejected token": Refused("forged", grpc.StatusCode.UNAUTHENTICATED, "TOKEN_EXPIRED", "expired"),
    "verifier unavailable": Refused("down", grpc.StatusCode.UNAVAILABLE, "VERIFIER_UNAVAILABLE", "cannot be verified"),
    "player on an operator method": Refused("player", grpc.StatusCode.PERMISSION_DENIED, "SCOPE_MISSING", "operator"),
}


def _cases(kinds: Iterable[str]) -> list[Any]:
    return [pytest.param(kind, name, id=f"{kind}: {name}") for kind in kinds for name in REFUSALS]


@pytest.mark.parametrize(("kind", "case"), _cases(SCOPED))
async def test_a_scoped_method_refuses_callers_without_a_fitting_token(channel: Any, kind: str, case: str) -> None:
    refused = REFUSALS[case]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _call(channel, kind, SCOPED[kind], refused.token)
    assert caught.value.code() == refused.code
    assert refused.says in (caught.value.details() or "")
    assert _reason(caught.value) == refused.reason


@pytest.mark.parametrize("kind", list(SCOPED))
async def test_an_operator_gets_in_and_the_handler_sees_who_called(channel: Any, kind: str) -> None:
    assert await _call(channel, kind, SCOPED[kind], "operator") == b"operator-1|operator"


async def test_a_method_without_an_access_option_is_denied_even_to_an_operator(channel: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _call(channel, "unary-unary", UNDECLARED, "operator")
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "no access policy declared" in (caught.value.details() or "")
    assert _reason(caught.value) == "NO_ACCESS_POLICY"


@pytest.mark.parametrize(("token", "seen"), [
    pytest.param(None, b"anonymous|", id="no token"),
    pytest.param("forged", b"anonymous|", id="an invalid token is ignored"),
    pytest.param("down", b"anonymous|", id="an unavailable verifier is ignored"),
    pytest.param("player", b"player-1|player", id="a valid token names the caller"),
])
async def test_a_public_method_lets_anyone_in(channel: Any, token: str | None, seen: bytes) -> None:
    assert await _call(channel, "unary-unary", GET_TIME, token) == seen


async def test_health_and_reflection_need_no_token(channel: Any) -> None:
    health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = [reply async for reply in stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)]
    listed = {service.name for service in replies[0].list_services_response.service}
    assert "gaming.time_manager.v1.TimeManagerService" in listed


# -- the findings, on real servicers ---------------------------------------------------------------


class _Unreachable:
    """A servicer that fails the test if the policy lets a call through to it."""

    def __getattr__(self, name: str) -> Any:
        async def reached(request: Any, context: Any) -> Any:
            raise AssertionError(f"{name} was reached past the access policy")

        return reached


async def test_an_anonymous_deposit_is_unauthenticated(nc: Client) -> None:
    async with guarded(nc, (payment_pb2_grpc.add_PaymentServiceServicer_to_server, _Unreachable())) as channel:
        deposit = payment_pb2.DepositRequest(account_id="me")
        deposit.amount.currency_code, deposit.amount.amount_minor = "GEM", 10**12
        deposit.idempotency_key.key = "k-1"
        stub = payment_pb2_grpc.PaymentServiceStub(channel)
        for token in (None, "player"):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Deposit(deposit, metadata=_metadata(token), timeout=5)
            expected = grpc.StatusCode.UNAUTHENTICATED if token is None else grpc.StatusCode.PERMISSION_DENIED
            assert caught.value.code() == expected


async def test_a_player_token_cannot_set_the_time_scale(nc: Client) -> None:
    async with guarded(nc) as channel:
        stub = time_manager_pb2_grpc.TimeManagerServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SetScale(tm.SetScaleRequest(world_id="main", time_scale=1000), metadata=_metadata("player"),
                                timeout=5)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "operator" in (caught.value.details() or "")


async def test_the_audit_actor_is_the_verified_caller_never_x_actor_id(nc: Client, storage: Any) -> None:
    deps = Dependencies(storage=storage, channel=lambda target: None, settings={"seed_builtin_models": "false"})
    servicer = await model_management.create(deps)
    async with guarded(nc, (model_management_pb2_grpc.add_ModelManagementServiceServicer_to_server, servicer)) as ch:
        described = mm.Model(name="sage-13b", display_name="Sage", backend=ai.BACKEND_OPENAI_COMPATIBLE,
                             backend_model="sage", capabilities=[mm.CAPABILITY_CHAT], context_tokens=4096,
                             latency_class=mm.LATENCY_CLASS_INTERACTIVE)
        metadata = (*_metadata("operator"), ("x-actor-id", "mallory"))
        reply = await model_management_pb2_grpc.ModelManagementServiceStub(ch).Register(
            mm.RegisterRequest(model=described), metadata=metadata, timeout=5)
    assert reply.model.audit.actor_id == "operator-1"
