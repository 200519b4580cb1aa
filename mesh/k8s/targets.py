"""One Deployment per catalogue target (``mesh serve <target>``) with its disruption budget and
autoscaler; the network policy they share; and the prod patch that gives each target its own
NATS identity."""

from __future__ import annotations

from typing import Any

from mesh.k8s.common import ADMIN_PORT, IDENTITY_ROOT, INSTANCE, PART_OF, nats_url
from mesh.k8s.pods import (
    DRAIN_PAUSE,
    GRACE,
    deployment,
    hpa,
    mesh_container,
    network_policy,
    pdb,
    prod_deployment_patch,
    secret_volume,
)

__all__ = [
    "COMPONENT",
    "SERVICE_KEYS_DIR",
    "SERVICE_KEYS_SECRET",
    "identity_secret",
    "network_policy_for_targets",
    "objects",
    "prod_patch",
]

COMPONENT = "target"
SERVICE_KEYS_SECRET = "mesh-service-keys"
SERVICE_KEYS_DIR = "/var/run/mesh/service-keys"
# The auth target learns every target's public nkey from this file (``MESH_AUTH_SERVICE_KEYS``),
# so it issues a service token only to the target that signs for it.
_AUTH = "auth"


def identity_secret(identity: str) -> str:
    """The Secret holding one identity folder of ``mesh security init``."""
    return f"mesh-identity-{identity}"


def objects(target: str) -> list[dict[str, Any]]:
    """The Deployment, PodDisruptionBudget and HorizontalPodAutoscaler of ``target``."""
    container = mesh_container(
        ["serve", target, "--admin-port", str(ADMIN_PORT)],
        {
            "MESH_NATS_URL": nats_url(),
            "MESH_DRAIN_PAUSE": str(DRAIN_PAUSE),
            "MESH_GRACE": str(GRACE),
            "MESH_LOG_LEVEL": "INFO",
        },
        [],
    )
    return [deployment(target, COMPONENT, container), pdb(target, COMPONENT), hpa(target, COMPONENT)]


def network_policy_for_targets() -> dict[str, Any]:
    """Targets are reached over NATS only: in, the admin port (probes, metrics); out, NATS."""
    pods = {"app.kubernetes.io/component": COMPONENT, "app.kubernetes.io/instance": INSTANCE,
            "app.kubernetes.io/part-of": PART_OF}
    return network_policy("mesh-targets", pods, [ADMIN_PORT])


def prod_patch(target: str) -> dict[str, Any]:
    """Two replicas on different nodes, prod resources, and the target's identity mounted where
    ``MESH_SECRETS_DIR`` makes ``mesh serve`` connect as it (and sign for its service tokens)."""
    variables = {"MESH_SECRETS_DIR": IDENTITY_ROOT}
    mounts: list[dict[str, Any]] = [
        {"name": "identity", "mountPath": f"{IDENTITY_ROOT}/{target}", "readOnly": True},
    ]
    volumes = [secret_volume("identity", identity_secret(target))]
    if target == _AUTH:
        variables["MESH_AUTH_SERVICE_KEYS"] = f"{SERVICE_KEYS_DIR}/service-keys.json"
        mounts.append({"name": "service-keys", "mountPath": SERVICE_KEYS_DIR, "readOnly": True})
        volumes.append(secret_volume("service-keys", SERVICE_KEYS_SECRET))
    return prod_deployment_patch(
        target, variables,
        {"requests": {"cpu": "100m", "memory": "192Mi"}, "limits": {"cpu": "2", "memory": "768Mi"}},
        mounts, volumes,
    )
