"""AiIntegrationService: validates a request, hands it to the named model's backend, reports back."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc
from gaming.ai_integration.v1 import ai_integration_pb2, ai_integration_pb2_grpc
from google.protobuf import duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2

from servicers.ai_integration.backends import Backend, BackendError, Finish, Generation, closing
from servicers.ai_integration.generation import GenerationRequest, generation_of
from servicers.errors import DOMAIN, RpcError, invalid_argument, not_found

# grpcio reports "no deadline" as a huge time_remaining() (~9.2e18 s); treat anything this far
# off as none.
_NO_DEADLINE = 1e9


class AiIntegrationServicer(ai_integration_pb2_grpc.AiIntegrationServiceServicer):
    """Runs generations on the backend serving each model name.

    Args:
        backends: model name -> the backend serving it.
    """

    def __init__(self, backends: Mapping[str, Backend]) -> None:
        self._backends = dict(backends)

    def __repr__(self) -> str:
        return f"<AiIntegrationServicer models={sorted(self._backends)}>"

    @property
    def backends(self) -> Mapping[str, Backend]:
        """The served models and their backends (operators and tests read their counters)."""
        return self._backends

    async def Generate(
        self,
        request: ai_integration_pb2.GenerateRequest,
        context: grpc.aio.ServicerContext[ai_integration_pb2.GenerateRequest, ai_integration_pb2.GenerateResponse],
    ) -> ai_integration_pb2.GenerateResponse:
        """The whole completion, with usage and the time it took."""
        generation, backend = await self._prepare(request, context)
        started = time.perf_counter()
        try:
            completion = await backend.generate(generation)
        except BackendError as err:
            raise _backend_failure(request.model, err) from err
        # Latency is a duration: measured on the monotonic clock, not the (injectable) wall clock.
        latency = duration_pb2.Duration()
        latency.FromNanoseconds(round((time.perf_counter() - started) * 1e9))
        return ai_integration_pb2.GenerateResponse(
            text=completion.text,
            finish_reason=completion.finish.finish_reason,
            usage=_usage(completion.finish),
            model=request.model,
            backend=backend.kind,
            latency=latency,
        )

    async def StreamGenerate(
        self,
        request: ai_integration_pb2.StreamGenerateRequest,
        context: grpc.aio.ServicerContext[
            ai_integration_pb2.StreamGenerateRequest, ai_integration_pb2.StreamGenerateResponse
        ],
    ) -> AsyncIterator[ai_integration_pb2.StreamGenerateResponse]:
        """The completion as it is produced: one message per piece the backend yields, then a
        final one with the finish reason and usage. The first message names model and backend."""
        generation, backend = await self._prepare(request, context)
        index = 0
        try:
            # Closing the backend's stream stops its generation; this also runs when the call is
            # cancelled (the handler task is cancelled at whichever await it is in).
            async with closing(backend.stream(generation)) as pieces:
                async for piece in pieces:
                    message = ai_integration_pb2.StreamGenerateResponse(index=index)
                    if index == 0:
                        message.model = request.model
                        message.backend = backend.kind
                    if isinstance(piece, Finish):
                        message.finish_reason = piece.finish_reason
                        message.usage.CopyFrom(_usage(piece))
                        yield message
                        return
                    message.text = piece
                    yield message
                    index += 1
        except BackendError as err:
            raise _backend_failure(request.model, err) from err
        raise AssertionError("a backend stream ended without a Finish")  # pragma: no cover

    async def _prepare(
        self, request: GenerationRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> tuple[Generation, Backend]:
        # None without a deadline over NATS; grpc.aio's stub declares a float only.
        remaining: float | None = context.time_remaining()
        if remaining is not None and remaining > _NO_DEADLINE:
            remaining = None
        generation = generation_of(request, remaining)
        backend = self._backends.get(request.model)
        if backend is None:
            served = ", ".join(sorted(self._backends))
            raise not_found(f"no backend serves model {request.model!r} (served here: {served})", "MODEL_NOT_FOUND")
        window = backend.context_tokens
        if window is not None:
            prompt_tokens = backend.count_tokens(generation.system_prompt or "") + backend.count_tokens(request.prompt)
            if prompt_tokens >= window:
                raise invalid_argument(
                    "prompt",
                    f"is {prompt_tokens} tokens; the model's context window "
                    f"is {window}",
                )
            if prompt_tokens + generation.max_tokens > window:
                raise invalid_argument(
                    "max_tokens",
                    f"{generation.max_tokens} plus the prompt's "
                    f"{prompt_tokens} tokens exceed the model's context window of {window}",
                )
        return generation, backend


def _usage(finish: Finish) -> ai_integration_pb2.TokenUsage:
    return ai_integration_pb2.TokenUsage(
        prompt_tokens=finish.prompt_tokens,
        completion_tokens=finish.completion_tokens,
        total_tokens=finish.prompt_tokens + finish.completion_tokens,
    )


def _backend_failure(model: str, err: BackendError) -> RpcError:
    """The backend's failure as the caller sees it: its code and message, an ErrorInfo naming the
    model, and a RetryInfo when the backend said how long to wait."""
    details: list[Message] = [error_details_pb2.ErrorInfo(reason=err.reason, domain=DOMAIN, metadata={"model": model})]
    if err.retry_after is not None:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromNanoseconds(round(err.retry_after * 1e9))
        details.append(retry)
    return RpcError(err.code, f"model {model!r}: {err.message}", details)
