"""The client side of a stream-mode call (wire spec §6): its opening, ACCEPT, flow-controlled
requests, responses, trailers and cancellation. ``_client`` also uses it for a unary call whose
request does not fit one NATS message."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import grpc
from nats.aio.client import Client
from nats.aio.msg import Msg

from nats_transport import _envelope as env
from nats_transport import _framing, _status
from nats_transport._envelope import Kind
from nats_transport._keepalive import parse_interval, stream_offer, stream_timeout_after_accept, stream_wait_timeout
from nats_transport._metadata import (
    KEEPALIVE_HEADER,
    MIN_WINDOW,
    STREAM_HEADER,
    WINDOW_HEADER,
    MetadataError,
    MetadataTuple,
    from_headers,
)
from nats_transport._options import TransportOptions
from nats_transport._replies import call_metadata_refusal, message_too_large, stream_chunk_size
from nats_transport._status import status_for_exception
from nats_transport._stream import StreamEndpoint, StreamFailure, cancel_payload, failure_of_cancel, publish_quietly

if TYPE_CHECKING:  # _client imports this module for its calls over streams
    from nats_transport._client import ReplyMux

OPEN_ALLOWANCE = 65536  # request bytes an opening message may carry before the server's window is known
_NO_RESPONDERS = "503"


def is_no_responders(msg: Msg) -> bool:
    """Whether ``msg`` is nats-server's status message saying no one subscribes to the subject."""
    headers = msg.headers
    return not msg.data and headers is not None and headers.get("Status") == _NO_RESPONDERS


class ClientStream:
    """The client side of a stream-mode call."""

    def __init__(
        self,
        nc: Client,
        mux: ReplyMux,
        options: TransportOptions,
        subject: str,
        headers: dict[str, str] | None,
        deadline: float | None,
    ) -> None:
        self._nc = nc
        self._mux = mux
        self._options = options
        self._subject = subject
        self._headers = dict(headers or {})
        self.deadline = deadline
        loop = asyncio.get_running_loop()
        self._initial: asyncio.Future[tuple[MetadataTuple, ...]] = loop.create_future()
        self._trailers: asyncio.Future[_framing.Trailers] = loop.create_future()
        self._opened_with = 0
        self._token: str | None = None
        self._awaiting_accept = False
        self._timer: asyncio.TimerHandle | None = None
        self.endpoint = StreamEndpoint(
            nc,
            window=options.stream_window,
            max_message=options.max_message_size,
            max_chunk=stream_chunk_size(nc.max_payload),
            keepalive_interval=options.keepalive_interval,
            keepalive_timeout=stream_wait_timeout(options),
            on_failure=self._on_failure,
            on_trailers=self._on_trailers,
            on_control=self._on_control,
        )

    # -- lifecycle ------------------------------------------------------------------------

    async def open(self, first: bytes | None = None) -> None:
        """Send the opening message (with ``first`` request if it is small) to the call subject."""
        await self._mux.ready(self._options)
        refusal = call_metadata_refusal(self._headers, self._nc.max_payload) if self._headers else None
        if refusal is not None:  # see _client._metadata_too_large
            self.endpoint.fail(StreamFailure(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal))
            return
        self._token, reply = self._mux.register(self)
        headers = self._headers
        headers[STREAM_HEADER] = "1"
        headers[WINDOW_HEADER] = str(self._options.stream_window)
        headers[KEEPALIVE_HEADER] = stream_offer(self._options)
        payload = b""
        if first is not None and len(first) + 5 <= OPEN_ALLOWANCE:
            payload = _framing.encode_message(first)
        self._opened_with = len(payload)
        body = env.pack(Kind.DATA, 0, payload)
        self.endpoint.send_seq = 1
        self.endpoint.start(None, 0)
        loop = asyncio.get_running_loop()
        if self.deadline is not None:
            self._timer = loop.call_at(
                loop.time() + (self.deadline - time.monotonic()), self._expire
            )
        try:
            await self._nc.publish(self._subject, body, reply=reply, headers=headers)
        except Exception as exc:
            self.endpoint.fail(StreamFailure(*status_for_exception(exc)))
            return
        if first is not None and not payload:
            await self.write(first)

    @property
    def sent_first(self) -> bool:
        """Whether the opening message carried the first request."""
        return self._opened_with > 0

    def _finish(self) -> None:
        if self._token is not None and self.endpoint.peer_subject is None and self.endpoint.failure:
            # Ended here before the server's ACCEPT named the per-call subject: stay registered
            # a while, so the ACCEPT still reaches us and the server hears of the cancel.
            self._awaiting_accept = True
            token = self._token
            loop = asyncio.get_running_loop()
            loop.call_later(self._options.keepalive_timeout or 5.0, self._mux.unregister, token)
        elif self._token is not None:
            self._mux.unregister(self._token)
            self._token = None
        if self._timer is not None:
            self._timer.cancel()
        if not self._initial.done():
            self._initial.set_result(())

    def _expire(self) -> None:
        self.endpoint.fail(StreamFailure(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))

    def cancel(self, details: str = "Locally cancelled by application!",
               code: grpc.StatusCode = grpc.StatusCode.CANCELLED) -> bool:
        """End the call here with ``code`` (CANCELLED, or INTERNAL for a message this side cannot
        handle) and tell the server."""
        if self._trailers.done():
            return False
        self.endpoint.fail(StreamFailure(code, details))
        return True

    # -- events from the wire -------------------------------------------------------------

    def on_reply(self, msg: Msg) -> None:
        if self._awaiting_accept:
            self._cancel_after_accept(msg.data)
            return
        if is_no_responders(msg):
            self.endpoint.fail(StreamFailure(*_status.NO_SERVER))
            return
        self.endpoint.receive(msg.data, msg.headers)

    def _cancel_after_accept(self, body: bytes) -> None:
        try:
            kind, _, payload = env.unpack(body)
            if kind != Kind.ACCEPT:
                return
            _, subject = env.unpack_accept(payload)
        except ValueError:
            return
        failure = self.endpoint.failure or StreamFailure(grpc.StatusCode.CANCELLED, "cancelled")
        cancel = env.pack(Kind.CANCEL, 1, cancel_payload(failure))
        asyncio.get_running_loop().create_task(publish_quietly(self._nc, subject, cancel))
        self._awaiting_accept = False
        if self._token is not None:
            self._mux.unregister(self._token)
            self._token = None

    def _on_control(self, kind: int, payload: memoryview, headers: dict[str, str] | None) -> None:
        if kind == Kind.ACCEPT:
            try:
                window, subject = env.unpack_accept(payload)
            except ValueError:
                self.endpoint.fail(StreamFailure(grpc.StatusCode.INTERNAL, "malformed ACCEPT"))
                return
            if window < MIN_WINDOW:  # §6.5; the per-call subject is known, so the server hears why
                self.endpoint.connect(subject, 0)
                details = f"ACCEPT announces a window of {window} bytes, below the minimum of {MIN_WINDOW}"
                self.endpoint.fail(StreamFailure(grpc.StatusCode.INTERNAL, details))
                return
            self.endpoint.connect(subject, max(window - self._opened_with, 0))
            if headers and KEEPALIVE_HEADER in headers:  # a 1.1 server says which PINGs it sends
                announced = parse_interval(headers[KEEPALIVE_HEADER])
                self.endpoint.expect_silence_of(stream_timeout_after_accept(self._options, announced))
        elif kind == Kind.HEADERS:
            if not self._initial.done():
                try:
                    self._initial.set_result(from_headers(headers))
                except MetadataError as exc:
                    self.endpoint.fail(StreamFailure(grpc.StatusCode.INTERNAL, str(exc)))
        elif kind == Kind.CANCEL:
            default = StreamFailure(grpc.StatusCode.CANCELLED, "cancelled by the server")
            self.endpoint.fail(failure_of_cancel(payload, default), tell_peer=False)

    def _on_trailers(self, trailers: _framing.Trailers) -> None:
        if not self._trailers.done():
            self._trailers.set_result(trailers)
        self._finish()
        self.endpoint.close()

    def _on_failure(self, failure: StreamFailure) -> None:
        if not self._trailers.done():
            self._trailers.set_result(_framing.Trailers(failure.code.value[0], failure.details))
        self._finish()

    # -- application side -----------------------------------------------------------------

    async def write(self, message: bytes) -> None:
        """Queue one request message; waits when the backlog is over the window (backpressure)."""
        if self._trailers.done():
            raise asyncio.InvalidStateError("the call is already finished")
        if len(message) > self._options.max_message_size:
            failure = StreamFailure(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                message_too_large("request", len(message), self._options.max_message_size),
            )
            self.endpoint.fail(failure)
            raise failure
        self.endpoint.queue_frames(_framing.message_frame_header(len(message)) + message)
        if self.endpoint.backlog >= self._options.stream_window:
            await self.endpoint.wait_writable(self._options.stream_window)

    def done_writing(self) -> None:
        """Half-close: no more requests."""
        if not self._trailers.done():
            self.endpoint.queue_final(Kind.HALF_CLOSE)

    async def read(self) -> bytes | None:
        """The next response, or None when the call has ended."""
        message = await self.endpoint.read()
        if message is not None and not self._initial.done():
            # A message came before any HEADERS: the server sent no initial metadata.
            self._initial.set_result(())
        return message

    async def trailers(self) -> _framing.Trailers:
        """Status and trailing metadata, once the call ends."""
        return await asyncio.shield(self._trailers)

    async def initial_metadata(self) -> tuple[MetadataTuple, ...]:
        """Initial metadata, once the server sends it (or the call ends)."""
        return await asyncio.shield(self._initial)

    @property
    def finished(self) -> bool:
        """Whether the status is known."""
        return self._trailers.done()

    def trailers_nowait(self) -> _framing.Trailers | None:
        """The trailers if the call has ended."""
        return self._trailers.result() if self._trailers.done() else None
