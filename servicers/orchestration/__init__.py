"""orchestration: multi-step workflows across the mesh, as sagas (``gaming.orchestration.v1``).

RunWorkflow runs declared steps one after another, each a unary call to any target of the mesh
made generically (``deps.channel(target).unary_unary(method)`` on raw bytes); a JSON request is
converted with the target's own server reflection (``_schema``). Each attempt has its own
deadline, retryable codes are retried with backoff, and when a step finally fails the
compensations of the completed steps run in reverse order (``_runner``). Workflows are saved in
KV at every transition and kept 7 days; an idempotency key returns the workflow it first
started (``_records``). Requests are checked by ``_definition``.

Settings (``deps.settings``, optional positive integers): ``workflows_max_bytes`` (default
256 MiB) and ``idempotency_max_bytes`` (default 16 MiB), the two buckets' size limits.
"""

from __future__ import annotations

from gaming.orchestration.v1 import orchestration_pb2_grpc

from servicers.dependencies import Dependencies
from servicers.orchestration._records import WORKFLOW_TTL
from servicers.orchestration._schema import Schemas
from servicers.orchestration._servicer import OrchestrationServicer
from servicers.service_settings import positive_int

__all__ = [
    "SERVICE_NAMES",
    "TARGET",
    "OrchestrationServicer",
    "Schemas",
    "add_to_server",
    "create",
]

TARGET = "orchestration"
SERVICE_NAMES = ("gaming.orchestration.v1.OrchestrationService",)

WORKFLOWS_BUCKET = "orchestration_workflows"
IDEMPOTENCY_BUCKET = "orchestration_idempotency"
# A workflow is one value (32 steps, outputs capped at 24 KiB each); an idempotency record is
# under 100 bytes. Both buckets expire entries after WORKFLOW_TTL (7 days).
WORKFLOWS_MAX_BYTES = 256 * 1024 * 1024
IDEMPOTENCY_MAX_BYTES = 16 * 1024 * 1024


def _setting(deps: Dependencies, name: str, default: int) -> int:
    return positive_int(deps.settings, name, default, service=TARGET)


async def create(deps: Dependencies) -> OrchestrationServicer:
    """Open (or create) the two buckets and return a ready servicer.

    Raises:
        ValueError: a setting is not a positive integer.
    """
    # history=1: a workflow has one writer, and only its latest state is ever read.
    workflows = await deps.storage.key_value(
        WORKFLOWS_BUCKET,
        history=1,
        ttl=WORKFLOW_TTL,
        max_bytes=_setting(deps, "workflows_max_bytes", WORKFLOWS_MAX_BYTES),
    )
    idempotency = await deps.storage.key_value(
        IDEMPOTENCY_BUCKET,
        history=1,
        ttl=WORKFLOW_TTL,
        max_bytes=_setting(deps, "idempotency_max_bytes", IDEMPOTENCY_MAX_BYTES),
    )
    return OrchestrationServicer(workflows, idempotency, channel=deps.channel, clock=deps.clock, detached=deps.detached)


add_to_server = orchestration_pb2_grpc.add_OrchestrationServiceServicer_to_server
