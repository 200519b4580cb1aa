"""The mesh's alert rules: a Prometheus Operator ``PrometheusRule``.

Each alert says what is wrong in ``summary``, what it means and what to look at first in
``description``, and points at its section of docs/operations.md in ``runbook_url`` (a path in
the repository: the rules do not know where it is hosted). ``severity`` is ``critical`` only
where callers are failing now; everything else is ``warning``.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Any

from mesh.k8s.common import labels
from mesh.k8s.queries import (
    cpu_of_limit,
    error_ratio,
    jetstream_replica_lag,
    latency_quantile,
    matchers,
    memory_of_limit,
)

__all__ = ["ALERTS", "RULES", "RUNBOOK", "Alert", "prometheus_rule"]

RULES = "mesh-alerts"
RUNBOOK = "docs/operations.md"
ERROR_RATIO = 0.05
P99_SECONDS = 0.5
MIN_REPLICAS = 2
OF_LIMIT = 0.8
# The rendered tree's namespace (kustomize's ``namespace:`` does not reach into PromQL): an
# overlay that moves the mesh elsewhere patches these expressions too.
_NS = matchers()
_UNARY = matchers('grpc_type="unary"')


def _above(expr: str, threshold: float) -> str:
    """``(expr) > threshold``, the expression indented inside its parentheses."""
    return f"(\n{textwrap.indent(expr, '  ')}\n) > {threshold}"


@dataclass(frozen=True, slots=True)
class Alert:
    """One alerting rule."""

    name: str
    expr: str
    wait: str  # the rule's ``for``: how long the condition holds before it fires
    severity: str
    summary: str
    description: str

    def rule(self) -> dict[str, Any]:
        """The rule as the PrometheusRule holds it."""
        return {
            "alert": self.name,
            "expr": self.expr,
            "for": self.wait,
            "labels": {"severity": self.severity},
            "annotations": {
                "summary": self.summary,
                "description": self.description,
                # GitHub's anchor of the alert's heading in the runbook.
                "runbook_url": f"{RUNBOOK}#{self.name.lower()}",
            },
        }


_TARGET_ALERTS = (
    Alert(
        "MeshTargetErrorRatioHigh",
        _above(error_ratio(_NS, "5m", "namespace, job"), ERROR_RATIO),
        "5m", "critical",
        "{{ $labels.job }}: {{ $value | humanizePercentage }} of calls fail on the server's side",
        f"More than {ERROR_RATIO:.0%} of the calls {{{{ $labels.job }}}} handled over 5 minutes ended with "
        "UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE or DATA_LOSS. Look at its "
        "pods' logs (the failing calls, by method and code) and /readyz (storage, NATS).",
    ),
    Alert(
        "MeshTargetLatencyHigh",
        # Unary calls only: a stream's handling time is its whole life.
        f"{latency_quantile(0.99, _UNARY, '5m', 'namespace, job')} > {P99_SECONDS}",
        "10m", "warning",
        "{{ $labels.job }}: p99 of unary calls is {{ $value | humanizeDuration }}",
        f"The 99th percentile of {{{{ $labels.job }}}}'s unary calls stayed above {P99_SECONDS} s for 10 "
        "minutes. Check its CPU against its limit, in-flight calls and the targets it calls "
        "(the dashboard's latency per method tells which calls).",
    ),
    Alert(
        "MeshDeploymentReplicasLow",
        f"kube_deployment_status_replicas_available{{{_NS}}} < {MIN_REPLICAS}",
        "5m", "warning",
        "{{ $labels.deployment }}: {{ $value }} available replicas",
        f"Fewer than {MIN_REPLICAS} replicas of {{{{ $labels.deployment }}}} have been available for 5 "
        "minutes: one more lost pod or node stops it. kubectl -n {{ $labels.namespace }} describe "
        "deployment {{ $labels.deployment }} tells why (scheduling, probes, crashes).",
    ),
)

_RESOURCE_ALERTS = (
    Alert(
        "MeshContainerCPUHigh",
        # The limit, not the request: the autoscalers already scale at 75% of the request, so
        # above the request is normal; near the limit the container is about to be throttled.
        _above(cpu_of_limit(_NS, "5m"), OF_LIMIT),
        "15m", "warning",
        "{{ $labels.pod }}/{{ $labels.container }}: CPU at {{ $value | humanizePercentage }} of its limit",
        f"{{{{ $labels.pod }}}}'s container {{{{ $labels.container }}}} used more than {OF_LIMIT:.0%} of its "
        "CPU limit for 15 minutes: it is about to be throttled, and its calls slow down. Check "
        "whether its autoscaler is at its maximum.",
    ),
    Alert(
        "MeshContainerMemoryHigh",
        _above(memory_of_limit(_NS), OF_LIMIT),
        "5m", "warning",
        "{{ $labels.pod }}/{{ $labels.container }}: memory at {{ $value | humanizePercentage }} of its limit",
        f"{{{{ $labels.pod }}}}'s container {{{{ $labels.container }}}} has had a working set above "
        f"{OF_LIMIT:.0%} of its memory limit for 5 minutes: near the limit it is OOM-killed.",
    ),
)

_NATS_ALERTS = (
    Alert(
        "NatsSlowConsumers",
        f"increase(gnatsd_varz_slow_consumers{{{_NS}}}[5m]) > 0",
        "1m", "warning",
        "NATS server {{ $labels.server_id }} cut off slow consumers",
        "{{ $labels.server_id }} closed connections that did not read their messages fast enough "
        "(their pending buffer filled). A mesh host cut off reconnects, but the messages are lost. "
        "Look for hosts at their CPU limit and for NATS reconnects on the dashboard.",
    ),
    Alert(
        "NatsJetStreamReplicaLagging",
        _above(jetstream_replica_lag(_NS, "1m"), 0),
        "10m", "warning",
        "JetStream: {{ $labels.server_name }}'s replica of {{ $labels.stream_name }} is behind",
        "For 10 minutes, {{ $labels.server_name }}'s replica of stream {{ $labels.stream_name }} has not "
        "reached the last sequence its leader had a minute earlier ({{ $value }} messages short). "
        "Losing another replica of it loses writes. The server's /healthz (its readiness) names "
        "the stream; check its disk and CPU.",
    ),
)

_TRANSPORT_ALERTS = (
    Alert(
        "MeshCircuitOpen",
        f"max by (namespace, job, pod, target) (nats_transport_circuit_state{{{_NS}}}) == 2",
        "1m", "warning",
        "{{ $labels.job }} fails its calls to {{ $labels.target }} fast (circuit open)",
        "{{ $labels.pod }}'s circuit to {{ $labels.target }} has been open for a minute: too many of "
        "its calls there failed, so it answers them at once with UNAVAILABLE. Look at "
        "{{ $labels.target }} first (its errors, replicas and readiness).",
    ),
    Alert(
        "MeshDroppedMessages",
        f"sum by (namespace, job, pod) (increase(nats_transport_dropped_messages_total{{{_NS}}}[5m])) > 0",
        "1m", "warning",
        "{{ $labels.pod }} dropped NATS messages it could not process",
        "{{ $labels.pod }} received messages it could not process (malformed headers, a protocol "
        "it does not speak) and dropped them. Its log names each; a caller of an incompatible "
        "version is the usual cause.",
    ),
)

ALERTS = (*_TARGET_ALERTS, *_RESOURCE_ALERTS, *_NATS_ALERTS, *_TRANSPORT_ALERTS)


def prometheus_rule() -> dict[str, Any]:
    """Every alert, grouped by what it watches."""
    groups = [
        ("mesh-targets", _TARGET_ALERTS),
        ("mesh-resources", _RESOURCE_ALERTS),
        ("mesh-nats", _NATS_ALERTS),
        ("mesh-transport", _TRANSPORT_ALERTS),
    ]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": RULES, "labels": labels(RULES, "monitoring")},
        "spec": {"groups": [{"name": name, "rules": [alert.rule() for alert in alerts]} for name, alerts in groups]},
    }
