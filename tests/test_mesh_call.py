"""``mesh call`` against real targets: streams printed as they arrive, rich error details,
metadata, and errors that say what exists when a name is wrong."""

from __future__ import annotations

import asyncio
import datetime
import json
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from tests._waiting import wait_for
from tests.test_host import REPO, Serve

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def mesh_url(private_nats_server) -> AsyncIterator[str]:
    serve = Serve(private_nats_server.url, "weather-manager", "time-manager", "auth", "performance-mode",
                  env={"MESH_AUTH_SCRYPT_LOG2_N": "10"})
    try:
        await wait_for(serve.ready, timeout=30)
        yield private_nats_server.url
    finally:
        serve.close()


def mesh_call(url: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mesh", "call", *args, "--nats-url", url],
                          cwd=REPO, capture_output=True, text=True, timeout=60, input=stdin)


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
    ("weather-manager", "GetWeather", "'GetWeather' is not package.Service/Method"),
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
