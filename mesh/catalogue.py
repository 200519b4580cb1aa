"""The service catalogue: every target of the mesh and the servicer module that implements it."""

from __future__ import annotations

import importlib
from types import ModuleType

# target -> module under servicers/ (each exposes TARGET, SERVICE_NAMES, create, add_to_server).
CATALOGUE: dict[str, str] = {
    "ai-integration": "ai_integration",
    "model-management": "model_management",
    "ai-router": "ai_router",
    "state-manager": "state_manager",
    "quest-system": "quest",
    "npc-behavior": "npc_behavior",
    "world-state": "world_state",
    "orchestration": "orchestration",
    "router": "router",
    "event-bus": "event_bus",
    "time-manager": "time_manager",
    "weather-manager": "weather",
    "auth": "auth",
    "settings": "settings",
    "payment": "payment",
    "performance-mode": "performance_mode",
    "capability-registry": "capability_registry",
    "knowledge-base": "knowledge_base",
    "language-system": "language",
    "environmental-narrative": "environmental_narrative",
    "story-teller": "story_teller",
    "body-broker-integration": "body_broker_integration",
}


# Who calls whom over the mesh (deps.channel(<target>)), read from servicers/ and checked against
# them by tests/security/test_catalogue_tables.py. Every target calls auth: its host fetches
# auth's public keys and revocations to verify tokens locally (servicers.auth.LocalVerifier) and
# asks auth for its own service token. Router and orchestration forward to whatever target their configuration names
# (router: any but itself, whose own service it refuses as a route; orchestration: any), so they
# get what their code can reach. NATS permissions are derived from this (mesh.security).
_ANY_TARGET = tuple(CATALOGUE)
CALLS: dict[str, tuple[str, ...]] = {
    "ai-integration": ("auth",),
    "model-management": ("auth",),
    "ai-router": ("model-management", "ai-integration", "auth"),
    "state-manager": ("auth",),
    "quest-system": ("world-state", "npc-behavior", "story-teller", "payment", "auth"),
    "npc-behavior": ("auth",),
    "world-state": ("auth",),
    "orchestration": _ANY_TARGET,
    "router": tuple(t for t in CATALOGUE if t != "router"),
    "event-bus": ("auth",),
    "time-manager": ("auth",),
    "weather-manager": ("time-manager", "auth"),
    "auth": ("auth",),
    "settings": ("auth",),
    "payment": ("auth",),
    "performance-mode": ("auth",),
    "capability-registry": ("auth",),
    "knowledge-base": ("auth",),
    "language-system": ("auth",),
    "environmental-narrative": ("world-state", "weather-manager", "time-manager", "auth"),
    "story-teller": ("ai-integration", "auth"),
    "body-broker-integration": ("world-state", "event-bus", "state-manager", "quest-system", "payment", "auth"),
}

# The JetStream KV buckets (Storage.key_value names, before any JetStreamStorage prefix) and
# streams each target opens; a name in STREAM_SUBJECTS is a stream, any other a KV bucket
# (stream KV_<name>). Only auth holds the auth_* buckets: auth_keys holds the signing key.
STORAGE: dict[str, tuple[str, ...]] = {
    "ai-integration": (),
    "model-management": ("model_management_models",),
    "ai-router": (),
    "state-manager": ("state_manager",),
    "quest-system": ("quest_system", "quest_system_keys"),
    "npc-behavior": (),
    "world-state": ("world_state_regions",),
    "orchestration": ("orchestration_workflows", "orchestration_idempotency"),
    "router": (),
    "event-bus": ("EVENTS",),
    "time-manager": ("time_manager_clocks",),
    "weather-manager": (),
    "auth": ("auth_accounts", "auth_sessions", "auth_login_failures", "auth_keys", "auth_revocations"),
    "settings": ("settings",),
    "payment": ("payment_accounts", "payment_ledger"),
    "performance-mode": ("performance_mode_profiles",),
    "capability-registry": ("capability_registry_features",),
    "knowledge-base": ("knowledge_base_documents",),
    "language-system": ("language_overlay",),
    "environmental-narrative": (),
    "story-teller": ("story_teller_stories",),
    "body-broker-integration": ("body_broker_presence", "body_broker_events"),
}

# Streams (not KV buckets) -> the subjects their users publish to besides the JetStream API: the
# event log (mesh.jetstream_event_log with the host's defaults) stores topic t on events.t, and
# its readers answer settle requests on _EVLOG.EVENTS.<consumer>.
STREAM_SUBJECTS: dict[str, tuple[str, ...]] = {
    "EVENTS": ("events.>", "_EVLOG.EVENTS.>"),
}


CONTRACT = ("TARGET", "SERVICE_NAMES", "create", "add_to_server")


class UnknownTarget(ValueError):
    """A target that is not in the catalogue."""


def load(target: str) -> ModuleType | None:
    """The servicer module of ``target``, or None if it is not built yet.

    Raises:
        UnknownTarget: ``target`` is not a catalogue name.
    """
    if target not in CATALOGUE:
        raise UnknownTarget(f"unknown target {target!r}; known: {', '.join(sorted(CATALOGUE))}")
    name = f"servicers.{CATALOGUE[target]}"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            return None
        raise
    # A package still being written may exist without the servicer contract yet.
    return module if all(hasattr(module, attr) for attr in CONTRACT) else None


def built_targets() -> list[str]:
    """Catalogue targets whose servicer exists, in catalogue order."""
    return [t for t in CATALOGUE if load(t) is not None]
