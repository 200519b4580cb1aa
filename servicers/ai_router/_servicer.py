"""AiRouterService: ask model-management for candidates, run them through ai-integration in turn."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from gaming.ai_integration.v1 import ai_integration_pb2 as ai
from gaming.ai_integration.v1 import ai_integration_pb2_grpc
from gaming.ai_router.v1 import ai_router_pb2 as router
from gaming.ai_router.v1 import ai_router_pb2_grpc
from gaming.model_management.v1 import model_management_pb2 as mm
from gaming.model_management.v1 import model_management_pb2_grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from servicers.ai_router._plan import (
    FALLBACK_CODES,
    Clock,
    Plan,
    RoutingRequest,
    duration_since,
    generation_request,
    plan_of,
    stream_request,
)
from servicers.errors import DOMAIN, RpcError, failed_precondition, rpc_error

_log = logging.getLogger(__name__)

MODEL_MANAGEMENT = "model-management"
AI_INTEGRATION = "ai-integration"
# grpcio reports "no deadline" as a huge time_remaining() (~9.2e18 s): treat that as none.
_NO_DEADLINE = 1e9
# Below this, what is left of a deadline cannot carry another call over the mesh.
_EXHAUSTED = 0.001
_CODE_NAMES: dict[int, str] = {code.value[0]: code.name for code in grpc.StatusCode}


class _Failed(Exception):
    """One attempt failed; ``attempt`` records it, ``error`` is ai-integration's answer (None when
    the router itself gave up on the attempt: no first chunk in time, a stream cut short)."""

    def __init__(self, attempt: router.Attempt, error: grpc.aio.AioRpcError | None) -> None:
        super().__init__(attempt.status_message)
        self.attempt = attempt
        self.error = error


class AiRouterServicer(ai_router_pb2_grpc.AiRouterServiceServicer):
    """Routes each request to the best model that answers (see the package docstring for rules).

    Args:
        registry: model-management's stub.
        inference: ai-integration's stub.
        select_timeout: seconds model-management gets to answer Select (the caller's deadline
            caps it further), so a registry that hangs cannot hold a request.
    """

    def __init__(
        self,
        registry: model_management_pb2_grpc.ModelManagementServiceAsyncStub,
        inference: ai_integration_pb2_grpc.AiIntegrationServiceAsyncStub,
        *,
        select_timeout: float,
    ) -> None:
        self._registry = registry
        self._inference = inference
        self._select_timeout = select_timeout

    def __repr__(self) -> str:
        return f"<AiRouterServicer select_timeout={self._select_timeout}s>"

    async def Route(
        self,
        request: router.RouteRequest,
        context: grpc.aio.ServicerContext[router.RouteRequest, router.RouteResponse],
    ) -> router.RouteResponse:
        """The whole completion of the first candidate that answers, with every attempt made."""
        started = time.monotonic()
        plan, candidates = await self._candidates(request, context)
        clock = Clock(_remaining(context), plan.budget)
        attempts: list[router.Attempt] = []
        for position, model in enumerate(candidates):
            share = clock.share(len(candidates) - position)
            if share is not None and share < _EXHAUSTED:
                break
            attempt_started = time.monotonic()
            call = self._inference.Generate(generation_request(request, model), timeout=share)
            try:
                reply = await call
            except grpc.aio.AioRpcError as err:
                attempts.append(_attempt(model, attempt_started, err))
                if err.code() not in FALLBACK_CODES:
                    raise _upstream_error(model, err, attempts) from err
                continue
            except asyncio.CancelledError:
                # The caller went away: an unary call awaited here is shielded, so stop it too.
                call.cancel()
                raise
            attempts.append(_attempt(model, attempt_started))
            return router.RouteResponse(
                text=reply.text,
                model_used=model,
                finish_reason=reply.finish_reason,
                usage=reply.usage,
                attempts=attempts,
                latency=duration_since(started),
            )
        raise _exhausted(clock, attempts, len(candidates))

    async def StreamRoute(
        self,
        request: router.StreamRouteRequest,
        context: grpc.aio.ServicerContext[router.StreamRouteRequest, router.StreamRouteResponse],
    ) -> AsyncIterator[router.StreamRouteResponse]:
        """The completion as it is produced by the first candidate that sends a first chunk."""
        plan, candidates = await self._candidates(request, context)
        clock = Clock(_remaining(context), plan.budget)
        attempts: list[router.Attempt] = []
        for position, model in enumerate(candidates):
            share = clock.share(len(candidates) - position)
            if share is not None and share < _EXHAUSTED:
                break
            attempt_started = time.monotonic()
            # No timeout on the call: the share bounds the wait for the first chunk only; after
            # it, the stream runs as long as the caller's deadline (inherited) allows.
            call = self._inference.StreamGenerate(stream_request(request, model))
            try:
                first = await _first_message(call, model, attempt_started, share)
            except _Failed as failed:
                attempts.append(failed.attempt)
                if failed.error is not None and failed.error.code() not in FALLBACK_CODES:
                    raise _upstream_error(model, failed.error, attempts) from failed.error
                continue
            except BaseException:
                call.cancel()
                raise
            try:
                async for message in _relay(call, first, model, attempt_started, attempts):
                    yield message
                return
            except grpc.aio.AioRpcError as err:
                # After the first chunk there is no falling back: end with the model's status.
                attempts.append(_attempt(model, attempt_started, err))
                raise _upstream_error(model, err, attempts) from err
            except _Failed as failed:
                attempts.append(failed.attempt)
                raise _error(grpc.StatusCode.UNAVAILABLE, f"{model}: {failed.attempt.status_message}",
                             "MODEL_FAILED", {"model": model, "attempts": _summary(attempts)}) from failed
            finally:
                # Runs when the caller cancels too (the handler is cancelled inside the relay):
                # cancelling the upstream call makes ai-integration close its generator.
                call.cancel()
        raise _exhausted(clock, attempts, len(candidates))

    async def _candidates(
        self,
        request: RoutingRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> tuple[Plan, list[str]]:
        """The checked plan and the names of the models to try, best first."""
        plan = plan_of(request)
        try:
            selected = await self._registry.Select(plan.select, timeout=self._select_timeout)
        except grpc.aio.AioRpcError as err:
            raise self._registry_error(err, _remaining(context)) from err
        names = [candidate.model.name for candidate in selected.candidates][: plan.attempts]
        if not names:
            raise failed_precondition(
                f"no registered model qualifies for {mm.Capability.Name(plan.select.required_capability)} with a "
                f"context of {plan.select.min_context_tokens} tokens"
                + (f" within a latency budget of {plan.budget:g}s" if plan.budget is not None else ""),
                "NO_QUALIFYING_MODEL",
            )
        return plan, names

    def _registry_error(self, err: grpc.aio.AioRpcError, left: float | None) -> RpcError:
        """model-management's failure, as the caller sees it, ``left`` seconds before the
        caller's deadline (None: it has none).

        The caller's own deadline running out is DEADLINE_EXCEEDED; anything else (no server, a
        store outage, our own Select timeout) means the registry cannot be used now: UNAVAILABLE
        naming it, with its code. No model is guessed in its place: the registry is where models
        are marked unavailable, and routing around it could send work to a model taken down.
        """
        if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED and left is not None and left < _EXHAUSTED:
            return rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED,
                             "the deadline ran out while model-management was selecting a model", "DEADLINE_EXCEEDED")
        if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            why = f"did not answer within {self._select_timeout:g}s"
        else:
            why = f"failed with {err.code().name}: {err.details()}"
        _log.warning("ai-router: model-management %s", why)
        return _error(grpc.StatusCode.UNAVAILABLE, f"{MODEL_MANAGEMENT} is unavailable: {why}",
                      "MODEL_MANAGEMENT_UNAVAILABLE", {"dependency": MODEL_MANAGEMENT})


async def _first_message(
    call: Any, model: str, started: float, share: float | None
) -> ai.StreamGenerateResponse:
    """The stream's first message, within ``share`` seconds.

    Raises:
        _Failed: the stream failed, ended without a message, or sent nothing in time.
    """
    try:
        async with asyncio.timeout(share):
            first = await call.read()
    except TimeoutError:
        call.cancel()
        attempt = router.Attempt(model=model, status_code=grpc.StatusCode.DEADLINE_EXCEEDED.value[0],
                                 status_message=f"no first chunk within its share of {share:.3f}s",
                                 latency=duration_since(started))
        raise _Failed(attempt, None) from None
    except grpc.aio.AioRpcError as err:
        raise _Failed(_attempt(model, started, err), err) from err
    if first is grpc.aio.EOF:
        attempt = router.Attempt(model=model, status_code=grpc.StatusCode.UNAVAILABLE.value[0],
                                 status_message="the stream ended without any output",
                                 latency=duration_since(started))
        raise _Failed(attempt, None)
    message: ai.StreamGenerateResponse = first
    return message


async def _relay(
    call: Any, first: ai.StreamGenerateResponse, model: str, started: float, attempts: list[router.Attempt]
) -> AsyncIterator[router.StreamRouteResponse]:
    """ai-integration's messages as StreamRoute messages, ``first`` included; the final one
    carries the finish reason, usage and attempts (the successful one last, timed to the end).

    Raises:
        grpc.aio.AioRpcError: the stream failed.
        _Failed: the stream ended without a finish message.
    """
    message: Any = first
    index = 0
    while True:
        if message is grpc.aio.EOF:
            # ai-integration always ends with a finish message; a stream without one was cut.
            raise _Failed(router.Attempt(model=model, status_code=grpc.StatusCode.UNAVAILABLE.value[0],
                                         status_message="the stream ended without a finish reason",
                                         latency=duration_since(started)), None)
        out = router.StreamRouteResponse(index=index, text=message.text)
        if index == 0:
            out.model_used = model
        if message.finish_reason:
            attempts.append(_attempt(model, started))
            out.finish_reason = message.finish_reason
            out.usage.CopyFrom(message.usage)
            out.attempts.extend(attempts)
            yield out
            return
        yield out
        index += 1
        message = await call.read()


def _remaining(context: grpc.aio.ServicerContext[Any, Any]) -> float | None:
    remaining = context.time_remaining()
    if remaining is None or remaining > _NO_DEADLINE:
        return None
    return float(remaining)


def _attempt(model: str, started: float, err: grpc.aio.AioRpcError | None = None) -> router.Attempt:
    attempt = router.Attempt(model=model, latency=duration_since(started))
    if err is not None:
        attempt.status_code = err.code().value[0]
        attempt.status_message = err.details() or err.code().name
    return attempt


def _summary(attempts: Sequence[router.Attempt]) -> str:
    """``model:CODE`` for each attempt, in order (the ErrorInfo's ``attempts`` entry)."""
    return ", ".join(f"{attempt.model}:{_CODE_NAMES.get(attempt.status_code, 'UNKNOWN')}" for attempt in attempts)


def _exhausted(clock: Clock, attempts: Sequence[router.Attempt], candidates: int) -> RpcError:
    """No candidate answered: DEADLINE_EXCEEDED if time ran out first, else UNAVAILABLE with
    the last attempt's message."""
    metadata = {"attempts": _summary(attempts)}
    left = clock.remaining()
    if left is not None and left < _EXHAUSTED:
        what = "latency budget" if clock.budget_bound else "deadline"
        return _error(grpc.StatusCode.DEADLINE_EXCEEDED,
                      f"the {what} ran out after {len(attempts)} of {candidates} candidate models "
                      f"({metadata['attempts'] or 'none tried'})", "ROUTING_DEADLINE_EXCEEDED", metadata)
    last = attempts[-1]
    return _error(grpc.StatusCode.UNAVAILABLE,
                  f"every candidate model failed ({metadata['attempts']}); last, {last.model}: "
                  f"{last.status_message}", "ALL_MODELS_FAILED", metadata)


def _upstream_error(model: str, err: grpc.aio.AioRpcError, attempts: Sequence[router.Attempt]) -> RpcError:
    """ai-integration's own status, passed on with its details (a BadRequest naming the field
    stays intact, the field names being the same), plus an ErrorInfo listing the attempts."""
    status = rpc_status.from_call(err)
    # Forwarded still packed: they are ai-integration's, whatever their type.
    forwarded = list(status.details) if status is not None else []
    info = error_details_pb2.ErrorInfo(reason="MODEL_FAILED", domain=DOMAIN,
                                       metadata={"model": model, "attempts": _summary(attempts)})
    return RpcError(err.code(), f"{model}: {err.details() or err.code().name}", [*forwarded, info])


def _error(code: grpc.StatusCode, message: str, reason: str, metadata: dict[str, str]) -> RpcError:
    """``code`` with an ErrorInfo carrying ``metadata`` (which ``rpc_error`` does not take)."""
    return RpcError(code, message, [error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata)])
