"""The mesh's Grafana dashboard (the classic JSON model): calls, errors and latency per target and
method, the transport (in-flight calls, stream credit stalls, NATS reconnects, circuits), the
containers' CPU and memory, and NATS (slow consumers, JetStream replica lag).

Variables: ``datasource`` (any Prometheus, so the file imports anywhere and provisions through
Grafana's sidecar alike), ``namespace``, ``target`` (a Deployment: the PodMonitor's ``job``) and
``method``. The first line after the opening brace names where the file comes from, since JSON
has no comments (``mesh k8s render`` recognises its own files by it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mesh.k8s.common import NAMESPACE
from mesh.k8s.queries import (
    cpu_of_limit,
    error_ratio,
    jetstream_replica_lag,
    latency_quantile,
    matchers,
    memory_of_limit,
)

__all__ = ["SCHEMA_VERSION", "UID", "dashboard", "text"]

UID = "nats-grpc-mesh"
# Grafana 11's classic model; later versions migrate it when they load it.
SCHEMA_VERSION = 39
_SOURCE = {"type": "prometheus", "uid": "${datasource}"}
_WINDOW = "$__rate_interval"
_QUANTILES = (0.5, 0.95, 0.99)
_NS = matchers(namespace="$namespace")
_PODS = matchers('job=~"$target"', namespace="$namespace")
_CALLS = matchers('job=~"$target"', 'grpc_method=~"$method"', namespace="$namespace")
# cAdvisor and kube-state-metrics know pods, not Deployments: a Deployment's pods are named
# <deployment>-<template hash>-<suffix>.
_CONTAINERS = matchers('container="mesh"', 'pod=~"${target:regex}-[a-z0-9]+-[a-z0-9]+"', namespace="$namespace")


@dataclass(frozen=True, slots=True)
class _Query:
    expr: str
    legend: str


@dataclass
class _Layout:
    """Hands out panel ids and places panels left to right, in rows."""

    next_id: int = 1
    x: int = 0
    y: int = 0
    height: int = 0

    def place(self, width: int, height: int) -> dict[str, int]:
        if self.x + width > 24:
            self.x, self.y, self.height = 0, self.y + self.height, 0
        grid = {"h": height, "w": width, "x": self.x, "y": self.y}
        self.x += width
        self.height = max(self.height, height)
        return grid

    def row(self, title: str) -> dict[str, Any]:
        if self.x:
            self.x, self.y, self.height = 0, self.y + self.height, 0
        panel = {"id": self.take(), "type": "row", "title": title, "collapsed": False,
                 "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": []}
        self.y += 1
        return panel

    def take(self) -> int:
        self.next_id += 1
        return self.next_id - 1


def _panel(layout: _Layout, title: str, description: str, unit: str, queries: Sequence[_Query], *,
           width: int = 12, kind: str = "timeseries", defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": layout.take(),
        "type": kind,
        "title": title,
        "description": description,
        "datasource": _SOURCE,
        "gridPos": layout.place(width, 8),
        "fieldConfig": {"defaults": {"unit": unit, **(defaults or {})}, "overrides": []},
        "options": {
            "legend": {"showLegend": True, "displayMode": "list", "placement": "bottom", "calcs": []},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": [{"refId": chr(ord("A") + i), "datasource": _SOURCE, "expr": query.expr,
                     "legendFormat": query.legend, "range": True}
                    for i, query in enumerate(queries)],
    }


def _quantiles(select: str, by: str, legend: str) -> list[_Query]:
    return [_Query(latency_quantile(q, select, _WINDOW, by), f"{legend} p{round(q * 100)}") for q in _QUANTILES]


def _calls(layout: _Layout) -> list[dict[str, Any]]:
    return [
        layout.row("Calls"),
        _panel(layout, "Calls per second", "Calls handled by each target's replicas, every outcome.", "reqps",
               [_Query(f"sum by (job) (rate(grpc_server_handled_total{{{_CALLS}}}[{_WINDOW}]))", "{{job}}")]),
        _panel(layout, "Error ratio (server's fault)",
               "Calls ending UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE or DATA_LOSS over "
               "all calls: what MeshTargetErrorRatioHigh fires on above 5%.", "percentunit",
               [_Query(error_ratio(_CALLS, _WINDOW, "job"), "{{job}}")], defaults={"min": 0}),
        _panel(layout, "Calls by code (not OK)", "Every code but OK, the caller's included.", "reqps",
               [_Query(f"sum by (job, grpc_code) (rate(grpc_server_handled_total{{{_CALLS}, grpc_code!=\"OK\"}}"
                       f"[{_WINDOW}])) > 0", "{{job}} {{grpc_code}}")]),
        _panel(layout, "Calls per second by method", "Calls handled, per target and method.", "reqps",
               [_Query(f"sum by (job, grpc_method) (rate(grpc_server_handled_total{{{_CALLS}}}[{_WINDOW}]))",
                       "{{job}} {{grpc_method}}")]),
    ]


def _latency(layout: _Layout) -> list[dict[str, Any]]:
    return [
        layout.row("Latency"),
        _panel(layout, "Unary latency per target", "p50, p95 and p99 of the server's handling time of unary calls "
               "(MeshTargetLatencyHigh fires on p99 above 0.5 s).", "s",
               _quantiles(f'{_CALLS}, grpc_type="unary"', "job", "{{job}}")),
        _panel(layout, "Latency per method", "p50, p95 and p99 per method. A stream's time is its whole life, "
               "from its start to its status.", "s",
               _quantiles(_CALLS, "job, grpc_method", "{{job}} {{grpc_method}}")),
    ]


def _transport(layout: _Layout) -> list[dict[str, Any]]:
    circuit = {
        "min": 0, "max": 2,
        "mappings": [{"type": "value", "options": {
            "0": {"text": "closed", "color": "green", "index": 0},
            "1": {"text": "half-open", "color": "yellow", "index": 1},
            "2": {"text": "open", "color": "red", "index": 2},
        }}],
        "thresholds": {"mode": "absolute", "steps": [
            {"color": "green", "value": None}, {"color": "yellow", "value": 1}, {"color": "red", "value": 2}]},
        "color": {"mode": "thresholds"},
    }
    return [
        layout.row("Transport"),
        _panel(layout, "In-flight calls", "Calls being handled now, per target.", "short",
               [_Query(f"sum by (job) (nats_transport_in_flight{{{_PODS}}})", "{{job}}")], width=8),
        _panel(layout, "Stream credit stalls", "Times a stream sender waited for its peer's flow-control credit: "
               "a reader slower than its writer.", "ops",
               [_Query(f"sum by (job) (rate(nats_transport_stream_credit_stalls_total{{{_PODS}}}[{_WINDOW}]))",
                       "{{job}}")], width=8),
        _panel(layout, "Calls refused at the concurrency limit", "RESOURCE_EXHAUSTED from a replica's own "
               "--max-concurrent-rpcs: the target needs more replicas.", "reqps",
               [_Query(f"sum by (job) (rate(nats_transport_rejected_total{{{_PODS}}}[{_WINDOW}]))", "{{job}}")],
               width=8),
        _panel(layout, "NATS reconnects", "Reconnections of each pod's NATS connections.", "short",
               [_Query(f"sum by (job, pod) (increase(nats_transport_reconnects_total{{{_PODS}}}[{_WINDOW}]))",
                       "{{pod}}")], width=8),
        _panel(layout, "Dropped messages", "Messages a pod could not process (MeshDroppedMessages).", "short",
               [_Query(f"sum by (job, pod) (increase(nats_transport_dropped_messages_total{{{_PODS}}}[{_WINDOW}]))",
                       "{{pod}}")], width=8),
        _panel(layout, "Circuits", "Each caller's circuit to each target it calls: open fails calls fast "
               "(MeshCircuitOpen).", "short",
               [_Query(f"max by (job, target) (nats_transport_circuit_state{{{_PODS}}})", "{{job}} → {{target}}")],
               width=8, kind="state-timeline", defaults=circuit),
    ]


def _resources(layout: _Layout) -> list[dict[str, Any]]:
    return [
        layout.row("Resources"),
        _panel(layout, "CPU", "CPU of each pod's mesh container (cAdvisor).", "short",
               [_Query(f"sum by (pod) (rate(container_cpu_usage_seconds_total{{{_CONTAINERS}}}[{_WINDOW}]))",
                       "{{pod}}")], width=8),
        _panel(layout, "Memory", "Working set of each pod's mesh container (cAdvisor).", "bytes",
               [_Query(f"max by (pod) (container_memory_working_set_bytes{{{_CONTAINERS}}})", "{{pod}}")], width=8),
        _panel(layout, "CPU and memory of the limit", "What MeshContainerCPUHigh and MeshContainerMemoryHigh fire "
               "on above 80%.", "percentunit",
               [_Query(cpu_of_limit(_CONTAINERS, _WINDOW), "{{pod}} CPU"),
                _Query(memory_of_limit(_CONTAINERS), "{{pod}} memory")], width=8, defaults={"min": 0}),
    ]


def _nats(layout: _Layout) -> list[dict[str, Any]]:
    return [
        layout.row("NATS"),
        _panel(layout, "Slow consumers", "Connections each NATS server cut off for not reading fast enough "
               "(NatsSlowConsumers).", "short",
               [_Query(f"sum by (server_id) (increase(gnatsd_varz_slow_consumers{{{_NS}}}[{_WINDOW}]))",
                       "{{server_id}}")]),
        _panel(layout, "JetStream replicas behind", "Messages each follower is short of where its stream's leader "
               "was a minute earlier; above 0 for 10 minutes fires NatsJetStreamReplicaLagging.", "short",
               [_Query(jetstream_replica_lag(_NS, "1m"), "{{stream_name}} on {{server_name}}")]),
    ]


def _variable(name: str, label: str, query: str, *, everything: bool, current: str | None = None) -> dict[str, Any]:
    chosen = {"text": "All", "value": "$__all"} if current is None else {"text": current, "value": current}
    return {
        "name": name, "label": label, "type": "query", "datasource": _SOURCE,
        "query": query, "definition": query,
        # On dashboard load and on time range change: new targets and methods appear.
        "refresh": 2, "sort": 1, "multi": everything, "includeAll": everything,
        "current": chosen, "options": [], "hide": 0, "regex": "",
    }


def _templating() -> list[dict[str, Any]]:
    return [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
         "current": {}, "options": [], "hide": 0, "refresh": 1, "regex": ""},
        _variable("namespace", "Namespace", "label_values(nats_transport_reconnects_total, namespace)",
                  everything=False, current=NAMESPACE),
        # Every mesh pod reports reconnects, the gateway included.
        _variable("target", "Target", 'label_values(nats_transport_reconnects_total{namespace="$namespace"}, job)',
                  everything=True),
        _variable("method", "Method",
                  'label_values(grpc_server_started_total{namespace="$namespace", job=~"$target"}, grpc_method)',
                  everything=True),
    ]


def dashboard(header: str) -> dict[str, Any]:
    """The dashboard; ``header`` (where it comes from) ends its description."""
    layout = _Layout()
    panels = [*_calls(layout), *_latency(layout), *_transport(layout), *_resources(layout), *_nats(layout)]
    return {
        "description": f"The NATS gRPC mesh per target and method. {header}: change those and render again.",
        "id": None,
        "uid": UID,
        "title": "NATS gRPC mesh",
        "tags": ["nats-grpc-mesh", "grpc", "nats"],
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,  # one crosshair across panels
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "timezone": "browser",
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": _templating()},
        "panels": panels,
    }


def text(header: str) -> str:
    """The dashboard as the file holds it: indented JSON, keys in the order above."""
    return json.dumps(dashboard(header), indent=2, ensure_ascii=False) + "\n"
