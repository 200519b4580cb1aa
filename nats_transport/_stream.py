"""One side of a stream-mode call: sequence numbers, credit-based flow control, keepalives.

Both the client and the server side of a streaming call (and of a unary call too large for one
NATS message) use a :class:`StreamEndpoint`. It owns no subscription: whoever receives a NATS
message for the call passes it to :meth:`StreamEndpoint.receive`, which never blocks.

Flow control counts DATA payload bytes, like HTTP/2 windows. The receiver grants credit as the
application consumes whole messages; bytes of a frame still being reassembled are granted at
once, since they must be buffered anyway (bounded by the maximum message size), so a message
larger than the window cannot deadlock the call.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from typing import Any

import grpc
from nats.aio.client import Client

from nats_transport import _envelope as env
from nats_transport._envelope import Kind
from nats_transport._framing import (
    TRAILER_FLAG,
    FrameDecoder,
    FramingError,
    Trailers,
    decode_complete,
    decode_trailer_block,
    encode_trailers,
)
from nats_transport._replies import headers_size
from nats_transport._status import code_from_number, status_for_framing_error

END = object()  # queued after the last inbound message


def cancel_payload(failure: StreamFailure) -> bytes:
    """A CANCEL's payload: the trailer frame of the status the call ended with."""
    return encode_trailers(Trailers(failure.code.value[0], failure.details))


def failure_of_cancel(payload: memoryview | bytes, default: StreamFailure) -> StreamFailure:
    """The status a peer's CANCEL carries, or ``default`` when it carries none (or garbage)."""
    try:
        frames = decode_complete(bytes(payload), 64 * 1024)
    except FramingError:
        return default
    if len(frames) == 1 and frames[0][0] == TRAILER_FLAG:
        try:
            trailers = decode_trailer_block(frames[0][1])
        except FramingError:
            return default
        return StreamFailure(code_from_number(trailers.code), trailers.message)
    return default


async def publish_quietly(nc: Client, subject: str, body: bytes, headers: dict[str, str] | None = None) -> None:
    """Publish, ignoring failure: for answers whose only reader may already be gone."""
    try:
        await nc.publish(subject, body, headers=headers)
    except Exception:  # best effort: the caller left or the connection is down
        return


class StreamFailure(Exception):
    """The call cannot go on; carries the status the local side reports."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class StreamEndpoint:
    """Sending and receiving state of one side of one call."""

    def __init__(
        self,
        nc: Client,
        *,
        window: int,
        max_message: int,
        max_chunk: int,
        keepalive_interval: float | None,
        keepalive_timeout: float | None,
        on_failure: Callable[[StreamFailure], None],
        on_trailers: Callable[[Trailers], None] | None = None,
        on_control: Callable[[int, memoryview, dict[str, str] | None], None] | None = None,
    ) -> None:
        self._nc = nc
        self.peer_subject: str | None = None
        self.window = window
        self._max_chunk = max_chunk
        self._decoder = FrameDecoder(max_message)
        self._on_failure = on_failure
        self._on_trailers = on_trailers
        self._on_control = on_control
        self.inbound: asyncio.Queue[Any] = asyncio.Queue()
        self.send_seq = 0
        self.recv_seq = 0
        self.credit = 0
        self.credit_stalls = 0
        self.bytes_sent = 0
        self.messages_received = 0  # a response received commits a call (no retry after it)
        self._to_return = 0
        self._pending: collections.deque[bytes] = collections.deque()
        self._pending_bytes = 0
        self._final: tuple[Kind, bytes, dict[str, str] | None] | None = None  # sent after all data
        self.headers_to_send: dict[str, str] | None = None  # go on the next message sent
        self._control: collections.deque[tuple[Kind, bytes, dict[str, str] | None]] = collections.deque()
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._sender: asyncio.Task[None] | None = None
        self.closed = False
        self.failure: StreamFailure | None = None
        now = time.monotonic()
        self.last_sent = now
        self.last_received = now
        self._keepalive_interval = keepalive_interval
        self._keepalive_timeout = keepalive_timeout
        self._keepalive_handle: asyncio.TimerHandle | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, peer_subject: str | None, credit: int) -> None:
        """Begin sending (to ``peer_subject`` with ``credit``) and keepalive checks."""
        if peer_subject is not None:
            self.connect(peer_subject, credit)
        self._sender = asyncio.get_running_loop().create_task(self._send_loop())
        self._schedule_keepalive()

    def connect(self, peer_subject: str, credit: int) -> None:
        """The peer's subject and initial window are known: data may flow."""
        self.peer_subject = peer_subject
        self.credit += credit
        self._wake.set()

    def close(self) -> None:
        """Stop sending and checking; idempotent."""
        if self.closed:
            return
        self.closed = True
        if self._keepalive_handle is not None:
            self._keepalive_handle.cancel()
        if self._sender is not None and not self._sender.done():
            self._sender.cancel()
        self._drained.set()
        self._progress.set()

    def fail(self, failure: StreamFailure, *, tell_peer: bool = True) -> None:
        """End the call locally with ``failure``; queued readers see END.

        With ``tell_peer`` the peer gets a CANCEL carrying the status, so it ends the call with
        the real reason now instead of at its keepalive timeout.
        """
        if self.failure is None and not self.closed:
            self.failure = failure
            self.inbound.put_nowait(END)
            if tell_peer:
                self._tell_peer(failure)
            self._on_failure(failure)
        self.close()

    def _tell_peer(self, failure: StreamFailure) -> None:
        if self.peer_subject is None or self._nc.is_closed:
            return
        # CANCEL is honoured whatever its sequence number, so it may bypass the sender task.
        body = env.pack(Kind.CANCEL, self.send_seq, cancel_payload(failure))
        asyncio.get_running_loop().create_task(publish_quietly(self._nc, self.peer_subject, body))

    # -- receiving -------------------------------------------------------------------------

    def receive(self, body: bytes, headers: dict[str, str] | None) -> None:
        """Handle one stream-mode message from the peer. Never blocks."""
        if self.closed:
            return
        try:
            kind, seq, payload = env.unpack(body)
        except ValueError:
            self.fail(StreamFailure(grpc.StatusCode.INTERNAL, "malformed stream message"))
            return
        if kind == Kind.CANCEL and self._on_control is not None:
            # A cancel may overtake messages still in flight; it ends the call whatever its number.
            self._on_control(kind, payload, headers)
            return
        if seq != self.recv_seq & 0xFFFFFFFF:
            self.fail(
                StreamFailure(
                    grpc.StatusCode.DATA_LOSS,
                    f"stream message {seq} arrived where {self.recv_seq} was expected",
                )
            )
            return
        self.recv_seq += 1
        self.last_received = time.monotonic()
        if kind == Kind.DATA:
            self._receive_data(payload, headers)
        elif kind == Kind.CREDIT:
            if len(payload) != env.CREDIT.size:
                self.fail(StreamFailure(grpc.StatusCode.INTERNAL, "malformed CREDIT"))
                return
            self.credit += env.CREDIT.unpack(payload)[0]
            self._wake.set()
        elif kind == Kind.PING:
            pass
        elif self._on_control is not None:
            self._on_control(kind, payload, headers)

    def _receive_data(self, payload: memoryview, headers: dict[str, str] | None) -> None:
        if headers and self._on_control is not None:
            self._on_control(Kind.HEADERS, memoryview(b""), headers)
        before = self._decoder.buffered
        try:
            frames = self._decoder.feed(payload)
        except FramingError as exc:
            self.fail(StreamFailure(status_for_framing_error(exc), str(exc)))
            return
        # Bytes newly held in an unfinished frame are granted at once (see the module docstring);
        # those held before were granted when they arrived.
        after = self._decoder.buffered
        self._to_return += after if frames else after - before
        for flag, message in frames:
            if flag == TRAILER_FLAG:
                try:
                    trailers = decode_trailer_block(message)
                except FramingError as exc:
                    self.fail(StreamFailure(grpc.StatusCode.INTERNAL, str(exc)))
                    return
                if self._on_trailers is not None:
                    self._on_trailers(trailers)
                self.inbound.put_nowait(END)
                return
            size = 5 + len(message) - before
            before = 0
            self.messages_received += 1
            self.inbound.put_nowait((message, size))
        self._maybe_return_credit()

    async def read(self) -> bytes | None:
        """The next inbound message, or None at the end of the stream."""
        item = await self.inbound.get()
        if item is END:
            self.inbound.put_nowait(END)  # later reads see the end too
            return None
        message, size = item
        self._to_return += size
        self._maybe_return_credit()
        return message  # type: ignore[no-any-return]

    def _maybe_return_credit(self) -> None:
        if self._to_return >= self.window // 4 and self.peer_subject and not self.closed:
            amount, self._to_return = self._to_return, 0
            self.send_control(Kind.CREDIT, env.CREDIT.pack(amount))

    # -- sending ---------------------------------------------------------------------------
    # One task publishes everything for the call, so sequence numbers follow publish order.

    def send_control(self, kind: Kind, payload: bytes = b"", headers: dict[str, str] | None = None) -> None:
        """Queue a control message; it goes before queued data and is never flow controlled."""
        self._control.append((kind, payload, headers))
        self._wake.set()

    def queue_frames(self, frames: bytes) -> None:
        """Queue encoded frames for sending, flow controlled."""
        if self.closed:
            return  # the call is over; whoever reads our status already has it
        self._pending.append(frames)
        self._pending_bytes += len(frames)
        self._drained.clear()
        self._wake.set()

    def queue_final(self, kind: Kind, payload: bytes = b"", headers: dict[str, str] | None = None) -> None:
        """Queue the message that ends our direction (trailers or HALF_CLOSE), sent after all data."""
        if self.closed:
            return
        self._final = (kind, payload, headers)
        self._drained.clear()
        self._wake.set()

    @property
    def max_payload(self) -> int:
        """The connection's max_payload (headers and body together must fit in it)."""
        return int(self._nc.max_payload)

    @property
    def backlog(self) -> int:
        """Bytes queued but not yet sent."""
        return self._pending_bytes

    async def wait_writable(self, high_water: int) -> None:
        """Wait until the send backlog is below ``high_water`` (the writer's backpressure)."""
        while self._pending_bytes >= high_water and not self.closed:
            self._progress.clear()
            await self._progress.wait()

    async def flushed(self) -> None:
        """Wait until everything queued, the final message included, has been published."""
        await self._drained.wait()

    def _take(self, limit: int) -> bytes:
        parts: list[bytes] = []
        taken = 0
        while self._pending and taken < limit:
            head = self._pending[0]
            room = limit - taken
            if len(head) <= room:
                parts.append(self._pending.popleft())
                taken += len(head)
            else:
                parts.append(head[:room])
                self._pending[0] = head[room:]
                taken += room
        self._pending_bytes -= taken
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _emit(self, kind: Kind, payload: bytes, headers: dict[str, str] | None) -> None:
        assert self.peer_subject is not None
        body = env.pack(kind, self.send_seq, payload)
        self.send_seq += 1
        self.last_sent = time.monotonic()
        self.bytes_sent += len(body)
        await self._nc.publish(self.peer_subject, body, headers=headers)

    def _chunk_limit(self) -> int:
        room = self._max_chunk
        if self.headers_to_send:
            room -= headers_size(self.headers_to_send)
        return max(room, 1)

    async def _send_loop(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                if self.peer_subject is None:
                    continue
                await self._send_ready()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # connection trouble: the call cannot continue
            self.fail(StreamFailure(grpc.StatusCode.UNAVAILABLE, f"NATS publish failed: {exc}"))

    async def _send_ready(self) -> None:
        while True:
            if self._control:
                kind, payload, headers = self._control.popleft()
                await self._emit(kind, payload, headers)
            elif self._pending_bytes and self.credit > 0:
                chunk = self._take(min(self.credit, self._chunk_limit()))
                self.credit -= len(chunk)
                headers, self.headers_to_send = self.headers_to_send, None
                await self._emit(Kind.DATA, chunk, headers)
                self._progress.set()
            elif self._pending_bytes:
                self.credit_stalls += 1  # woken again by CREDIT
                return
            elif self._final is not None:
                kind, payload, headers = self._final
                self._final = None
                if self.headers_to_send:
                    headers = {**self.headers_to_send, **(headers or {})}
                    self.headers_to_send = None
                await self._emit(kind, payload, headers)
                self._drained.set()
                return
            else:
                if self._final is None:
                    self._drained.set()
                return

    # -- keepalive -------------------------------------------------------------------------

    def expect_silence_of(self, timeout: float | None) -> None:
        """Fail the call after ``timeout`` seconds without hearing from the peer (None: never):
        what the peer's announced PINGs allow, once it has said (wire spec §6.8)."""
        self._keepalive_timeout = timeout
        if self._keepalive_handle is None:
            self._schedule_keepalive()

    def _schedule_keepalive(self) -> None:
        # Wake to PING at our interval; without one, only to check the peer's silence.
        period = self._keepalive_interval
        if period is None and self._keepalive_timeout is not None:
            period = self._keepalive_timeout / 4
        if period is None or self.closed:
            return
        loop = asyncio.get_running_loop()
        self._keepalive_handle = loop.call_later(period, self._keepalive)

    def _keepalive(self) -> None:
        self._keepalive_handle = None
        if self.closed:
            return
        now = time.monotonic()
        if self._keepalive_timeout is not None and now - self.last_received > self._keepalive_timeout:
            self.fail(
                StreamFailure(
                    grpc.StatusCode.UNAVAILABLE,
                    f"peer sent nothing for {now - self.last_received:.1f}s; assuming it is gone",
                )
            )
            return
        if self._keepalive_interval is not None and now - self.last_sent >= self._keepalive_interval * 0.9:
            self.send_control(Kind.PING)
        self._schedule_keepalive()
