"""``k8s/observability/``: what a Prometheus Operator and Grafana need to watch the mesh.

A Kustomize folder of its own, beside the overlays rather than in the base: its kinds
(PodMonitor, PrometheusRule) exist only where the Prometheus Operator's CRDs are installed, and
``kubectl apply -k k8s/overlays/dev`` must keep working on a bare laptop cluster. It holds:

- PodMonitors: ``mesh`` scrapes every target's and the gateway's admin port (``/metrics``),
  ``nats`` the exporter sidecar of each NATS pod. Both take ``job`` from the pod's
  ``app.kubernetes.io/name``: the Deployment (the target), or ``nats``.
- The alert rules (:mod:`mesh.k8s.alerts`).
- The dashboard (:mod:`mesh.k8s.dashboard`) as a plain JSON file to import by hand, and the
  same file as a ConfigMap labelled ``grafana_dashboard: "1"`` for Grafana's dashboard sidecar.
  The ConfigMap is generated from the file, so the two cannot differ; its name has no hash
  suffix, so a changed dashboard replaces the ConfigMap instead of adding a second one (which the
  sidecar would load as a duplicate).
"""

from __future__ import annotations

from typing import Any

from mesh.k8s import gateway, targets
from mesh.k8s.common import INSTANCE, NAMESPACE, NATS, PART_OF, labels, selector
from mesh.k8s.overlays import KUSTOMIZATION

__all__ = [
    "DASHBOARD",
    "DASHBOARD_FILE",
    "FOLDER",
    "GRAFANA_LABEL",
    "JOB_LABEL",
    "RULES_FILE",
    "MONITORS_FILE",
    "kustomization",
    "pod_monitors",
]

FOLDER = "observability"
MONITORS_FILE = "pod-monitors.yaml"
RULES_FILE = "prometheus-rules.yaml"
DASHBOARD_FILE = "mesh-dashboard.json"
DASHBOARD = "mesh-dashboard"
# What Grafana's dashboard sidecar (kube-prometheus-stack's default) looks for.
GRAFANA_LABEL = {"grafana_dashboard": "1"}
JOB_LABEL = "app.kubernetes.io/name"


def _pod_monitor(name: str, pods: dict[str, Any], port: str) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": {"name": name, "labels": labels(name, "monitoring")},
        "spec": {
            "jobLabel": JOB_LABEL,
            "selector": pods,
            "podMetricsEndpoints": [{"port": port, "path": "/metrics"}],
        },
    }


def pod_monitors() -> list[dict[str, Any]]:
    """The mesh pods' admin port (the container port named ``admin`` in mesh.k8s.pods) and the
    NATS exporter's (``metrics``)."""
    mesh_pods = {
        "matchLabels": {"app.kubernetes.io/part-of": PART_OF, "app.kubernetes.io/instance": INSTANCE},
        "matchExpressions": [{"key": "app.kubernetes.io/component", "operator": "In",
                              "values": [targets.COMPONENT, gateway.COMPONENT]}],
    }
    return [
        _pod_monitor("mesh", mesh_pods, "admin"),
        _pod_monitor(NATS, {"matchLabels": selector(NATS)}, "metrics"),
    ]


def kustomization() -> dict[str, Any]:
    """The folder's kustomization: the monitors, the rules, and the dashboard's ConfigMap."""
    return {
        **KUSTOMIZATION,
        "namespace": NAMESPACE,
        "resources": [MONITORS_FILE, RULES_FILE],
        "configMapGenerator": [{
            "name": DASHBOARD,
            "files": [DASHBOARD_FILE],
            "options": {"disableNameSuffixHash": True, "labels": {**GRAFANA_LABEL, **labels(DASHBOARD, "monitoring")}},
        }],
    }
