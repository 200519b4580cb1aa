"""Keeps one malformed message from stopping a NATS connection, and tells when a connection is stuck.

nats-py (checked against 2.16.0) parses each message's header block in the connection's single
reader task. A header block it does not expect (``NATS/1.0`` with no CRLF, ``NATS/`` alone, a
status line that is not UTF-8, ...) raises out of ``Client._process_msg``; the reader task logs
"encountered error" and ends, while ``is_connected`` stays True. From then on the connection
receives nothing: every call on it waits for its deadline, until nats-py's own PING timer (two
minutes by default, several missed PONGs) notices. Anyone who may publish to one subject the
connection subscribes to (``$SRV.PING`` reaches every server) could deafen every host at once.

``guard_connection`` wraps the client's per-message entry point so that a message whose
processing raises is dropped, counted and logged (rate-limited: an attacker must not be able to
flood the log), and the reader goes on. It wraps the instance, not the class, so it applies to
connections the caller created with plain ``nats.connect``. It is idempotent; every server and
channel of this package applies it to the connection it is given.

nats-py 2.16.0 also writes a PING straight to the socket while earlier commands (a SUB, a PUB)
may still wait in its pending buffer for the flusher task, so ``flush()`` can return before the
server has seen them: a server that subscribed and flushed was then, about once in 70 starts on
a TLS connection, not yet subscribed when its first caller published (no responders). The guard
sends PINGs through the pending buffer, behind everything written before them.

nats-py's header parser also keeps only the last line of a key that repeats; the guard has it
join repeated lines with ``,`` (wire spec §4), looking at a block again only when it holds fewer
keys than lines, so the hot path pays one ``bytes.count``. Plain header blocks (no status line)
are read by ``parse_plain_block``, as nats-py reads them at a fraction of its cost; nats-py's
parser reads the others.

The transport's own hot subscriptions (a server's calls, a connection's unary replies) are
subscribed with ``subscribe_direct``: the guard hands their messages straight from the reader to
a plain function, skipping the subscription's queue and its dispatch task. Each message then
costs one hop through the event loop fewer on each side of a call; the functions never block
(they resolve a future or start a task), so the reader is never held up by them. nats-py's
slow-consumer limits do not apply to them: what bounds them is the server's admission limit and
the calls a client has waiting.

A guard cannot foresee every future nats-py bug, so ``connection_problem`` is the watchdog's
eye: it reports a reader task that has died on a connection that claims to be connected, or
PINGs left unanswered. Connect with a short ``ping_interval`` (``WATCHDOG_CONNECT_OPTIONS``) and
nats-py itself replaces a connection whose PONGs stop (its stale-connection handling reconnects
and restores every subscription); a host's liveness probe fails meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable
from typing import Any

from nats.aio.client import PING_PROTO, Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from nats_transport._metadata import fold_repeated_lines, parse_plain_block

log = logging.getLogger("nats_transport.connection")

# nats-py's stale-connection detection, tightened: a PING every 2 s and a reconnect once more
# than 2 are unanswered, so a connection that stopped reading is replaced within ~6 s instead of
# the defaults' ~6 minutes. Costs one tiny PING/PONG per 2 s per connection.
WATCHDOG_CONNECT_OPTIONS: dict[str, Any] = {"ping_interval": 2, "max_outstanding_pings": 2}

# The first few dropped messages are logged one by one, then one line per this many.
_LOG_FIRST = 5
_LOG_EVERY = 1000

DirectHandler = Callable[[Msg], None]

_dropped: weakref.WeakKeyDictionary[Client, int] = weakref.WeakKeyDictionary()
# Per guarded connection, an attribute of the client itself: subscription id -> (the
# subscription, its direct handler). Not a module-level weak dict keyed by the client: the
# subscription and the handler reference the client, so such a dict would keep every client
# it ever held alive; on the client they form a cycle the garbage collector frees with it.
_ROUTES = "_nats_transport_direct_routes"


def guard_connection(nc: Client) -> Client:
    """Make ``nc`` drop, rather than die of, a message it cannot process, and join header lines
    that repeat a key. Returns ``nc``."""
    if nc in _dropped:
        return nc
    _dropped[nc] = 0
    routes: dict[int, tuple[Subscription, DirectHandler]] = {}
    setattr(nc, _ROUTES, routes)
    process = nc._process_msg  # the bound method the protocol parser calls for each MSG/HMSG
    parse_headers = nc._process_headers  # what it calls for a header block
    reference = weakref.ref(nc)

    async def process_guarded(sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
        try:
            route = routes.get(sid)
            if route is not None:
                client = reference()
                sub = route[0]
                # Only while nats-py still holds the subscription: after an unsubscribe or a
                # drain, stragglers take nats-py's own path (which drops them).
                if client is not None and client._subs.get(sid) is not sub:
                    del routes[sid]
                elif client is not None:
                    stats = client.stats
                    stats["in_msgs"] += 1
                    stats["in_bytes"] += len(data)
                    sub._received += 1
                    parsed = None
                    if headers:
                        # The plain reader at once; only a block it leaves to nats-py is awaited.
                        plain = parse_plain_block(headers)
                        parsed = (plain or None) if plain is not None else await parse_by_nats_py(headers)
                    route[1](Msg(client, subject.decode(), reply.decode(), data, parsed, _sid=sid))
                    return
            await process(sid, subject, reply, data, headers)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            client = reference()
            if client is not None:
                _record_drop(client, subject, exc)

    async def send_ping_in_order(future: asyncio.Future[Any] | None = None) -> None:
        client = reference()
        if client is None:
            return
        client._pongs.append(future if future is not None else asyncio.get_running_loop().create_future())
        await client._send_command(PING_PROTO)
        await client._flush_pending()

    async def parse_joined(headers: bytes | None) -> dict[str, str] | None:
        if not headers:  # nats-py asks for every message, with or without a header block
            return None
        plain = parse_plain_block(headers)
        return (plain or None) if plain is not None else await parse_by_nats_py(headers)

    async def parse_by_nats_py(headers: bytes) -> dict[str, str] | None:
        parsed: dict[str, str] | None = await parse_headers(headers)
        # CRLFs: the version line's, one per header line and the blank line's. Fewer keys than
        # header lines means a key repeated (or a line nats-py skipped): only then look again.
        if parsed and len(parsed) < headers.count(b"\r\n") - 2:
            fold_repeated_lines(headers, parsed)
        return parsed

    nc._process_msg = process_guarded  # type: ignore[method-assign]  # instance-level wrap, see above
    nc._process_headers = parse_joined  # type: ignore[method-assign]
    nc._send_ping = send_ping_in_order  # type: ignore[method-assign]  # PING behind pending commands
    return nc


async def subscribe_direct(nc: Client, subject: str, handler: DirectHandler, queue: str = "") -> Subscription:
    """Subscribe ``handler`` to ``subject`` on the guarded connection ``nc``, its messages handed
    to it straight from the reader (see the module's docstring). ``handler`` must not block or
    raise; what it raises is dropped and counted like a malformed message."""

    async def through_nats_py(msg: Msg) -> None:
        # Used only if the guard is bypassed (another wrapper put over ours, say): same handler.
        handler(msg)

    sub = await nc.subscribe(subject, queue=queue, cb=through_nats_py)
    routes: dict[int, tuple[Subscription, DirectHandler]] | None = getattr(nc, _ROUTES, None)
    if routes is not None:
        routes[sub._id] = (sub, handler)
    return sub


def dropped_messages(nc: Client) -> int:
    """How many messages ``nc`` dropped because they could not be processed (0 if unguarded)."""
    return _dropped.get(nc, 0)


def connection_problem(nc: Client) -> str | None:
    """Why ``nc`` cannot receive although it may say it is connected, or None if it looks well.

    Only meaningful while ``nc.is_connected``: reconnecting and closed states are reported by
    nats-py itself.
    """
    if not nc.is_connected:
        return None
    reader = nc._reading_task
    if reader is None or reader.done():
        return "the NATS reader task has stopped"
    unanswered = nc._pings_outstanding
    if unanswered >= 2:
        return f"{unanswered} PINGs to the NATS server are unanswered"
    return None


def _record_drop(nc: Client, subject: bytes, exc: Exception) -> None:
    count = _dropped[nc] = _dropped.get(nc, 0) + 1
    if count <= _LOG_FIRST or count % _LOG_EVERY == 0:
        log.warning(
            "dropped a message that could not be processed (%d so far)",
            count,
            extra={"subject": _printable(subject), "error": f"{type(exc).__name__}: {exc}"},
        )


def _printable(subject: bytes | str) -> str:
    text = subject.decode(errors="replace") if isinstance(subject, bytes | bytearray) else str(subject)
    return text[:128]
