"""The call objects of the synchronous channel: grpc.Call and grpc.Future faces, for a calling
thread, of the aio call objects running on the channel's loop thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc

from nats_transport._framing import Trailers
from nats_transport._loop_bridge import Claim, Latch
from nats_transport._metadata import MetadataTuple
from nats_transport._status import code_from_number
from nats_transport.aio._call_base import CANCELLED, Ending, trailing_of
from nats_transport.aio._calls import UnaryUnaryCall
from nats_transport.aio._stream_call import StreamCall

if TYPE_CHECKING:
    from nats_transport._sync_channel import Channel

    # grpc.Future is generic in grpc's stubs only: subscripted at runtime, it raises TypeError.
    _Future = grpc.Future[Any]
else:
    _Future = grpc.Future

_LOG = logging.getLogger(__name__)

# What grpcio's calls end with when their channel is closed under them.
CHANNEL_CLOSED = Trailers(grpc.StatusCode.CANCELLED.value[0], "Channel closed!")


class RpcError(grpc.RpcError, grpc.Call, _Future):
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

    # grpc.RpcError's stub declares _Metadatum objects; grpc.Call's, the tuples given here.
    def trailing_metadata(self) -> tuple[MetadataTuple, ...]:  # type: ignore[override]  # as grpc.Call's
        return trailing_of(self._trailers)

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float | None:  # type: ignore[override]  # None without a deadline, as grpcio's
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


class UnaryCall(grpc.Call, _Future):
    """A unary call in flight (what ``future()`` returns, and ``with_call()``'s second item): the
    aio call object on the channel's loop, watched from the calling thread.

    Its ending is decided once, by whoever takes its claim first: the aio call ending (on the
    loop thread), ``cancel()`` (any thread) or the channel closing. The latch opens after that,
    so the calling thread reads the ending only once it is final.
    """

    def __init__(self, channel: Channel, start: Callable[[], UnaryUnaryCall], deadline: float | None) -> None:
        self._channel = channel
        self._deadline = deadline
        self._call: UnaryUnaryCall | None = None
        self._claim = Claim()
        self._latch = Latch()
        self._ending_: Ending | None = None
        self._failure: Exception | None = None  # start() raised it: result() raises it
        self._cancelled = False
        # Appended from any thread and popped by whoever finds the latch open: each runs once.
        self._callbacks: list[Callable[[Any], None]] = []
        channel._call_soon(self._begin, start)

    def _begin(self, start: Callable[[], UnaryUnaryCall]) -> None:  # on the loop thread
        if self._claim.taken:
            return  # cancelled before it began: nothing to send
        channel = self._channel
        if channel._closed:  # handed over as the channel closed (maybe run by the closing thread)
            self.end_by_close()
            return
        try:
            call = start()
        except Exception as exc:  # the caller's result() raises it
            if self._claim.take():
                self._failure = exc
                self._finish()
            return
        self._call = call
        channel._unary_calls.add(self)
        call.add_done_callback(self._on_done)

    def _on_done(self, call: UnaryUnaryCall) -> None:  # on the loop thread
        self._channel._unary_calls.discard(self)
        if self._claim.take():  # else cancelled here, or the channel closed, first
            self._ending_ = call.ending()
            self._finish()

    def end_by_close(self) -> None:
        """End the call CANCELLED as grpcio's channel does on close; the server hears of it."""
        if self._claim.take():
            self._ending_ = Ending(CHANNEL_CLOSED, ())
            self._finish()
        if self._call is not None:
            self._call.cancel()

    def _finish(self) -> None:
        self._latch.open()
        self._run_callbacks()

    def _run_callbacks(self) -> None:
        callbacks = self._callbacks
        while callbacks:
            try:
                fn = callbacks.pop(0)
            except IndexError:  # another thread took the last one
                return
            try:
                fn(self)
            except Exception:  # as concurrent.futures does: one callback's failure stops no other
                _LOG.exception("exception calling callback for %r", self)

    def _ending(self, timeout: float | None = None) -> Ending:
        """How the call ended, waiting for it; a call cancelled here ended CANCELLED."""
        if not self._latch.is_open:
            self._channel._check_thread()
            if not self._latch.wait(timeout):
                raise grpc.FutureTimeoutError()
        if self._failure is not None:
            raise self._failure
        ending = self._ending_
        assert ending is not None
        return ending

    def result(self, timeout: float | None = None) -> Any:
        ending = self._ending(timeout)
        if self._cancelled:
            raise grpc.FutureCancelledError()
        if not ending.ok:
            raise RpcError(ending.trailers, ending.initial_metadata)
        assert self._call is not None
        return self._call.response_nowait()

    def exception(self, timeout: float | None = None) -> RpcError | None:
        ending = self._ending(timeout)
        if self._cancelled:
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
        if not self._claim.take():
            return False
        self._cancelled = True
        self._ending_ = Ending(CANCELLED, ())
        self._finish()
        # After _begin (the inbox keeps order): the server hears of it (wire protocol 1.1). A
        # closed channel has told the server already.
        with contextlib.suppress(RuntimeError):
            self._channel._call_soon(self._cancel_call, None)
        return True

    def _cancel_call(self, _: None) -> None:  # on the loop thread, after _begin
        if self._call is not None:
            self._call.cancel()

    def cancelled(self) -> bool:
        return self._cancelled

    def running(self) -> bool:
        return not self._latch.is_open

    def done(self) -> bool:
        return self._latch.is_open

    def is_active(self) -> bool:
        return not self._latch.is_open

    def time_remaining(self) -> float | None:  # type: ignore[override]  # None without a deadline, as grpcio's
        return None if self._deadline is None else max(self._deadline - time.monotonic(), 0.0)

    def add_callback(self, callback: Callable[[], None]) -> bool:
        if self._latch.is_open:
            return False
        self._add_done_callback(lambda _: callback())
        return True

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        self._add_done_callback(fn)

    def _add_done_callback(self, fn: Callable[[Any], None]) -> None:
        self._callbacks.append(fn)
        # Read after the append: if the call ended meanwhile, its thread may have run the list
        # before fn was in it, so run what is left here.
        if self._latch.is_open:
            self._run_callbacks()


class StreamIterator(grpc.Call, _Future):
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
        except RuntimeError as err:
            raise self._error_if_closed(err) from None
        if message is grpc.aio.EOF:
            raise StopIteration
        return message

    def _ending(self) -> Ending | None:
        """How the call ended (None while it runs); a call the channel's close ended says so."""
        ending = self._call.ending()
        if ending is not None and self._call in self._channel._closed_streams:
            return Ending(CHANNEL_CLOSED, ending.initial_metadata)
        return ending

    def _error(self) -> RpcError:
        ending = self._ending() or Ending(Trailers(grpc.StatusCode.UNKNOWN.value[0], "call failed"), ())
        return RpcError(ending.trailers, ending.initial_metadata)

    def _error_if_closed(self, error: RuntimeError) -> BaseException:
        """What to raise for a RuntimeError from the loop: the call's error once the channel is
        closed (the call ended with it), else the RuntimeError (a blocking call on the loop)."""
        if not self._channel._closed:
            return error
        # The loop refused it because the channel closed: the call ends (or has) with it.
        return self._error() if self._call.done() else RpcError(CHANNEL_CLOSED)

    def _wait(self) -> Ending:
        ending = self._ending()
        if ending is not None:  # ended: no trip through the loop (which may be gone)
            return ending
        try:
            self._channel._run(self._call.wait_ending())
        except RuntimeError as err:
            raise self._error_if_closed(err) from None
        ending = self._ending()
        assert ending is not None
        return ending

    def result(self, timeout: float | None = None) -> Any:
        try:
            return self._channel._run(_awaited(self._call), timeout)
        except (grpc.aio.AioRpcError, asyncio.CancelledError, concurrent.futures.CancelledError) as err:
            if self._cancelled_here:
                raise grpc.FutureCancelledError() from None
            raise self._error() from err
        except RuntimeError as err:
            raise self._error_if_closed(err) from None

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
        ending = self._ending()
        if ending is not None:
            return ending.initial_metadata
        return self._channel._run(self._call.initial_metadata_tuples())

    def trailing_metadata(self) -> tuple[MetadataTuple, ...]:
        return trailing_of(self._wait().trailers)

    def cancel(self) -> bool:
        if self._call.done():
            return False
        try:
            cancelled = bool(self._channel._run(as_coroutine(self._call.cancel)))
        except RuntimeError:
            if self._channel._closed:
                return False  # the channel's close ended it
            raise
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

    def time_remaining(self) -> float | None:  # type: ignore[override]  # None without a deadline, as grpcio's
        return self._call.time_remaining()

    def add_callback(self, callback: Callable[[], None]) -> bool:
        if self._call.done():
            return False
        try:
            self._channel._call_soon(self._call.add_done_callback, lambda _: callback())
        except RuntimeError:  # the channel closed, and with it the call
            return False
        return True

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        if self._call.done():
            fn(self)
            return
        try:
            # On the loop thread, where the call's callbacks are kept and run.
            self._channel._call_soon(self._call.add_done_callback, lambda _: fn(self))
        except RuntimeError:  # the channel closed, and with it the call
            fn(self)


async def _awaited(call: StreamCall) -> Any:
    return await call


async def as_coroutine(fn: Callable[[], Any]) -> Any:
    """``fn()`` as a coroutine, for ``Channel._run`` to call it on the loop thread."""
    return fn()
