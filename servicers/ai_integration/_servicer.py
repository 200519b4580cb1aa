"""AiIntegrationService: validates a request, hands it to the named model's backend, reports back."""

from __future__ import annotations

import math
import re
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, NoReturn

import grpc
from gaming.ai_integration.v1 import ai_integration_pb2, ai_integration_pb2_grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from servicers.ai_integration.backends import Backend, BackendError, Finish, Generation, closing
from servicers.errors import DOMAIN, abort, abort_invalid

MODEL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")
MAX_PROMPT_CHARS = 32768
MAX_SYSTEM_PROMPT_CHARS = 8192
DEFAULT_MAX_TOKENS = 256
MAX_TOKENS = 4096
DEFAULT_TEMPERATURE = 0.7
MAX_TEMPERATURE = 2.0
MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 64
# grpcio reports "no deadline" as a huge time_remaining() (~9.2e18 s); treat anything this far
# off as none.
_NO_DEADLINE = 1e9

GenerationRequest = ai_integration_pb2.GenerateRequest | ai_integration_pb2.StreamGenerateRequest


class InvalidArgument(Exception):
    """A request field is out of range: ``field`` names it, ``description`` says how."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description


def generation_of(request: GenerationRequest, remaining: float | None) -> Generation:
    """The backend's view of a request, once every field is checked against the proto's rules.

    Raises:
        InvalidArgument: a field is out of range.
    """
    if not MODEL_NAME.fullmatch(request.model):
        raise InvalidArgument("model", "must be 1 to 128 characters of [A-Za-z0-9_.-]")
    if not request.prompt:
        raise InvalidArgument("prompt", "must not be empty")
    if len(request.prompt) > MAX_PROMPT_CHARS:
        raise InvalidArgument("prompt", f"must be at most {MAX_PROMPT_CHARS} characters")
    if request.HasField("system_prompt") and len(request.system_prompt) > MAX_SYSTEM_PROMPT_CHARS:
        raise InvalidArgument("system_prompt", f"must be at most {MAX_SYSTEM_PROMPT_CHARS} characters")
    if not 0 <= request.max_tokens <= MAX_TOKENS:
        raise InvalidArgument("max_tokens", f"must be 1 to {MAX_TOKENS} (0 means {DEFAULT_MAX_TOKENS})")
    temperature = DEFAULT_TEMPERATURE
    if request.HasField("temperature"):
        temperature = request.temperature
        if not (math.isfinite(temperature) and 0.0 <= temperature <= MAX_TEMPERATURE):
            raise InvalidArgument("temperature", f"must be in [0, {MAX_TEMPERATURE:g}]")
    if len(request.stop_sequences) > MAX_STOP_SEQUENCES:
        raise InvalidArgument("stop_sequences", f"must hold at most {MAX_STOP_SEQUENCES} sequences")
    for index, stop in enumerate(request.stop_sequences):
        if not 1 <= len(stop) <= MAX_STOP_CHARS:
            raise InvalidArgument(f"stop_sequences[{index}]", f"must be 1 to {MAX_STOP_CHARS} characters")
    return Generation(
        prompt=request.prompt,
        system_prompt=request.system_prompt if request.HasField("system_prompt") else None,
        max_tokens=request.max_tokens or DEFAULT_MAX_TOKENS,
        temperature=temperature,
        # Unset means a random seed, as the proto says (the backend draws one).
        seed=request.seed if request.HasField("seed") else None,
        stop_sequences=tuple(request.stop_sequences),
        timeout=remaining,
    )


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
        self, request: ai_integration_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> ai_integration_pb2.GenerateResponse:
        """The whole completion, with usage and the time it took."""
        generation, backend = await self._prepare(request, context)
        started = time.perf_counter()
        try:
            completion = await backend.generate(generation)
        except BackendError as err:
            await _abort_backend(context, request.model, err)
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
        self, request: ai_integration_pb2.StreamGenerateRequest, context: grpc.aio.ServicerContext
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
            await _abort_backend(context, request.model, err)
        raise AssertionError("a backend stream ended without a Finish")  # pragma: no cover

    async def _prepare(
        self, request: GenerationRequest, context: grpc.aio.ServicerContext
    ) -> tuple[Generation, Backend]:
        remaining = context.time_remaining()
        if remaining is not None and remaining > _NO_DEADLINE:
            remaining = None
        try:
            generation = generation_of(request, remaining)
        except InvalidArgument as invalid:
            await abort_invalid(context, invalid.field, invalid.description)
        backend = self._backends.get(request.model)
        if backend is None:
            served = ", ".join(sorted(self._backends))
            await abort(context, grpc.StatusCode.NOT_FOUND,
                        f"no backend serves model {request.model!r} (served here: {served})", "MODEL_NOT_FOUND")
        window = backend.context_tokens
        if window is not None:
            prompt_tokens = backend.count_tokens(generation.system_prompt or "") + backend.count_tokens(request.prompt)
            if prompt_tokens >= window:
                await abort_invalid(context, "prompt", f"is {prompt_tokens} tokens; the model's context window "
                                    f"is {window}")
            if prompt_tokens + generation.max_tokens > window:
                await abort_invalid(context, "max_tokens", f"{generation.max_tokens} plus the prompt's "
                                    f"{prompt_tokens} tokens exceed the model's context window of {window}")
        return generation, backend


def _usage(finish: Finish) -> ai_integration_pb2.TokenUsage:
    return ai_integration_pb2.TokenUsage(
        prompt_tokens=finish.prompt_tokens,
        completion_tokens=finish.completion_tokens,
        total_tokens=finish.prompt_tokens + finish.completion_tokens,
    )


async def _abort_backend(context: Any, model: str, err: BackendError) -> NoReturn:
    """The backend's failure as the caller sees it: its code and message, an ErrorInfo naming the
    model, and a RetryInfo when the backend said how long to wait."""
    details: list[Any] = [error_details_pb2.ErrorInfo(reason=err.reason, domain=DOMAIN, metadata={"model": model})]
    if err.retry_after is not None:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromNanoseconds(round(err.retry_after * 1e9))
        details.append(retry)
    packed = []
    for detail in details:
        holder = any_pb2.Any()
        holder.Pack(detail)
        packed.append(holder)
    status = status_pb2.Status(code=err.code.value[0], message=f"model {model!r}: {err.message}", details=packed)
    await context.abort_with_status(rpc_status.to_status(status))
    raise AssertionError("abort_with_status returned")  # pragma: no cover
