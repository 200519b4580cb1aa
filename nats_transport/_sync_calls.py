"""The call objects of the synchronous channel: grpc.Call and grpc.Future faces, for a calling
thread, of the aio call objects running on the channel's loop thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc

from nats_transport._framing import Trailers
from nats_transport._metadata import MetadataTuple
from nats_transport._status import code_from_number
from nats_transport.aio._call_base import CANCELLED, Ending, trailing_of
from nats_transport.aio._calls import UnaryUnaryCall
from nats_transport.aio._stream_call import StreamCall

if TYPE_CHECKING:
    from nats_transport._sync_channel import Channel


class RpcError(grpc.RpcError, grpc.Call, grpc.Future):  # type: ignore[misc]
    """A failed call: an RpcError that is also a Call and a Future, as grpcio's errors are."""

    def __init__(self, trailers: Trailers, initial: tuple[MetadataTuple, ...] = ()) -> None:
        super().__init__(trailers.message)
        self._trailers = trailers
        self._initial = initial

    def __repr__(self) -> str:
        return f"<nats_transport.RpcError code={self.code().name} details={self.details()!r}>"

    __str__ = __repr__

    def code(self) -> grpc.StatusCode:
        return code_from_number(self._trailers.code)

    def details(self) -> str:
        return self._trailers.message

    def initial_metadata(self) -> tuple[MetadataTuple, ...]:
        return self._initial

    def trailing_metadata(self) -> tuple[MetadataTuple, ...]:
        return trailing_of(self._trailers)

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float | None:
        return None

    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return bool(self._trailers.code == grpc.StatusCode.CANCELLED.value[0])

    def running(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def result(self, timeout: float | None = None) -> Any:
        raise self

    def exception(self, timeout: float | None = None) -> RpcError:
        return self

    def traceback(self, timeout: float | None = None) -> None:
        return None

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        fn(self)


class UnaryCall(grpc.Call, grpc.Future):  # type: ignore[misc]
    """A unary call in flight (what ``future()`` returns, and ``with_call()``'s second item): the
    aio call object on the channel's loop, watched from the calling thread.

    ``_ended`` resolves when the aio call ends (or is cancelled here first), so the calling thread
    reads the call's outcome only once it is final.
    """

    def __init__(self, channel: Channel, start: Callable[[], UnaryUnaryCall], deadline: float | None) -> None:
        self._loop = channel._loop
        self._deadline = deadline
        self._call: UnaryUnaryCall | None = None
        self._ended: concurrent.futures.Future[None] = concurrent.futures.Future()
        channel._call_soon(self._begin, start)

    def _begin(self, start: Callable[[], UnaryUnaryCall]) -> None:  # on the loop thread
        if self._ended.cancelled():
            return  # cancelled before it began: nothing to send
        try:
            call = start()
        except Exception as exc:  # the caller's result() raises it
            self._ended.set_exception(exc)
            return
        self._call = call
        call.add_done_callback(self._on_done)

    def _on_done(self, _: Any) -> None:  # on the loop thread
        with contextlib.suppress(concurrent.futures.InvalidStateError):  # cancelled here meanwhile
            self._ended.set_result(None)

    def _ending(self, timeout: float | None = None) -> Ending:
        """How the call ended, waiting for it; a call cancelled here ended CANCELLED."""
        try:
            self._ended.result(timeout)
        except concurrent.futures.CancelledError:
            return Ending(CANCELLED, ())
        except concurrent.futures.TimeoutError:
            raise grpc.FutureTimeoutError() from None
        assert self._call is not None
        ending = self._call.ending()
        assert ending is not None
        return ending

    def result(self, timeout: float | None = None) -> Any:
        ending = self._ending(timeout)
        if self._ended.cancelled():
            raise grpc.FutureCancelledError()
        if not ending.ok:
            raise RpcError(ending.trailers, ending.initial_metadata)
        assert self._call is not None
        return self._call.response_nowait()

    def exception(self, timeout: float | None = None) -> RpcError | None:
        ending = self._ending(timeout)
        if self._ended.cancelled():
            raise grpc.FutureCancelledError()
        return None if ending.ok else RpcError(ending.trailers, ending.initial_metadata)

    def traceback(self, timeout: float | None = None) -> Any:
        error = self.exception(timeout)
        return error.__traceback__ if error is not None else None

    def code(self) -> grpc.StatusCode:
        return code_from_number(self._ending().trailers.code)

    def details(self) -> str:
        return self._ending().trailers.message

    def initial_metadata(self) -> tuple[MetadataTuple, ...]:
        return self._ending().initial_metadata

    def trailing_metadata(self) -> tuple[MetadataTuple, ...]:
        return trailing_of(self._ending().trailers)

    def cancel(self) -> bool:
        # As grpcio's: True only for the cancel that ends a call still running.
        if self._ended.done() or not self._ended.cancel():
            return False
        self._loop.call_soon_threadsafe(self._cancel_call)
        return True

    def _cancel_call(self) -> None:  # on the loop thread, after _begin
        if self._call is not None:
            self._call.cancel()  # the server hears of it (wire protocol 1.1)

    def cancelled(self) -> bool:
        return self._ended.cancelled()

    def running(self) -> bool:
        return not self._ended.done()

    def done(self) -> bool:
        return self._ended.done()

    def is_active(self) -> bool:
        return not self._ended.done()

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(self._deadline - time.monotonic(), 0.0)

    def add_callback(self, callback: Callable[[], None]) -> bool:
        if self._ended.done():
            return False
        self._ended.add_done_callback(lambda _: callback())
        return True

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        self._ended.add_done_callback(lambda _: fn(self))


class StreamIterator(grpc.Call, grpc.Future):  # type: ignore[misc]
    """Responses of a streaming call as a blocking iterator that is also a Call and a Future."""

    def __init__(self, channel: Channel, call: StreamCall, response_streaming: bool) -> None:
        self._channel = channel
        self._call = call
        self._response_streaming = response_streaming
        self._cancelled_here = False  # grpcio's futures tell a caller's cancel() from other ends

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            message = self._channel._run(self._call.read())
        except (grpc.aio.AioRpcError, asyncio.CancelledError, concurrent.futures.CancelledError) as err:
            # grpcio's sync iterators raise an RpcError (CANCELLED) after cancel(), never
            # asyncio's CancelledError.
            raise self._error() from err
        if message is grpc.aio.EOF:
            raise StopIteration
        return message

    def _error(self) -> RpcError:
        ending = self._call.ending() or Ending(Trailers(grpc.StatusCode.UNKNOWN.value[0], "call failed"), ())
        return RpcError(ending.trailers, ending.initial_metadata)

    def _wait(self) -> Ending:
        return self._channel._run(self._call.wait_ending())

    def result(self, timeout: float | None = None) -> Any:
        try:
            return self._channel._run(_awaited(self._call), timeout)
        except (grpc.aio.AioRpcError, asyncio.CancelledError, concurrent.futures.CancelledError) as err:
            if self._cancelled_here:
                raise grpc.FutureCancelledError() from None
            raise self._error() from err

    def exception(self, timeout: float | None = None) -> RpcError | None:
        ending = self._wait()
        if self._cancelled_here:
            raise grpc.FutureCancelledError()
        return None if ending.ok else RpcError(ending.trailers, ending.initial_metadata)

    def traceback(self, timeout: float | None = None) -> None:
        return None

    def code(self) -> grpc.StatusCode:
        return code_from_number(self._wait().trailers.code)

    def details(self) -> str:
        return self._wait().trailers.message

    def initial_metadata(self) -> tuple[MetadataTuple, ...]:
        return self._channel._run(self._call.initial_metadata_tuples())

    def trailing_metadata(self) -> tuple[MetadataTuple, ...]:
        return trailing_of(self._wait().trailers)

    def cancel(self) -> bool:
        cancelled = bool(self._channel._run(as_coroutine(self._call.cancel)))
        self._cancelled_here = self._cancelled_here or cancelled
        return cancelled

    def cancelled(self) -> bool:
        return self._call.cancelled()

    def running(self) -> bool:
        return not self._call.done()

    def done(self) -> bool:
        return self._call.done()

    def is_active(self) -> bool:
        return not self._call.done()

    def time_remaining(self) -> float | None:
        return self._call.time_remaining()

    def add_callback(self, callback: Callable[[], None]) -> bool:
        if self._call.done():
            return False
        self._channel._loop.call_soon_threadsafe(self._call.add_done_callback, lambda _: callback())
        return True

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        self._channel._loop.call_soon_threadsafe(self._call.add_done_callback, lambda _: fn(self))


async def _awaited(call: StreamCall) -> Any:
    return await call


async def as_coroutine(fn: Callable[[], Any]) -> Any:
    """``fn()`` as a coroutine, for ``Channel._run`` to call it on the loop thread."""
    return fn()
