"""Keepalives and last answers for unary calls in progress on a server (see the wire spec's
"Keepalive" and "Server shutdown" paragraphs of the unary section)."""

from __future__ import annotations

import asyncio
import itertools
import time

import grpc
from nats.aio.client import Client

from nats_transport import _envelope as env
from nats_transport import _framing
from nats_transport._envelope import Kind
from nats_transport._stream import publish_quietly


class UnaryPing:
    """Keepalive state of one unary call: PINGs sent so far and the last still in flight."""

    __slots__ = ("due", "last", "reply", "seq")

    def __init__(self, reply: str, due: float) -> None:
        self.reply = reply
        self.due = due
        self.seq = 0
        self.last: asyncio.Task[None] | None = None

    async def settle(self) -> None:
        """Wait for a PING in flight, so the reply cannot overtake it."""
        if self.last is not None:
            await self.last


class UnaryKeepalives:
    """The unary calls in progress: PINGs on the reply subjects of slow ones, so their clients
    know we live, and a last answer for each when the server stops without finishing them.

    One timer per server sweeps the calls in progress; fast calls cost a dict insert and
    delete, not a timer each.
    """

    def __init__(self, nc: Client, interval: float | None) -> None:
        self._nc = nc
        self._interval = interval
        self._calls: dict[int, UnaryPing] = {}
        self._ids = itertools.count()
        self._handle: asyncio.TimerHandle | None = None

    def begin(self, reply: str) -> tuple[int, UnaryPing]:
        ping = UnaryPing(reply, time.monotonic() + (self._interval or 0.0))
        key = next(self._ids)
        self._calls[key] = ping  # also how stop() finds the calls it must answer
        if self._interval is not None and self._handle is None:
            self._handle = asyncio.get_running_loop().call_later(self._interval / 2, self._sweep)
        return key, ping

    def end(self, key: int) -> None:
        self._calls.pop(key, None)

    def _sweep(self) -> None:
        assert self._interval is not None
        self._handle = None
        if not self._calls:
            return
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        for ping in self._calls.values():
            if ping.due <= now:
                body = env.pack(Kind.PING, ping.seq)
                ping.seq += 1
                ping.due = now + self._interval
                ping.last = loop.create_task(publish_quietly(self._nc, ping.reply, body))
        self._handle = loop.call_later(self._interval / 2, self._sweep)

    async def abandon_all(self, status: tuple[grpc.StatusCode, str]) -> None:
        """Answer every unary call still running with ``status`` (the server is giving up on
        them), so their clients need not wait for the keepalive timeout."""
        trailer = _framing.encode_trailers(_framing.Trailers(status[0].value[0], status[1]))
        calls, self._calls = list(self._calls.values()), {}
        for ping in calls:
            await ping.settle()
            # After PINGs the client expects numbered chunks; before any, a bare trailer frame.
            body = env.pack(Kind.DATA, ping.seq, trailer) if ping.seq else trailer
            await publish_quietly(self._nc, ping.reply, body)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
