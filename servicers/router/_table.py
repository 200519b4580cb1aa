"""The route table: built-in routes, the ``routes`` setting that extends them, and each route's
target method resolved to the generated message classes of its ``gaming.*`` package.

A route is written as a JSON object (the built-ins below use the same shape as the setting):

    target_service  the owning target, e.g. "quest-system"; required for a new intent.
    method          "gaming.<pkg>.v<N>.<Service>/<Method>", a unary method; required for a new intent.
    timeout         the deadline given to the target call, as a proto3 JSON Duration ("2.5s");
                    default "5s". The caller's own deadline still applies when it is shorter.
    enabled         false switches the route off (Dispatch: FAILED_PRECONDITION); default true.
    description     for operators.
    player_field    dot path of the request field DispatchRequest.player_id is copied into when
                    the payload leaves it empty (a string field); "" for none. Default
                    "player_id" when the request has that field, else none.
    locale_field    dot path of the field the player's locale goes to (a LocaleTag or a string),
                    when the payload leaves it unset; "" for none. Default "locale" when the
                    request has such a field, else none.
    defaults        a JSON object (proto3 JSON of the request) the payload is merged over:
                    fields the payload sets win; repeated and map fields are replaced whole.

Methods are resolved when the table is built, so a typo fails at start-up, not at the first
call. Only ``gaming.*`` packages are imported (configuration never names an arbitrary module),
and the router's own service cannot be a target (a route to it would loop).
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from gaming.router.v1 import router_pb2
from google.protobuf import descriptor, descriptor_pool, duration_pb2, json_format, message, message_factory

DEFAULT_TIMEOUT = "5s"
INTENT = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*")
METHOD = re.compile(r"(gaming\.[a-z][a-z0-9_]*\.v[0-9]+)\.([A-Z][A-Za-z0-9]*)/([A-Z][A-Za-z0-9]*)")
TARGET = re.compile(r"[a-z0-9][a-z0-9-]*")
LOCALE_TAG = "gaming.common.v1.LocaleTag"
_OWN_PACKAGE = "gaming.router.v1"
_KEYS = frozenset({"target_service", "method", "timeout", "enabled", "description", "player_field",
                   "locale_field", "defaults"})


def _route(target: str, method: str, timeout: str, description: str, **extra: Any) -> dict[str, Any]:
    return {"target_service": target, "method": method, "timeout": timeout, "description": description, **extra}


_PLAYER_SCOPE = {"player_field": "scope.id", "defaults": {"scope": {"kind": "SCOPE_KIND_PLAYER"}}}

# The built-in table: one or more intents per catalogue service, read-mostly game requests.
# Money-moving and operator calls (Charge, Refund, SetScale, ApplyEvent...) are left out on
# purpose: a deployment that wants them routed adds them through the ``routes`` setting.
BUILT_IN: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    "quest.generate": _route("quest-system", "gaming.quest.v1.QuestService/GenerateQuest", "10s",
                             "Generate a quest for the player in a region."),
    "quest.get": _route("quest-system", "gaming.quest.v1.QuestService/GetQuest", "2s", "Read one quest."),
    "quest.accept": _route("quest-system", "gaming.quest.v1.QuestService/Accept", "2s", "Accept an offered quest."),
    "quest.progress": _route("quest-system", "gaming.quest.v1.QuestService/UpdateProgress", "2s",
                             "Advance an objective of a quest."),
    "quest.list": _route("quest-system", "gaming.quest.v1.QuestService/List", "2s", "List the player's quests."),
    "state.get": _route("state-manager", "gaming.state_manager.v1.StateManagerService/Get", "2s",
                        "Read the player's state document."),
    "state.update": _route("state-manager", "gaming.state_manager.v1.StateManagerService/Update", "2s",
                           "Write the player's state document (compare-and-set)."),
    "settings.get": _route("settings", "gaming.settings.v1.SettingsService/Get", "2s",
                           "Read the player's settings.", **_PLAYER_SCOPE),
    "settings.update": _route("settings", "gaming.settings.v1.SettingsService/Update", "2s",
                              "Change the player's settings (compare-and-set).", **_PLAYER_SCOPE),
    "payment.balance": _route("payment", "gaming.payment.v1.PaymentService/Balance", "2s",
                              "Read the balance of the player's account.", player_field="account_id"),
    "payment.transactions": _route("payment", "gaming.payment.v1.PaymentService/ListTransactions", "2s",
                                   "List the transactions of the player's account.", player_field="account_id"),
    "language.translate": _route("language-system", "gaming.language.v1.LanguageService/Translate", "2s",
                                 "Translate a text into the player's language.", locale_field="target_locale"),
    "language.detect": _route("language-system", "gaming.language.v1.LanguageService/Detect", "2s",
                              "Detect the language of a text."),
    "language.localize": _route("language-system", "gaming.language.v1.LanguageService/Localize", "2s",
                                "Render a message key in the player's language."),
    "kb.search": _route("knowledge-base", "gaming.knowledge_base.v1.KnowledgeBaseService/Search", "3s",
                        "Search the knowledge base."),
    "weather.get": _route("weather-manager", "gaming.weather.v1.WeatherService/GetWeather", "2s",
                          "Current weather of a region."),
    "weather.forecast": _route("weather-manager", "gaming.weather.v1.WeatherService/Forecast", "2s",
                               "Weather forecast of a region."),
    "time.get": _route("time-manager", "gaming.time_manager.v1.TimeManagerService/GetTime", "2s",
                       "The game clock of a world."),
    "world.get_region": _route("world-state", "gaming.world_state.v1.WorldStateService/GetRegion", "2s",
                               "A region's metadata."),
    "world.list_entities": _route("world-state", "gaming.world_state.v1.WorldStateService/ListEntities", "2s",
                                  "One page of a region's entities."),
    "narrative.describe": _route(
        "environmental-narrative", "gaming.environmental_narrative.v1.EnvironmentalNarrativeService/Describe", "3s",
        "Describe a region as it is now."),
    "story.continue": _route("story-teller", "gaming.story_teller.v1.StoryTellerService/Continue", "15s",
                             "Continue a story with the player's choice."),
    "story.get": _route("story-teller", "gaming.story_teller.v1.StoryTellerService/GetStory", "2s", "Read a story."),
    "npc.decide": _route("npc-behavior", "gaming.npc_behavior.v1.NpcBehaviorService/Decide", "1s",
                         "Decide an NPC's next action."),
    "feature.is_enabled": _route("capability-registry",
                                 "gaming.capability_registry.v1.CapabilityRegistryService/IsEnabled", "1s",
                                 "Whether a feature is on for the player.", player_field="subject_id"),
    "ai.route": _route("ai-router", "gaming.ai_router.v1.AiRouterService/Route", "30s",
                       "Run an AI request on a suitable model."),
})


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """One resolved route."""

    intent: str
    target_service: str
    method: str
    timeout: duration_pb2.Duration
    enabled: bool
    description: str
    player_field: str | None
    locale_field: str | None
    defaults: Mapping[str, Any]
    request_class: type[message.Message]
    response_class: type[message.Message]

    @property
    def path(self) -> str:
        """The gRPC method path, as stubs call it: ``/package.Service/Method``."""
        return f"/{self.method}"

    @property
    def timeout_seconds(self) -> float:
        """The route's deadline in seconds."""
        return self.timeout.ToNanoseconds() / 1e9

    def message(self) -> router_pb2.Route:
        """The route as ListRoutes reports it."""
        return router_pb2.Route(
            intent=self.intent, target_service=self.target_service, method=self.method, timeout=self.timeout,
            enabled=self.enabled, description=self.description,
        )


def _method(name: str) -> descriptor.MethodDescriptor:
    found = METHOD.fullmatch(name)
    if found is None:
        raise ValueError(f"method {name!r} is not gaming.<pkg>.v<N>.<Service>/<Method>")
    package, service, method = found.groups()
    if package == _OWN_PACKAGE:
        raise ValueError(f"method {name!r}: the router cannot route to itself")
    try:
        module = importlib.import_module(package)
    except ModuleNotFoundError:
        raise ValueError(f"method {name!r}: no generated package {package}") from None
    # Importing the package's _pb2 modules registers their services in the default pool.
    for info in pkgutil.iter_modules(module.__path__):
        if info.name.endswith("_pb2"):
            importlib.import_module(f"{package}.{info.name}")
    try:
        found_service = descriptor_pool.Default().FindServiceByName(f"{package}.{service}")
    except KeyError:
        raise ValueError(f"method {name!r}: no service {package}.{service}") from None
    resolved = found_service.methods_by_name.get(method)
    if resolved is None:
        raise ValueError(f"method {name!r}: {package}.{service} has no method {method}")
    if resolved.client_streaming or resolved.server_streaming:
        raise ValueError(f"method {name!r} streams; only unary methods can be routed")
    return resolved


def _field_path(request: descriptor.Descriptor, path: str, *, locale: bool) -> None:
    """Check that ``path`` leads through singular messages to a string (or, for a locale, a LocaleTag)."""
    names = path.split(".")
    current = request
    for index, name in enumerate(names):
        field = current.fields_by_name.get(name)
        if field is None:
            raise ValueError(f"{request.full_name} has no field {'.'.join(names[: index + 1])}")
        if field.is_repeated:
            raise ValueError(f"{request.full_name}.{path}: {name} is repeated")
        last = index == len(names) - 1
        if last:
            is_string = field.type == descriptor.FieldDescriptor.TYPE_STRING
            is_locale = locale and field.message_type is not None and field.message_type.full_name == LOCALE_TAG
            if not (is_string or is_locale):
                wanted = "a string or a LocaleTag" if locale else "a string"
                raise ValueError(f"{request.full_name}.{path} is not {wanted}")
        elif field.message_type is None:
            raise ValueError(f"{request.full_name}.{path}: {name} is not a message")
        else:
            current = field.message_type


def _optional_field(spec: Mapping[str, Any], key: str, request: descriptor.Descriptor, default: str, *,
                    locale: bool) -> str | None:
    path = spec.get(key)
    if path is None:
        return default if default in request.fields_by_name and _fits(request, default, locale=locale) else None
    if not isinstance(path, str):
        raise ValueError(f"{key} must be a string")
    if not path:
        return None
    _field_path(request, path, locale=locale)
    return path


def _fits(request: descriptor.Descriptor, path: str, *, locale: bool) -> bool:
    try:
        _field_path(request, path, locale=locale)
    except ValueError:
        return False
    return True


def resolve(intent: str, spec: Mapping[str, Any]) -> Route:
    """The route an intent's JSON object describes.

    Raises:
        ValueError: the object is not a valid route (the message says what is wrong).
    """
    try:
        return _resolve(intent, spec)
    except ValueError as err:
        raise ValueError(f"route {intent!r}: {err}") from None


def _resolve(intent: str, spec: Mapping[str, Any]) -> Route:
    if not INTENT.fullmatch(intent):
        raise ValueError("an intent is dot-separated lower_snake_case words")
    unknown = set(spec) - _KEYS
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)} (known: {sorted(_KEYS)})")
    target, method = spec.get("target_service"), spec.get("method")
    if not isinstance(target, str) or not TARGET.fullmatch(target):
        raise ValueError("target_service must be a target name such as quest-system")
    if not isinstance(method, str):
        raise ValueError("method is required")
    resolved = _method(method)
    timeout = duration_pb2.Duration()
    text = spec.get("timeout", DEFAULT_TIMEOUT)
    try:
        timeout.FromJsonString(text)
    except (ValueError, TypeError, AttributeError):
        raise ValueError(f"timeout {text!r} is not a JSON Duration such as \"2.5s\"") from None
    if timeout.ToNanoseconds() <= 0:
        raise ValueError("timeout must be positive")
    enabled, description = spec.get("enabled", True), spec.get("description", "")
    if not isinstance(enabled, bool):
        raise ValueError("enabled must be true or false")
    if not isinstance(description, str):
        raise ValueError("description must be a string")
    defaults = spec.get("defaults", {})
    if not isinstance(defaults, dict):
        raise ValueError("defaults must be a JSON object")
    request_class = message_factory.GetMessageClass(resolved.input_type)
    try:
        json_format.ParseDict(defaults, request_class())
    except json_format.ParseError as err:
        raise ValueError(f"defaults do not fit {resolved.input_type.full_name}: {err}") from None
    return Route(
        intent=intent,
        target_service=target,
        method=method,
        timeout=timeout,
        enabled=enabled,
        description=description,
        player_field=_optional_field(spec, "player_field", resolved.input_type, "player_id", locale=False),
        locale_field=_optional_field(spec, "locale_field", resolved.input_type, "locale", locale=True),
        defaults=MappingProxyType(dict(defaults)),
        request_class=request_class,
        response_class=message_factory.GetMessageClass(resolved.output_type),
    )


def table(setting: str | None) -> dict[str, Route]:
    """The built-in routes with the ``routes`` setting applied, resolved.

    The setting is a JSON object of intent -> route object or null. For an intent of the
    built-in table, the keys given replace the built-in's (``{"kb.search": {"enabled": false}}``
    switches one off); null removes the intent; a new intent needs at least ``target_service``
    and ``method``.

    Raises:
        ValueError: the setting is not such an object, or a route in it is invalid.
    """
    specs: dict[str, Mapping[str, Any]] = dict(BUILT_IN)
    if setting:
        try:
            changes = json.loads(setting)
        except ValueError as err:
            raise ValueError(f"router routes setting is not JSON: {err}") from None
        if not isinstance(changes, dict):
            raise ValueError("router routes setting must be a JSON object of intent -> route or null")
        for intent, change in changes.items():
            if change is None:
                specs.pop(intent, None)
            elif isinstance(change, dict):
                specs[intent] = {**specs.get(intent, {}), **change}
            else:
                raise ValueError(f"route {intent!r}: must be a JSON object or null")
    return {intent: resolve(intent, spec) for intent, spec in specs.items()}
