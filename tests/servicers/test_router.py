"""router over NATS: intents dispatched to the real settings, state-manager and language-system
servicers through their generated message classes, the route table and its settings, and the
errors for unknown, disabled, unreachable and slow targets.

The targets run on the same nats-server under per-test names (a channel factory maps "settings"
to "settings-<test id>"). Each sits behind a thin proxy that records the time_remaining() and the
metadata of every call and can hold calls, so a test sees what reached the target and can make
it slow.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from gaming.common.v1 import common_pb2
from gaming.router.v1 import router_pb2 as pb
from gaming.router.v1 import router_pb2_grpc
from google.protobuf import duration_pb2, json_format, struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nats.aio.client import Client

import nats_transport
from nats_transport._status import NO_SERVER
from servicers import language, router, settings, state_manager
from servicers.dependencies import Dependencies
from servicers.error_boundary import ErrorBoundary
from servicers.router import _table

BUCKETS = {"bucket_max_bytes": str(8 << 20)}
SLOW = {
    "target_service": "settings", "method": "gaming.settings.v1.SettingsService/Get", "timeout": "0.2s",
    "player_field": "scope.id", "defaults": {"scope": {"kind": "SCOPE_KIND_PLAYER"}},
    "description": "settings with a short deadline",
}
ROUTES = {
    "kb.search": {"enabled": False},
    "ai.route": None,
    "settings.slow": SLOW,
    "language.translate": {"timeout": "1.5s"},
}
SETTINGS_GET = "gaming.settings.v1.SettingsService/Get"


@dataclass
class Observed:
    """A real servicer behind a proxy that records each call's time_remaining() and metadata and
    waits while ``held``; everything else passes straight through."""

    real: Any
    calls: list[tuple[str, float | None, dict[str, Any]]] = field(default_factory=list)
    held: bool = False
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.real, name)
        if not name[:1].isupper():
            return attribute

        async def observed(request: Any, context: Any) -> Any:
            self.calls.append((name, context.time_remaining(), dict(context.invocation_metadata() or ())))
            if self.held:
                await self.release.wait()
            return await attribute(request, context)

        return observed


class Mesh:
    """The targets of one test: logical names mapped to unique ones on the shared nats-server."""

    def __init__(self, nc: Client, stack: contextlib.AsyncExitStack) -> None:
        self.nc = nc
        self.suffix = uuid.uuid4().hex[:8]
        self._stack = stack

    def name(self, target: str) -> str:
        return f"{target}-{self.suffix}"

    def channel(self, target: str) -> Any:
        return nats_transport.aio.channel(self.nc, self.name(target))

    async def host(self, target: str, add: Callable[[Any, Any], None], servicer: Any) -> Any:
        server = nats_transport.aio.server(self.nc, self.name(target), interceptors=[ErrorBoundary()])
        add(servicer, server)
        await server.start()
        self._stack.push_async_callback(server.stop, 0)
        return server


@dataclass
class Routed:
    """One test's router and the observed targets behind it."""

    stub: Any
    settings: Observed
    state: Observed
    language: Observed
    mesh: Mesh


@contextlib.asynccontextmanager
async def routed(nc: Client, storage: Any, routes: dict[str, Any] | None = None) -> AsyncIterator[Routed]:
    async with contextlib.AsyncExitStack() as stack:
        mesh = Mesh(nc, stack)

        def deps(**more: str) -> Dependencies:
            return Dependencies(storage=storage, channel=mesh.channel, settings={**BUCKETS, **more})

        targets = {
            settings: Observed(await settings.create(deps())),
            state_manager: Observed(await state_manager.create(deps())),
            language: Observed(await language.create(deps(max_bytes=str(8 << 20)))),
        }
        for module, observed in targets.items():
            await mesh.host(module.TARGET, module.add_to_server, observed)
        servicer = await router.create(deps(routes=json.dumps(ROUTES if routes is None else routes)))
        await mesh.host(router.TARGET, router.add_to_server, servicer)
        running = Routed(
            stub=router_pb2_grpc.RouterServiceStub(mesh.channel(router.TARGET)),
            settings=targets[settings], state=targets[state_manager], language=targets[language], mesh=mesh,
        )
        try:
            yield running
        finally:
            for observed in targets.values():
                observed.release.set()


@pytest.fixture
async def mesh(nc: Client, storage: Any) -> AsyncIterator[Routed]:
    async with routed(nc, storage) as running:
        yield running


def payload(value: dict[str, Any] | None = None) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(value or {})
    return struct


def dispatch(intent: str, player_id: str = "p-1", body: dict[str, Any] | None = None,
             locale: str = "") -> pb.DispatchRequest:
    return pb.DispatchRequest(intent=intent, player_id=player_id, payload=payload(body),
                              locale=common_pb2.LocaleTag(tag=locale))


def as_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(struct)


async def failure(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def info(err: grpc.aio.AioRpcError) -> tuple[str, str]:
    """The BadRequest field or the ErrorInfo reason of a rich error."""
    status = rpc_status.from_call(err)
    assert status is not None
    bad, reason = error_details_pb2.BadRequest(), error_details_pb2.ErrorInfo()
    if status.details[0].Unpack(bad):
        return "field", bad.field_violations[0].field
    assert status.details[0].Unpack(reason)
    return "reason", reason.reason


# -- ListRoutes -----------------------------------------------------------------------------------


async def test_list_routes_returns_the_built_in_table_with_the_settings_applied_sorted_by_intent(
    mesh: Routed,
) -> None:
    routes = (await mesh.stub.ListRoutes(pb.ListRoutesRequest(), timeout=5)).routes
    intents = [route.intent for route in routes]
    assert intents == sorted(intents)
    expected = (set(_table.BUILT_IN) - {"ai.route"}) | {"settings.slow"}
    assert set(intents) == expected
    by_intent = {route.intent: route for route in routes}
    assert by_intent["quest.generate"] == pb.Route(
        intent="quest.generate", target_service="quest-system", method="gaming.quest.v1.QuestService/GenerateQuest",
        timeout=duration_pb2.Duration(seconds=10), enabled=True,
        description="Generate a quest for the player in a region.",
    )
    assert not by_intent["kb.search"].enabled
    assert by_intent["language.translate"].timeout == duration_pb2.Duration(seconds=1, nanos=500_000_000)
    assert by_intent["settings.slow"].description == "settings with a short deadline"


async def test_list_routes_filters_by_target_service(mesh: Routed) -> None:
    settings_routes = await mesh.stub.ListRoutes(pb.ListRoutesRequest(target_service="settings"), timeout=5)
    assert [r.intent for r in settings_routes.routes] == ["settings.get", "settings.slow", "settings.update"]
    nothing = await mesh.stub.ListRoutes(pb.ListRoutesRequest(target_service="no-such-target"), timeout=5)
    assert list(nothing.routes) == []


# -- Dispatch to real targets ---------------------------------------------------------------------


async def test_state_intents_reach_the_state_manager_and_its_errors_come_back_as_status(mesh: Routed) -> None:
    missing = await mesh.stub.Dispatch(dispatch("state.get"), timeout=5)
    assert missing.target_service == "state-manager"
    assert missing.method == "gaming.state_manager.v1.StateManagerService/Get"
    assert missing.status_code == grpc.StatusCode.NOT_FOUND.value[0]
    assert missing.status_message
    assert not missing.HasField("response")

    written = await mesh.stub.Dispatch(
        dispatch("state.update", body={"document": {"gold": 12, "name": "Ada"}, "expectedRevision": {"value": "0"}}),
        timeout=5,
    )
    assert written.status_code == 0
    assert written.status_message == ""
    revision = as_dict(written.response)["state"]["revision"]["value"]

    read = await mesh.stub.Dispatch(dispatch("state.get"), timeout=5)
    state = as_dict(read.response)["state"]
    assert state["playerId"] == "p-1"  # copied from DispatchRequest.player_id
    assert state["document"] == {"gold": 12, "name": "Ada"}
    assert state["revision"]["value"] == revision
    assert read.latency.ToNanoseconds() > 0

    conflict = await mesh.stub.Dispatch(
        dispatch("state.update", body={"document": {"gold": 1}, "expectedRevision": {"value": "0"}}), timeout=5
    )
    assert conflict.status_code == grpc.StatusCode.ABORTED.value[0]


async def test_settings_intents_put_the_player_into_the_scope_the_route_names(mesh: Routed) -> None:
    updated = await mesh.stub.Dispatch(
        dispatch("settings.update", "p-7", {"set": {"volume": {"intValue": "7"}}, "expectedRevision": {"value": 0}}),
        timeout=5,
    )
    assert updated.status_code == 0, updated.status_message
    read = await mesh.stub.Dispatch(dispatch("settings.get", "p-7"), timeout=5)
    found = as_dict(read.response)["settings"]
    assert found["scope"] == {"kind": "SCOPE_KIND_PLAYER", "id": "p-7"}
    assert found["values"] == {"volume": {"intValue": "7"}}
    name, _, _ = mesh.settings.calls[-1]
    assert name == "Get"


async def test_a_payload_that_sets_the_player_field_itself_wins(mesh: Routed) -> None:
    read = await mesh.stub.Dispatch(
        dispatch("settings.get", "p-7", {"scope": {"kind": "SCOPE_KIND_SERVICE", "id": "router"}}), timeout=5
    )
    assert as_dict(read.response)["settings"]["scope"] == {"kind": "SCOPE_KIND_SERVICE", "id": "router"}


async def test_the_players_locale_goes_to_the_field_the_route_names(mesh: Routed) -> None:
    french = await mesh.stub.Dispatch(dispatch("language.translate", body={"text": "thank you"}, locale="fr"),
                                      timeout=5)
    assert french.status_code == 0, french.status_message
    assert as_dict(french.response)["translatedText"] == "merci"
    english = await mesh.stub.Dispatch(
        dispatch("language.translate", body={"text": "merci", "sourceLocale": {"tag": "fr"}}), timeout=5
    )
    assert as_dict(english.response)["targetLocaleUsed"]["tag"].startswith("en")  # empty locale means en-US
    assert as_dict(english.response)["translatedText"] == "thank you"


async def test_the_callers_authorization_is_passed_on_and_nothing_else(mesh: Routed) -> None:
    await mesh.stub.Dispatch(dispatch("state.get"), timeout=5,
                             metadata=(("authorization", "Bearer t0ken"), ("x-private", "keep-me")))
    _, _, metadata = mesh.state.calls[-1]
    assert metadata.get("authorization") == "Bearer t0ken"
    assert "x-private" not in metadata


# -- deadlines and unreachable targets ------------------------------------------------------------


async def test_a_short_caller_deadline_reaches_the_target(mesh: Routed) -> None:
    await mesh.stub.Dispatch(dispatch("state.get"), timeout=0.5)
    _, remaining, _ = mesh.state.calls[-1]
    assert remaining is not None
    assert remaining <= 0.5


async def test_the_routes_timeout_bounds_the_target_call(mesh: Routed) -> None:
    mesh.settings.held = True
    err = await failure(mesh.stub.Dispatch(dispatch("settings.slow"), timeout=5))
    # The route's 0.2 s ended it (the router's own status, with its reason), not the caller's 5 s.
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "settings" in (err.details() or "")
    assert info(err) == ("reason", "TARGET_DEADLINE_EXCEEDED")
    _, remaining, _ = mesh.settings.calls[-1]
    assert remaining is not None
    assert remaining <= 0.2


async def test_a_target_that_is_not_running_is_unavailable_naming_it(mesh: Routed) -> None:
    err = await failure(mesh.stub.Dispatch(dispatch("quest.generate", body={"regionId": "harbor"}), timeout=5))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert "quest-system" in (err.details() or "")
    assert (err.details() or "").endswith(NO_SERVER[1])  # no responders, known at once: no wait for the route's 10 s
    assert info(err) == ("reason", "TARGET_UNAVAILABLE")


# -- errors of Dispatch itself --------------------------------------------------------------------


async def test_an_unknown_intent_is_not_found(mesh: Routed) -> None:
    err = await failure(mesh.stub.Dispatch(dispatch("teleport.now"), timeout=5))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert info(err) == ("reason", "ROUTE_NOT_FOUND")
    removed = await failure(mesh.stub.Dispatch(dispatch("ai.route"), timeout=5))
    assert removed.code() == grpc.StatusCode.NOT_FOUND


async def test_a_disabled_route_fails_its_precondition(mesh: Routed) -> None:
    err = await failure(mesh.stub.Dispatch(dispatch("kb.search", body={"query": "x"}), timeout=5))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert info(err) == ("reason", "ROUTE_DISABLED")


@pytest.mark.parametrize(
    ("request_message", "field_path"),
    [
        (pb.DispatchRequest(player_id="p-1"), "intent"),
        (pb.DispatchRequest(intent="State.Get", player_id="p-1"), "intent"),
        (pb.DispatchRequest(intent="state.get"), "player_id"),
        (pb.DispatchRequest(intent="state.get", player_id="p" * 129), "player_id"),
        (dispatch("state.get", locale="english please"), "locale.tag"),
        (dispatch("state.get", body={"noSuchField": 1}), "payload"),
        (dispatch("state.get", body={"playerId": {"nested": True}}), "payload"),
        (dispatch("settings.get", body={"scope": {"kind": "SCOPE_KIND_MARTIAN"}}), "payload"),
    ],
)
async def test_bad_requests_are_invalid_naming_the_field(
    mesh: Routed, request_message: pb.DispatchRequest, field_path: str
) -> None:
    err = await failure(mesh.stub.Dispatch(request_message, timeout=5))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info(err) == ("field", field_path)


async def test_a_route_added_by_settings_dispatches_like_a_built_in_one(nc: Client, storage: Any) -> None:
    routes = {"lang.detect": {"target_service": "language-system",
                              "method": "gaming.language.v1.LanguageService/Detect",
                              "defaults": {"maxCandidates": 2}}}
    async with routed(nc, storage, routes) as running:
        reply = await running.stub.Dispatch(dispatch("lang.detect", body={"text": "merci beaucoup mon ami"}),
                                             timeout=5)
    assert reply.status_code == 0, reply.status_message
    candidates = as_dict(reply.response)["candidates"]
    assert 1 <= len(candidates) <= 2


# -- the route table, as data ---------------------------------------------------------------------


def test_every_built_in_route_resolves_to_a_unary_method_of_its_package() -> None:
    routes = _table.table(None)
    assert set(routes) == set(_table.BUILT_IN)
    for route in routes.values():
        assert route.request_class.DESCRIPTOR.full_name.startswith(route.method.split(".")[0] + ".")
        assert route.path.startswith("/gaming.")


def test_player_and_locale_fields_default_to_the_fields_of_those_names() -> None:
    routes = _table.table(None)
    assert (routes["quest.generate"].player_field, routes["quest.generate"].locale_field) == ("player_id", "locale")
    assert (routes["weather.get"].player_field, routes["weather.get"].locale_field) == (None, None)
    assert routes["settings.get"].player_field == "scope.id"
    assert routes["language.translate"].locale_field == "target_locale"
    no_player = _table.table(json.dumps({"state.get": {"player_field": ""}}))
    assert no_player["state.get"].player_field is None


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ("not json", "not JSON"),
        ("[]", "JSON object"),
        ('{"x.y": 3}', "JSON object or null"),
        ('{"x.y": {"method": "gaming.settings.v1.SettingsService/Get"}}', "target_service"),
        ('{"x.y": {"target_service": "settings"}}', "method is required"),
        ('{"x.y": {"target_service": "settings", "method": "os.system/Run"}}', "is not gaming"),
        ('{"x.y": {"target_service": "settings", "method": "gaming.nothing.v1.NoService/Get"}}', "no generated"),
        ('{"x.y": {"target_service": "settings", "method": "gaming.settings.v1.NoService/Get"}}', "no service"),
        ('{"x.y": {"target_service": "settings", "method": "gaming.settings.v1.SettingsService/Nope"}}', "no method"),
        ('{"x.y": {"target_service": "settings", "method": "gaming.settings.v1.SettingsService/Watch"}}', "streams"),
        ('{"x.y": {"target_service": "router", "method": "gaming.router.v1.RouterService/Dispatch"}}', "itself"),
        ('{"X-Y": {"target_service": "settings", "method": "gaming.settings.v1.SettingsService/Get"}}', "intent"),
        ('{"state.get": {"timeout": 2}}', "JSON Duration"),
        ('{"state.get": {"timeout": "-1s"}}', "positive"),
        ('{"state.get": {"enabled": "yes"}}', "true or false"),
        ('{"state.update": {"player_field": "document"}}', "not a string"),
        ('{"state.get": {"player_field": "nope"}}', "no field"),
        ('{"settings.get": {"player_field": "scope.kind"}}', "not a string"),
        ('{"state.get": {"defaults": {"unknown": 1}}}', "defaults do not fit"),
        ('{"state.get": {"colour": "blue"}}', "unknown keys"),
    ],
)
def test_bad_route_settings_fail_at_start_up(setting: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        _table.table(setting)


async def test_create_fails_on_a_bad_routes_setting() -> None:
    def no_channel(target: str) -> Any:
        raise AssertionError(target)

    with pytest.raises(ValueError, match=r"route 'x\.y'"):
        await router.create(Dependencies(storage=None, channel=no_channel,  # type: ignore[arg-type]
                                         settings={"routes": '{"x.y": {"target_service": "settings"}}'}))
