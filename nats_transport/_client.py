"""The client side of the wire: one reply subscription per connection, and unary calls (client
streams are :class:`~nats_transport._client_stream.ClientStream`, re-exported here).

This module speaks bytes and :class:`~nats_transport._framing.Trailers`; the grpc.aio and grpc
call objects in ``aio/_channel.py`` and ``_sync_channel.py`` put gRPC's faces on it.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import grpc
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from nats_transport import _envelope as env
from nats_transport import _framing, _status
from nats_transport._client_stream import ClientStream as ClientStream
from nats_transport._client_stream import is_no_responders
from nats_transport._connection_guard import subscribe_direct
from nats_transport._context import current_deadline, current_trace
from nats_transport._deadline_timers import DeadlineTimers, timers_on
from nats_transport._envelope import Kind
from nats_transport._keepalive import (
    fast_path_ask,
    fast_path_timeout,
)
from nats_transport._metadata import (
    CALL_HEADER,
    KEEPALIVE_HEADER,
    TIMEOUT_HEADER,
    MetadataError,
    MetadataTuple,
    encode_timeout,
    from_headers,
    to_headers,
)
from nats_transport._options import TransportOptions
from nats_transport._replies import call_metadata_refusal, headers_size, message_too_large
from nats_transport._status import status_for_exception, status_for_framing_error
from nats_transport._stream import (
    StreamFailure,
    cancel_payload,
    publish_quietly,
)
from nats_transport._subjects import cancel_subject_of

ReplyFrames = tuple[dict[str, str] | None, list[tuple[int, bytes]]]


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a unary call ended: the response (if OK), initial metadata and trailers."""

    response: bytes | None
    initial_metadata: tuple[MetadataTuple, ...]
    trailers: _framing.Trailers


def failed(code: grpc.StatusCode, details: str) -> Outcome:
    """An outcome decided on this side (no server answer)."""
    return Outcome(None, (), _framing.Trailers(code.value[0], details))


def effective_deadline(timeout: float | None) -> float | None:
    """The call's deadline (monotonic): its own timeout, capped by an inherited one."""
    inherited = current_deadline.get()
    own = None if timeout is None else time.monotonic() + timeout
    if inherited is None:
        return own
    return inherited if own is None else min(own, inherited)


def call_headers(
    metadata: Any, deadline: float | None, extra: dict[str, str] | None = None
) -> dict[str, str] | None:
    """NATS headers for a call: user metadata, ``grpc-timeout`` and the inherited trace context."""
    headers: dict[str, str] | None = None
    if metadata:
        headers = to_headers(metadata)
    if deadline is not None:
        headers = headers if headers is not None else {}
        headers[TIMEOUT_HEADER] = encode_timeout(deadline - time.monotonic())
    trace = current_trace.get()
    if trace:
        headers = headers if headers is not None else {}
        for key, value in trace:
            headers.setdefault(key, value)
    if extra:
        headers = headers if headers is not None else {}
        headers.update(extra)
    return headers


def _metadata_too_large(nc: Client, headers: dict[str, str] | None, size: int) -> Outcome | None:
    # nats-py checks only the body against max_payload, but the server counts headers too and
    # drops the whole connection when they overflow it: refuse here, before anything is sent.
    refusal = call_metadata_refusal(headers, nc.max_payload, size) if headers else None
    return None if refusal is None else failed(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal)


class ReplyMux:
    """One wildcard reply subscription per NATS connection, mapping tokens to waiting calls."""

    # Kept on the client itself: the mux references the client, so a module-level weak dict
    # keyed by the client would keep every client it ever held alive.
    _ATTRIBUTE: ClassVar[str] = "_nats_transport_reply_mux"

    @classmethod
    def of(cls, nc: Client) -> ReplyMux:
        """The connection's mux (created on first use)."""
        mux: ReplyMux | None = getattr(nc, cls._ATTRIBUTE, None)
        if mux is None:
            mux = cls(nc)
            setattr(nc, cls._ATTRIBUTE, mux)
        return mux

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self._prefix = nc.new_inbox()
        self._prefix_len = len(self._prefix) + 1
        self._calls: dict[str, Any] = {}
        self._ids = itertools.count(1)
        self._sub: Subscription | None = None
        self._starting: asyncio.Future[None] | None = None
        self._sweep: asyncio.TimerHandle | None = None
        self._sweep_interval: float | None = None
        self._deadlines: DeadlineTimers | None = None

    def deadlines(self, loop: asyncio.AbstractEventLoop) -> DeadlineTimers:
        """The deadline timers of this connection's calls (on ``loop``, the connection's)."""
        self._deadlines = deadlines = timers_on(self._deadlines, loop)
        return deadlines

    @property
    def pending(self) -> int:
        """Calls waiting for replies."""
        return len(self._calls)

    async def ready(self, options: TransportOptions) -> None:
        """Subscribe once; later calls return at once."""
        # Channels sharing a connection may set different keepalives: sweep at the shortest.
        interval = options.keepalive_interval
        if interval is not None and (self._sweep_interval is None or interval < self._sweep_interval):
            self._sweep_interval = interval
        if self._sub is not None:
            return
        if self._starting is None:
            self._starting = asyncio.get_running_loop().create_future()
            try:
                self._sub = await subscribe_direct(self.nc, f"{self._prefix}.*", self._on_message)
                self._starting.set_result(None)
            except BaseException as exc:
                self._starting.set_exception(exc)
                self._starting = None
                raise
        else:
            await asyncio.shield(self._starting)

    def register(self, call: Any) -> tuple[str, str]:
        """A fresh (token, reply subject) for ``call``."""
        token = str(next(self._ids))
        self._calls[token] = call
        if isinstance(call, PendingUnary):
            call.epoch = self._reconnects()
        if self._sweep is None and self._sweep_interval is not None:
            self._sweep = asyncio.get_running_loop().call_later(self._sweep_interval, self._check_alive)
        return token, f"{self._prefix}.{token}"

    def _reconnects(self) -> int:
        return int(self.nc.stats.get("reconnects", 0))

    def unregister(self, token: str) -> None:
        """Forget a finished call."""
        self._calls.pop(token, None)

    def _on_message(self, msg: Msg) -> None:
        call = self._calls.get(msg.subject[self._prefix_len :])
        if call is not None:
            call.on_reply(msg)

    def _check_alive(self) -> None:
        # One timer per connection, not per call: a unary call whose server went silent (no
        # reply, no keepalive) for keepalive_timeout fails UNAVAILABLE long before its deadline.
        self._sweep = None
        if not self._calls or self._sweep_interval is None:
            return
        now = time.monotonic()
        # A call whose connection broke may have lost its reply with it. If the server still has
        # the call, its keepalives reach us again once we are back: a call that hears nothing
        # for two sweeps after the break fails UNAVAILABLE then, not at its deadline.
        reconnects = self._reconnects() if self.nc.is_connected else -1
        patience = 2 * self._sweep_interval
        for call in list(self._calls.values()):
            if not isinstance(call, PendingUnary) or call.timeout is None:
                continue  # only calls that asked for PINGs can tell silence from a slow handler
            if call.epoch != reconnects:
                call.epoch, call.broken_at = reconnects, now
            if call.broken_at and call.last_heard < call.broken_at and now - call.broken_at > patience:
                call.give_up(*_status.CONNECTION_LOST_DURING_CALL, abandoned=True)
            elif now - call.last_heard > call.timeout:
                call.give_up(*_status.SERVER_SILENT, abandoned=True)
        self._sweep = asyncio.get_running_loop().call_later(self._sweep_interval, self._check_alive)


class PendingUnary:
    """A unary call waiting for its reply (fast path), or its numbered chunks."""

    __slots__ = ("_decoder", "_frames", "_max", "_seq", "abandoned", "broken_at", "epoch", "future", "headers",
                 "last_heard", "timeout")

    def __init__(self, future: asyncio.Future[ReplyFrames], max_message: int, timeout: float | None) -> None:
        self.future = future
        self.timeout = timeout  # silence (no reply, no keepalive) tolerated before UNAVAILABLE
        self.abandoned = False  # given up here while the server may still be working on it
        self.last_heard = time.monotonic()
        self.epoch = 0  # the connection's reconnect count when the call was sent (-1: disconnected)
        self.broken_at = 0.0  # when the sweep last saw the connection break under the call
        self.headers: dict[str, str] | None = None
        self._decoder: _framing.FrameDecoder | None = None
        self._frames: list[tuple[int, bytes]] = []
        self._seq = 0
        self._max = max_message

    def give_up(self, code: grpc.StatusCode, details: str, *, abandoned: bool = False) -> None:
        """End the wait with a status decided here; ``abandoned``: the server may still be
        running the call, and should hear that nobody waits for it any more."""
        if not self.future.done():
            self.abandoned = abandoned
            self.future.set_exception(StreamFailure(code, details))

    def on_reply(self, msg: Msg) -> None:
        if self.future.done():
            return
        self.last_heard = time.monotonic()
        body = msg.data
        if is_no_responders(msg):
            self.give_up(*_status.NO_SERVER)
            return
        if not env.is_envelope(body):
            try:
                frames = _framing.decode_complete(body, self._max)
            except _framing.FramingError as exc:
                self.give_up(grpc.StatusCode.INTERNAL, f"malformed reply: {exc}")
                return
            self.future.set_result((msg.headers, frames))
            return
        kind, seq, payload = env.unpack(body)
        if seq != self._seq:
            self.give_up(grpc.StatusCode.DATA_LOSS, f"reply chunk {seq} arrived where {self._seq} was expected")
            return
        self._seq += 1
        if kind == Kind.PING:
            return
        if kind != Kind.DATA:
            self.give_up(grpc.StatusCode.INTERNAL, f"unexpected message kind 0x{kind:02x} in a unary reply")
            return
        if msg.headers and self.headers is None:
            self.headers = msg.headers
        if self._decoder is None:
            self._decoder = _framing.FrameDecoder(self._max)
        try:
            self._frames.extend(self._decoder.feed(payload))
        except _framing.FramingError as exc:
            self.give_up(status_for_framing_error(exc), str(exc))
            return
        if self._frames and self._frames[-1][0] == _framing.TRAILER_FLAG:
            self.future.set_result((self.headers, self._frames))


def outcome_of(headers: dict[str, str] | None, frames: list[tuple[int, bytes]]) -> Outcome:
    """Turn reply frames into an outcome (exactly one message and/or one trailer frame)."""
    try:
        initial = from_headers(headers) if headers else ()
    except MetadataError as exc:
        return failed(grpc.StatusCode.INTERNAL, f"malformed initial metadata: {exc}")
    response: bytes | None = None
    trailers = _framing.Trailers(0)
    for flag, payload in frames:
        if flag == _framing.TRAILER_FLAG:
            trailers = _framing.decode_trailer_block(payload)
        elif flag == _framing.MESSAGE_FLAG and response is None:
            response = payload
        else:
            return failed(grpc.StatusCode.INTERNAL, "malformed reply: unexpected frame")
    if trailers.code == 0 and response is None:
        return failed(grpc.StatusCode.INTERNAL, "the server sent OK without a response message")
    return Outcome(response if trailers.code == 0 else None, initial, trailers)


async def unary_call(
    nc: Client,
    options: TransportOptions,
    subject: str,
    request: bytes,
    metadata: Any,
    deadline: float | None,
    extra_headers: dict[str, str] | None = None,
) -> Outcome:
    """Send one request, await one reply. Never raises for call failures: they are outcomes.

    ``extra_headers`` are transport headers added to the metadata's (``grpc-previous-rpc-attempts``).
    """
    if len(request) > options.max_message_size:
        return failed(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            message_too_large("request", len(request), options.max_message_size),
        )
    try:
        headers = call_headers(metadata, deadline, extra_headers)
    except MetadataError as exc:
        return failed(grpc.StatusCode.INTERNAL, str(exc))
    mux = ReplyMux.of(nc)
    try:
        await mux.ready(options)
    except Exception as exc:
        return failed(*status_for_exception(exc))
    ask = fast_path_ask(options)  # None for default options: no header on the fast path
    if ask is not None:
        headers = headers if headers is not None else {}
        headers[KEEPALIVE_HEADER] = ask
    size = headers_size(headers) if headers else 0
    too_big = _metadata_too_large(nc, headers, size)
    if too_big is not None:
        return too_big
    if len(request) + 5 + size > nc.max_payload:
        return await _unary_over_stream(nc, mux, options, subject, request, headers, deadline)
    loop = asyncio.get_running_loop()
    pending = PendingUnary(loop.create_future(), options.max_message_size, fast_path_timeout(options))
    token, reply = mux.register(pending)
    timer = None
    try:
        # Any failure from here on may leave the request on its way (nats-py buffers it).
        pending.abandoned = True
        await nc.publish(subject, _framing.encode_message(request), reply=reply, headers=headers)
        pending.abandoned = False
        if deadline is not None:
            timer = mux.deadlines(loop).call_at(
                loop.time() + (deadline - time.monotonic()),
                pending.give_up,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "Deadline Exceeded",
            )
        reply_headers, frames = await pending.future
        return outcome_of(reply_headers, frames)
    except StreamFailure as failure:
        if pending.abandoned:
            cancel_on_server(nc, options.subject_prefix, subject, reply, failure)
        return failed(failure.code, failure.details)
    except _framing.FramingError as exc:
        return failed(grpc.StatusCode.INTERNAL, f"malformed reply: {exc}")
    except asyncio.CancelledError:
        # Cancelling this task cancels the future it waits on: only a future with a result or a
        # failure of its own means the server is done with the call (or never had it).
        if pending.abandoned or pending.future.cancelled() or not pending.future.done():
            cancel_on_server(nc, options.subject_prefix, subject, reply, None)
        raise
    except Exception as exc:
        return failed(*status_for_exception(exc))
    finally:
        mux.unregister(token)
        if timer is not None:
            timer.cancel()


def cancel_on_server(
    nc: Client, prefix: str, subject: str, reply: str, failure: StreamFailure | None
) -> None:
    """Tell the replicas of a call's target that its client gave up the fast-path call on
    ``reply`` (wire spec §5), so the one running it cancels the handler. Published and forgotten:
    it never blocks or raises into the code that gave the call up."""
    if nc.is_closed:
        return
    body = b"" if failure is None else cancel_payload(failure)
    cancel = cancel_subject_of(prefix, subject)
    asyncio.get_running_loop().create_task(publish_quietly(nc, cancel, body, {CALL_HEADER: reply}))


async def _unary_over_stream(
    nc: Client,
    mux: ReplyMux,
    options: TransportOptions,
    subject: str,
    request: bytes,
    headers: dict[str, str] | None,
    deadline: float | None,
) -> Outcome:
    """A unary call whose request does not fit one NATS message: stream mode, one message."""
    stream = ClientStream(nc, mux, options, subject, headers, deadline)
    try:
        try:
            await stream.open()
            await stream.write(request)
        except (asyncio.InvalidStateError, StreamFailure):
            pass  # the call already ended (connection down, say): its trailers say why
        stream.done_writing()
        response = await stream.read()
        trailers = await stream.trailers()
        initial = await stream.initial_metadata()
    except asyncio.CancelledError:
        stream.cancel()  # the server hears it as a CANCEL and cancels the handler
        raise
    if trailers.code == 0 and response is None:
        return failed(grpc.StatusCode.INTERNAL, "the server sent OK without a response message")
    return Outcome(response if trailers.code == 0 else None, initial, trailers)
