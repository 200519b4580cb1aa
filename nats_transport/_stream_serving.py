"""The stream mode of a server (wire spec §6): every streaming call, and unary calls too large for
one NATS message.

The server answers a stream opening with ACCEPT (its window and the per-call subject the client
sends on from then), then runs the handler over a :class:`~nats_transport._stream.StreamEndpoint`
and ends the call with a DATA message carrying the trailer frame. A client's CANCEL ends it with
nothing more sent.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import grpc
from nats.aio.client import Client
from nats.aio.msg import Msg

from nats_transport import _envelope as env
from nats_transport import _framing
from nats_transport._call_routing import CallRouter
from nats_transport._call_status import CallStatus
from nats_transport._cancel_watch import cancel_call_task
from nats_transport._context import CallState
from nats_transport._discovery import EndpointStats
from nats_transport._envelope import Kind
from nats_transport._handler_io import StreamIO, deserialize, read_request
from nats_transport._invocation import HandlerRunner
from nats_transport._keepalive import parse_interval, server_stream_terms
from nats_transport._metadata import KEEPALIVE_HEADER, WINDOW_HEADER, decode_window
from nats_transport._options import ServerOptions
from nats_transport._replies import status_frame, stream_chunk_size
from nats_transport._server_stats import TransportStats, count_call
from nats_transport._stream import END, StreamEndpoint, StreamFailure, failure_of_cancel
from nats_transport._unary_calls import CLIENT_CANCELLED

_OK = grpc.StatusCode.OK


class StreamServing:
    """Serves the stream-mode calls of one server.

    ``streams`` maps each open call's id (the last token of its per-call subject, which
    ``prefix`` starts) to its endpoint; the server routes the messages it receives there.
    """

    def __init__(
        self,
        nc: Client,
        options: ServerOptions,
        *,
        router: CallRouter,
        runner: HandlerRunner,
        stats: TransportStats,
        endpoints: dict[str, EndpointStats],
        streams: dict[str, StreamEndpoint],
    ) -> None:
        self._nc = nc
        self._options = options
        self._router = router
        self._runner = runner
        self._stats = stats
        self._endpoints = endpoints
        self.streams = streams
        self.prefix = ""  # set when the server subscribes to its per-call subjects
        self._ids = itertools.count(1)

    async def serve(self, msg: Msg) -> None:
        """Serve the stream call ``msg`` opens, to its end."""
        headers = msg.headers or {}
        refusal = None
        try:  # absent or 0: the client takes our own window size, as 1.0 allowed
            client_window = decode_window(headers.get(WINDOW_HEADER)) or self._options.stream_window
        except ValueError as exc:  # refused after ACCEPT, as any bad header is (wire spec §6.3)
            client_window, refusal = self._options.stream_window, CallStatus(grpc.StatusCode.INTERNAL, str(exc))
        keepalive = server_stream_terms(self._options, parse_interval(headers.get(KEEPALIVE_HEADER)))
        call_id = str(next(self._ids))
        state_box: list[CallState] = []
        task = asyncio.current_task()
        assert task is not None

        def on_failure(failure: StreamFailure) -> None:
            if state_box:
                # Written before the task is cancelled: interceptors read it as the handler unwinds.
                state_box[0].code = state_box[0].code or failure.code
                state_box[0].details = state_box[0].details or failure.details
                state_box[0].cancel()
            cancel_call_task(task, state_box[0].method if state_box else msg.subject)

        def on_control(kind: int, payload: memoryview, _headers: dict[str, str] | None) -> None:
            if kind == Kind.HALF_CLOSE:
                endpoint.inbound.put_nowait(END)
            elif kind == Kind.CANCEL:
                # The client has ended the call: cancel the handler and send nothing more, not
                # even trailers (wire spec §6.7); closing the endpoint silences it.
                endpoint.fail(failure_of_cancel(payload, CLIENT_CANCELLED), tell_peer=False)

        endpoint = StreamEndpoint(
            self._nc,
            window=self._options.stream_window,
            max_message=self._options.max_message_size,
            max_chunk=stream_chunk_size(self._nc.max_payload),
            keepalive_interval=keepalive.ping,
            keepalive_timeout=keepalive.timeout,
            on_failure=on_failure,
            on_control=on_control,
        )
        self.streams[call_id] = endpoint
        try:
            endpoint.send_seq = 1  # the ACCEPT is message 0: the endpoint numbers on from it
            endpoint.start(msg.reply, client_window)
            # The endpoint's sender cannot run before this task yields, and publish() has put the
            # ACCEPT in nats-py's buffer before it can yield: the ACCEPT goes first. Started
            # first, the sender runs before nats-py's flusher, so what it sends meanwhile shares
            # the ACCEPT's write, as when the sender sent the ACCEPT itself.
            if not await self._accept(msg.reply, call_id, keepalive.answer):
                return
            endpoint.receive(msg.data, None)
            try:
                if refusal is not None:
                    raise refusal
                state, handler = await self._router.prepare(msg)
            except CallStatus as refused:
                endpoint.queue_final(Kind.DATA, status_frame(refused.code, refused.details or ""))
                await endpoint.flushed()
                return
            state.endpoint = endpoint
            state_box.append(state)
            await self._run(state, handler, endpoint, msg.headers)
        except asyncio.CancelledError:
            pass  # the client cancelled or vanished; nobody is waiting for a status
        finally:
            endpoint.close()
            self._stats.bytes_sent += endpoint.bytes_sent
            self._stats.credit_stalls += endpoint.credit_stalls
            self.streams.pop(call_id, None)
            if state_box:
                state_box[0].finish()

    async def _accept(self, reply: str, call_id: str, keepalive: str | None) -> bool:
        """Send ACCEPT, the call's message 0 (as the client sends its opening itself); False
        when it cannot be published, so the client will never hear of the call."""
        accept = env.pack_accept(0, self._options.stream_window, f"{self.prefix}.{call_id}")
        try:
            await self._nc.publish(reply, accept, headers=None if keepalive is None else {KEEPALIVE_HEADER: keepalive})
        except Exception:  # the connection is closed or draining: the client cannot be answered
            return False
        self._stats.bytes_sent += len(accept)
        return True

    async def _run(
        self, state: CallState, handler: Any, endpoint: StreamEndpoint, headers: dict[str, str] | None
    ) -> None:
        stream = StreamIO(state, endpoint, handler, self._options.max_message_size)
        try:
            if handler.request_streaming:
                request: Any = stream
                behaviour = handler.stream_stream if handler.response_streaming else handler.stream_unary
            else:
                behaviour = handler.unary_stream if handler.response_streaming else handler.unary_unary
                request = deserialize(handler.request_deserializer, await read_request(endpoint, state))
            result = await self._runner.run(state, behaviour, request, headers, stream)
            if not handler.response_streaming and state.code in (None, _OK):
                await stream.write(result)
        except CallStatus as failure:  # the one place this call's failures land on its state
            state.code, state.details = failure.code, failure.details
        count_call(self._endpoints, state, state.code, state.details)
        if not state.initial_metadata_sent:
            stream.attach_initial_metadata()  # when it cannot travel, the trailers say so instead
        state.finish()
        endpoint.queue_final(Kind.DATA, _framing.encode_trailers(state.trailers()))
        await endpoint.flushed()
