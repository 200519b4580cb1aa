"""How handlers meet their messages: (de)serialization, the reader and writer of a stream call,
and their blocking twins for plain-function handlers. What a failure here means for the call is
written into its CallState; the server turns that into the status."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar, cast

import grpc

from nats_transport import _framing, _status
from nats_transport._context import AbortError, CallState, initial_headers
from nats_transport._stream import StreamEndpoint, headers_size

log = logging.getLogger("nats_transport.server")

T = TypeVar("T")

FAILED: Any = object()  # a request or result that did not come to be; the state says why


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
        message = deserialize(self._deserialize, data, self._state)
        if message is FAILED:
            raise AbortError()
        return message

    async def write(self, message: Any) -> None:
        data = serialize(self._serialize, message, self._state)
        if data is None:
            raise AbortError()
        await self.write_bytes(data)

    async def write_bytes(self, data: bytes) -> None:
        if self._state.done:
            raise asyncio.CancelledError()
        if len(data) > self._max_message:
            self._state.code = grpc.StatusCode.RESOURCE_EXHAUSTED
            self._state.details = f"response of {len(data)} bytes exceeds the limit of {self._max_message}"
            raise AbortError()
        endpoint = self._endpoint
        if not self._state.initial_metadata_sent:
            headers = initial_headers(self._state)
            if headers and headers_size(headers) + 1024 > endpoint.max_payload:
                self._state.code = grpc.StatusCode.RESOURCE_EXHAUSTED
                self._state.details = "initial metadata exceeds the connection's max_payload"
                raise AbortError()
            endpoint.headers_to_send = headers
        endpoint.queue_frames(_framing.message_frame_header(len(data)) + data)
        if endpoint.backlog >= self._high_water:
            await endpoint.wait_writable(self._high_water)


async def read_request(endpoint: StreamEndpoint, state: CallState) -> Any:
    """The one request of a unary-request stream call, or None at a half-close without one, or
    FAILED when the call's deadline passes first (the handler's own deadline is armed only
    once it runs, so the wait for its request needs its own)."""
    if state.deadline is None:
        return await endpoint.read()
    try:
        return await asyncio.wait_for(endpoint.read(), max(state.deadline - time.monotonic(), 0.0))
    except TimeoutError:
        state.code, state.details = grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"
        return FAILED


def deserialize(deserializer: Any, data: bytes, state: CallState) -> Any:
    if deserializer is None:
        return data
    try:
        return deserializer(data)
    except Exception:
        state.code, state.details = _status.UNDECODABLE_REQUEST
        return FAILED


def serialize(serializer: Any, message: Any, state: CallState) -> bytes | None:
    if serializer is None:
        return bytes(message)
    try:
        return bytes(serializer(message))
    except Exception:
        log.exception("failed to serialize the response of %s", state.method)
        state.code, state.details = _status.UNSERIALIZABLE_RESPONSE
        return None


def wait_on_loop(loop: asyncio.AbstractEventLoop, step: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """From a handler's thread: run ``step()`` as a task on ``loop`` and block until it ends;
    return its result or raise its exception.

    ``asyncio.run_coroutine_threadsafe(...).result()`` does the same through a
    ``concurrent.futures.Future``, a Condition with its locks and a chained callback; a stream
    pays that for every message a plain-function handler reads. One plain lock per wait does.
    """
    finished = threading.Lock()
    finished.acquire()  # released by the loop when the task ends: acquiring it again waits
    outcome: list[tuple[bool, Any]] = []

    def settle(task: asyncio.Task[T]) -> None:
        if task.cancelled():  # the loop is shutting down: as run_coroutine_threadsafe reports it
            outcome.append((False, concurrent.futures.CancelledError()))
        elif (error := task.exception()) is not None:
            outcome.append((False, error))
        else:
            outcome.append((True, task.result()))
        finished.release()

    def start() -> None:
        try:
            task = loop.create_task(step())
        except BaseException as exc:  # the handler's thread raises it; the loop goes on
            outcome.append((False, exc))
            finished.release()
            return
        task.add_done_callback(settle)

    loop.call_soon_threadsafe(start)
    finished.acquire()
    returned, value = outcome[0]
    if not returned:
        raise value
    return cast(T, value)


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
