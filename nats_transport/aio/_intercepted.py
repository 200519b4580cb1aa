"""The call handed back when client interceptors run, answering as grpc.aio's does
(grpc/aio/_interceptor.py: InterceptedCall, UnaryUnaryCallResponse, _StreamCallResponseIterator).

The interceptors run in a task; until it ends the call is not done and ``cancel()`` cancels the
task. Once it has, every question goes to the call the chain returned: a transport call, or a
wrapper around what an interceptor produced itself (a response, or an async iterator of
responses). A chain that raised, or was cancelled, answers from that.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator
from typing import Any

import grpc

from nats_transport._client import effective_deadline
from nats_transport.aio._call_base import LOCAL_CANCEL

# The grpc.aio call type a chain of each kind must end in, by (request_streaming, response_streaming).
CALL_TYPES = {
    (False, False): grpc.aio.UnaryUnaryCall,
    (False, True): grpc.aio.UnaryStreamCall,
    (True, False): grpc.aio.StreamUnaryCall,
    (True, True): grpc.aio.StreamStreamCall,
}
_FINISHED = "RPC already finished."  # grpc.aio's words for writing to an ended call


class ResponseCall(grpc.aio.UnaryUnaryCall[Any, Any], grpc.aio.StreamUnaryCall[Any, Any]):
    """A finished OK call around a response an interceptor produced itself; it answers as
    grpc.aio's UnaryUnaryCallResponse does (no metadata: None)."""

    def __init__(self, response: Any) -> None:
        self._response = response

    def __await__(self) -> Generator[Any, None, Any]:
        return self._result().__await__()

    async def _result(self) -> Any:
        return self._response

    # grpc.aio's UnaryUnaryCallResponse answers None for both, whatever Call declares.
    async def initial_metadata(self) -> None:  # type: ignore[override]  # None, as grpc.aio's
        return None

    async def trailing_metadata(self) -> None:  # type: ignore[override]  # None, as grpc.aio's
        return None

    async def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.OK

    async def details(self) -> str:
        return ""

    async def wait_for_connection(self) -> None:
        return None

    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        callback(self)

    def time_remaining(self) -> float | None:
        return None

    async def write(self, request: Any) -> None:
        raise asyncio.InvalidStateError(_FINISHED)

    async def done_writing(self) -> None:
        return None


class ResponseIterator(grpc.aio.UnaryStreamCall[Any, Any], grpc.aio.StreamStreamCall[Any, Any]):
    """An interceptor's own async iterator of responses, with the status, metadata and
    cancellation of the call beneath it (grpc.aio's _StreamCallResponseIterator)."""

    def __init__(self, call: Any, responses: Any) -> None:
        self._call = call
        self._responses = responses
        self._reader: AsyncIterator[Any] | None = None

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._responses.__aiter__()  # type: ignore[no-any-return]

    async def read(self) -> Any:
        if self._reader is None:
            self._reader = self.__aiter__()
        try:
            return await self._reader.__anext__()
        except StopAsyncIteration:
            return grpc.aio.EOF

    async def write(self, request: Any) -> None:
        await self._call.write(request)

    async def done_writing(self) -> None:
        await self._call.done_writing()

    def cancel(self) -> bool:
        return bool(self._call.cancel())

    def cancelled(self) -> bool:
        return bool(self._call.cancelled())

    def done(self) -> bool:
        return bool(self._call.done())

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self._call.add_done_callback(callback)

    def time_remaining(self) -> float | None:
        return self._call.time_remaining()  # type: ignore[no-any-return]

    async def initial_metadata(self) -> Any:
        return await self._call.initial_metadata()

    async def trailing_metadata(self) -> Any:
        return await self._call.trailing_metadata()

    async def code(self) -> grpc.StatusCode:
        code: grpc.StatusCode = await self._call.code()
        return code

    async def details(self) -> str:
        details: str = await self._call.details()
        return details

    async def wait_for_connection(self) -> None:
        await self._call.wait_for_connection()


class Chain:
    """Runs the interceptors of one call in order; the last continuation starts the call.

    What each interceptor hands back is adopted as grpc.aio does: a call of the kind is kept,
    a response becomes a :class:`ResponseCall`, an iterator of responses a
    :class:`ResponseIterator` over the last call the chain produced.
    """

    def __init__(self, interceptors: tuple[Any, ...], hook: str, kind: tuple[bool, bool],
                 start: Callable[[Any, Any], Any]) -> None:
        self._interceptors = interceptors
        self._hook = hook
        self._call_type = CALL_TYPES[kind]
        self._response_streaming = kind[1]
        self._start = start
        self.last_call: Any = None  # the innermost call produced so far

    async def run(self, index: int, details: Any, request: Any) -> Any:
        if index == len(self._interceptors):
            self.last_call = self._start(details, request)
            return self.last_call

        async def continuation(next_details: Any, next_request: Any) -> Any:
            return await self.run(index + 1, next_details, next_request)

        result = await getattr(self._interceptors[index], self._hook)(continuation, details, request)
        if isinstance(result, self._call_type):
            if self._response_streaming:
                self.last_call = result
            return result
        if not self._response_streaming:
            # grpc.aio wraps a unary-unary interceptor's response so; a stream-unary one it
            # leaves bare, and then fails on every use of the call: ours wraps both.
            return ResponseCall(result)
        self.last_call = ResponseIterator(self.last_call, result)
        return self.last_call


class InterceptedCall(
    grpc.aio.UnaryUnaryCall[Any, Any],
    grpc.aio.UnaryStreamCall[Any, Any],
    grpc.aio.StreamUnaryCall[Any, Any],
    grpc.aio.StreamStreamCall[Any, Any],
):
    """A call whose interceptors run in a task: it answers from the call they hand back."""

    def __init__(self, chain: Coroutine[Any, Any, Any], timeout: float | None) -> None:
        # Until the chain has started a call, time_remaining() answers from the caller's timeout.
        self._deadline = effective_deadline(timeout)
        self._pending_callbacks: list[Callable[[Any], None]] = []
        self._responses: AsyncIterator[Any] | None = None
        self._task = asyncio.get_running_loop().create_task(chain)
        self._task.add_done_callback(self._chain_ended)

    # -- the chain's outcome --------------------------------------------------------------

    def _call(self) -> Any:
        """The chain's call, once it has run without failing; else None."""
        task = self._task
        if not task.done() or task.cancelled() or task.exception() is not None:
            return None
        return task.result()

    async def _settled(self) -> Any:
        """The chain's call; raises what the chain raised (CancelledError if it was cancelled).

        Waits without letting a cancelled waiter cancel the chain: only ``cancel()`` does that.
        """
        if not self._task.done():
            await asyncio.wait((self._task,))
        return self._task.result()

    async def _answer(self, ask: Callable[[Any], Awaitable[Any]], on_error: Callable[[Any], Any],
                      on_cancel: Any) -> Any:
        try:
            call = await self._settled()
        except grpc.aio.AioRpcError as err:
            return on_error(err)
        except asyncio.CancelledError:
            if not self._task.cancelled():
                raise  # the waiter was cancelled, not the call
            return on_cancel
        return await ask(call)

    # -- grpc.aio.Call ----------------------------------------------------------------------

    def cancel(self) -> bool:
        task = self._task
        if task.cancelled():
            return False
        if not task.done():
            return task.cancel()  # no call yet: the chain itself is cancelled
        if task.exception() is not None:
            return False
        return bool(task.result().cancel())

    def cancelled(self) -> bool:
        task = self._task
        if task.cancelled():
            return True
        if not task.done():
            return False
        error = task.exception()
        if error is not None:
            return isinstance(error, grpc.aio.AioRpcError) and error.code() == grpc.StatusCode.CANCELLED
        return bool(task.result().cancelled())

    def done(self) -> bool:
        task = self._task
        if not task.done():
            return False
        if task.cancelled() or task.exception() is not None:
            return True
        return bool(task.result().done())

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        call = self._call()
        if not self._task.done():
            self._pending_callbacks.append(callback)
        elif call is None or call.done():
            callback(self)
        else:
            call.add_done_callback(lambda _: callback(self))

    def _chain_ended(self, _: asyncio.Task[Any]) -> None:
        callbacks, self._pending_callbacks = self._pending_callbacks, []
        for callback in callbacks:
            self.add_done_callback(callback)

    def time_remaining(self) -> float | None:
        # grpc.aio's intercepted calls raise NotImplementedError here; ours answer as the call
        # the chain started does (see tests/test_call_parity.py).
        call = self._call()
        if call is not None:
            return call.time_remaining()  # type: ignore[no-any-return]
        if self._deadline is None:
            return None
        return max(self._deadline - time.monotonic(), 0.0)

    async def initial_metadata(self) -> Any:
        return await self._answer(lambda call: call.initial_metadata(), lambda err: err.initial_metadata(), None)

    async def trailing_metadata(self) -> Any:
        return await self._answer(lambda call: call.trailing_metadata(), lambda err: err.trailing_metadata(), None)

    async def code(self) -> grpc.StatusCode:
        code: grpc.StatusCode = await self._answer(
            lambda call: call.code(), lambda err: err.code(), grpc.StatusCode.CANCELLED
        )
        return code

    async def details(self) -> str:
        details: str = await self._answer(lambda call: call.details(), lambda err: err.details(), LOCAL_CANCEL)
        return details

    async def wait_for_connection(self) -> None:
        await (await self._settled()).wait_for_connection()

    # -- responses ------------------------------------------------------------------------

    def __await__(self) -> Generator[Any, None, Any]:
        return self._response().__await__()

    async def _response(self) -> Any:
        try:
            call = await self._settled()
        except asyncio.CancelledError:
            if not self._task.done():
                self.cancel()  # the task awaiting the call was cancelled: so is the call
            raise
        return await call

    def __aiter__(self) -> AsyncIterator[Any]:
        if self._responses is None:
            self._responses = self._iterate()
        return self._responses

    async def _iterate(self) -> AsyncIterator[Any]:
        call = await self._settled()
        async for response in call:
            yield response

    async def read(self) -> Any:
        try:
            return await self.__aiter__().__anext__()
        except StopAsyncIteration:
            return grpc.aio.EOF

    # -- requests -------------------------------------------------------------------------

    async def write(self, request: Any) -> None:
        try:
            call = await self._settled()
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            if not self._task.done():
                raise
            raise asyncio.InvalidStateError(_FINISHED) from None
        await call.write(request)

    async def done_writing(self) -> None:
        try:
            call = await self._settled()
        except asyncio.CancelledError:  # grpc.aio lets a chain's AioRpcError through here
            if not self._task.done():
                raise
            raise asyncio.InvalidStateError(_FINISHED) from None
        await call.done_writing()
