"""What a valid generation request is: the proto's rules for GenerateRequest and
StreamGenerateRequest, as ai-integration applies them. Public so that ai-router checks a routed
request by exactly these rules, and never refuses what ai-integration would take, or the
reverse."""

from __future__ import annotations

import math

from gaming.ai_integration.v1 import ai_integration_pb2

from servicers.ai_integration.backends import Generation
from servicers.errors import InvalidArgument
from servicers.model_fields import check_name

MAX_PROMPT_CHARS = 32768
MAX_SYSTEM_PROMPT_CHARS = 8192
DEFAULT_MAX_TOKENS = 256
MAX_TOKENS = 4096
DEFAULT_TEMPERATURE = 0.7
MAX_TEMPERATURE = 2.0
MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 64

GenerationRequest = ai_integration_pb2.GenerateRequest | ai_integration_pb2.StreamGenerateRequest


def generation_of(request: GenerationRequest, remaining: float | None) -> Generation:
    """The backend's view of a request, once every field is checked against the proto's rules.

    Raises:
        InvalidArgument: a field is out of range.
    """
    check_name("model", request.model)
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

