"""The Kustomize layer: the base's kustomization, and the dev and prod overlays.

dev runs the base as it is (open NATS, one replica each) with requests small enough for a
laptop cluster. prod adds mTLS and one NATS identity per pod from files ``mesh security init``
writes into the overlay's git-ignored ``security/`` folder (kustomize reads generator files only
from inside the overlay), two replicas per workload spread over nodes, and prod resources.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mesh.k8s import gateway, nats, targets
from mesh.k8s.common import NAMESPACE, NATS, PART_OF
from mesh.k8s.pods import CONTAINER

__all__ = [
    "IDENTITY_FILES",
    "SECURITY",
    "base_kustomization",
    "dev_kustomization",
    "dev_patches",
    "namespace",
    "prod_autoscaling_patch",
    "prod_kustomization",
]

KUSTOMIZATION = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization"}
# The prod overlay's folder for what `mesh security init --data-dir` writes (git-ignored).
SECURITY = "security"
IDENTITY_FILES = ("cert.pem", "key.pem", "ca.pem", "nkey.seed", "identity.json")
_SERVER_FILES = ("cert.pem", "key.pem", "ca.pem")


def namespace() -> dict[str, Any]:
    """The namespace, held to the restricted Pod Security Standard every pod here meets."""
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": NAMESPACE,
            "labels": {
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest",
                "app.kubernetes.io/part-of": PART_OF,
            },
        },
    }


def base_kustomization(resources: Sequence[str]) -> dict[str, Any]:
    """Every resource file of the base, and the NATS configuration as a generated ConfigMap (its
    name carries a hash of the content, so a changed nats.conf rolls the servers)."""
    return {
        **KUSTOMIZATION,
        "namespace": NAMESPACE,
        "resources": list(resources),
        "configMapGenerator": [{"name": nats.CONFIG_MAP, "files": ["nats.conf=nats/nats.conf"]}],
    }


def dev_patches() -> dict[str, dict[str, Any]]:
    """File name under ``patches/`` -> a patch that shrinks requests (limits stay)."""
    mesh_pods = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        # Applied to every Deployment the patch target selects; kustomize ignores this name.
        "metadata": {"name": "every-mesh-deployment"},
        "spec": {"template": {"spec": {"containers": [
            {"name": CONTAINER, "resources": {"requests": {"cpu": "10m", "memory": "96Mi"}}},
        ]}}},
    }
    nats_pods = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": NATS},
        "spec": {"template": {"spec": {"containers": [
            {"name": NATS, "resources": {"requests": {"cpu": "20m", "memory": "64Mi"}}},
        ]}}},
    }
    return {"mesh-requests.yaml": mesh_pods, "nats-requests.yaml": nats_pods}


def dev_kustomization() -> dict[str, Any]:
    """The base with small requests."""
    return {
        **KUSTOMIZATION,
        "namespace": NAMESPACE,
        "resources": ["../../base"],
        "patches": [
            {
                "path": "patches/mesh-requests.yaml",
                "target": {"kind": "Deployment", "labelSelector": f"app.kubernetes.io/part-of={PART_OF}"},
            },
            {"path": "patches/nats-requests.yaml"},
        ],
    }


def prod_autoscaling_patch() -> dict[str, Any]:
    """Every autoscaler: at least two replicas (one per node), at most eight."""
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "every-mesh-autoscaler"},
        "spec": {"minReplicas": 2, "maxReplicas": 8},
    }


def _files(folder: str, names: Sequence[str]) -> list[str]:
    return [f"{name}={SECURITY}/{folder}/{name}" for name in names]


def _secrets(identities: Sequence[str]) -> list[dict[str, Any]]:
    secrets: list[dict[str, Any]] = [
        {
            "name": nats.SECURITY_SECRET,
            "files": [f"nats-security.conf={SECURITY}/nats-security.conf", *_files("secrets/server", _SERVER_FILES),
                      *(f"route-{name}={SECURITY}/secrets/routes/{name}" for name in _SERVER_FILES)],
        },
        {"name": gateway.SERVER_TLS_SECRET, "files": _files("secrets/server", _SERVER_FILES)},
        {
            "name": targets.SERVICE_KEYS_SECRET,
            "files": [f"service-keys.json={SECURITY}/secrets/service-keys.json"],
        },
    ]
    for identity in identities:
        secrets.append({
            "name": targets.identity_secret(identity),
            "files": _files(f"secrets/{identity}", IDENTITY_FILES),
        })
    return secrets


def prod_kustomization(target_names: Sequence[str], patch_paths: Sequence[str]) -> dict[str, Any]:
    """The base with the secure nats.conf, Secrets from ``security/``, and the prod patches."""
    return {
        **KUSTOMIZATION,
        # Generated Secrets land in (and are referred to within) this namespace, like the base.
        "namespace": NAMESPACE,
        "resources": ["../../base"],
        "configMapGenerator": [{"name": nats.CONFIG_MAP, "behavior": "replace", "files": ["nats.conf"]}],
        "secretGenerator": _secrets([*target_names, gateway.IDENTITY]),
        "patches": [
            *({"path": path} for path in patch_paths),
            {
                "path": "patches/autoscaling.yaml",
                "target": {"kind": "HorizontalPodAutoscaler", "labelSelector": f"app.kubernetes.io/part-of={PART_OF}"},
            },
        ],
    }
