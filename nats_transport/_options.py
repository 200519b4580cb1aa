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
        keepalive_interval: seconds of silence on a call before a PING is sent; None: see the
            side's own options. Negotiated per call (wire protocol 1.1, docs/wire-protocol.md
            §5 and §6.8): the client asks for PINGs at its interval, and the server sends them
            at that interval (50 ms at the least) or at its own if shorter.
        keepalive_timeout: seconds without hearing from the peer before the call fails with
            UNAVAILABLE; None disables. Must exceed ``keepalive_interval``. Applies only to
            PINGs the peer announced, and is never shorter than three of their intervals.
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

    Keepalives (wire protocol 1.1): the server PINGs each call at the interval its client asks
    for, 50 ms at the least, whatever ``keepalive_interval`` says, since a client cannot be told
    in time that no PING will come. A call that does not say (from a 1.0 client, or from a
    default client on the fast path) asks for one PING a second. ``keepalive_interval`` only
    shortens these intervals: no call goes longer than that without a PING. ``None`` therefore
    means: PING only as clients ask, and never give up a 1.0 client's stream for its silence.
    ``keepalive_timeout`` gives a stream up after that much silence from a client that announced
    PINGs of its own (never before three of its intervals), or from a 1.0 client when
    ``keepalive_interval`` is set (the 1.0 pairing of defaults); None: never.

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

    Keepalives: with a ``keepalive_interval`` and a ``keepalive_timeout``, each call asks the
    server for PINGs at that interval (a stream also sends its own) and fails UNAVAILABLE after
    ``max(keepalive_timeout, 3 * keepalive_interval)`` of silence (a wire protocol 1.0 server
    ignores the request and PINGs at its own interval, if any). With ``keepalive_interval=None``
    the client asks for no PINGs, sends none, and never gives a call up for silence: servers then
    keep its idle streams open too.

    Attributes:
        circuit_breaker: when calls to the target fail fast after several in a row heard
            nothing in time (see ``CircuitBreakerOptions``); None turns the breaker off.
    """

    circuit_breaker: CircuitBreakerOptions | None = field(default_factory=CircuitBreakerOptions)
