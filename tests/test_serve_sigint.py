"""Ctrl-C (SIGINT) stops a serving ``mesh serve`` as SIGTERM does: drained, one line, exit 0."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile

import pytest

from mesh.supervisor import http_get
from nats_transport.testing import free_port
from tests._waiting import wait_for
from tests.test_host import REPO, TARGET

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_sigint_stops_a_serving_host_with_one_line_and_exit_0(private_nats_server, loop):
    pytest.importorskip(loop)
    admin = free_port()
    # Logs go to a file: a pipe nobody reads would fill up and stall the host.
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(  # noqa: ASYNC220 - started once, waited on in a thread
            [sys.executable, "-m", "mesh", "serve", TARGET, "--nats-url", private_nats_server.url,
             "--admin-host", "127.0.0.1", "--admin-port", str(admin), "--drain-pause", "0"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True, env={**os.environ, "MESH_EVENT_LOOP": loop})
        try:
            async def ready() -> bool:
                try:
                    return (await http_get("127.0.0.1", admin, "/readyz"))[0] == 200
                except OSError:
                    return False

            await wait_for(ready, timeout=30)
            process.send_signal(signal.SIGINT)
            out, _ = await asyncio.to_thread(process.communicate, timeout=15)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        log.seek(0)
        errors = log.read().decode(errors="replace")
    assert process.returncode == 0, errors[-2000:]
    started, stopped = out.strip().splitlines()
    assert started.startswith(f"mesh serve: {TARGET} on {private_nats_server.url}")
    assert started.endswith(f"; {loop} event loop")
    assert stopped == "mesh serve: stopped"
    assert "Traceback" not in errors
    assert "KeyboardInterrupt" not in errors
