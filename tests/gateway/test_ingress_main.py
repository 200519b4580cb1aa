"""``python -m gateway ingress`` runs the ingress on its own and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nats_transport.testing import NatsServer, free_port
from tests.gateway._targets import SERVING


async def test_the_ingress_command_serves_until_sigterm_then_exits_0(nats_server: NatsServer):
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "ingress", "--nats-url", nats_server.url, "--host", "127.0.0.1",
        "--port", str(port), "--grace", "1", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 20)
        assert f"listening on 127.0.0.1:{port}" in line.decode()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == SERVING

        process.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(process.communicate(), 20)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert process.returncode == 0, err.decode()
    assert "stopped" in out.decode()
