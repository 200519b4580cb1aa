"""The unary fast path of a server (wire spec §5): one NATS message in, one reply out.

Each call is one task, started by the server's dispatch straight from the connection's reader. A
call that cannot start (no such method, malformed headers or request) is refused with a bare
status; a call that ran is answered with what :func:`~nats_transport._replies.unary_reply`
shapes, unless its client cancelled it, which leaves it unanswered.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from nats.aio.client import Client
from nats.aio.msg import Msg

from nats_transport import _framing
from nats_transport._call_routing import CallRouter
from nats_transport._call_status import CallStatus
from nats_transport._context import CallState, initial_headers
from nats_transport._discovery import EndpointStats
from nats_transport._handler_io import deserialize, serialize
from nats_transport._invocation import HandlerRunner
from nats_transport._keepalive import parse_interval, server_ping
from nats_transport._metadata import CALL_HEADER, KEEPALIVE_HEADER, STREAM_HEADER
from nats_transport._options import ServerOptions
from nats_transport._replies import status_reply, unary_reply
from nats_transport._server_stats import TransportStats, count_call
from nats_transport._status import code_from_number
from nats_transport._stream import failure_of_cancel, publish_quietly
from nats_transport._unary_calls import CLIENT_CANCELLED, UnaryCalls

_OK = grpc.StatusCode.OK


class UnaryServing:
    """Serves the unary calls of one server, and their cancels."""

    def __init__(
        self,
        nc: Client,
        options: ServerOptions,
        *,
        router: CallRouter,
        runner: HandlerRunner,
        stats: TransportStats,
        endpoints: dict[str, EndpointStats],
        tasks: set[asyncio.Task[None]],
    ) -> None:
        self._nc = nc
        self._max_message = options.max_message_size
        self._keepalive_interval = options.keepalive_interval
        # The PING interval of a call whose client sent no keepalive header (the 1.0 default).
        self._default_ping = server_ping(options.keepalive_interval, None)
        self._router = router
        self._runner = runner
        self._stats = stats
        self._endpoints = endpoints
        self._tasks = tasks
        self.calls = UnaryCalls(nc)

    async def serve(self, msg: Msg) -> None:
        """Serve the call ``msg`` opens: the whole of its task, which leaves the server's
        in-flight set when it ends (a done callback would cost a trip through the loop)."""
        task = asyncio.current_task()
        assert task is not None  # always in a task: the server made it
        try:
            await self._serve(msg, task)
        finally:
            self._tasks.discard(task)

    async def _serve(self, msg: Msg, task: asyncio.Task[None]) -> None:
        try:
            state, handler = await self._router.prepare(msg)
            payload = _request_of(msg.data, handler, state, self._max_message)
        except CallStatus as refused:
            await publish_quietly(self._nc, msg.reply, status_reply(refused.code, refused.details or "", None))
            return
        call = self.calls.begin(msg.reply, self._ping_interval(msg.headers), state, task)
        if call.cancelled:  # its cancel overtook it: the handler never runs
            self._stats.unary_cancelled += 1
            count_call(self._endpoints, state, state.code, state.details)
            return
        response = None
        try:
            response = await self._run(state, handler, payload, msg.headers, task)
        except CallStatus as failure:  # the one place this call's failures land on its state
            state.code, state.details = failure.code, failure.details
        finally:
            self.calls.end(call)
            await call.settle()
        if call.cancelled:  # its client gave it up: nothing more goes to it (wire spec §5)
            count_call(self._endpoints, state, state.code, state.details)
            return
        state.finish()
        messages, status = unary_reply(
            state, response, initial_headers(state), self._nc.max_payload, self._max_message, call.seq
        )
        if status is None:
            count_call(self._endpoints, state, None, None)
        else:
            count_call(self._endpoints, state, code_from_number(status.code), status.message)
        for body, headers in messages:
            self._stats.bytes_sent += len(body)
            await publish_quietly(self._nc, msg.reply, body, headers)

    async def _run(
        self, state: CallState, handler: Any, payload: bytes, headers: dict[str, str] | None, task: asyncio.Task[None]
    ) -> bytes:
        """The serialized response of the call's handler; raises CallStatus when it fails."""
        request = deserialize(handler.request_deserializer, payload)
        response = await self._runner.run(state, handler.unary_unary, request, headers, None, task)
        code = state.code
        if code is not None and code is not _OK:  # the handler set a status and returned: it stands
            raise CallStatus(code, state.details)
        return serialize(handler.response_serializer, response, state)

    def _ping_interval(self, headers: dict[str, str] | None) -> float | None:
        """The PING interval of a call: what its client asked for (wire spec §5)."""
        if headers:
            asked = headers.get(KEEPALIVE_HEADER)
            if asked is not None:
                return server_ping(self._keepalive_interval, parse_interval(asked))
        return self._default_ping

    def on_cancel(self, msg: Msg) -> bool:
        """A client gave up a call (wire spec §5): cancel its handler if it runs here; False
        when none does. Whoever may publish to the cancel subject can send anything: this
        never raises and never answers."""
        reply = msg.headers.get(CALL_HEADER) if msg.headers else None
        if not reply:
            return False
        failure = failure_of_cancel(msg.data, CLIENT_CANCELLED)
        if failure.code == _OK:
            failure = CLIENT_CANCELLED
        if self.calls.cancel(reply, failure.code, failure.details):
            self._stats.unary_cancelled += 1
            return True
        return False


def _request_of(body: bytes, handler: Any, state: CallState, max_message: int) -> bytes:
    """The request message of a unary call's body; raises CallStatus when it is not one."""
    if handler.request_streaming or handler.response_streaming:
        raise CallStatus(
            grpc.StatusCode.INTERNAL,
            f"{state.method} is a streaming method; open it with the {STREAM_HEADER} header",
        )
    try:
        frames = _framing.decode_complete(body, max_message)
    except _framing.FrameTooLarge as exc:
        raise CallStatus(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)) from exc
    except _framing.FramingError as exc:
        raise CallStatus(grpc.StatusCode.INTERNAL, f"malformed request: {exc}") from exc
    if len(frames) != 1 or frames[0][0] != _framing.MESSAGE_FLAG:
        raise CallStatus(grpc.StatusCode.INTERNAL, "a unary request must be exactly one message frame")
    return frames[0][1]
