"""One IngestEvents stream: a bounded window of events in flight, applied in order, acknowledged in order.

Flow control, in two layers:

- Credit (the protocol's): every acknowledgement carries ``credit = WINDOW`` (64), the number of
  events the engine may have unacknowledged after receiving it; the stream opens with the same
  allowance. A reader task takes requests off the stream into a queue; one worker applies them
  in order and writes the acknowledgements. Events applied one at a time keep a player's moves
  in the order the engine sent them.
- The transport's: with ``Overrun.HOLD`` (the default), the reader stops taking requests while
  ``WINDOW`` are in flight, so an engine that sends faster than the downstream services accept
  (ignoring its credit) finds its writes blocked by the transport's own flow control once the
  stream's buffers fill: memory stays bounded and nothing fails. With ``Overrun.FAIL`` the reader
  keeps reading, and a request that arrives while the window is full (the engine exceeded the
  credit it was given) ends the stream with RESOURCE_EXHAUSTED, as the proto describes.

The window counts an event as in flight from when it is read until its acknowledgement is
queued for writing; the slot is freed before the write, so an engine that reacts to the
acknowledgement at once always finds room.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import grpc
from gaming.body_broker_integration.v1 import body_broker_integration_pb2 as pb

from servicers._downstream import DependencyError
from servicers.body_broker_integration import _events
from servicers.body_broker_integration._forwarding import Forwarder, Refused
from servicers.body_broker_integration._records import EventIds
from servicers.errors import invalid_argument, rpc_error
from servicers.storage import KeyValue, RevisionConflict

_log = logging.getLogger(__name__)

WINDOW = 64
_END = object()


class Overrun(enum.Enum):
    """What happens when the engine sends more than its credit allows."""

    HOLD = "hold"
    FAIL = "fail"


class Flow:
    """Counters the servicer shows (and tests wait on): streams open, readers held at a full window."""

    def __init__(self) -> None:
        self.streams = 0
        self.held = 0

    def __repr__(self) -> str:
        return f"<Flow streams={self.streams} held={self.held}>"


class IngestStream:
    """Runs one IngestEvents call until the engine half-closes or the stream fails."""

    def __init__(
        self,
        requests: AsyncIterator[pb.IngestEventsRequest],
        context: grpc.aio.ServicerContext[Any, Any],
        *,
        forwarder: Forwarder,
        applied: KeyValue,
        overrun: Overrun,
        flow: Flow,
        window: int = WINDOW,
    ) -> None:
        self._requests = requests
        self._context = context
        self._forwarder = forwarder
        self._applied = applied
        self._overrun = overrun
        self._flow = flow
        self._window = window
        self._in_flight = 0
        self._room = asyncio.Event()
        self._room.set()
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._exceeded = asyncio.Event()
        self._last_sequence: int | None = None

    def __repr__(self) -> str:
        return f"<IngestStream in_flight={self._in_flight}/{self._window} overrun={self._overrun.value}>"

    async def run(self) -> None:
        """Read, apply and acknowledge until the engine is done; aborts the call on failure."""
        self._flow.streams += 1
        reader = asyncio.create_task(self._read())
        exceeded = asyncio.create_task(self._exceeded.wait())
        try:
            while True:
                request = await _first(self._queue.get(), exceeded)
                if self._exceeded.is_set():
                    break
                if request is _END:
                    await reader  # re-raises what ended the reading, if it failed
                    return
                reply = await _first(self._handle(request), exceeded)
                if self._exceeded.is_set():
                    break
                self._free_slot()
                await self._context.write(reply)
        finally:
            self._flow.streams -= 1
            for task in (reader, exceeded):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        raise rpc_error(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"more than {self._window} events unacknowledged: wait for credit before sending", "CREDIT_EXCEEDED",
        )

    async def _read(self) -> None:
        iterator = aiter(self._requests)
        try:
            while True:
                if self._overrun is Overrun.HOLD:
                    await self._wait_for_room()
                try:
                    request = await anext(iterator)
                except StopAsyncIteration:
                    return
                if self._in_flight >= self._window:
                    # Only reachable with FAIL: HOLD does not read while the window is full.
                    self._exceeded.set()
                    return
                self._in_flight += 1
                if self._in_flight >= self._window:
                    self._room.clear()
                self._queue.put_nowait(request)
        finally:
            self._queue.put_nowait(_END)

    async def _wait_for_room(self) -> None:
        if self._room.is_set():
            return
        self._flow.held += 1
        try:
            await self._room.wait()
        finally:
            self._flow.held -= 1

    def _free_slot(self) -> None:
        self._in_flight -= 1
        self._room.set()

    async def _handle(self, request: pb.IngestEventsRequest) -> pb.IngestEventsResponse:
        """The acknowledgement of one request (the call is aborted instead when it must end)."""
        if self._last_sequence is not None and request.sequence <= self._last_sequence:
            raise invalid_argument(
                "sequence", f"must strictly increase: {request.sequence} came after {self._last_sequence}",
            )
        self._last_sequence = request.sequence
        problem = _events.problem(request)
        if problem is not None:
            return self._ack(request, problem)
        ids = EventIds.of(request.idempotency_key.key)
        try:
            if await self._applied.get(ids.record_key) is not None:
                return self._ack(request)  # resent after a reconnect: applied once already
            await self._forwarder.apply(request)
            with contextlib.suppress(RevisionConflict):  # another stream recorded it first
                await self._applied.update(ids.record_key, self._ack(request).SerializeToString(), 0)
        except Refused as refused:
            return self._ack(request, str(refused))
        except DependencyError as failure:
            _log.warning("ingest stream ends: %s", failure.message)
            raise
        return self._ack(request)

    def _ack(self, request: pb.IngestEventsRequest, error: str = "") -> pb.IngestEventsResponse:
        return pb.IngestEventsResponse(sequence=request.sequence, accepted=not error, error=error, credit=self._window)


async def _first(work: Awaitable[Any], stop: asyncio.Task[Any]) -> Any:
    """Run ``work`` until it finishes or ``stop`` does; cancel ``work`` if ``stop`` won (None)."""
    task = asyncio.ensure_future(work)
    try:
        await asyncio.wait((task, stop), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        # We are cancelled (the call ended): take ``work`` down too, and collect its outcome so
        # that nothing is left unretrieved.
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return None
    return task.result()
