"""ai-router over NATS, in front of the real model-management and ai-integration servicers served
on their own targets: selection, fallback from models that cannot answer (a backend on a closed
loopback port, a model no backend serves, a backend that never answers), deadlines that reach
both dependencies, and StreamRoute's cancellation reaching ai-integration's generator."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from gaming.ai_integration.v1 import ai_integration_pb2 as ai
from gaming.ai_integration.v1 import ai_integration_pb2_grpc
from gaming.ai_router.v1 import ai_router_pb2 as router
from gaming.ai_router.v1 import ai_router_pb2_grpc
from gaming.model_management.v1 import model_management_pb2 as mm
from gaming.model_management.v1 import model_management_pb2_grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nats.aio.client import Client

import nats_transport.aio
from nats_transport._status import NO_SERVER
from servicers import ai_integration, ai_router, model_management
from servicers.ai_integration.local import LocalBackend
from servicers.dependencies import Dependencies
from tests._serving import served
from tests._waiting import wait_for

LOCAL = "local-tiny"
TEXT = mm.CAPABILITY_TEXT_GENERATION
OK = grpc.StatusCode.OK.value[0]
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]
NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]
DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
# grpc-timeout carries a deadline rounded up within its unit's precision (microseconds here):
# a server may see a hair more time than its caller computed.
WIRE_ROUNDING = 0.001
# Greedy decoding from this prompt never ends by itself (see test_ai_integration): only
# max_tokens, a deadline or a cancel stops it.
ENDLESS: dict[str, Any] = {"prompt": "The innkeeper", "temperature": 0.0}


# -- the mesh: model-management, ai-integration and the router on per-test targets ---------------


class Observed:
    """Forwards every call to a real servicer, noting each request and the deadline it arrived
    with (``context.time_remaining()``): how a test sees what reached the dependency."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[tuple[str, Any, float | None]] = []

    def _note(self, method: str, request: Any, context: Any) -> None:
        self.calls.append((method, request, context.time_remaining()))

    def seen(self, method: str) -> list[tuple[Any, float | None]]:
        return [(request, remaining) for name, request, remaining in self.calls if name == method]


class ObservedRegistry(Observed, model_management_pb2_grpc.ModelManagementServiceServicer):
    async def Register(self, request: mm.RegisterRequest, context: Any) -> mm.RegisterResponse:
        response: mm.RegisterResponse = await self.inner.Register(request, context)
        return response

    async def Select(self, request: mm.SelectRequest, context: Any) -> mm.SelectResponse:
        self._note("Select", request, context)
        response: mm.SelectResponse = await self.inner.Select(request, context)
        return response


class ObservedInference(Observed, ai_integration_pb2_grpc.AiIntegrationServiceServicer):
    async def Generate(self, request: ai.GenerateRequest, context: Any) -> ai.GenerateResponse:
        self._note("Generate", request, context)
        response: ai.GenerateResponse = await self.inner.Generate(request, context)
        return response

    async def StreamGenerate(self, request: ai.StreamGenerateRequest, context: Any) -> AsyncIterator[Any]:
        self._note("StreamGenerate", request, context)
        async for message in self.inner.StreamGenerate(request, context):
            yield message


@dataclass
class Mesh:
    router: Any
    registry: Any
    inference: Any
    integration: Any  # the real AiIntegrationServicer (its backends' counters)
    observed_registry: ObservedRegistry
    observed_inference: ObservedInference
    stops: dict[str, contextlib.AsyncExitStack] = field(default_factory=dict)

    @property
    def local(self) -> LocalBackend:
        backend = self.integration.backends[LOCAL]
        assert isinstance(backend, LocalBackend)
        return backend

    async def stop(self, target: str) -> None:
        """Stop serving a dependency (its target then has no server: calls fail UNAVAILABLE)."""
        await self.stops[target].aclose()


@contextlib.asynccontextmanager
async def mesh(
    nc: Client,
    storage: Any,
    *,
    inference: dict[str, str] | None = None,
    router_settings: dict[str, str] | None = None,
    registry: Callable[[Any], ObservedRegistry] = ObservedRegistry,
) -> AsyncIterator[Mesh]:
    """The router and its two real dependencies on this test's own targets; ``inference`` and
    ``router_settings`` are ai-integration's and the router's settings."""
    targets = {target: f"{target}-{uuid.uuid4().hex[:8]}"
               for target in (model_management.TARGET, ai_integration.TARGET)}

    def channel(target: str) -> Any:
        return nats_transport.aio.channel(nc, targets[target])

    def deps(settings: dict[str, str]) -> Dependencies:
        return Dependencies(storage=storage, channel=channel, settings=settings)

    integration = await ai_integration.create(deps(inference or {}))
    observed_registry = registry(await model_management.create(deps({})))
    observed_inference = ObservedInference(integration)
    stops = {target: contextlib.AsyncExitStack() for target in targets}
    async with contextlib.AsyncExitStack() as outer:
        for target, servicer, add in (
            (model_management.TARGET, observed_registry, model_management.add_to_server),
            (ai_integration.TARGET, observed_inference, ai_integration.add_to_server),
        ):
            await stops[target].enter_async_context(served(nc, add, servicer, target=targets[target]))
            outer.push_async_callback(stops[target].aclose)
        router_servicer = await ai_router.create(deps(router_settings or {}))
        router_channel = await outer.enter_async_context(served(nc, ai_router.add_to_server, router_servicer))
        yield Mesh(
            router=ai_router_pb2_grpc.AiRouterServiceStub(router_channel),
            registry=model_management_pb2_grpc.ModelManagementServiceStub(channel(model_management.TARGET)),
            inference=ai_integration_pb2_grpc.AiIntegrationServiceStub(channel(ai_integration.TARGET)),
            integration=integration,
            observed_registry=observed_registry,
            observed_inference=observed_inference,
            stops=stops,
        )


@pytest.fixture
async def world(nc: Client, storage: Any) -> AsyncIterator[Mesh]:
    """The mesh with ai-integration serving the built-in model only."""
    async with mesh(nc, storage) as running:
        yield running


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[str]:
    """An HTTP 'server' on loopback that accepts requests and never answers: a model that hangs."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read()  # until the client gives up and closes

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    finally:
        server.close()
        for writer in held:
            writer.close()
        await server.wait_closed()


def remote_settings(base_url: str, served_model: str) -> dict[str, str]:
    """ai-integration settings adding ``served_model`` on an OpenAI-compatible backend."""
    return {"backend": "openai", "base_url": base_url, "model": "upstream-model", "served_model": served_model}


def down_backend(served_model: str) -> dict[str, str]:
    """ai-integration settings serving ``served_model`` from a closed loopback port: UNAVAILABLE."""
    return remote_settings(f"http://127.0.0.1:{closed_port()}/v1", served_model)


def ms(milliseconds: int) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromMilliseconds(milliseconds)
    return duration


async def register(world: Mesh, name: str, *capabilities: Any, latency_ms: int = 1) -> None:
    """A remote model in model-management; at 1 ms expected latency it ranks above local-tiny (10 ms)."""
    model = mm.Model(
        name=name,
        backend=ai.BACKEND_OPENAI_COMPATIBLE,
        backend_model=f"{name}-upstream",
        capabilities=list(capabilities) or [TEXT],
        context_tokens=8192,
        latency_class=mm.LATENCY_CLASS_REALTIME,
        expected_latency=ms(latency_ms),
    )
    await world.registry.Register(mm.RegisterRequest(model=model), timeout=5)


async def failure(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def stream_failure(call: Any) -> tuple[list[Any], grpc.aio.AioRpcError]:
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for message in call:
            received.append(message)
    return received, caught.value


def detail(err: grpc.aio.AioRpcError, kind: Any) -> Any:
    status = rpc_status.from_call(err)
    assert status is not None
    for packed in status.details:
        found = kind()
        if packed.Unpack(found):
            return found
    raise AssertionError(f"no {kind.__name__} in {status.details}")


def tried(attempts: Any) -> list[tuple[str, int]]:
    return [(attempt.model, attempt.status_code) for attempt in attempts]


async def collect(call: Any) -> list[router.StreamRouteResponse]:
    return [message async for message in call]


# -- Route --------------------------------------------------------------------------------------------


async def test_route_runs_the_best_model_and_reports_the_attempt(world: Mesh) -> None:
    request = router.RouteRequest(capability=TEXT, prompt="Tell me about the dragon", seed=42, max_tokens=24)
    reply = await world.router.Route(request, timeout=5)
    direct = await world.inference.Generate(
        ai.GenerateRequest(model=LOCAL, prompt="Tell me about the dragon", seed=42, max_tokens=24), timeout=5
    )
    assert (reply.model_used, reply.text) == (LOCAL, direct.text)
    assert reply.finish_reason == direct.finish_reason
    assert reply.usage == direct.usage
    assert tried(reply.attempts) == [(LOCAL, OK)]
    assert reply.attempts[0].status_message == ""
    assert 0 < reply.attempts[0].latency.ToNanoseconds() <= reply.latency.ToNanoseconds()
    # Selection asked model-management for what the request needs.
    (select, _), = world.observed_registry.seen("Select")
    assert select.required_capability == TEXT
    assert select.max_candidates == 3
    assert select.min_context_tokens == 6 + 24  # 24 characters at 4 a token, plus max_tokens


async def test_route_passes_every_generation_field_on(world: Mesh) -> None:
    request = router.RouteRequest(capability=mm.CAPABILITY_CHAT, prompt="Hail, traveller", system_prompt="Be terse",
                                  max_tokens=9, temperature=0.0, seed=5, stop_sequences=["zzz"])
    await world.router.Route(request, timeout=5)
    (generate, _), = world.observed_inference.seen("Generate")
    assert generate == ai.GenerateRequest(model=LOCAL, prompt="Hail, traveller", system_prompt="Be terse",
                                          max_tokens=9, temperature=0.0, seed=5, stop_sequences=["zzz"])


async def test_a_model_whose_backend_is_down_falls_back_to_the_next(nc: Client, storage: Any) -> None:
    async with mesh(nc, storage, inference=down_backend("remote-down")) as world:
        await register(world, "remote-down")
        reply = await world.router.Route(router.RouteRequest(capability=TEXT, prompt="Hi", seed=1), timeout=5)
        assert reply.model_used == LOCAL
        assert tried(reply.attempts) == [("remote-down", UNAVAILABLE), (LOCAL, OK)]
        assert "remote-down" in reply.attempts[0].status_message
        assert reply.attempts[0].latency.ToNanoseconds() > 0


async def test_a_listed_model_no_backend_serves_is_not_found_and_falls_back(world: Mesh) -> None:
    # ai_router.proto lists NOT_FOUND among the fallback codes: model-management knows a model
    # that this ai-integration does not serve, and another model can do the work.
    await register(world, "ghost")
    reply = await world.router.Route(router.RouteRequest(capability=TEXT, prompt="Hi", seed=1), timeout=5)
    assert reply.model_used == LOCAL
    assert tried(reply.attempts) == [("ghost", NOT_FOUND), (LOCAL, OK)]


async def test_preferred_models_are_tried_first(world: Mesh) -> None:
    await register(world, "ghost", latency_ms=50)  # ranks after local-tiny on latency alone
    reply = await world.router.Route(
        router.RouteRequest(capability=TEXT, prompt="Hi", preferred_models=["ghost"]), timeout=5
    )
    assert tried(reply.attempts) == [("ghost", NOT_FOUND), (LOCAL, OK)]


async def test_max_attempts_bounds_the_models_tried(world: Mesh) -> None:
    await register(world, "ghost")
    err = await failure(world.router.Route(router.RouteRequest(capability=TEXT, prompt="Hi", max_attempts=1),
                                           timeout=5))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    info = detail(err, error_details_pb2.ErrorInfo)
    assert (info.reason, info.metadata["attempts"]) == ("ALL_MODELS_FAILED", "ghost:NOT_FOUND")
    (select, _), = world.observed_registry.seen("Select")
    assert select.max_candidates == 1


async def test_when_every_candidate_fails_the_last_message_is_returned(world: Mesh) -> None:
    translation = mm.CAPABILITY_TRANSLATION  # local-tiny cannot translate: only the ghosts qualify
    await register(world, "ghost-a", translation, latency_ms=1)
    await register(world, "ghost-b", translation, latency_ms=2)
    err = await failure(world.router.Route(router.RouteRequest(capability=translation, prompt="Hi"), timeout=5))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert "ghost-b" in (err.details() or "")
    assert "no backend serves model 'ghost-b'" in (err.details() or "")
    assert detail(err, error_details_pb2.ErrorInfo).metadata["attempts"] == "ghost-a:NOT_FOUND, ghost-b:NOT_FOUND"


@pytest.mark.parametrize("method", ["Route", "StreamRoute"])
async def test_invalid_input_found_by_ai_integration_is_returned_without_fallback(world: Mesh, method: str) -> None:
    await register(world, "ghost", latency_ms=50)
    # 2,500 tokens by the router's 4-characters estimate, but 5,000 words to the local model:
    # with 4,096 more to generate, its 8,192-token window is too small, and it says so.
    prompt = "a " * 5000
    if method == "Route":
        err = await failure(world.router.Route(router.RouteRequest(capability=TEXT, prompt=prompt, max_tokens=4096),
                                               timeout=5))
    else:
        received, err = await stream_failure(world.router.StreamRoute(
            router.StreamRouteRequest(capability=TEXT, prompt=prompt, max_tokens=4096), timeout=5))
        assert received == []
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert detail(err, error_details_pb2.BadRequest).field_violations[0].field == "max_tokens"
    info = detail(err, error_details_pb2.ErrorInfo)
    assert (info.reason, info.metadata["attempts"]) == ("MODEL_FAILED", "local-tiny:INVALID_ARGUMENT")
    assert len(world.observed_inference.seen(method.replace("Route", "Generate"))) == 1  # ghost was never tried


async def test_no_qualifying_model_is_failed_precondition(world: Mesh) -> None:
    for request in (
        router.RouteRequest(capability=mm.CAPABILITY_EMBEDDING, prompt="Hi"),
        router.RouteRequest(capability=TEXT, prompt="Hi", latency_budget=ms(5)),  # local-tiny expects 10 ms
    ):
        err = await failure(world.router.Route(request, timeout=5))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert detail(err, error_details_pb2.ErrorInfo).reason == "NO_QUALIFYING_MODEL"
    assert world.observed_inference.seen("Generate") == []


@pytest.mark.parametrize("method", ["Route", "StreamRoute"])
@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"capability": mm.CAPABILITY_UNSPECIFIED}, "capability"),
        ({"capability": 99}, "capability"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x" * 32769}, "prompt"),
        ({"system_prompt": "s" * 8193}, "system_prompt"),
        ({"max_tokens": 4097}, "max_tokens"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"temperature": 2.5}, "temperature"),
        ({"stop_sequences": ["a", "b", "c", "d", "e"]}, "stop_sequences"),
        ({"stop_sequences": [""]}, "stop_sequences[0]"),
        ({"preferred_models": [f"m{i}" for i in range(11)]}, "preferred_models"),
        ({"preferred_models": ["ok", "not ok"]}, "preferred_models[1]"),
        ({"max_attempts": 6}, "max_attempts"),
        ({"max_attempts": -1}, "max_attempts"),
        ({"latency_budget": duration_pb2.Duration()}, "latency_budget"),
        ({"latency_budget": duration_pb2.Duration(seconds=-1)}, "latency_budget"),
    ],
)
async def test_out_of_range_fields_are_invalid_argument_naming_the_field(
    world: Mesh, method: str, change: dict[str, Any], field: str
) -> None:
    fields: dict[str, Any] = {"capability": TEXT, "prompt": "Hi", **change}
    if method == "Route":
        err = await failure(world.router.Route(router.RouteRequest(**fields), timeout=5))
    else:
        _, err = await stream_failure(world.router.StreamRoute(router.StreamRouteRequest(**fields), timeout=5))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert detail(err, error_details_pb2.BadRequest).field_violations[0].field == field
    assert world.observed_registry.calls == []  # refused before any dependency was asked


# -- dependencies down ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["Route", "StreamRoute"])
async def test_model_management_down_is_unavailable_naming_it(world: Mesh, method: str) -> None:
    await world.stop(model_management.TARGET)
    if method == "Route":
        err = await failure(world.router.Route(router.RouteRequest(capability=TEXT, prompt="Hi"), timeout=3))
    else:
        _, err = await stream_failure(
            world.router.StreamRoute(router.StreamRouteRequest(capability=TEXT, prompt="Hi"), timeout=3)
        )
    # No server answers at once (no responders): not a wait for the deadline, which would be
    # DEADLINE_EXCEEDED or the Select timeout's "did not answer".
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert err.details() == f"model-management is unavailable: failed with UNAVAILABLE: {NO_SERVER[1]}"
    assert detail(err, error_details_pb2.ErrorInfo).reason == "MODEL_MANAGEMENT_UNAVAILABLE"


class HangingRegistry(ObservedRegistry):
    """model-management that takes Select calls and never answers them."""

    async def Select(self, request: mm.SelectRequest, context: Any) -> mm.SelectResponse:
        self._note("Select", request, context)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_a_model_management_that_hangs_is_unavailable_after_the_select_timeout(
    nc: Client, storage: Any
) -> None:
    async with mesh(nc, storage, router_settings={"select_timeout_s": "0.2"}, registry=HangingRegistry) as world:
        err = await failure(world.router.Route(router.RouteRequest(capability=TEXT, prompt="Hi"), timeout=5))
        # The Select call carried the 0.2 s timeout, not the caller's 5 s.
        ((_, remaining),) = world.observed_registry.seen("Select")
        assert remaining is not None
        assert 0 < remaining <= 0.2
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert err.details() == "model-management is unavailable: did not answer within 0.2s"


async def test_ai_integration_down_is_unavailable_after_trying_each_candidate(world: Mesh) -> None:
    await register(world, "ghost")
    await world.stop(ai_integration.TARGET)
    err = await failure(world.router.Route(router.RouteRequest(capability=TEXT, prompt="Hi"), timeout=3))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert "no server is serving this target" in (err.details() or "")
    assert detail(err, error_details_pb2.ErrorInfo).metadata["attempts"] == "ghost:UNAVAILABLE, local-tiny:UNAVAILABLE"


# -- deadlines ---------------------------------------------------------------------------------------


async def test_the_callers_deadline_reaches_model_management_and_ai_integration(world: Mesh) -> None:
    await world.router.Route(router.RouteRequest(capability=TEXT, prompt="Hi", max_tokens=4), timeout=0.8)
    (_, select_remaining), = world.observed_registry.seen("Select")
    (_, generate_remaining), = world.observed_inference.seen("Generate")
    assert select_remaining is not None
    assert 0 < select_remaining <= 0.8
    assert generate_remaining is not None
    assert 0 < generate_remaining <= select_remaining


async def test_each_attempt_gets_its_share_of_the_remaining_time(nc: Client, storage: Any) -> None:
    async with silent_server() as url, mesh(nc, storage, inference=remote_settings(url, "stalled")) as world:
        await register(world, "stalled")
        reply = await world.router.Route(router.RouteRequest(capability=TEXT, prompt="Hi", seed=3), timeout=1.2)
        assert reply.model_used == LOCAL
        assert tried(reply.attempts) == [("stalled", DEADLINE_EXCEEDED), (LOCAL, OK)]
        ((_, select),) = world.observed_registry.seen("Select")
        (_, first), (_, second) = world.observed_inference.seen("Generate")
        # Two candidates: the first got at most half of what the caller had left when the
        # router chose them; the second, what was left after it.
        assert select is not None
        assert first is not None
        assert second is not None
        assert first <= 0.6
        assert first <= select / 2 + WIRE_ROUNDING
        assert second <= 1.2 - first
        # The stalled attempt was given up on only when its share ran out, not before: it lasted
        # at least the time its server was told it had (both clocks of this one process).
        assert reply.attempts[0].latency.ToNanoseconds() / 1e9 >= first - WIRE_ROUNDING


async def test_a_latency_budget_bounds_the_time_spent_on_attempts(nc: Client, storage: Any) -> None:
    async with silent_server() as url, mesh(nc, storage, inference=remote_settings(url, "stalled")) as world:
        await register(world, "stalled", mm.CAPABILITY_TRANSLATION)  # the only candidate
        err = await failure(world.router.Route(
            router.RouteRequest(capability=mm.CAPABILITY_TRANSLATION, prompt="Hi", latency_budget=ms(300)), timeout=10
        ))
        # The router's own DEADLINE_EXCEEDED for the budget (its words), not the caller's 10 s.
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "latency budget ran out" in (err.details() or "")
        assert detail(err, error_details_pb2.ErrorInfo).metadata["attempts"] == "stalled:DEADLINE_EXCEEDED"
        (_, remaining), = world.observed_inference.seen("Generate")
        assert remaining is not None
        assert remaining <= 0.3


# -- StreamRoute -------------------------------------------------------------------------------------


async def test_stream_route_streams_the_same_text_naming_the_model_first(world: Mesh) -> None:
    fields: dict[str, Any] = {"capability": TEXT, "prompt": "The old mill", "seed": 9, "max_tokens": 30}
    whole = await world.router.Route(router.RouteRequest(**fields), timeout=5)
    messages = await collect(world.router.StreamRoute(router.StreamRouteRequest(**fields), timeout=5))
    assert "".join(message.text for message in messages) == whole.text
    assert [message.index for message in messages] == list(range(len(messages)))
    assert messages[0].model_used == LOCAL
    assert all(not message.model_used for message in messages[1:])
    assert all(not message.finish_reason and not message.attempts for message in messages[:-1])
    last = messages[-1]
    assert (last.finish_reason, last.usage) == (whole.finish_reason, whole.usage)
    assert tried(last.attempts) == [(LOCAL, OK)]


async def test_stream_route_falls_back_before_the_first_chunk(nc: Client, storage: Any) -> None:
    async with mesh(nc, storage, inference=down_backend("remote-down")) as world:
        await register(world, "remote-down")
        await register(world, "ghost", latency_ms=2)
        messages = await collect(world.router.StreamRoute(
            router.StreamRouteRequest(capability=TEXT, prompt="Hi", seed=1, max_tokens=8), timeout=5
        ))
        assert messages[0].model_used == LOCAL
        assert tried(messages[-1].attempts) == [("remote-down", UNAVAILABLE), ("ghost", NOT_FOUND), (LOCAL, OK)]


async def test_stream_route_gives_up_on_a_model_with_no_first_chunk_within_its_share(
    nc: Client, storage: Any
) -> None:
    async with silent_server() as url, mesh(nc, storage, inference=remote_settings(url, "stalled")) as world:
        await register(world, "stalled")
        messages = await collect(world.router.StreamRoute(
            router.StreamRouteRequest(capability=TEXT, prompt="Hi", seed=1, max_tokens=8), timeout=1
        ))
        assert messages[0].model_used == LOCAL
        attempts = messages[-1].attempts
        assert tried(attempts) == [("stalled", DEADLINE_EXCEEDED), (LOCAL, OK)]
        assert "no first chunk within its share" in attempts[0].status_message


async def test_cancelling_stream_route_stops_the_generation_in_ai_integration(nc: Client, storage: Any) -> None:
    async with mesh(nc, storage, inference={"local_token_interval_ms": "20"}) as world:
        call = world.router.StreamRoute(router.StreamRouteRequest(capability=TEXT, max_tokens=4096, seed=1, **ENDLESS))
        first = await call.read()
        assert (first.model_used, first.text) == (LOCAL, "Maela")
        assert world.local.active == 1
        call.cancel()
        await wait_for(lambda: world.local.active == 0)
        # The generator was closed early: 4,096 tokens at 20 ms would take 80 s.
        assert world.local.interrupted == 1
        assert world.local.tokens_generated < 50


async def test_a_failure_after_the_first_chunk_ends_the_stream_with_the_models_status(
    nc: Client, storage: Any
) -> None:
    async with mesh(nc, storage, inference={"local_token_interval_ms": "20"}) as world:
        await register(world, "ghost", latency_ms=50)
        call = world.router.StreamRoute(
            router.StreamRouteRequest(capability=TEXT, max_tokens=4096, seed=1, **ENDLESS), timeout=10
        )
        first = await call.read()
        assert first.model_used == LOCAL
        await world.stop(ai_integration.TARGET)  # mid-stream
        _, err = await stream_failure(call)
        # UNAVAILABLE would be a reason to fall back (to ghost), but not once a chunk was sent.
        assert (err.code(), err.details()) == (grpc.StatusCode.UNAVAILABLE, "local-tiny: server is shutting down")
        assert detail(err, error_details_pb2.ErrorInfo).metadata["attempts"] == "local-tiny:UNAVAILABLE"
        assert len(world.observed_inference.seen("StreamGenerate")) == 1


async def test_the_stream_callers_deadline_reaches_ai_integration(world: Mesh) -> None:
    await collect(world.router.StreamRoute(router.StreamRouteRequest(capability=TEXT, prompt="Hi", max_tokens=4),
                                           timeout=0.7))
    (_, remaining), = world.observed_inference.seen("StreamGenerate")
    assert remaining is not None
    assert 0 < remaining <= 0.7


# -- the module ---------------------------------------------------------------------------------------


def test_the_module_names_its_target_and_service() -> None:
    assert ai_router.TARGET == "ai-router"
    assert [router.DESCRIPTOR.services_by_name["AiRouterService"].full_name] == list(ai_router.SERVICE_NAMES)


@pytest.mark.parametrize("bad", ["soon", "0", "-1", "nan", "inf"])
async def test_a_malformed_select_timeout_is_refused_at_start_up(storage: Any, bad: str) -> None:
    with pytest.raises(ValueError, match="select_timeout_s"):
        await ai_router.create(Dependencies(storage=storage, channel=lambda target: None,
                                            settings={"select_timeout_s": bad}))


def test_each_attempt_gets_the_time_left_divided_by_the_candidates_left() -> None:
    clock = ai_router.Clock(caller_remaining=3.0, budget=None)
    share = clock.share(3)
    assert share is not None
    assert 0.99 < share <= 1.0
    last = clock.share(1)
    assert last is not None
    assert 2.99 < last <= 3.0
    assert ai_router.Clock(caller_remaining=None, budget=None).share(2) is None
    budgeted = ai_router.Clock(caller_remaining=10.0, budget=0.4)
    assert budgeted.budget_bound
    half = budgeted.share(2)
    assert half is not None
    assert half <= 0.2
    assert not ai_router.Clock(caller_remaining=0.1, budget=0.4).budget_bound
