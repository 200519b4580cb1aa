"""Keepalive negotiation (wire protocol 1.1, §5 and §6.8): at which interval each side PINGs a
call, and after how much silence it may give the call up. Pure code, no I/O.

A client says in ``nats-grpc-keepalive`` at which interval it wants PINGs (and, on a stream,
sends them); a server PINGs at that interval, bounded below by ``FLOOR``, whether or not its own
keepalives are on, and says so on a stream's ACCEPT. Each side then times a call out only on
PINGs the peer announced, and never before ``PATIENCE`` announced intervals: the peer's timer
granularity and a busy event loop must not look like death.
"""

from __future__ import annotations

from dataclasses import dataclass

from nats_transport._options import TransportOptions

FLOOR = 0.05
"""The shortest PING interval a server grants, in seconds: it bounds what one caller can make a
server send."""

DEFAULT_ASK = 1.0
"""The interval a fast-path request without the header asks for: what every 1.0 client expects by
default, so a default client needs no header."""

PATIENCE = 3
"""A side never gives a call up before this many of the intervals the peer announced."""

_MAX_DIGITS = 9


def encode_interval(seconds: float | None) -> str:
    """The header value for an interval: whole milliseconds, at least 1; ``0`` for no PINGs."""
    if seconds is None:
        return "0"
    return str(max(1, round(seconds * 1000)))


def parse_interval(value: str | None) -> float | None:
    """Seconds announced by a ``nats-grpc-keepalive`` header: 0.0 for no PINGs, None when the
    header is absent or malformed (the peer is then taken for a 1.0 peer)."""
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > _MAX_DIGITS or not (value.isascii() and value.isdigit()):
        return None
    return int(value) / 1000


# -- client ------------------------------------------------------------------------------------


def _client_timeout(options: TransportOptions) -> float | None:
    # A client without a keepalive interval neither PINGs nor gives calls up for silence.
    return options.keepalive_timeout if options.keepalive_interval is not None else None


def fast_path_ask(options: TransportOptions) -> str | None:
    """The ``nats-grpc-keepalive`` value for a fast-path request, or None to send no header:
    when the client times nothing out (PINGs it gets anyway are ignored), or asks for the
    default every header-less request asks for."""
    interval = options.keepalive_interval
    if interval is None or options.keepalive_timeout is None or interval == DEFAULT_ASK:
        return None
    return encode_interval(interval)


def fast_path_timeout(options: TransportOptions) -> float | None:
    """Silence after which a client fails a fast-path call it asked PINGs for; None: never."""
    interval, timeout = options.keepalive_interval, options.keepalive_timeout
    if interval is None or timeout is None:
        return None
    return max(timeout, PATIENCE * max(interval, FLOOR))


def stream_offer(options: TransportOptions) -> str:
    """The ``nats-grpc-keepalive`` value of a stream opening: the interval at which the client
    PINGs and asks to be PINGed, ``0`` when it does neither."""
    return encode_interval(options.keepalive_interval)


def stream_wait_timeout(options: TransportOptions) -> float | None:
    """The client's silence timeout on a stream before ACCEPT says what the server does."""
    return _client_timeout(options)


def stream_timeout_after_accept(options: TransportOptions, announced: float | None) -> float | None:
    """The client's silence timeout once ACCEPT arrived; ``announced`` is the server's PING
    interval from ACCEPT (0.0: none), None for a 1.0 server (the 1.0 rule: our own timeout)."""
    own = _client_timeout(options)
    if announced is None:
        return own
    if own is None or announced <= 0:
        return None
    return max(own, PATIENCE * announced)


# -- server ------------------------------------------------------------------------------------


def server_ping(own: float | None, asked: float | None) -> float | None:
    """The interval at which a server PINGs a call: ``asked`` by its client (None: no header, the
    1.0 default of one second), floored, and no longer than the server's ``own`` interval;
    None when the client asked for no PINGs."""
    if asked is None:
        asked = DEFAULT_ASK
    if asked <= 0:
        return None
    granted = max(asked, FLOOR)
    return granted if own is None else min(own, granted)


@dataclass(frozen=True, slots=True)
class StreamTerms:
    """The server's side of a stream's keepalives.

    Attributes:
        ping: the interval at which the server PINGs; None: never.
        timeout: client silence after which the server fails the call; None: never.
        answer: the ``nats-grpc-keepalive`` value for ACCEPT; None for a 1.0 client.
    """

    ping: float | None
    timeout: float | None
    answer: str | None


def server_stream_terms(options: TransportOptions, asked: float | None) -> StreamTerms:
    """What a server does on a stream whose opening announced ``asked`` (None: a 1.0 client)."""
    ping = server_ping(options.keepalive_interval, asked)
    if asked is None:
        # A 1.0 client PINGs at its own interval, every second by default: time it out only if
        # this server has keepalives on, the 1.0 pairing of defaults.
        timeout = options.keepalive_timeout if options.keepalive_interval is not None else None
        return StreamTerms(ping, timeout, None)
    timeout = None
    if asked > 0 and options.keepalive_timeout is not None:
        timeout = max(options.keepalive_timeout, PATIENCE * asked)
    return StreamTerms(ping, timeout, encode_interval(ping))
