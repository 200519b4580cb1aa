"""model-management: the registry of AI models, and the choice of the best ones for a task.

``create()`` registers the built-in model that every ai-integration serves (``local-tiny``) when
it is missing, so ``Select`` has an answer in a fresh mesh. An existing entry is left as it is:
an operator's changes (say, marking it DEGRADED) survive restarts, and two replicas starting
together do not fight. A deregistered built-in model comes back at the next start, unless the
``seed_builtin_models`` setting is ``false``.

Settings (``deps.settings``):
    seed_builtin_models: ``true`` (default) or ``false``.
"""

from __future__ import annotations

import contextlib

from gaming.ai_integration.v1 import ai_integration_pb2
from gaming.common.v1 import common_pb2
from gaming.model_management.v1 import model_management_pb2 as mm
from gaming.model_management.v1 import model_management_pb2_grpc

from servicers.ai_integration.local import LOCAL_BACKEND_MODEL, LOCAL_CONTEXT_TOKENS, LOCAL_MODEL_NAME
from servicers.dependencies import Dependencies
from servicers.model_management._rules import checked_model, model_key
from servicers.model_management._servicer import ModelManagementServicer
from servicers.storage import RevisionConflict

__all__ = ["SERVICE_NAMES", "TARGET", "ModelManagementServicer", "add_to_server", "builtin_models", "create"]

TARGET = "model-management"
SERVICE_NAMES = ("gaming.model_management.v1.ModelManagementService",)
add_to_server = model_management_pb2_grpc.add_ModelManagementServiceServicer_to_server

BUCKET = "model_management_models"
# Only a model's latest description matters (no watch, no history API).
BUCKET_HISTORY = 1
# A description is a few hundred bytes: this holds tens of thousands of models.
BUCKET_MAX_BYTES = 64 * 1024 * 1024
# Who the audit field names for what this service registers by itself.
SYSTEM_ACTOR = "model-management"


def builtin_models() -> list[mm.Model]:
    """The models ai-integration always serves, as registry entries."""
    local = mm.Model(
        name=LOCAL_MODEL_NAME,
        display_name="Built-in trigram model (fantasy corpus)",
        backend=ai_integration_pb2.BACKEND_LOCAL,
        backend_model=LOCAL_BACKEND_MODEL,
        # It takes a system prompt, so it can stand in for NPC dialogue; it cannot translate,
        # summarise or embed.
        capabilities=[mm.CAPABILITY_TEXT_GENERATION, mm.CAPABILITY_CHAT],
        context_tokens=LOCAL_CONTEXT_TOKENS,
        latency_class=mm.LATENCY_CLASS_REALTIME,
        cost_per_million_tokens=common_pb2.Money(),
        availability=mm.AVAILABILITY_AVAILABLE,
        attributes=[common_pb2.Attribute(key="family", value="ngram"),
                    common_pb2.Attribute(key="corpus", value="emberwick")],
    )
    # 256 tokens take well under a millisecond of sampling; 10 ms covers the hop and a busy box.
    local.expected_latency.FromMilliseconds(10)
    return [local]


async def create(deps: Dependencies) -> ModelManagementServicer:
    """Open the registry bucket, register the built-in models if missing, return a ready servicer.

    Raises:
        ValueError: a setting is malformed.
    """
    seed = deps.settings.get("seed_builtin_models", "true")
    if seed not in ("true", "false"):
        raise ValueError(f"model-management seed_builtin_models must be 'true' or 'false', not {seed!r}")
    bucket = await deps.storage.key_value(BUCKET, history=BUCKET_HISTORY, max_bytes=BUCKET_MAX_BYTES)
    if seed == "true":
        for model in builtin_models():
            stored = checked_model(model)
            stored.create_time.FromNanoseconds(round(deps.clock() * 1e9))
            stored.audit.actor_id = SYSTEM_ACTOR
            stored.audit.update_time.CopyFrom(stored.create_time)
            # Create only: an existing entry is the operator's (see the module docstring).
            with contextlib.suppress(RevisionConflict):
                await bucket.update(model_key(model.name), stored.SerializeToString(), 0)
    return ModelManagementServicer(bucket, clock=deps.clock)
