"""``mesh up --cluster 3 --secure``: mTLS clients, mTLS routes with the cluster's own
certificate, R3 buckets, a TLS ingress that answers, and a node that dies is restarted."""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests._waiting import wait_for
from tests.cluster._monitoring import look
from tests.cluster.conftest import start_cluster_mesh, stop_cluster_mesh

pytestmark = pytest.mark.cluster

STREAMS = ("KV_payment_ledger", "KV_state_manager")


async def test_a_secure_cluster_routes_over_tls_and_serves_through_its_tls_ingress(tmp_path: Path) -> None:
    mesh = await start_cluster_mesh(tmp_path, 3, "--secure")
    try:
        assert "INSECURE" not in mesh.output()
        table = mesh.output()
        for node in mesh.nodes:
            row = rf"{node.name}\s+{node.url}\s+monitoring http://127.0.0.1:{node.monitor_port}\s+store "
            assert re.search(row, table), table
        assert "JetStream R3 by default" in table
        views = []

        async def healthy() -> bool:
            views.append(await look(mesh.nodes, STREAMS))
            return views[-1].healthy

        await wait_for(healthy, timeout=60)
        assert {s.replicas for s in views[-1].streams.values()} == {3}
        # Routes carry the cluster's own certificate, clients the mesh's server certificate.
        for node in mesh.nodes:
            config = (node.data_dir / "nats-embedded.conf").read_text()
            assert str(mesh.data_dir / "secrets" / "routes" / "cert.pem") in config
        ca = (mesh.data_dir / "secrets" / "server" / "ca.pem").read_bytes()
        credentials = grpc.ssl_channel_credentials(root_certificates=ca)
        async with grpc.aio.secure_channel(f"localhost:{mesh.grpc_port}", credentials) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service="gaming.payment.v1.PaymentService")
            assert (await health.Check(request, timeout=10)).status == health_pb2.HealthCheckResponse.SERVING

            old = mesh.nodes[0].kill()

            async def restarted_and_serving() -> bool:
                pid = mesh.nodes[0].pid()
                if pid in (None, old) or not (await look(mesh.nodes, STREAMS)).healthy:
                    return False
                try:
                    answer = await health.Check(request, timeout=5)
                except grpc.aio.AioRpcError:
                    return False
                return answer.status == health_pb2.HealthCheckResponse.SERVING

            await wait_for(restarted_and_serving, timeout=60)
        assert "nats-server nats-0 was killed by SIGKILL; restarting it" in mesh.output()
    finally:
        code = await stop_cluster_mesh(mesh)
    assert code == 0, mesh.errors()
    assert mesh.output().rstrip().endswith("mesh up: stopped")
