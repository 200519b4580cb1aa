"""Options of channels and servers: frozen, keyword-only, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass, field

from nats_transport._circuit import CircuitBreakerOptions
from nats_transport._subjects import DEFAULT_PREFIX, check_token

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class TransportOptions:
    """What both ends of a call must agree on or bound.

    Attributes:
        subject_prefix: first token(s) of every call subject (``grpc`` by default).
        max_message_size: largest message accepted or sent, in bytes (gRPC's default, 4 MiB).
            Larger messages fail with RESOURCE_EXHAUSTED before anything is sent.
        stream_window: bytes a peer may send on a stream before we grant more credit.
        keepalive_interval: seconds of silence on a call before a PING is sent; None disables.
        keepalive_timeout: seconds without hearing from the peer before the call fails with
            UNAVAILABLE; None disables. Must exceed ``keepalive_interval``.
    """

    subject_prefix: str = DEFAULT_PREFIX
    max_message_size: int = 4 * MiB
    stream_window: int = 256 * 1024
    keepalive_interval: float | None = 1.0
    keepalive_timeout: float | None = 5.0

    def __post_init__(self) -> None:
        check_token(self.subject_prefix, "subject_prefix")
        if self.max_message_size <= 0:
            raise ValueError("max_message_size must be positive")
        if self.stream_window < 1024:
            raise ValueError("stream_window must be at least 1024 bytes")
        if self.keepalive_interval is not None and self.keepalive_interval <= 0:
            raise ValueError("keepalive_interval must be positive or None")
        if (
            self.keepalive_interval is not None
            and self.keepalive_timeout is not None
            and self.keepalive_timeout <= self.keepalive_interval
        ):
            raise ValueError("keepalive_timeout must exceed keepalive_interval")


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerOptions(TransportOptions):
    """Server-side options.

    Attributes:
        maximum_concurrent_rpcs: calls handled at once; more are refused with
            RESOURCE_EXHAUSTED (None: no limit).
        thread_pool_size: threads for plain-function handlers.
        version: reported in the NATS Services API (``$SRV.INFO``).
    """

    maximum_concurrent_rpcs: int | None = None
    thread_pool_size: int = 16
    version: str = "0.1.0"

    def __post_init__(self) -> None:
        TransportOptions.__post_init__(self)
        if self.maximum_concurrent_rpcs is not None and self.maximum_concurrent_rpcs <= 0:
            raise ValueError("maximum_concurrent_rpcs must be positive or None")
        if self.thread_pool_size <= 0:
            raise ValueError("thread_pool_size must be positive")


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelOptions(TransportOptions):
    """Client-side options.

    Attributes:
        circuit_breaker: when calls to the target fail fast after several in a row heard
            nothing in time (see ``CircuitBreakerOptions``); None turns the breaker off.
    """

    circuit_breaker: CircuitBreakerOptions | None = field(default_factory=CircuitBreakerOptions)
