"""ai-integration: LLM inference behind one backend interface (``backends.Backend``).

Every instance serves the built-in model, ``local-tiny`` (``local.py``: a trigram model trained
at start-up on a shipped corpus, deterministic for a given seed). Configuration can add one model
served by an OpenAI-compatible HTTP server (``openai_compatible.py``). The service keeps no
state, so it opens no buckets.

Settings (``deps.settings``):
    backend: ``local`` (default: the built-in model only) or ``openai`` (also serve a remote model).
    base_url: with ``openai``, the API root, e.g. ``https://api.openai.com/v1``; required.
    model: with ``openai``, the model's name at that server, e.g. ``gpt-4o-mini``; required.
    served_model: the name callers use for it (default: ``model``); 1 to 128 characters of
        ``[A-Za-z0-9_.-]``, and not ``local-tiny``.
    api_key_env: the environment variable holding its API key (default ``OPENAI_API_KEY``); an
        unset variable sends no key (local servers such as llama.cpp or vLLM need none).
    timeout_s: seconds to wait for a remote answer, or for the next piece of a stream, when the
        caller's deadline does not end sooner (default 60).
    context_tokens: the remote model's context window, if requests should be checked against it
        here (otherwise the server checks).
    local_token_interval_ms: pace the built-in model, in milliseconds per token (default 0).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

from gaming.ai_integration.v1 import ai_integration_pb2_grpc

from servicers.ai_integration._servicer import AiIntegrationServicer
from servicers.ai_integration.backends import Backend
from servicers.ai_integration.local import LOCAL_MODEL_NAME, load_local_backend
from servicers.ai_integration.openai_compatible import DEFAULT_TIMEOUT, OpenAICompatibleBackend
from servicers.dependencies import Dependencies
from servicers.model_fields import MODEL_NAME

__all__ = ["SERVICE_NAMES", "TARGET", "AiIntegrationServicer", "add_to_server", "create"]

TARGET = "ai-integration"
SERVICE_NAMES = ("gaming.ai_integration.v1.AiIntegrationService",)
add_to_server = ai_integration_pb2_grpc.add_AiIntegrationServiceServicer_to_server


def _positive(settings: Mapping[str, str], name: str, default: float, *, allow_zero: bool = False) -> float:
    text = settings.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"ai-integration {name} must be a positive number, not {text!r}")
    return value


def configured_backends(settings: Mapping[str, str], environ: Mapping[str, str]) -> dict[str, Backend]:
    """The models the settings ask for, by the name callers use.

    Raises:
        ValueError: a setting is missing or malformed (fail at start-up, not at the first call).
    """
    interval = _positive(settings, "local_token_interval_ms", 0.0, allow_zero=True) / 1000
    backends: dict[str, Backend] = {LOCAL_MODEL_NAME: load_local_backend(token_interval=interval)}
    kind = settings.get("backend", "local")
    if kind == "local":
        return backends
    if kind != "openai":
        raise ValueError(f"ai-integration backend must be 'local' or 'openai', not {kind!r}")
    missing = [name for name in ("base_url", "model") if not settings.get(name)]
    if missing:
        raise ValueError(f"ai-integration backend 'openai' needs the settings {', '.join(missing)}")
    served = settings.get("served_model") or settings["model"]
    if not MODEL_NAME.fullmatch(served) or served == LOCAL_MODEL_NAME:
        raise ValueError(
            f"ai-integration served_model {served!r} must be 1 to 128 characters of [A-Za-z0-9_.-], "
            f"and not {LOCAL_MODEL_NAME!r} (set served_model when the backend's name has others)"
        )
    context = settings.get("context_tokens")
    if context is not None and not (context.isdigit() and int(context) > 0):
        raise ValueError(f"ai-integration context_tokens must be a positive integer, not {context!r}")
    backends[served] = OpenAICompatibleBackend(
        base_url=settings["base_url"],  # Endpoint.parse raises ValueError on a bad URL
        model=settings["model"],
        api_key=environ.get(settings.get("api_key_env", "OPENAI_API_KEY")) or None,
        timeout=_positive(settings, "timeout_s", DEFAULT_TIMEOUT),
        context_tokens=int(context) if context is not None else None,
    )
    return backends


async def create(deps: Dependencies) -> AiIntegrationServicer:
    """Train the built-in model, set up any configured remote one, and return a ready servicer.

    Raises:
        ValueError: a setting is malformed.
    """
    return AiIntegrationServicer(configured_backends(deps.settings, os.environ))
