"""The gateway: ``mesh gateway`` (the gRPC ingress on :50051 and Envoy's HTTP/JSON edge on
:8000, in one pod), its Service, disruption budget, autoscaler and network policy."""

from __future__ import annotations

from typing import Any

from mesh.k8s.common import (
    ADMIN_PORT,
    GATEWAY,
    GATEWAY_GRPC_PORT,
    GATEWAY_HTTP_PORT,
    IDENTITY_ROOT,
    SERVER_TLS_ROOT,
    labels,
    nats_url,
    selector,
)
from mesh.k8s.pods import (
    GRACE,
    deployment,
    hpa,
    mesh_container,
    network_policy,
    pdb,
    prod_deployment_patch,
    secret_volume,
)

__all__ = ["COMPONENT", "IDENTITY", "SERVER_TLS_SECRET", "network_policy_for_gateway", "objects", "prod_patch"]

COMPONENT = "gateway"
# The gateway reaches the mesh as the `ingress` identity of `mesh security init`.
IDENTITY = "ingress"
SERVER_TLS_SECRET = "mesh-server-tls"


def objects() -> list[dict[str, Any]]:
    """Deployment, Service, PodDisruptionBudget and HorizontalPodAutoscaler."""
    container = mesh_container(
        ["gateway", "--admin-port", str(ADMIN_PORT)],
        {
            "MESH_NATS_URL": nats_url(),
            "MESH_GATEWAY_HOST": "0.0.0.0",
            "MESH_GATEWAY_GRPC_PORT": str(GATEWAY_GRPC_PORT),
            "MESH_GATEWAY_HTTP_PORT": str(GATEWAY_HTTP_PORT),
            "MESH_GRACE": str(GRACE),
            "MESH_LOG_LEVEL": "INFO",
        },
        [
            {"name": "grpc", "containerPort": GATEWAY_GRPC_PORT},
            {"name": "http", "containerPort": GATEWAY_HTTP_PORT},
        ],
    )
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": GATEWAY, "labels": labels(GATEWAY, COMPONENT)},
        "spec": {
            "selector": selector(GATEWAY),
            "ports": [
                # gRPC (HTTP/2) straight to the ingress.
                {"name": "grpc", "port": GATEWAY_GRPC_PORT, "targetPort": "grpc"},
                # HTTP/JSON, SSE and gRPC-Web through Envoy.
                {"name": "http", "port": GATEWAY_HTTP_PORT, "targetPort": "http"},
            ],
        },
    }
    return [deployment(GATEWAY, COMPONENT, container), service, pdb(GATEWAY, COMPONENT), hpa(GATEWAY, COMPONENT)]


def network_policy_for_gateway() -> dict[str, Any]:
    """Clients reach the gRPC and HTTP ports (and probes the admin port); it reaches NATS."""
    return network_policy(GATEWAY, selector(GATEWAY), [GATEWAY_GRPC_PORT, GATEWAY_HTTP_PORT, ADMIN_PORT])


def prod_patch() -> dict[str, Any]:
    """Two replicas, the ingress identity for NATS, and TLS towards clients with the server
    certificate of ``mesh security init`` (it names localhost, which Envoy checks the ingress by;
    the identity's ca.pem is what Envoy verifies it against)."""
    variables = {
        "MESH_IDENTITY": f"{IDENTITY_ROOT}/{IDENTITY}",
        "MESH_GATEWAY_SERVE_CERT": f"{SERVER_TLS_ROOT}/cert.pem",
        "MESH_GATEWAY_SERVE_KEY": f"{SERVER_TLS_ROOT}/key.pem",
    }
    return prod_deployment_patch(
        GATEWAY, variables,
        {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}},
        [{"name": "identity", "mountPath": f"{IDENTITY_ROOT}/{IDENTITY}", "readOnly": True},
         {"name": "server-tls", "mountPath": SERVER_TLS_ROOT, "readOnly": True}],
        [secret_volume("identity", f"mesh-identity-{IDENTITY}"), secret_volume("server-tls", SERVER_TLS_SECRET)],
    )
