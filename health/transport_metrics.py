"""``nats_transport_*`` metrics: the transport's own counters, copied into Prometheus.

The transport stays free of Prometheus (it is publishable on its own); a refresher reads its
counters every few seconds, and on every scrape, and moves the Prometheus metrics along.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.registry import REGISTRY

from nats_transport import circuit_states, dropped_messages


class TransportMetrics:
    """Mirrors the counters of a host's servers and its NATS connection."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.in_flight = Gauge("nats_transport_in_flight", "Calls being handled.", ("target",),
                               registry=registry, multiprocess_mode="livesum")
        self.rejected = Counter("nats_transport_rejected_total", "Calls refused at the concurrency limit.",
                                ("target",), registry=registry)
        self.received = Counter("nats_transport_received_bytes_total", "Payload bytes received.", ("target",),
                                registry=registry)
        self.sent = Counter("nats_transport_sent_bytes_total", "Payload bytes sent.", ("target",),
                            registry=registry)
        self.stalls = Counter("nats_transport_stream_credit_stalls_total",
                              "Times a stream sender waited for flow-control credit.", ("target",),
                              registry=registry)
        self.cancelled = Counter("nats_transport_unary_cancelled_total",
                                 "Unary handlers cancelled because their client gave the call up.", ("target",),
                                 registry=registry)
        self.cancels_ignored = Counter("nats_transport_cancels_ignored_total",
                                       "Cancel messages naming no unary call in progress on this replica.",
                                       ("target",), registry=registry)
        self.reconnects = Counter("nats_transport_reconnects_total", "Reconnections of the NATS connections.",
                                  registry=registry)
        self.dropped = Counter("nats_transport_dropped_messages_total",
                               "Messages dropped because they could not be processed (malformed headers...).",
                               registry=registry)
        self.circuit = Gauge("nats_transport_circuit_state",
                             "Circuit to each called target: 0 closed, 1 half-open, 2 open (failing fast).",
                             ("target",), registry=registry, multiprocess_mode="max")
        self._seen: dict[tuple[str, str], int] = {}

    def _advance(self, counter: Counter, key: tuple[str, str], value: int, *labels: str) -> None:
        # Counters only go up: add what changed since the last refresh.
        delta = value - self._seen.get(key, 0)
        if delta > 0:
            (counter.labels(*labels) if labels else counter).inc(delta)
            self._seen[key] = value

    def refresh(self, servers: Iterable[Any], connections: Iterable[Any]) -> None:
        """Read ``server.stats`` / ``server.in_flight`` of each server and the connections' stats."""
        for server in servers:
            target, stats = server.target, server.stats
            self.in_flight.labels(target).set(server.in_flight)
            self._advance(self.rejected, (target, "rejected"), stats.rejected, target)
            self._advance(self.received, (target, "received"), stats.bytes_received, target)
            self._advance(self.sent, (target, "sent"), stats.bytes_sent, target)
            self._advance(self.stalls, (target, "stalls"), stats.credit_stalls, target)
            self._advance(self.cancelled, (target, "cancelled"), stats.unary_cancelled, target)
            self._advance(self.cancels_ignored, (target, "cancels_ignored"), stats.cancels_ignored, target)
        connections = list(connections)
        self._advance(self.reconnects, ("", "reconnects"),
                      sum(int(nc.stats.get("reconnects", 0)) for nc in connections))
        self._advance(self.dropped, ("", "dropped"), sum(dropped_messages(nc) for nc in connections))
        for nc in connections:
            for target, state in circuit_states(nc).items():
                self.circuit.labels(target).set(int(state))
