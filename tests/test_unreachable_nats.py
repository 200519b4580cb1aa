"""Commands against a NATS that is not there, or not usable as given (TLS it cannot verify, a
port that never answers): the tools end with one line and exit 2; ``mesh serve`` serves its
probes while it keeps trying, and stops at once on SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from mesh.security import pki
from mesh.supervisor import http_get
from nats_transport.testing import NatsServer, free_port
from tests._waiting import wait_for

REPO = Path(__file__).resolve().parent.parent
TOOLS = [
    ["services"],
    ["call", "settings", "gaming.settings.v1.SettingsService/Get", "{}"],
]


def dead_url() -> str:
    return f"nats://127.0.0.1:{free_port()}"  # nothing listens there


def mesh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mesh", *args], cwd=REPO, capture_output=True, text=True, timeout=30)


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.fixture
def tls_nats(tmp_path: Path) -> Iterator[tuple[NatsServer, Path]]:
    """A nats-server that requires TLS, with a certificate of a fresh CA; (it, the CA's file)."""
    ca = pki.new_authority()
    issued = pki.issue_server(ca, pki.server_hosts([]))
    (tmp_path / "ca.pem").write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "server.pem").write_bytes(issued.cert_pem())
    pki.write_private(tmp_path / "server-key.pem", issued.key_pem())
    tls = f'tls {{ cert_file: "{tmp_path / "server.pem"}", key_file: "{tmp_path / "server-key.pem"}" }}'
    with NatsServer(name="tls", jetstream=False, extra_config=tls) as server:
        yield server, tmp_path / "ca.pem"


@pytest.mark.parametrize("command", TOOLS)
def test_a_tool_against_a_dead_nats_ends_with_one_line_and_exit_2(command):
    done = subprocess.run([sys.executable, "-m", "mesh", *command, "--nats-url", dead_url(), "--connect-timeout", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("mesh: error: cannot reach NATS at nats://127.0.0.1:")


@pytest.mark.parametrize("command", TOOLS)
def test_a_tool_against_a_nats_requiring_tls_it_cannot_verify_names_tls_ca(tls_nats, command):
    server, ca = tls_nats
    done = mesh(*command, "--nats-url", server.url)
    assert done.returncode == 2
    line = one_line(done)
    assert line.startswith("mesh: error: TLS with NATS failed: the server's certificate is not trusted"), line
    assert "--tls-ca" in line

    trusted = mesh("services", "--nats-url", server.url, "--tls-ca", str(ca), "--wait", "0.2")
    assert trusted.stderr.strip() == "no services answered $SRV.INFO"  # connected, over TLS


def test_a_port_that_accepts_but_never_answers_is_one_readable_line():
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # the kernel completes connections; nothing ever writes to them
        done = mesh("services", "--nats-url", f"nats://127.0.0.1:{silent.getsockname()[1]}", "--connect-timeout", "20")
    assert done.returncode == 2
    line = one_line(done)
    assert line.startswith("mesh: error: cannot reach NATS at nats://127.0.0.1:"), line
    assert "nothing answered as a NATS server in time" in line
    assert "TimeoutError" not in line


def test_a_body_that_is_not_json_fails_before_reaching_nats():
    done = mesh("call", "settings", "gaming.settings.v1.SettingsService/Get", '{"scope": ', "--nats-url", dead_url())
    assert done.returncode == 2
    assert one_line(done).startswith("mesh call: error: the body argument is not JSON: Expecting value")


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
async def test_serve_against_a_dead_nats_answers_probes_and_stops_on_a_signal(stop):
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
        process.send_signal(stop)
        out, err = await asyncio.to_thread(process.communicate, timeout=15)
        assert process.returncode == 0
        assert out.strip().splitlines()[-1] == "mesh serve: stopped"
        assert "Traceback" not in err
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
