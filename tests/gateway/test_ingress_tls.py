"""The ingress over TLS: clients that trust its certificate get through, plaintext ones do not."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nats.aio.client import Client

from gateway.ingress import IngressOptions, TlsFiles
from tests.gateway._targets import FAST, SERVING, ingress_on

OPENSSL = shutil.which("openssl")


@pytest.fixture
def tls(tmp_path: Path) -> TlsFiles:
    if OPENSSL is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=30,
    )
    return TlsFiles(cert=cert, key=key)


async def test_a_client_trusting_the_certificate_is_served_over_tls(nc: Client, tls: TlsFiles):
    options = IngressOptions(poll_interval=FAST.poll_interval, poll_window=FAST.poll_window, grace=0, tls=tls)
    async with ingress_on(nc, options) as ingress:
        credentials = grpc.ssl_channel_credentials(root_certificates=tls.cert.read_bytes())
        async with grpc.aio.secure_channel(ingress.address, credentials) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        async with grpc.aio.insecure_channel(ingress.address) as plaintext:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await health_pb2_grpc.HealthStub(plaintext).Check(health_pb2.HealthCheckRequest(), timeout=5)

    assert reply.status == SERVING
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
