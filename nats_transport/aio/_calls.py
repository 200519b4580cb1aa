"""grpc.aio call objects over the NATS client core, and errors raised as real AioRpcErrors."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator
from typing import Any

import grpc
from nats.aio.client import Client

from nats_transport import _client
from nats_transport._circuit import Stamp
from nats_transport._framing import Trailers
from nats_transport._metadata import MetadataError, MetadataTuple
from nats_transport._options import TransportOptions
from nats_transport._retry import PREVIOUS_ATTEMPTS_HEADER, CallPolicy, RetryState, run_unary, wait_within
from nats_transport._status import code_from_number
from nats_transport._stream import StreamFailure

Serializer = Callable[[Any], bytes] | None
Deserializer = Callable[[bytes], Any] | None


def aio_metadata(items: tuple[MetadataTuple, ...]) -> grpc.aio.Metadata:
    """A grpc.aio.Metadata from tuples."""
    return grpc.aio.Metadata(*items)


def trailing_of(trailers: Trailers) -> tuple[MetadataTuple, ...]:
    """Trailing metadata as grpcio shows it: rich status details included as a ``-bin`` entry."""
    if trailers.details:
        return (*trailers.metadata, ("grpc-status-details-bin", trailers.details))
    return trailers.metadata


def rpc_error(trailers: Trailers, initial: tuple[MetadataTuple, ...] = ()) -> grpc.aio.AioRpcError:
    """The AioRpcError for a non-OK status."""
    return grpc.aio.AioRpcError(
        code_from_number(trailers.code),
        aio_metadata(initial),
        aio_metadata(trailing_of(trailers)),
        details=trailers.message,
    )


def _serialize(serializer: Serializer, message: Any) -> bytes:
    return message if serializer is None else serializer(message)


def _deserialize(deserializer: Deserializer, data: bytes) -> Any:
    return data if deserializer is None else deserializer(data)


class _CallBase:
    """What every call kind shares: status, metadata, callbacks, cancellation."""

    _trailers: Trailers | None
    _initial: tuple[MetadataTuple, ...]

    def __init__(self, deadline: float | None) -> None:
        self._deadline = deadline
        self._trailers = None
        self._initial = ()
        self._callbacks: list[Callable[[Any], None]] = []
        self._done_event = asyncio.Event()

    def _set_outcome(self, trailers: Trailers, initial: tuple[MetadataTuple, ...]) -> None:
        if self._trailers is not None:
            return
        self._trailers = trailers
        self._initial = initial
        self._done_event.set()
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self)

    def done(self) -> bool:
        return self._trailers is not None

    def cancelled(self) -> bool:
        return self._trailers is not None and self._trailers.code == grpc.StatusCode.CANCELLED.value[0]

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(self._deadline - time.monotonic(), 0.0)

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if self._trailers is not None:
            callback(self)
        else:
            self._callbacks.append(callback)

    async def _wait_done(self) -> Trailers:
        await self._done_event.wait()
        assert self._trailers is not None
        return self._trailers

    async def initial_metadata(self) -> grpc.aio.Metadata:
        return aio_metadata(await self._initial_metadata())

    async def _initial_metadata(self) -> tuple[MetadataTuple, ...]:
        await self._done_event.wait()
        return self._initial

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        return aio_metadata(trailing_of(await self._wait_done()))

    async def code(self) -> grpc.StatusCode:
        return code_from_number((await self._wait_done()).code)

    async def details(self) -> str:
        return (await self._wait_done()).message

    async def wait_for_connection(self) -> None:
        await self._initial_metadata()

    def _raise_if_failed(self) -> None:
        assert self._trailers is not None
        if self._trailers.code != 0:
            raise rpc_error(self._trailers, self._initial)


async def attempt_unary(nc: Client, options: TransportOptions, subject: str, payload: bytes, metadata: Any,
                        deadline: float | None, policy: CallPolicy | None,
                        wait_for_ready: bool | None = None) -> _client.Outcome:
    """One unary call: a single attempt, or as many as the method's policy asks for."""
    if policy is None:
        return await _client.unary_call(nc, options, subject, payload, metadata, deadline)
    config = policy.config
    ready = config.wait_for_ready if wait_for_ready is None else wait_for_ready
    if config.retry is None and config.hedging is None and not ready:
        # The common case, kept free of closures: one attempt, watched by the breaker.
        breaker = policy.breaker
        if breaker is None:
            outcome = await _client.unary_call(nc, options, subject, payload, metadata, deadline)
        else:
            refusal = breaker.admit()
            if refusal is not None:
                return _client.failed(grpc.StatusCode.UNAVAILABLE, refusal)
            started = breaker.stamp()
            try:
                outcome = await _client.unary_call(nc, options, subject, payload, metadata, deadline)
            except asyncio.CancelledError:
                breaker.record(grpc.StatusCode.CANCELLED, "", started)
                raise
            breaker.record(code_from_number(outcome.trailers.code), outcome.trailers.message, started)
        if policy.throttle is not None and outcome.trailers.code == 0:
            policy.throttle.succeeded()
        return outcome

    def attempt(previous: int) -> Coroutine[Any, Any, _client.Outcome]:
        extra = {PREVIOUS_ATTEMPTS_HEADER: str(previous)} if previous else None
        return _client.unary_call(nc, options, subject, payload, metadata, deadline, extra)

    return await run_unary(attempt, policy, deadline, wait_for_ready)


class UnaryUnaryCall(_CallBase, grpc.aio.UnaryUnaryCall):  # type: ignore[misc]
    """A unary call in flight; await it for the response."""

    def __init__(
        self,
        nc: Client,
        options: TransportOptions,
        subject: str,
        request: Any,
        serializer: Serializer,
        deserializer: Deserializer,
        timeout: float | None,
        metadata: Any,
        policy: CallPolicy | None = None,
        wait_for_ready: bool | None = None,
    ) -> None:
        deadline = _client.effective_deadline(timeout)
        super().__init__(deadline)
        self._deserializer = deserializer
        self._policy = policy
        self._wait_for_ready = wait_for_ready
        self._task = asyncio.get_running_loop().create_task(
            self._run(nc, options, subject, request, serializer, metadata, deadline)
        )

    async def _run(
        self,
        nc: Client,
        options: TransportOptions,
        subject: str,
        request: Any,
        serializer: Serializer,
        metadata: Any,
        deadline: float | None,
    ) -> Any:
        try:
            payload = _serialize(serializer, request)
        except Exception as exc:
            self._set_outcome(Trailers(grpc.StatusCode.INTERNAL.value[0], f"Exception serializing request: {exc}"), ())
            self._raise_if_failed()
        try:
            outcome = await attempt_unary(nc, options, subject, payload, metadata, deadline,
                                          self._policy, self._wait_for_ready)
        except asyncio.CancelledError:
            self._set_outcome(Trailers(grpc.StatusCode.CANCELLED.value[0], "Locally cancelled by application!"), ())
            raise
        if outcome.trailers.code == 0 and outcome.response is not None:
            try:
                response = _deserialize(self._deserializer, outcome.response)
            except Exception as exc:
                self._set_outcome(
                    Trailers(grpc.StatusCode.INTERNAL.value[0], f"Exception deserializing response: {exc}"),
                    outcome.initial_metadata,
                )
                self._raise_if_failed()
            self._set_outcome(outcome.trailers, outcome.initial_metadata)
            return response
        self._set_outcome(outcome.trailers, outcome.initial_metadata)
        self._raise_if_failed()

    def __await__(self) -> Generator[Any, None, Any]:
        try:
            return (yield from asyncio.shield(self._task).__await__())
        except asyncio.CancelledError:
            if self.cancelled():
                raise rpc_error(self._trailers or Trailers(1, "Cancelled")) from None
            # The task awaiting the call was cancelled: as in grpc.aio, so is the call, and the
            # server hears of it (wire protocol 1.1).
            self.cancel()
            raise

    def cancel(self) -> bool:
        if self.done():
            return False
        self._task.cancel()
        self._set_outcome(Trailers(grpc.StatusCode.CANCELLED.value[0], "Locally cancelled by application!"), ())
        return True


class StreamCall(_CallBase, grpc.aio.StreamStreamCall, grpc.aio.UnaryStreamCall, grpc.aio.StreamUnaryCall):  # type: ignore[misc]
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
        refusal = None if self._breaker is None else self._breaker.admit()
        if refusal is not None:
            self._set_outcome(Trailers(grpc.StatusCode.UNAVAILABLE.value[0], refusal), ())
            self._opened.set()
            return
        self._started = None if self._breaker is None else self._breaker.stamp()
        try:
            headers = _client.call_headers(metadata, deadline)
        except MetadataError as exc:
            self._set_outcome(Trailers(grpc.StatusCode.INTERNAL.value[0], str(exc)), ())
            self._opened.set()
            return
        stream = _client.ClientStream(nc, _client.ReplyMux.of(nc), options, subject, headers, deadline)
        self._stream = stream
        first = None if self._request_streaming else _serialize(self._serializer, request)
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

    async def _watch(self, stream: _client.ClientStream, reopen: Callable[[], Awaitable[bool]] | None) -> None:
        trailers = await stream.trailers()
        initial = await stream.initial_metadata()
        if self._breaker is not None and self._started is not None:
            self._breaker.record(code_from_number(trailers.code), trailers.message, self._started)
        if reopen is not None and self._retry is not None and not self.done():
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
        self._set_outcome(trailers, initial)

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
        except (asyncio.InvalidStateError, StreamFailure):
            return  # the call ended while we were still sending

    async def _ready(self) -> _client.ClientStream | None:
        await self._opened.wait()
        return self._stream

    async def _initial_metadata(self) -> tuple[MetadataTuple, ...]:
        while True:
            stream = await self._ready()
            if stream is None:
                await self._done_event.wait()
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
                raise rpc_error(trailers, self._initial)
            return grpc.aio.EOF
        return _deserialize(self._deserializer, data)

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
            raise rpc_error(trailers, self._initial)
        if data is None:
            raise rpc_error(Trailers(grpc.StatusCode.INTERNAL.value[0], "the server sent OK without a response"))
        return _deserialize(self._deserializer, data)

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
            raise rpc_error(trailers, self._initial)
        try:
            await stream.write(_serialize(self._serializer, request))
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
            self._set_outcome(Trailers(grpc.StatusCode.CANCELLED.value[0], "Locally cancelled by application!"), ())
        else:
            self._open_task.cancel()
            self._opened.set()  # _open may never run now: let waiters see the outcome
            self._set_outcome(Trailers(grpc.StatusCode.CANCELLED.value[0], "Locally cancelled by application!"), ())
        if self._writer_task is not None:
            self._writer_task.cancel()
        return True
