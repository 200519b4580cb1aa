"""The service catalogue: every target of DESIGN.md and the servicer module that implements it."""

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
