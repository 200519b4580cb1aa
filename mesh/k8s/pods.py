"""Pods that run the mesh image (``mesh serve`` and ``mesh gateway``): the container, probes,
drain timing, and the Deployment, PodDisruptionBudget and autoscaler around it."""

from __future__ import annotations

from typing import Any

from mesh.k8s.common import (
    ADMIN_PORT,
    IMAGE,
    NATS,
    NATS_CLIENT_PORT,
    container_security,
    labels,
    pod_security,
    selector,
)

__all__ = [
    "CONTAINER",
    "DRAIN_PAUSE",
    "GRACE",
    "PRESTOP_SLEEP",
    "TERMINATION_GRACE",
    "deployment",
    "env",
    "hpa",
    "mesh_container",
    "network_policy",
    "pdb",
    "spread",
]

CONTAINER = "mesh"
# The drain, in order: preStop sleeps while endpoints and load balancers let go of the pod;
# then SIGTERM: the host turns NOT_SERVING, waits DRAIN_PAUSE (probes and callers see it), leaves
# its queue groups (peers take new calls), gives in-flight calls GRACE seconds, drains NATS and
# exits 0. The kubelet's SIGKILL comes only after TERMINATION_GRACE, which covers all of that.
PRESTOP_SLEEP = 5
DRAIN_PAUSE = 2
GRACE = 15
TERMINATION_GRACE = 30

_DNS = [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]


def env(values: dict[str, str]) -> list[dict[str, str]]:
    """An env list from a mapping, in its order."""
    return [{"name": name, "value": value} for name, value in values.items()]


def secret_volume(name: str, secret: str) -> dict[str, Any]:
    """A volume of a Secret's files, readable by the pod's user and group only."""
    return {"name": name, "secret": {"secretName": secret, "defaultMode": 0o440}}


def prod_deployment_patch(name: str, variables: dict[str, str], resources: dict[str, Any],
                          mounts: list[dict[str, Any]], volumes: list[dict[str, Any]]) -> dict[str, Any]:
    """A strategic-merge patch of Deployment ``name`` for prod: two replicas spread over nodes,
    prod resources, and the extra environment, mounts and volumes (its Secrets)."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 2,
            "template": {"spec": {
                "topologySpreadConstraints": spread(name),
                "containers": [{"name": CONTAINER, "env": env(variables), "resources": resources,
                                "volumeMounts": mounts}],
                "volumes": volumes,
            }},
        },
    }


def _probe(path: str, *, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "admin"},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def mesh_container(args: list[str], variables: dict[str, str], ports: list[dict[str, Any]]) -> dict[str, Any]:
    """The mesh image's container: ``mesh <args>``, probes on the admin port, a writable /tmp."""
    return {
        "name": CONTAINER,
        "image": IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "command": ["mesh"],
        "args": args,
        "env": env(variables),
        "ports": [*ports, {"name": "admin", "containerPort": ADMIN_PORT}],
        # Up to a minute to connect to NATS and bind the admin port; then alive unless a NATS
        # connection is stuck (/livez), ready once every hosted target serves (/readyz).
        "startupProbe": _probe("/livez", period=2, failures=30),
        "readinessProbe": _probe("/readyz", period=5, failures=2),
        "livenessProbe": _probe("/livez", period=10, failures=3),
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_SLEEP)]}}},
        "resources": {
            "requests": {"cpu": "50m", "memory": "128Mi"},
            "limits": {"cpu": "1", "memory": "512Mi"},
        },
        "securityContext": container_security(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }


def deployment(name: str, component: str, container: dict[str, Any]) -> dict[str, Any]:
    """One replica by default (the overlays and the autoscaler set more)."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels(name, component)},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": selector(name)},
            # A new pod is ready before an old one drains: capacity never dips in an upgrade.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {
                    "labels": labels(name, component),
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(ADMIN_PORT),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    "automountServiceAccountToken": False,
                    # Service links would put <SERVICE>_PORT variables in the environment; a
                    # Service named mesh-* would then feed MESH_* settings.
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": TERMINATION_GRACE,
                    "securityContext": pod_security(fs_group=True),
                    "containers": [container],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }


def spread(name: str) -> list[dict[str, Any]]:
    """Replicas on different nodes where possible (a full node must not stop a rollout)."""
    return [{
        "maxSkew": 1,
        "topologyKey": "kubernetes.io/hostname",
        "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": selector(name)},
    }]


def pdb(name: str, component: str) -> dict[str, Any]:
    """Voluntary disruptions (node drains) take one pod at a time."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": name, "labels": labels(name, component)},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(name)}},
    }


def hpa(name: str, component: str, *, low: int = 1, high: int = 4) -> dict[str, Any]:
    """CPU-based scaling: the servicers are Python, CPU is what a busy replica runs out of."""
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "labels": labels(name, component)},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": low,
            "maxReplicas": high,
            "metrics": [{
                "type": "Resource",
                "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 75}},
            }],
        },
    }


def network_policy(name: str, pods: dict[str, str], served: list[int]) -> dict[str, Any]:
    """In: only ``served`` ports (from anywhere). Out: NATS clients' port and DNS, nothing else."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "labels": labels(name, "network-policy")},
        "spec": {
            "podSelector": {"matchLabels": pods},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"ports": [{"protocol": "TCP", "port": port} for port in served]}],
            "egress": [
                {
                    "to": [{"podSelector": {"matchLabels": selector(NATS)}}],
                    "ports": [{"protocol": "TCP", "port": NATS_CLIENT_PORT}],
                },
                {"ports": _DNS},
            ],
        },
    }
