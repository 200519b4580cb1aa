"""Which metadata crosses the ingress: HTTP/2 and gRPC transport headers stay on their own hop.
Pure code, no I/O.

Requests: the HTTP/2 hop's pseudo-headers (``:authority``), its transport headers (``te``,
``content-type``, ``user-agent``) and every ``grpc-*`` key belong to that hop; the NATS hop
makes its own (``grpc-timeout`` from the remaining deadline). ``nats-grpc-*`` keys are the NATS
transport's own signalling and must never be injectable by an outside client. Nor may an
outside client claim an identity in headers: ``x-actor-id`` and every ``x-mesh-*`` key are
dropped (who calls is the verified ``authorization`` bearer token, which passes through).

Responses: the same, except ``grpc-status-details-bin``, which carries the rich
``google.rpc.Status`` a client reads with ``rpc_status.from_call``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

MetadataPair = tuple[str, str | bytes]

STATUS_DETAILS_KEY = "grpc-status-details-bin"
# Prefixes owned by a transport: HTTP/2 pseudo-headers, gRPC's and the NATS transport's own.
RESERVED_PREFIXES = (":", "grpc-", "nats-grpc-")
# Hop-by-hop headers (RFC 9110 7.6.1) and those gRPC sets per connection.
HOP_HEADERS = frozenset(
    {"te", "content-type", "user-agent", "host", "connection", "keep-alive", "proxy-connection",
     "transfer-encoding", "upgrade"}
)
# Identity a client could spoof: only the mesh itself may set these, never an outside caller.
SPOOFABLE_KEYS = frozenset({"x-actor-id"})
SPOOFABLE_PREFIXES = ("x-mesh-",)


def _pairs(metadata: Iterable[Any] | None) -> Iterable[tuple[str, Any]]:
    # grpc.aio hands out _Metadatum tuples or a grpc.aio.Metadata; both iterate as (key, value).
    for item in metadata or ():
        key, value = item
        yield str(key).lower(), value


def _is_transport_key(key: str) -> bool:
    return key.startswith(RESERVED_PREFIXES) or key in HOP_HEADERS


def is_spoofable(key: str) -> bool:
    """True for a (lower-case) key that claims an identity only the mesh may set."""
    return key in SPOOFABLE_KEYS or key.startswith(SPOOFABLE_PREFIXES)


def request_metadata(metadata: Iterable[Any] | None) -> tuple[MetadataPair, ...]:
    """What of a client's metadata the target receives over NATS."""
    return tuple(
        (key, value) for key, value in _pairs(metadata) if not _is_transport_key(key) and not is_spoofable(key)
    )


def initial_metadata(metadata: Iterable[Any] | None) -> tuple[MetadataPair, ...]:
    """What of a target's initial metadata the client receives over HTTP/2."""
    return tuple((key, value) for key, value in _pairs(metadata) if not _is_transport_key(key))


def trailing_metadata(metadata: Iterable[Any] | None) -> tuple[MetadataPair, ...]:
    """What of a target's trailing metadata the client receives: user keys and rich details."""
    return tuple(
        (key, value) for key, value in _pairs(metadata) if key == STATUS_DETAILS_KEY or not _is_transport_key(key)
    )


def remaining_timeout(time_remaining: float | None) -> float | None:
    """The NATS hop's timeout from the HTTP/2 call's ``time_remaining()``.

    grpcio reports no deadline as None on the asyncio server, and as ~9.2e18 s elsewhere: both
    mean none. A deadline already past still travels, as a tiny positive value,
    so the target answers DEADLINE_EXCEEDED rather than running without one.
    """
    if time_remaining is None or time_remaining > 1e9:
        return None
    return max(time_remaining, 1e-6)
