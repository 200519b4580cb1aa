"""Commands against a NATS that is not there: the tools end with one line and exit 2; ``mesh
serve`` serves its probes while it keeps trying, and stops at once on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mesh.supervisor import http_get
from nats_transport.testing import free_port
from tests._waiting import wait_for

REPO = Path(__file__).resolve().parent.parent


def dead_url() -> str:
    return f"nats://127.0.0.1:{free_port()}"  # nothing listens there


@pytest.mark.parametrize("command", [
    ["services"],
    ["call", "settings", "gaming.settings.v1.SettingsService/Get", "{}"],
])
def test_a_tool_against_a_dead_nats_ends_with_one_line_and_exit_2(command):
    done = subprocess.run([sys.executable, "-m", "mesh", *command, "--nats-url", dead_url(), "--connect-timeout", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("mesh: error: cannot reach NATS at nats://127.0.0.1:")


async def test_serve_against_a_dead_nats_answers_probes_and_stops_on_sigterm():
    admin = free_port()
    process = subprocess.Popen(  # noqa: ASYNC220 - started once, waited on in a thread
        [sys.executable, "-m", "mesh", "serve", "settings", "--nats-url", dead_url(),
         "--admin-host", "127.0.0.1", "--admin-port", str(admin), "--drain-pause", "0"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        async def probe(path: str) -> tuple[int, str]:
            try:
                return await http_get("127.0.0.1", admin, path)
            except OSError:
                return 0, ""

        async def answering() -> bool:
            return (await probe("/readyz"))[0] == 503

        await wait_for(answering, timeout=15)
        _, reason = await probe("/readyz")
        assert reason.startswith("connecting to NATS: nats://127.0.0.1:")
        assert (await probe("/livez"))[0] == 200
        process.send_signal(signal.SIGTERM)
        out, _ = await asyncio.to_thread(process.communicate, timeout=15)
        assert process.returncode == 0
        assert out.strip().splitlines()[-1] == "mesh serve: stopped"
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_mesh_up_against_a_dead_nats_url_ends_with_one_error_line_and_exit_2(tmp_path):
    ports = [str(free_port()) for _ in range(3)]
    done = subprocess.run(
        [sys.executable, "-m", "mesh", "up", "--nats-url", dead_url(), "--data-dir", str(tmp_path),
         "--admin-port", ports[0], "--grpc-port", ports[1], "--http-port", ports[2]],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert errors == [errors[0]]
    assert errors[0].startswith("mesh up: error: --nats-url: cannot connect to NATS at nats://127.0.0.1:")
    assert "Traceback" not in done.stderr


def test_mesh_version_prints_the_installed_version():
    done = subprocess.run([sys.executable, "-m", "mesh", "--version"], cwd=REPO, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0
    assert done.stdout.startswith("mesh ")
    assert done.stdout.split()[1][0].isdigit()


def test_mesh_services_with_nothing_serving_says_so_and_exits_1(private_nats_server):
    done = subprocess.run([sys.executable, "-m", "mesh", "services", "--nats-url", private_nats_server.url,
                           "--wait", "0.3"],
                          cwd=REPO, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert done.stderr.strip() == "no services answered $SRV.INFO"
