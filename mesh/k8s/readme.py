"""``k8s/README.md``: rendered with the tree, so the list of files it gives is always the tree's."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from mesh.k8s import nats
from mesh.k8s.common import GATEWAY, IMAGE, NAMESPACE, NATS_EXPORTER_IMAGE, NATS_IMAGE, NATS_METRICS_PORT
from mesh.k8s.observability import DASHBOARD_FILE, FOLDER
from mesh.k8s.overlays import SECURITY

__all__ = ["readme"]


class _File(Protocol):
    @property
    def path(self) -> str: ...

    @property
    def about(self) -> str: ...


def readme(files: Sequence[_File], header: str) -> str:
    """The README for ``files`` (plus itself)."""
    rows = [f"| `{file.path}` | {file.about} |" for file in files]
    rows.append("| `README.md` | this file |")
    return "\n".join([
        f"<!-- {header}: change those and render again. -->",
        "# k8s",
        "",
        "Kubernetes manifests for the mesh, rendered from the service catalogue by",
        "`mesh k8s render` and checked by `mesh k8s render --check` (exit 1 when these files differ",
        "from what it would write). Do not edit them by hand: change `mesh/k8s/` and render again.",
        "[docs/deploy.md](../docs/deploy.md) goes from an empty cluster to a working mesh.",
        "",
        "A Kustomize base and two overlays, all in the namespace `" + NAMESPACE + "`:",
        "",
        "- `kubectl apply -k k8s/overlays/dev`: the base as it is, for a laptop cluster (kind,",
        "  minikube): NATS without TLS or users, one replica of everything, small requests.",
        "- `kubectl apply -k k8s/overlays/prod`: mTLS to NATS and one least-privilege NATS identity",
        "  per pod, TLS from clients to the gateway, two replicas of",
        "  every workload spread over nodes. It reads the files `mesh security init` writes into",
        f"  `overlays/prod/{SECURITY}/` (git-ignored: keys, nkey seeds and certificates never enter",
        "  the repository); without them kustomize stops with the name of the first missing file.",
        "",
        f"Beside them, `kubectl apply -k k8s/{FOLDER}` adds what a Prometheus Operator and Grafana",
        "need (it needs the Operator's CRDs, as a kube-prometheus-stack installs them, with",
        "kube-state-metrics and the kubelet's cAdvisor metrics): PodMonitors for the mesh pods and",
        "NATS, the alert rules, and the dashboard as a ConfigMap for Grafana's dashboard sidecar;",
        f"`{FOLDER}/{DASHBOARD_FILE}` is the same dashboard to import by hand.",
        "[docs/operations.md](../docs/operations.md#dashboards-and-alerts) says what each alert means.",
        "",
        "What runs:",
        "",
        f"- NATS: a StatefulSet of 3 `{NATS_IMAGE}` servers (pods `nats-0.nats`, `nats-1.nats`,",
        "  `nats-2.nats`), JetStream on a volume each, routes between them by the headless Service,",
        f"  probes on the monitoring port (started and ready: `{nats.PROBES['readinessProbe']}`, every",
        f"  stream current; alive: `{nats.PROBES['livenessProbe']}`), lame duck mode on preStop,",
        "  one server down at most by choice (PodDisruptionBudget). Routes are mutual TLS in prod",
        "  (the route certificate of `mesh security init`), plain TCP in dev. Beside each server,",
        f"  `{NATS_EXPORTER_IMAGE}` serves its monitoring data as Prometheus metrics on :{NATS_METRICS_PORT}.",
        f"- One Deployment per catalogue target running `mesh serve <target>` from the `{IMAGE}`",
        "  image (the `Dockerfile` at the repository root), probes `/livez` and `/readyz` on :8080,",
        "  a PodDisruptionBudget and a CPU HorizontalPodAutoscaler each. Targets have no Service:",
        "  callers reach them over NATS.",
        f"- `{GATEWAY}`: `mesh gateway`, the gRPC ingress on :50051 and Envoy (HTTP/JSON, SSE,",
        "  gRPC-Web) on :8000, behind the Service of the same name.",
        "- NetworkPolicies: targets and the gateway may reach only NATS (and DNS); NATS takes",
        "  clients from the namespace only and routes from its own pods only.",
        "",
        "## Files",
        "",
        "| file | what |",
        "| --- | --- |",
        *rows,
        "",
    ])
