"""ai-router: one entry point for LLM work, choosing a model and falling back when one fails.

For each request the router:

1. checks it (the generation fields by ai-integration's own rules, the rest by the proto's);
2. asks model-management's ``Select`` for up to ``max_attempts`` candidates that have the
   capability, meet the latency budget, and whose context holds the prompt (estimated at 4
   characters a token) plus ``max_tokens``; preferred models are passed on and ranked first.
   None qualifies: FAILED_PRECONDITION;
3. runs the candidates in rank order through ai-integration (``Generate`` for Route,
   ``StreamGenerate`` for StreamRoute) until one answers.

Fallback. The next candidate is tried after UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED of
that attempt, or NOT_FOUND, as ai_router.proto specifies. NOT_FOUND is included on purpose: it
means ai-integration has no backend for a model model-management lists (a registry ahead of the
deployment, or an ai-integration replica configured differently), which another model can cover.
Every other failure (INVALID_ARGUMENT from ai-integration, PERMISSION_DENIED of a backend's key...)
would fail on every model alike and is returned at once, with ai-integration's details. When
every candidate failed: UNAVAILABLE with the last attempt's message; when time ran out first:
DEADLINE_EXCEEDED. Both carry an ErrorInfo whose ``attempts`` metadata lists ``model:CODE``.

Time. The routing deadline is the earlier of the caller's deadline and the latency budget
(counted from the first attempt). Each attempt gets the time left divided by the number of
candidates not yet tried (``_plan.Clock``); for StreamRoute that share bounds the wait for the
first chunk, after which the stream is bounded by the caller's deadline only. Deadlines reach
model-management and ai-integration through the mesh (the calls inherit the handler's deadline;
an explicit ``timeout`` only shortens it).

StreamRoute. Fallback happens only before the first chunk is sent. The first message names the
chosen model; the last carries the finish reason, usage and attempts. A failure after the first
chunk ends the stream with the model's status. A caller who cancels cancels the upstream stream,
which stops ai-integration's generator.

model-management down (or failing, or slower than ``select_timeout_s``): UNAVAILABLE naming it
(ErrorInfo reason MODEL_MANAGEMENT_UNAVAILABLE). No default model is guessed: the registry is
where models are marked unavailable, and routing around it could send work to one taken down.

The router keeps no state, so ``create()`` opens no buckets.

Settings (``deps.settings``):
    select_timeout_s: seconds model-management gets to answer Select (default 2); the caller's
        deadline shortens it.
"""

from __future__ import annotations

import math

from gaming.ai_integration.v1 import ai_integration_pb2_grpc
from gaming.ai_router.v1 import ai_router_pb2_grpc
from gaming.model_management.v1 import model_management_pb2_grpc

from servicers.ai_router._plan import FALLBACK_CODES, Clock
from servicers.ai_router._servicer import AI_INTEGRATION, MODEL_MANAGEMENT, AiRouterServicer
from servicers.dependencies import Dependencies

__all__ = ["FALLBACK_CODES", "SERVICE_NAMES", "TARGET", "AiRouterServicer", "Clock", "add_to_server", "create"]

TARGET = "ai-router"
SERVICE_NAMES = ("gaming.ai_router.v1.AiRouterService",)
add_to_server = ai_router_pb2_grpc.add_AiRouterServiceServicer_to_server

DEFAULT_SELECT_TIMEOUT = 2.0


async def create(deps: Dependencies) -> AiRouterServicer:
    """A router calling model-management and ai-integration over ``deps.channel``.

    Raises:
        ValueError: a setting is malformed (fail at start-up, not at the first call).
    """
    text = deps.settings.get("select_timeout_s")
    select_timeout = DEFAULT_SELECT_TIMEOUT
    if text is not None:
        try:
            select_timeout = float(text)
        except ValueError:
            select_timeout = math.nan
        if not (math.isfinite(select_timeout) and select_timeout > 0):
            raise ValueError(f"ai-router select_timeout_s must be a positive number of seconds, not {text!r}")
    return AiRouterServicer(
        model_management_pb2_grpc.ModelManagementServiceStub(deps.channel(MODEL_MANAGEMENT)),
        ai_integration_pb2_grpc.AiIntegrationServiceStub(deps.channel(AI_INTEGRATION)),
        select_timeout=select_timeout,
    )
