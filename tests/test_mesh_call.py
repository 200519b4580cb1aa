"""``mesh call`` against real targets: streams printed as they arrive (stdin read as it comes),
rich error details, metadata, and errors that say what exists when a name is wrong."""

from __future__ import annotations

import asyncio
import datetime
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator

import grpc
import nats
import pytest
from gaming.auth.v1 import auth_pb2, auth_pb2_grpc
from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory
from google.rpc import code_pb2, status_pb2
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status
from nats.aio.client import Client

import nats_transport.aio
from tests._waiting import wait_for
from tests.test_host import REPO, Serve

pytestmark = pytest.mark.timeout(90)

DECISIONS = "gaming.npc_behavior.v1.NpcBehaviorService/DecisionStream"
# Bounds on waiting for a child's output: far above what a working mesh call takes.
ANSWER_TIMEOUT = 20.0


@pytest.fixture
async def mesh_url(private_nats_server) -> AsyncIterator[str]:
    serve = Serve(private_nats_server.url, "weather-manager", "time-manager", "auth", "performance-mode",
                  "npc-behavior", "settings", env={"MESH_AUTH_SCRYPT_LOG2_N": "10"})
    try:
        await wait_for(serve.ready, timeout=30)
        yield private_nats_server.url
    finally:
        serve.close()


@pytest.fixture
async def service_token(mesh_url) -> str:
    """An access token with scope "service" (auth here has no service keys: anyone may ask)."""
    nc = await nats.connect(mesh_url, max_reconnect_attempts=0)
    try:
        stub = auth_pb2_grpc.AuthServiceStub(nats_transport.aio.channel(nc, "auth"))
        issued = await stub.IssueServiceToken(auth_pb2.IssueServiceTokenRequest(target="mesh-call-test"), timeout=10)
    finally:
        await nc.close()
    return issued.access_token


def mesh_call(url: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mesh", "call", *args, "--nats-url", url],
                          cwd=REPO, capture_output=True, text=True, timeout=60, input=stdin)


async def start_call(url: str, *args: str) -> asyncio.subprocess.Process:
    """``mesh call`` with pipes on stdin, stdout and stderr, for a test that writes as it reads."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mesh", "call", *args, "--nats-url", url, cwd=REPO,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def finish(process: asyncio.subprocess.Process) -> tuple[bytes, bytes]:
    """The rest of the child's output once it ended (killed if it still runs); pipes closed."""
    if process.returncode is None:
        process.kill()
    return await asyncio.wait_for(process.communicate(), ANSWER_TIMEOUT)


async def send(process: asyncio.subprocess.Process, request: dict[str, object]) -> None:
    assert process.stdin is not None
    process.stdin.write(json.dumps(request).encode() + b"\n")
    await process.stdin.drain()


async def next_line(process: asyncio.subprocess.Process) -> dict[str, object]:
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), ANSWER_TIMEOUT)
    assert line, "mesh call ended without the line"
    return json.loads(line)


def decision(sequence: int) -> dict[str, object]:
    return {"client_sequence": sequence, "state": {"npc_id": "npc-1", "energy": 0.5}}


async def test_a_server_stream_prints_each_message_as_a_json_line_as_it_arrives(mesh_url):
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mesh", "call", "weather-manager", "gaming.weather.v1.WeatherService/StreamWeather",
        '{"region_ids": ["north", "south"]}', "--timeout", "30", "--nats-url", mesh_url,
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert process.stdout is not None
        first = await asyncio.wait_for(process.stdout.readline(), 20)
        second = await asyncio.wait_for(process.stdout.readline(), 20)
        assert process.returncode is None  # still streaming: the lines came before the end
        regions = {json.loads(line)["weather"]["regionId"] for line in (first, second)}
        assert regions == {"north", "south"}
    finally:
        process.kill()
        await process.wait()


async def test_an_error_prints_its_code_and_every_rich_detail(mesh_url):
    done = await asyncio.to_thread(mesh_call, mesh_url, "time-manager",
                                   "gaming.time_manager.v1.TimeManagerService/GetTime", '{"world_id": "NOT VALID"}',
                                   "-H", "x-request-id: r-1")
    assert done.returncode == 1
    first, *details = done.stderr.strip().splitlines()
    assert first.startswith("mesh call: INVALID_ARGUMENT: world_id")
    bad_request = json.loads(details[0])
    assert bad_request["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    assert bad_request["fieldViolations"][0]["field"] == "world_id"


@pytest.mark.parametrize(("target", "method", "expected"), [
    ("weather-manager", "gaming.weather.v1.WeatherService/GetWeathr",
     "has no method 'GetWeathr' (did you mean 'GetWeather'?); its methods: Forecast, GetWeather, StreamWeather"),
    ("weather-manager", "gaming.weather.v1.WetherService/GetWeather",
     "does not serve 'gaming.weather.v1.WetherService' (did you mean 'gaming.weather.v1.WeatherService'?)"),
    ("weather-manager", "GetWeather",
     "'GetWeather' is not package.Service/Method; did you mean 'gaming.weather.v1.WeatherService/GetWeather'?"),
    ("settings", "Get", "'Get' is not package.Service/Method; did you mean 'gaming.settings.v1.SettingsService/Get'?"),
    ("weather-manager", "gaming.weather.v1.WeatherService.Forecast",
     "did you mean 'gaming.weather.v1.WeatherService/Forecast'?"),
])
async def test_a_wrong_name_is_exit_2_naming_the_closest_and_what_exists(mesh_url, target, method, expected):
    done = await asyncio.to_thread(mesh_call, mesh_url, target, method, "{}")
    assert done.returncode == 2
    assert expected in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


async def test_a_target_nobody_serves_is_unavailable_with_the_running_targets(mesh_url):
    done = await asyncio.to_thread(mesh_call, mesh_url, "weather-manger", "gaming.weather.v1.WeatherService/GetWeather",
                                   "{}", "--timeout", "3")
    assert done.returncode == 1
    assert done.stderr.startswith("mesh call: UNAVAILABLE")
    assert "no replica of 'weather-manger' answers (did you mean 'weather-manager'?)" in done.stderr


async def test_a_client_stream_sends_one_request_per_json_line_of_stdin_with_a_bearer_token(mesh_url):
    account = json.dumps({"username": "streamer", "password": "correct horse battery", "display_name": "S"})
    registered = await asyncio.to_thread(mesh_call, mesh_url, "auth", "gaming.auth.v1.AuthService/Register", account)
    assert registered.returncode == 0, registered.stderr
    login = json.dumps({"username": "streamer", "password": "correct horse battery", "scopes": ["player"]})
    logged_in = await asyncio.to_thread(mesh_call, mesh_url, "auth", "gaming.auth.v1.AuthService/Login", login)
    assert logged_in.returncode == 0, logged_in.stderr
    token = json.loads(logged_in.stdout)["tokens"]["accessToken"]
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    samples = "".join(json.dumps({"client_id": "rig-1", "sample_time": now, "frame_time_ms": ms,
                                  "gpu_time_ms": ms / 2}) + "\n" for ms in (8.0, 9.0, 10.0))
    done = await asyncio.to_thread(mesh_call, mesh_url, "performance-mode",
                                   "gaming.performance_mode.v1.PerformanceModeService/ReportMetrics",
                                   "--bearer", token, stdin=samples + "\n")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["samplesCounted"] == 3, done.stdout


async def test_a_bidi_stream_prints_each_reply_while_stdin_is_still_open(mesh_url, service_token):
    process = await start_call(mesh_url, "npc-behavior", DECISIONS, "--bearer", service_token, "--timeout", "60")
    try:
        await send(process, decision(1))
        assert (await next_line(process))["clientSequence"] == "1"  # answered before stdin ends
        await send(process, decision(2))
        assert (await next_line(process))["clientSequence"] == "2"
        assert process.stdin is not None
        process.stdin.close()
        await asyncio.wait_for(process.wait(), ANSWER_TIMEOUT)
    finally:
        out, err = await finish(process)
    assert process.returncode == 0, err.decode()
    assert out == b""  # nothing more than the two replies


async def test_the_deadline_ends_a_bidi_stream_whose_stdin_stays_open(mesh_url, service_token):
    process = await start_call(mesh_url, "npc-behavior", DECISIONS, "--bearer", service_token, "--timeout", "3")
    try:
        await send(process, decision(1))
        assert (await next_line(process))["clientSequence"] == "1"
        # stdin stays open: the deadline, not the end of the input, ends the call.
        await asyncio.wait_for(process.wait(), ANSWER_TIMEOUT)
    finally:
        _, err = await finish(process)
    assert process.returncode == 1
    assert err.decode().startswith("mesh call: DEADLINE_EXCEEDED"), err.decode()


@pytest.mark.parametrize("bad", [b"{not json", b'{"no_such_field": 1}'])
async def test_a_line_of_stdin_that_is_not_json_ends_the_call_at_once_naming_the_line(mesh_url, service_token, bad):
    process = await start_call(mesh_url, "npc-behavior", DECISIONS, "--bearer", service_token, "--timeout", "60")
    try:
        await send(process, decision(1))
        assert process.stdin is not None
        process.stdin.write(bad + b"\n")
        await process.stdin.drain()
        # stdin stays open and the deadline is a minute away: the bad line alone ends the call.
        await asyncio.wait_for(process.wait(), ANSWER_TIMEOUT)
    finally:
        _, err = await finish(process)
    assert process.returncode == 2
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1, err.decode()
    assert lines[0].startswith(
        "mesh call: error: stdin line 2: not JSON for gaming.npc_behavior.v1.DecisionStreamRequest: "), lines


async def test_a_service_own_error_detail_prints_in_full(mesh_url, service_token):
    body = json.dumps({"scope": {"kind": "SCOPE_KIND_SERVICE", "id": f"s-{uuid.uuid4().hex[:8]}"},
                       "expected_revision": {"value": 0}, "set": {"audio.volume": {"int_value": 3}}})
    arguments = ("settings", "gaming.settings.v1.SettingsService/Update", body, "--bearer", service_token)
    first = await asyncio.to_thread(mesh_call, mesh_url, *arguments)
    assert first.returncode == 0, first.stderr
    stale = await asyncio.to_thread(mesh_call, mesh_url, *arguments)  # expects revision 0 again
    assert stale.returncode == 1
    first_line, *details = stale.stderr.strip().splitlines()
    assert first_line.startswith("mesh call: ABORTED"), stale.stderr
    conflict = next(json.loads(d) for d in details if "RevisionConflict" in d)
    assert conflict["@type"] == "type.googleapis.com/gaming.settings.v1.RevisionConflict"
    assert conflict["currentRevision"] == {"value": "1"}


async def test_metadata_given_with_h_reaches_the_server(mesh_url, service_token):
    body = json.dumps({"scope": {"kind": "SCOPE_KIND_SERVICE", "id": "metadata"}})
    method = "gaming.settings.v1.SettingsService/Get"
    without = await asyncio.to_thread(mesh_call, mesh_url, "settings", method, body)
    assert without.stderr.startswith("mesh call: UNAUTHENTICATED"), without.stderr
    called = await asyncio.to_thread(mesh_call, mesh_url, "settings", method, body,
                                     "-H", f"Authorization: Bearer {service_token}")
    assert called.returncode == 0, called.stderr
    assert json.loads(called.stdout)["settings"]["scope"]["id"] == "metadata"


# -- a target whose types this process has never seen -----------------------------------------


def _private_file() -> descriptor_pool.DescriptorPool:
    """meshcalltest.v1: two services that both have a method Fail, and an error detail type,
    in a pool of their own (so no generated module of any process knows them)."""
    proto = descriptor_pb2.FileDescriptorProto(name="meshcalltest/v1/private.proto", package="meshcalltest.v1",
                                               syntax="proto3")
    proto.message_type.add(name="Nothing")
    stale = proto.message_type.add(name="Stale")
    optional = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    stale.field.add(name="why", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING, label=optional,
                    json_name="why")
    stale.field.add(name="current_revision", number=2, type=descriptor_pb2.FieldDescriptorProto.TYPE_UINT64,
                    label=optional, json_name="currentRevision")
    for service in ("First", "Second"):
        proto.service.add(name=service).method.add(name="Fail", input_type=".meshcalltest.v1.Nothing",
                                                    output_type=".meshcalltest.v1.Nothing")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return pool


@pytest.fixture
async def private_target(nats_server, nc: Client) -> AsyncIterator[tuple[str, str]]:
    """A target serving meshcalltest.v1 (and reflection of it) whose Fail is ABORTED with a
    meshcalltest.v1.Stale detail; (its name, the NATS URL)."""
    pool = _private_file()
    stale = message_factory.GetMessageClass(pool.FindMessageTypeByName("meshcalltest.v1.Stale"))
    detail = any_pb2.Any()
    detail.Pack(stale(why="someone wrote first", current_revision=7))

    async def fail(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        status = status_pb2.Status(code=code_pb2.ABORTED, message="stale", details=[detail])
        await context.abort_with_status(rpc_status.to_status(status))
        raise AssertionError("abort_with_status returned")

    name = f"private-{uuid.uuid4().hex[:10]}"
    server = nats_transport.aio.server(nc, name)
    services = ("meshcalltest.v1.First", "meshcalltest.v1.Second")
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        service, {"Fail": grpc.unary_unary_rpc_method_handler(fail)}) for service in services])
    reflection.enable_server_reflection((*services, reflection.SERVICE_NAME), server, pool=pool)
    await server.start()
    try:
        yield name, nats_server.url
    finally:
        await server.stop(None)


async def test_an_error_detail_of_a_type_only_the_target_knows_prints_in_full(private_target):
    target, url = private_target
    done = await asyncio.to_thread(mesh_call, url, target, "meshcalltest.v1.First/Fail", "{}")
    assert done.returncode == 1, done.stderr
    first, *details = done.stderr.strip().splitlines()
    assert first == "mesh call: ABORTED: stale"
    assert [json.loads(d) for d in details] == [{"@type": "type.googleapis.com/meshcalltest.v1.Stale",
                                                 "why": "someone wrote first", "currentRevision": "7"}]


async def test_a_method_name_several_services_have_lists_them_all(private_target):
    target, url = private_target
    done = await asyncio.to_thread(mesh_call, url, target, "Fail", "{}")
    assert done.returncode == 2
    assert done.stderr.strip() == ("mesh call: error: 'Fail' is not package.Service/Method; it may be any of: "
                                   "meshcalltest.v1.First/Fail, meshcalltest.v1.Second/Fail")
