"""The streaming grpc.aio call object over the NATS client core (unary-stream, stream-unary and
stream-stream calls are one class)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from typing import Any, NoReturn

import grpc
from nats.aio.client import Client

from nats_transport import _client
from nats_transport._circuit import Stamp
from nats_transport._framing import Trailers
from nats_transport._metadata import MetadataError, MetadataTuple
from nats_transport._options import TransportOptions
from nats_transport._retry import PREVIOUS_ATTEMPTS_HEADER, CallPolicy, RetryState, wait_within
from nats_transport._status import code_from_number
from nats_transport._stream import StreamFailure
from nats_transport.aio._call_base import (
    CANCELLED,
    DESERIALIZE_FAILED,
    SERIALIZE_FAILED,
    CallBase,
    Deserializer,
    Serializer,
    deserialize,
    internal,
    rpc_error,
    serialize,
)


class StreamCall(
    CallBase,
    grpc.aio.StreamStreamCall[Any, Any],
    grpc.aio.UnaryStreamCall[Any, Any],
    grpc.aio.StreamUnaryCall[Any, Any],
):
    """Any streaming call in flight: iterate or ``read()`` responses, ``write()`` requests.

    One class serves the three streaming kinds (it is an instance of each grpc.aio call type);
    what a kind does not allow (``write`` on unary-stream, say) raises as grpc.aio does.
    """

    def __init__(
        self,
        nc: Client,
        options: TransportOptions,
        subject: str,
        serializer: Serializer,
        deserializer: Deserializer,
        timeout: float | None,
        metadata: Any,
        *,
        request: Any = None,
        request_iterator: Any = None,
        request_streaming: bool,
        response_streaming: bool,
        policy: CallPolicy | None = None,
    ) -> None:
        deadline = _client.effective_deadline(timeout)
        super().__init__(deadline)
        self._serializer = serializer
        self._deserializer = deserializer
        self._request_streaming = request_streaming
        self._response_streaming = response_streaming
        self._stream: _client.ClientStream | None = None
        self._breaker = None if policy is None else policy.breaker
        # Calls with one request are retried before their first response (A6); request streams
        # are not, since that would mean buffering every request sent so far.
        retry = None if policy is None or request_streaming else policy.config.retry
        self._retry = None if retry is None or policy is None else RetryState(retry, policy.throttle, policy.rng)
        self._attempt_changed = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self._started: Stamp | None = None  # when the current attempt began, for the breaker
        self._opened = asyncio.Event()
        self._writer_task: asyncio.Task[None] | None = None
        self._response_task: asyncio.Task[Any] | None = None
        self._locally_cancelled = False
        # A failure on this side ((de)serializing) that ends the call INTERNAL, whatever the wire says.
        self._local_failure: Trailers | None = None
        self._cause: Exception | None = None
        loop = asyncio.get_running_loop()
        self._open_task = loop.create_task(
            self._open(nc, options, subject, metadata, deadline, request, request_iterator)
        )

    async def _open(
        self,
        nc: Client,
        options: TransportOptions,
        subject: str,
        metadata: Any,
        deadline: float | None,
        request: Any,
        request_iterator: Any,
    ) -> None:
        try:
            first = None if self._request_streaming else serialize(self._serializer, request)
        except Exception as exc:
            # grpcio's sync channel fails the call so, before anything is sent (grpc.aio sends an
            # empty message instead).
            self._cause = exc
            self._end_before_open(internal(SERIALIZE_FAILED))
            return
        refusal = None if self._breaker is None else self._breaker.admit()
        if refusal is not None:
            self._end_before_open(Trailers(grpc.StatusCode.UNAVAILABLE.value[0], refusal))
            return
        self._started = None if self._breaker is None else self._breaker.stamp()
        try:
            headers = _client.call_headers(metadata, deadline)
        except MetadataError as exc:
            self._end_before_open(internal(str(exc)))
            return
        stream = _client.ClientStream(nc, _client.ReplyMux.of(nc), options, subject, headers, deadline)
        self._stream = stream
        try:
            await stream.open(first)
        finally:
            self._opened.set()
        loop = asyncio.get_running_loop()
        if self._retry is not None:
            reopen = functools.partial(self._reopen, nc, options, subject, metadata, first)
        else:
            reopen = None
        self._watcher = loop.create_task(self._watch(stream, reopen))
        if not self._request_streaming:
            stream.done_writing()
        elif request_iterator is not None:
            self._writer_task = loop.create_task(self._consume(request_iterator))

    def _end_before_open(self, trailers: Trailers) -> None:
        self._set_outcome(trailers, ())
        self._opened.set()

    async def _watch(self, stream: _client.ClientStream, reopen: Callable[[], Awaitable[bool]] | None) -> None:
        trailers = await stream.trailers()
        initial = await stream.initial_metadata()
        if self._breaker is not None and self._started is not None:
            self._breaker.record(code_from_number(trailers.code), trailers.message, self._started)
        if reopen is not None and self._retry is not None and not self.done() and self._local_failure is None:
            responded = bool(initial) or stream.endpoint.messages_received > 0
            wait = self._retry.next_wait(code_from_number(trailers.code), trailers, responded)
            if wait is not None:
                if not await wait_within(wait, self._deadline):
                    self._set_outcome(Trailers(grpc.StatusCode.DEADLINE_EXCEEDED.value[0], "Deadline Exceeded"), ())
                    return
                if await reopen():
                    return
        if self._writer_task is not None and not self._writer_task.done():
            self._writer_task.cancel()
        self._set_outcome(self._local_failure or trailers, initial)

    async def _fail_locally(self, details: str, cause: Exception) -> NoReturn:
        """End the call INTERNAL for a failure on this side, tell the server, raise the error.

        As grpcio's sync channel does for a request it cannot serialize or a response it cannot
        deserialize (grpc.aio logs those and goes on with an empty request, or None).
        """
        if self._local_failure is None:
            self._local_failure, self._cause = internal(details), cause
        stream = self._stream
        if stream is not None and not stream.finished:
            stream.cancel(details, grpc.StatusCode.INTERNAL)
        elif self._trailers is not None and self._trailers.code == 0:
            self._trailers = self._local_failure  # it ended OK on the wire, but not for the caller
        raise rpc_error(await self._wait_done(), self._initial) from cause

    async def _reopen(self, nc: Client, options: TransportOptions, subject: str, metadata: Any,
                      first: bytes | None) -> bool:
        """Start the next attempt of a call whose last one failed before any response."""
        if self.done() or self._retry is None:
            return True  # cancelled while waiting: the outcome is set
        refusal = None if self._breaker is None else self._breaker.admit()
        if refusal is not None:
            self._set_outcome(Trailers(grpc.StatusCode.UNAVAILABLE.value[0], refusal), ())
            return True
        self._started = None if self._breaker is None else self._breaker.stamp()
        headers = _client.call_headers(metadata, self._deadline, {PREVIOUS_ATTEMPTS_HEADER: str(self._retry.attempts)})
        stream = _client.ClientStream(nc, _client.ReplyMux.of(nc), options, subject, headers, self._deadline)
        self._stream = stream
        self._announce_attempt()
        await stream.open(first)
        self._watcher = asyncio.get_running_loop().create_task(
            self._watch(stream, functools.partial(self._reopen, nc, options, subject, metadata, first))
        )
        stream.done_writing()
        return True

    def _announce_attempt(self) -> None:
        # Wakes readers that saw an attempt end: they go on with the next one, or the outcome.
        changed, self._attempt_changed = self._attempt_changed, asyncio.Event()
        changed.set()

    def _set_outcome(self, trailers: Trailers, initial: tuple[MetadataTuple, ...]) -> None:
        super()._set_outcome(trailers, initial)
        self._announce_attempt()

    async def _superseded(self, stream: _client.ClientStream) -> bool:
        """Once ``stream`` (an attempt that ended) is followed by another attempt or by the
        call's outcome: whether another attempt follows."""
        while self._stream is stream and not self.done():
            await self._attempt_changed.wait()
        return self._stream is not stream

    async def _consume(self, request_iterator: Any) -> None:
        try:
            if hasattr(request_iterator, "__aiter__"):
                async for request in request_iterator:
                    await self._write(request)
            else:
                for request in request_iterator:
                    await self._write(request)
            await self.done_writing()
        except (asyncio.InvalidStateError, StreamFailure, grpc.aio.AioRpcError):
            return  # the call ended while we were still sending (its status says why)

    async def _ready(self) -> _client.ClientStream | None:
        await self._opened.wait()
        return self._stream

    async def _initial_metadata(self) -> tuple[MetadataTuple, ...]:
        while True:
            stream = await self._ready()
            if stream is None:
                await self._wait_ended()
                return self._initial
            initial = await stream.initial_metadata()
            if initial or self._retry is None or not stream.finished or not await self._superseded(stream):
                return initial

    # -- responses ------------------------------------------------------------------------

    async def read(self) -> Any:
        while True:
            stream = await self._ready()
            data = None if stream is None else await stream.read()
            if data is not None or stream is None or self._retry is None or not await self._superseded(stream):
                break
        if data is None:
            trailers = await self._wait_done()
            if self._locally_cancelled:
                raise asyncio.CancelledError()  # as grpc.aio does after the caller's cancel()
            if trailers.code != 0:
                raise rpc_error(trailers, self._initial) from self._cause
            return grpc.aio.EOF
        try:
            return deserialize(self._deserializer, data)
        except Exception as exc:
            await self._fail_locally(DESERIALIZE_FAILED, exc)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        while True:
            message = await self.read()
            if message is grpc.aio.EOF:
                return
            yield message

    def __await__(self) -> Generator[Any, None, Any]:
        return self._unary_response().__await__()

    async def _unary_response(self) -> Any:
        # Awaiting the call twice (an interceptor, then the caller) must give the same response.
        if self._response_task is None:
            self._response_task = asyncio.get_running_loop().create_task(self._read_unary_response())
        return await asyncio.shield(self._response_task)

    async def _read_unary_response(self) -> Any:
        stream = await self._ready()
        data = None if stream is None else await stream.read()
        trailers = await self._wait_done()
        if self._locally_cancelled:
            raise asyncio.CancelledError()
        if trailers.code != 0:
            raise rpc_error(trailers, self._initial) from self._cause
        if data is None:
            raise rpc_error(internal("the server sent OK without a response"))
        try:
            return deserialize(self._deserializer, data)
        except Exception as exc:
            # The call has ended OK on the wire; as in grpcio's sync channel it fails INTERNAL
            # here, keeping the server's trailing metadata.
            self._trailers = self._local_failure = internal(DESERIALIZE_FAILED, trailers.metadata)
            raise rpc_error(self._local_failure, self._initial) from exc

    # -- requests -------------------------------------------------------------------------

    async def write(self, request: Any) -> None:
        if not self._request_streaming:
            raise grpc.aio.UsageError("write() is only for request-streaming calls")
        if self._writer_task is not None:
            raise grpc.aio.UsageError("write() cannot be mixed with a request iterator")
        await self._write(request)

    async def _write(self, request: Any) -> None:
        stream = await self._ready()
        if stream is None or stream.finished:
            trailers = await self._wait_done()
            raise rpc_error(trailers, self._initial) from self._cause
        try:
            data = serialize(self._serializer, request)
        except Exception as exc:
            await self._fail_locally(SERIALIZE_FAILED, exc)
        try:
            await stream.write(data)
        except StreamFailure:
            raise rpc_error(await self._wait_done(), self._initial) from None

    async def done_writing(self) -> None:
        stream = await self._ready()
        if stream is not None:
            stream.done_writing()

    def cancel(self) -> bool:
        if self.done():
            return False
        self._locally_cancelled = True
        if self._stream is not None and not self._stream.finished:
            self._stream.cancel()
        elif self._stream is not None:
            # Between two attempts: nothing is on the wire, the call simply ends here.
            self._set_outcome(CANCELLED, ())
        else:
            self._open_task.cancel()
            self._opened.set()  # _open may never run now: let waiters see the outcome
            self._set_outcome(CANCELLED, ())
        if self._writer_task is not None:
            self._writer_task.cancel()
        return True
