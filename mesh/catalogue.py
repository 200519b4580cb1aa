"""The service catalogue: every target of the mesh and the servicer module that implements it.

Target names are declared in the protos, not here: every service carries
``option (gaming.common.v1.target) = "<target>";``, read below from the generated descriptors,
so the mesh and clients in other languages, which read the same option, cannot disagree.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from gaming.common.v1 import common_pb2
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import ServiceDescriptor

# proto service -> module under servicers/ (each exposes TARGET, SERVICE_NAMES, create,
# add_to_server), in catalogue order; the target that serves each is its .proto's option.
MODULES: dict[str, str] = {
    "gaming.ai_integration.v1.AiIntegrationService": "ai_integration",
    "gaming.model_management.v1.ModelManagementService": "model_management",
    "gaming.ai_router.v1.AiRouterService": "ai_router",
    "gaming.state_manager.v1.StateManagerService": "state_manager",
    "gaming.quest.v1.QuestService": "quest",
    "gaming.npc_behavior.v1.NpcBehaviorService": "npc_behavior",
    "gaming.world_state.v1.WorldStateService": "world_state",
    "gaming.orchestration.v1.OrchestrationService": "orchestration",
    "gaming.router.v1.RouterService": "router",
    "gaming.event_bus.v1.EventBusService": "event_bus",
    "gaming.time_manager.v1.TimeManagerService": "time_manager",
    "gaming.weather.v1.WeatherService": "weather",
    "gaming.auth.v1.AuthService": "auth",
    "gaming.settings.v1.SettingsService": "settings",
    "gaming.payment.v1.PaymentService": "payment",
    "gaming.performance_mode.v1.PerformanceModeService": "performance_mode",
    "gaming.capability_registry.v1.CapabilityRegistryService": "capability_registry",
    "gaming.knowledge_base.v1.KnowledgeBaseService": "knowledge_base",
    "gaming.language.v1.LanguageService": "language",
    "gaming.environmental_narrative.v1.EnvironmentalNarrativeService": "environmental_narrative",
    "gaming.story_teller.v1.StoryTellerService": "story_teller",
    "gaming.body_broker_integration.v1.BodyBrokerIntegrationService": "body_broker_integration",
}


class MissingTarget(LookupError):
    """A service whose .proto declares no ``option (gaming.common.v1.target)``."""


def service_target(service: ServiceDescriptor) -> str:
    """The ``(gaming.common.v1.target)`` option of ``service``.

    Raises:
        MissingTarget: its .proto declares none.
    """
    options = service.GetOptions()
    if not options.HasExtension(common_pb2.target):
        raise MissingTarget(f"{service.full_name} declares no option (gaming.common.v1.target) in its .proto")
    return options.Extensions[common_pb2.target]


def proto_target(service: str) -> str:
    """The target that serves ``service`` (``gaming.weather.v1.WeatherService``), as its .proto
    declares it.

    The service's generated module is imported first, so its descriptor is in the default pool:
    by the layout of every service (docs/architecture.md, held by buf lint and
    tests/test_catalogue_protos.py), ``gaming.<name>.v1.<Service>`` is defined in
    ``gaming/<name>/v1/<name>.proto``, generated as ``gaming.<name>.v1.<name>_pb2``.

    Raises:
        ModuleNotFoundError: ``service``'s package has no generated module.
        KeyError: the generated module defines no such service.
        MissingTarget: its .proto declares no target.
    """
    package = service.rpartition(".")[0]
    importlib.import_module(f"{package}.{package.split('.')[1]}_pb2")
    return service_target(descriptor_pool.Default().FindServiceByName(service))


def _catalogue() -> dict[str, str]:
    table: dict[str, str] = {}
    for service, module in MODULES.items():
        target = proto_target(service)
        if target in table:
            # Two services would share one queue group and one NATS identity.
            raise ValueError(f"target {target!r} is declared by two services, one of them {service}")
        table[target] = module
    return table


# target -> module under servicers/, in MODULES order.
CATALOGUE: dict[str, str] = _catalogue()


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
