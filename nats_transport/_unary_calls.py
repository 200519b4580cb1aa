"""The unary calls a server is running (wire spec §5): keepalive PINGs on the reply subjects of
slow ones, cancellation when their client gives them up, and a last answer for each when the
server stops without finishing them.

Calls are indexed by reply subject, which is also what a cancel message names. One timer per
server sweeps the calls for PINGs; a fast call costs a dict insert and delete, not a timer.
"""

from __future__ import annotations

import asyncio
import math
import time

import grpc
from nats.aio.client import Client

from nats_transport import _envelope as env
from nats_transport._cancel_watch import cancel_call_task
from nats_transport._context import CallState
from nats_transport._envelope import Kind
from nats_transport._replies import status_reply
from nats_transport._stream import StreamFailure, publish_quietly

EARLY_CANCELS = 1024
"""Cancels that matched no call, remembered in case their call is still on its way here."""

_LONGEST_REMEMBERED = 512  # characters: a reply subject longer than this is no inbox of ours
CANCELLED_BY_CLIENT = "cancelled by the client"
CLIENT_CANCELLED = StreamFailure(grpc.StatusCode.CANCELLED, CANCELLED_BY_CLIENT)
"""How a call ends when its client cancels it without saying why."""


class UnaryCall:
    """One unary call in progress: its keepalive state, and what cancelling it takes."""

    __slots__ = ("cancelled", "due", "interval", "last", "reply", "seq", "state", "task")

    def __init__(
        self, reply: str, interval: float | None, state: CallState, task: asyncio.Task[None], now: float
    ) -> None:
        self.reply = reply
        self.interval = interval  # of this call's PINGs; None: its client wants none
        self.due = math.inf if interval is None else now + interval
        self.seq = 0  # PINGs sent so far: the reply's DATA chunks are numbered on from here
        self.last: asyncio.Task[None] | None = None
        self.state = state
        self.task = task
        self.cancelled = False

    async def settle(self) -> None:
        """Wait for a PING in flight, so the reply cannot overtake it."""
        if self.last is not None:
            await self.last

    def mark_cancelled(self, code: grpc.StatusCode, details: str) -> None:
        """End the call as its client asked: nothing more is sent on it."""
        self.cancelled = True
        # Set before the handler unwinds, so interceptors and logs read this status, whatever
        # the handler set before (as grpc.aio reports a call its client cancelled).
        self.state.code, self.state.details = code, details
        self.state.cancel()

    def cancel(self, code: grpc.StatusCode, details: str) -> None:
        """End the call and cancel its handler's task."""
        self.mark_cancelled(code, details)
        cancel_call_task(self.task, self.state.method)


class UnaryCalls:
    """The unary calls in progress on one server."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._calls: dict[str, UnaryCall] = {}
        # Reply subjects of cancels that matched no call, oldest first: a cancel may overtake its
        # call (each subscription has its own dispatch task), which is then ended on arrival.
        self._early: dict[str, None] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._tick = math.inf

    def begin(
        self, reply: str, interval: float | None, state: CallState, task: asyncio.Task[None]
    ) -> UnaryCall:
        """Track a call about to run; if its cancel came first, it is returned cancelled
        (and untracked): its handler must not run."""
        call = UnaryCall(reply, interval, state, task, time.monotonic())
        if self._early and reply in self._early:
            del self._early[reply]
            call.mark_cancelled(grpc.StatusCode.CANCELLED, CANCELLED_BY_CLIENT)
            return call
        self._calls[reply] = call  # also how stop() finds the calls it must answer
        if interval is not None and interval / 2 < self._tick:
            self._schedule(interval / 2)
        return call

    def end(self, call: UnaryCall) -> None:
        """Stop tracking a call whose handler has returned."""
        other = self._calls.pop(call.reply, None)
        if other is not None and other is not call:
            # A client reused a reply subject for two calls at once (the spec forbids it): the
            # later one keeps the index.
            self._calls[call.reply] = other

    def cancel(self, reply: str, code: grpc.StatusCode, details: str) -> bool:
        """Cancel the call on ``reply`` if it runs here; False if none does (the cancel is then
        remembered, in case its call is still on its way) or it is cancelled already."""
        call = self._calls.get(reply)
        if call is None:
            if len(reply) <= _LONGEST_REMEMBERED:
                self._early[reply] = None
                if len(self._early) > EARLY_CANCELS:
                    del self._early[next(iter(self._early))]
            return False
        if call.cancelled:
            return False
        call.cancel(code, details)
        return True

    def _schedule(self, tick: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._tick = tick
        self._handle = asyncio.get_running_loop().call_later(tick, self._sweep)

    def _sweep(self) -> None:
        self._handle = None
        self._tick = math.inf
        if not self._calls:
            return
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        tick = math.inf
        for call in self._calls.values():
            if call.interval is None or call.cancelled:
                continue
            if call.due <= now:
                body = env.pack(Kind.PING, call.seq)
                call.seq += 1
                call.due = now + call.interval
                call.last = loop.create_task(publish_quietly(self._nc, call.reply, body))
            tick = min(tick, call.interval / 2)
        if tick < math.inf:
            self._schedule(tick)

    async def abandon_all(self, status: tuple[grpc.StatusCode, str]) -> None:
        """Answer every unary call still running with ``status`` (the server is giving up on
        them), so their clients need not wait for the keepalive timeout."""
        calls, self._calls = list(self._calls.values()), {}
        for call in calls:
            if call.cancelled:
                continue  # its client is gone
            await call.settle()
            # After PINGs the client expects numbered chunks; before any, a bare trailer frame.
            await publish_quietly(self._nc, call.reply, status_reply(*status, call.seq or None))

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._tick = math.inf
