"""How handlers meet their messages: (de)serialization, the reader and writer of a stream call,
and their blocking twins for plain-function handlers. A message that cannot be read or sent fails
the call with a :class:`~nats_transport._call_status.CallStatus`; while the handler runs, that
status is written on its CallState first (see ``_call_status``)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import grpc

from nats_transport import _framing, _status
from nats_transport._call_status import CallStatus, fail_running_call
from nats_transport._context import CallState, initial_headers
from nats_transport._loop_bridge import Awaited
from nats_transport._replies import METADATA_TOO_LARGE, initial_metadata_fits, message_too_large
from nats_transport._stream import StreamEndpoint

log = logging.getLogger("nats_transport.server")

T = TypeVar("T")


class StreamIO:
    """Reads requests from and writes responses to a stream endpoint, with (de)serialization."""

    def __init__(self, state: CallState, endpoint: StreamEndpoint, handler: Any, max_message: int) -> None:
        self._state = state
        self._endpoint = endpoint
        self._deserialize = handler.request_deserializer
        self._serialize = handler.response_serializer
        self.response_streaming: bool = handler.response_streaming
        self._high_water = endpoint.window
        self._max_message = max_message

    def __aiter__(self) -> StreamIO:
        return self

    async def __anext__(self) -> Any:
        message = await self.read()
        if message is grpc.aio.EOF:
            raise StopAsyncIteration
        return message

    async def read(self) -> Any:
        data = await self._endpoint.read()
        if data is None:
            if self._endpoint.failure is not None:
                raise self._endpoint.failure
            return grpc.aio.EOF
        try:
            return deserialize(self._deserialize, data)
        except CallStatus as failure:
            fail_running_call(self._state, failure.code, failure.details or "")

    async def write(self, message: Any) -> None:
        try:
            data = serialize(self._serialize, message, self._state)
        except CallStatus as failure:
            fail_running_call(self._state, failure.code, failure.details or "")
        await self.write_bytes(data)

    async def write_bytes(self, data: bytes) -> None:
        state = self._state
        if state.done:
            raise asyncio.CancelledError()
        if len(data) > self._max_message:
            details = message_too_large("response", len(data), self._max_message)
            fail_running_call(state, grpc.StatusCode.RESOURCE_EXHAUSTED, details)
        if not state.initial_metadata_sent and not self.attach_initial_metadata():
            raise CallStatus(*METADATA_TOO_LARGE)
        endpoint = self._endpoint
        endpoint.queue_frames(_framing.message_frame_header(len(data)) + data)
        if endpoint.backlog >= self._high_water:
            await endpoint.wait_writable(self._high_water)

    def attach_initial_metadata(self) -> bool:
        """Put the call's initial metadata on the next message sent (it counts as sent now).
        False when it is too big to travel: it is dropped, and the call's state says
        RESOURCE_EXHAUSTED (written now, as the handler may still be running)."""
        headers = initial_headers(self._state)
        if headers and not initial_metadata_fits(headers, self._endpoint.max_payload):
            self._state.code, self._state.details = METADATA_TOO_LARGE
            return False
        self._endpoint.headers_to_send = headers
        return True


async def read_request(endpoint: StreamEndpoint, state: CallState) -> bytes:
    """The one request of a unary-request stream call. Raises CallStatus when the client
    half-closes without one, or when the call's deadline passes first (the handler's own deadline
    is armed only once it runs, so the wait for its request needs its own)."""
    if state.deadline is None:
        request = await endpoint.read()
    else:
        try:
            request = await asyncio.wait_for(endpoint.read(), max(state.deadline - time.monotonic(), 0.0))
        except TimeoutError:
            raise CallStatus(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
    if request is None:  # a broken stream has put its own status on the state already
        raise CallStatus(
            state.code or grpc.StatusCode.INTERNAL,
            state.details or "the client half-closed without sending the request",
        )
    return request


def deserialize(deserializer: Any, data: bytes) -> Any:
    """The request message of ``data``; raises CallStatus (INTERNAL) when it cannot be decoded."""
    if deserializer is None:
        return data
    try:
        return deserializer(data)
    except Exception:
        raise CallStatus(*_status.UNDECODABLE_REQUEST) from None


def serialize(serializer: Any, message: Any, state: CallState) -> bytes:
    """The bytes of a response; raises CallStatus (INTERNAL, logged) when it cannot be encoded."""
    if serializer is None:
        return bytes(message)
    try:
        return bytes(serializer(message))
    except Exception:
        log.exception("failed to serialize the response of %s", state.method)
        raise CallStatus(*_status.UNSERIALIZABLE_RESPONSE) from None


def wait_on_loop(loop: asyncio.AbstractEventLoop, step: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """From a handler's thread: run ``step()`` as a task on ``loop`` and block until it ends;
    return its result or raise its exception (``concurrent.futures.CancelledError`` when the
    loop cancelled it), as ``asyncio.run_coroutine_threadsafe(...).result()`` does without its
    ``concurrent.futures.Future``: a stream pays that wait for every message a plain-function
    handler reads or writes."""
    awaited = Awaited(step())

    def start() -> None:
        try:
            awaited.start(loop)
        except BaseException as exc:  # the handler's thread raises it; the loop goes on
            awaited.refuse(exc)

    loop.call_soon_threadsafe(start)
    return awaited.result()


def sync_writer(stream: StreamIO | None, loop: asyncio.AbstractEventLoop) -> Callable[[Any], None] | None:
    if stream is None:
        return None

    def write(message: Any) -> None:
        wait_on_loop(loop, lambda: stream.write(message))

    return write


class SyncRequestIterator:
    """A blocking iterator over a stream's requests, for plain-function handlers."""

    def __init__(self, stream: StreamIO, loop: asyncio.AbstractEventLoop) -> None:
        self._stream = stream
        self._loop = loop

    def __iter__(self) -> SyncRequestIterator:
        return self

    def __next__(self) -> Any:
        message = wait_on_loop(self._loop, self._stream.read)
        if message is grpc.aio.EOF:
            raise StopIteration
        return message

    def read(self) -> Any:
        return self.__next__()


def sync_reader(stream: StreamIO | None, loop: asyncio.AbstractEventLoop) -> SyncRequestIterator | None:
    return None if stream is None else SyncRequestIterator(stream, loop)
