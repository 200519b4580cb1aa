"""What a server counts: its transport counters, and its calls per endpoint for ``$SRV.STATS``."""

from __future__ import annotations

import time
from dataclasses import dataclass

import grpc

from nats_transport._context import CallState
from nats_transport._discovery import EndpointStats


@dataclass(slots=True)
class TransportStats:
    """Counters of one server since it started (read them; the server updates them).

    Attributes:
        rejected: calls refused at the concurrency limit.
        bytes_received: NATS payload bytes of calls and stream messages received.
        bytes_sent: payload bytes of unary replies and of finished streams sent.
        credit_stalls: times a finished stream's sender waited for flow-control credit.
        unary_cancelled: unary handlers cancelled because their client gave the call up.
        cancels_ignored: cancel messages naming no unary call in progress here when they came
            (calls of other replicas, calls already finished, malformed messages).
    """

    rejected: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    credit_stalls: int = 0
    unary_cancelled: int = 0
    cancels_ignored: int = 0


def count_call(
    endpoints: dict[str, EndpointStats], state: CallState, code: grpc.StatusCode | None, details: str | None
) -> None:
    """Count a finished call for ``$SRV.STATS``, with the status it ended with (None: OK)."""
    name = state.method[1:].replace("/", ".")
    stats = endpoints.get(name)
    if stats is None:
        stats = endpoints[name] = EndpointStats()
    stats.num_requests += 1
    stats.processing_time_ns += time.monotonic_ns() - state.started_ns
    if code is not None and code is not grpc.StatusCode.OK:
        stats.num_errors += 1
        stats.last_error = f"{code.name}: {details or ''}"
