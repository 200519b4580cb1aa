"""Running one handler: its deadline and trace context, ``async def`` on the loop or plain
functions on the thread pool, and the status each way out of it means.

Whatever ends a handler other than a return leaves :meth:`HandlerRunner.run` as a
:class:`~nats_transport._call_status.CallStatus`, except the cancellation of a call that neither
its client nor its deadline ended (the server is stopping): that stays a CancelledError.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import time
from typing import Any

import grpc

from nats_transport import _status
from nats_transport._call_status import CallStatus
from nats_transport._cancel_watch import cancel_call_task
from nats_transport._context import (
    AbortError,
    AioServicerContext,
    CallState,
    SyncServicerContext,
    current_deadline,
    current_trace,
)
from nats_transport._deadline_timers import DeadlineTimers, timers_on
from nats_transport._handler_io import StreamIO, SyncRequestIterator, sync_reader, sync_writer
from nats_transport._metadata import TRACE_HEADERS, MetadataError
from nats_transport._stream import StreamFailure
from nats_transport._thread_pool import ThreadPool

log = logging.getLogger("nats_transport.server")

_UNEXPLAINED_CANCEL = (grpc.StatusCode.CANCELLED, "Cancelled")
_UNEXPLAINED_EXPIRY = (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")


class HandlerRunner:
    """Runs the handlers of one server: ``async def`` ones in the call's task, plain functions
    on its thread pool."""

    def __init__(self, pool: ThreadPool) -> None:
        self.pool = pool
        self._async_behaviour: dict[Any, bool] = {}
        self._deadlines: DeadlineTimers | None = None  # made on the loop the server runs on

    def _is_async(self, behaviour: Any) -> bool:
        known = self._async_behaviour.get(behaviour)
        if known is None:
            known = self._async_behaviour[behaviour] = _is_async(behaviour)
        return known

    async def run(
        self,
        state: CallState,
        behaviour: Any,
        request: Any,
        headers: dict[str, str] | None,
        stream: StreamIO | None,
        task: asyncio.Task[Any] | None = None,
    ) -> Any:
        """Run a handler with the call's deadline and trace context; return what it returned
        (None for a response-streaming one, whose messages go to ``stream``). ``task``: the
        current task, if the caller has it at hand."""
        loop = asyncio.get_running_loop()
        if task is None:
            task = asyncio.current_task()
            assert task is not None
        current_deadline.set(state.deadline)
        if headers and ("traceparent" in headers or "tracestate" in headers):  # TRACE_HEADERS, unrolled
            current_trace.set(tuple((k, headers[k]) for k in TRACE_HEADERS if k in headers))
        deadline_handle = None
        if state.deadline is not None:
            self._deadlines = deadlines = timers_on(self._deadlines, loop)
            deadline_handle = deadlines.call_at(
                loop.time() + max(state.deadline - time.monotonic(), 0.0), _expire, state, task
            )
        try:
            if self._is_async(behaviour):
                context: Any = AioServicerContext(state, None if stream is None else stream.write, stream, task)
                result = behaviour(request, context)
                if inspect.isasyncgen(result):
                    assert stream is not None
                    try:
                        async for item in result:
                            await stream.write(item)
                    finally:
                        # Cancelled while a write waited (flow control, say), the generator is
                        # left at its yield: close it now, so its cleanup (its finally, its
                        # context managers) runs when the call ends, not when it is collected.
                        await result.aclose()
                    return None
                return await result
            sync_context = SyncServicerContext(state, sync_writer(stream, loop), sync_reader(stream, loop), loop)
            if request is stream and stream is not None:
                request = SyncRequestIterator(stream, loop)  # plain functions iterate blocking
            # One copy per call, of the deadline and trace set above: the handler's thread runs
            # in it (and each step of its response iterator), never in this task's own context.
            ctx = contextvars.copy_context()
            pool = self.pool
            if stream is not None and stream.response_streaming:
                iterator = await pool.run(behaviour, request, sync_context, context=ctx)
                sentinel = object()
                while True:
                    item = await pool.run(_next_or, iterator, sentinel, context=ctx)
                    if item is sentinel:
                        return None
                    await stream.write(item)
            return await pool.run(behaviour, request, sync_context, context=ctx)
        except CallStatus:
            raise  # the call's own stream I/O failed it, and wrote it on the state
        except AbortError:
            raise CallStatus(state.code or grpc.StatusCode.UNKNOWN, state.details) from None
        except asyncio.CancelledError:
            if state.code is None:
                # Neither the client nor the deadline, which write their status before they cancel:
                # the handler's own context.cancel(), or the server stopping. Done callbacks read it.
                state.code, state.details = _UNEXPLAINED_EXPIRY if state.expired else _UNEXPLAINED_CANCEL
            if state.code == grpc.StatusCode.DEADLINE_EXCEEDED or state.cancelled:
                raise CallStatus(state.code, state.details) from None
            raise
        except StreamFailure as failure:
            raise CallStatus(failure.code, failure.details) from None
        except MetadataError as exc:
            raise CallStatus(grpc.StatusCode.INTERNAL, str(exc)) from None
        except Exception:
            log.exception("exception calling application method %s", state.method)
            if state.code is None or state.code == grpc.StatusCode.OK:
                raise CallStatus(*_status.HANDLER_EXCEPTION) from None
            raise CallStatus(state.code, state.details) from None  # the status the handler set stands
        finally:
            if deadline_handle is not None:
                deadline_handle.cancel()


def _next_or(iterator: Any, default: Any) -> Any:
    return next(iterator, default)


def _expire(state: CallState, task: asyncio.Task[Any]) -> None:
    # Written before the task is cancelled: interceptors read it as the handler unwinds.
    state.code = grpc.StatusCode.DEADLINE_EXCEEDED
    state.details = "Deadline Exceeded"
    state.expired = True
    state.cancel()
    cancel_call_task(task, state.method)


def _is_async(behaviour: Any) -> bool:
    return inspect.iscoroutinefunction(behaviour) or inspect.isasyncgenfunction(behaviour)
