"""What a routing request asks for, checked, and the time each attempt gets: pure functions.

Route and StreamRoute share their fields, so one ``Plan`` serves both. The generation fields
(prompt, system prompt, max_tokens, temperature, stop sequences) mean exactly what they mean in
ai-integration's GenerateRequest, so they are checked by ai-integration's own checker
(``generation_of``): the router then never refuses what ai-integration would take, or the reverse.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import grpc
from gaming.ai_integration.v1 import ai_integration_pb2 as ai
from gaming.ai_router.v1 import ai_router_pb2 as router
from gaming.model_management.v1 import model_management_pb2 as mm
from google.protobuf import duration_pb2

from servicers.ai_integration.generation import DEFAULT_MAX_TOKENS, generation_of
from servicers.ai_integration.local import LOCAL_MODEL_NAME
from servicers.errors import InvalidArgument
from servicers.model_fields import check_duration, check_enum, check_name

RoutingRequest = router.RouteRequest | router.StreamRouteRequest

DEFAULT_ATTEMPTS = 3
MAX_ATTEMPTS = 5
MAX_PREFERRED = 10
# The router cannot know each backend's tokenizer before a model is chosen, so it sizes the
# prompt the way ai-integration's OpenAI-compatible backend estimates it: about 4 characters a
# token. Underestimates are caught by ai-integration, which answers INVALID_ARGUMENT.
CHARS_PER_TOKEN = 4

# The codes after which the next candidate is tried, as the proto lists them: the model could
# not serve this call (down, rate-limited, too slow for its share of time, or not served by any
# ai-integration backend although model-management lists it). Anything else (INVALID_ARGUMENT,
# PERMISSION_DENIED...) would fail the same way on every model, so it is returned at once.
FALLBACK_CODES = frozenset({
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.NOT_FOUND,
})


@dataclass(frozen=True, slots=True)
class Plan:
    """A checked routing request: what to ask model-management, and how many models to try.

    Attributes:
        select: the SelectRequest for model-management.
        attempts: the most models to try (1 to 5).
        budget: the latency budget in seconds, or None when the request set none.
    """

    select: mm.SelectRequest
    attempts: int
    budget: float | None


def plan_of(request: RoutingRequest) -> Plan:
    """The plan for ``request``.

    Raises:
        InvalidArgument: a field is out of range (named as in the request).
    """
    check_enum("capability", request.capability, list(mm.Capability.values()), allow_unspecified=False)
    budget = None
    if request.HasField("latency_budget"):
        check_duration("latency_budget", request.latency_budget)
        budget = request.latency_budget.ToNanoseconds() / 1e9
        if budget <= 0:
            raise InvalidArgument("latency_budget", "must be positive when set")
    if len(request.preferred_models) > MAX_PREFERRED:
        raise InvalidArgument("preferred_models", f"must name at most {MAX_PREFERRED} models")
    for index, name in enumerate(request.preferred_models):
        check_name(f"preferred_models[{index}]", name)
    # The same rules ai-integration applies; the model name is only a stand-in here.
    generation_of(generation_request(request, LOCAL_MODEL_NAME), None)
    if not 0 <= request.max_attempts <= MAX_ATTEMPTS:
        raise InvalidArgument("max_attempts", f"must be 1 to {MAX_ATTEMPTS} (0 means {DEFAULT_ATTEMPTS})")
    attempts = request.max_attempts or DEFAULT_ATTEMPTS
    select = mm.SelectRequest(
        required_capability=request.capability,
        min_context_tokens=context_needed(request),
        max_candidates=attempts,
        preferred_models=list(request.preferred_models),
    )
    if budget is not None:
        select.latency_budget.CopyFrom(request.latency_budget)
    return Plan(select=select, attempts=attempts, budget=budget)


def context_needed(request: RoutingRequest) -> int:
    """Tokens a model's context must hold: the estimated prompt plus ``max_tokens``."""
    characters = len(request.prompt) + (len(request.system_prompt) if request.HasField("system_prompt") else 0)
    return math.ceil(characters / CHARS_PER_TOKEN) + (request.max_tokens or DEFAULT_MAX_TOKENS)


def generation_request(request: RoutingRequest, model: str) -> ai.GenerateRequest:
    """The GenerateRequest that runs ``request`` on ``model``."""
    generate = ai.GenerateRequest(
        model=model,
        prompt=request.prompt,
        max_tokens=request.max_tokens,
        stop_sequences=list(request.stop_sequences),
    )
    if request.HasField("system_prompt"):
        generate.system_prompt = request.system_prompt
    if request.HasField("temperature"):
        generate.temperature = request.temperature
    if request.HasField("seed"):
        generate.seed = request.seed
    return generate


def stream_request(request: RoutingRequest, model: str) -> ai.StreamGenerateRequest:
    """The StreamGenerateRequest that runs ``request`` on ``model``."""
    return ai.StreamGenerateRequest.FromString(generation_request(request, model).SerializeToString())


class Clock:
    """The routing deadline, and the share of it each attempt gets.

    The deadline is the earlier of the caller's deadline and, when the request has a latency
    budget, the end of that budget counted from the first attempt (the budget bounds "the total
    time the router spends on attempts").

    The share rule: an attempt gets the time left until the routing deadline divided by the
    number of candidates not yet tried (itself included). With three candidates the first gets a
    third; if it fails at once (a refused connection costs milliseconds) the second gets half of
    nearly everything, and the last always gets all that is left. So every candidate has a real
    chance, and fast failures, the usual kind, cost the later candidates nothing. Without any
    deadline or budget an attempt is bounded only by ai-integration's own timeouts.
    """

    def __init__(self, caller_remaining: float | None, budget: float | None) -> None:
        now = time.monotonic()
        limits = [now + seconds for seconds in (caller_remaining, budget) if seconds is not None]
        self.started = now
        self.deadline = min(limits) if limits else None
        self.budget_bound = budget is not None and (caller_remaining is None or budget < caller_remaining)

    def __repr__(self) -> str:
        left = self.remaining()
        return f"<Clock remaining={'none' if left is None else f'{left:.3f}s'} budget_bound={self.budget_bound}>"

    def remaining(self) -> float | None:
        """Seconds until the routing deadline (0 once passed), or None without one."""
        if self.deadline is None:
            return None
        return max(self.deadline - time.monotonic(), 0.0)

    def share(self, candidates_left: int) -> float | None:
        """The time the next attempt gets, when ``candidates_left`` (>= 1) remain to be tried."""
        left = self.remaining()
        return None if left is None else left / max(candidates_left, 1)

    def elapsed(self) -> duration_pb2.Duration:
        """Time since the clock started, as a Duration."""
        return duration_since(self.started)


def duration_since(started: float) -> duration_pb2.Duration:
    """The monotonic time since ``started``, as a Duration."""
    elapsed = duration_pb2.Duration()
    elapsed.FromNanoseconds(round((time.monotonic() - started) * 1e9))
    return elapsed
