"""``ErrorBoundary``: the one server interceptor that turns what servicers raise into statuses.

Servicers raise ``RpcError`` (``servicers.errors``) to refuse a call and let the storage
protocol's ``StorageUnavailable`` propagate; this interceptor, innermost in the chain, ends the
call with the matching status, for all four call kinds and for async and plain-function
handlers alike (the way grpclib's ``request_handler`` maps its ``GRPCError``). Anything else a
handler raises is left to the server (UNKNOWN), as before.

A store outage is answered UNAVAILABLE (retryable) with ErrorInfo reason
``STORAGE_UNAVAILABLE``, or in the words a servicer gave its store (``servicers.named_store``).
The cause is logged here and never sent to the caller.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, NoReturn

import grpc

from servicers.errors import RpcError, abort_with_error, unavailable
from servicers.named_store import WordedOutage
from servicers.storage import StorageUnavailable, ValueTooLarge

_log = logging.getLogger(__name__)

STORAGE_REASON = "STORAGE_UNAVAILABLE"
STORAGE_MESSAGE = "storage is unavailable, retry later"


# What the boundary answers; anything else a handler raises is left to the server.
ANSWERED = (RpcError, StorageUnavailable, ValueTooLarge)


def error_of(failure: RpcError | StorageUnavailable | ValueTooLarge) -> RpcError:
    """The RpcError a handler's exception (one of ``ANSWERED``) is answered with."""
    if isinstance(failure, RpcError):
        return failure
    _log.warning("storage unavailable: %s", failure, exc_info=failure.__cause__ or failure)
    if isinstance(failure, WordedOutage):
        return unavailable(failure.message, failure.reason)
    # ValueTooLarge too: a store refusing a write was answered as an outage before the boundary
    # existed, and callers still see the same.
    return unavailable(STORAGE_MESSAGE, STORAGE_REASON)


class ErrorBoundary(grpc.aio.ServerInterceptor):
    """Ends a call with the status of the ``RpcError`` or store outage its handler raised.

    Install it last (innermost), so the interceptors outside it see an ordinary aborted call.
    """

    def __repr__(self) -> str:
        return "<ErrorBoundary>"

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]], details: Any) -> Any:
        """The method's handler, its behaviour wrapped so that our errors become statuses."""
        handler = await continuation(details)
        return None if handler is None else bounded(handler)


def bounded(handler: Any) -> Any:
    """A handler of ``handler``'s kind and (de)serializers whose errors become statuses."""
    kind = (handler.request_streaming, handler.response_streaming)
    behaviour: Callable[..., Any] = {
        (False, False): handler.unary_unary,
        (True, False): handler.stream_unary,
        (False, True): handler.unary_stream,
        (True, True): handler.stream_stream,
    }[kind]
    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[kind]
    is_async = inspect.iscoroutinefunction(behaviour) or inspect.isasyncgenfunction(behaviour)
    if handler.response_streaming:
        wrapped = _async_stream(behaviour) if is_async else _sync_stream(behaviour)
    else:
        wrapped = _async_unary(behaviour) if is_async else _sync_unary(behaviour)
    return make(wrapped, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)


# Plain-function handlers run in the server's thread pool with a synchronous context, so their
# wrappers stay plain functions (and generators) and abort synchronously.

def _async_unary(behaviour: Callable[..., Any]) -> Callable[..., Any]:
    async def call(request: Any, context: Any) -> Any:
        try:
            return await behaviour(request, context)
        except ANSWERED as failure:
            await abort_with_error(context, error_of(failure))

    return call


def _async_stream(behaviour: Callable[..., Any]) -> Callable[..., Any]:
    async def call(request: Any, context: Any) -> AsyncIterator[Any]:
        result = behaviour(request, context)
        try:
            if hasattr(result, "__aiter__"):
                async for response in result:
                    yield response
            else:  # a handler that writes with context.write() and returns None
                await result
        except ANSWERED as failure:
            await abort_with_error(context, error_of(failure))
        finally:
            # When the server closes this generator (the call ended early), close the handler's
            # now, so its own cleanup (stopping a watch) runs here rather than whenever it is
            # collected.
            close = getattr(result, "aclose", None)
            if close is not None:
                await close()

    return call


def _sync_unary(behaviour: Callable[..., Any]) -> Callable[..., Any]:
    def call(request: Any, context: Any) -> Any:
        try:
            return behaviour(request, context)
        except ANSWERED as failure:
            _abort_sync(context, error_of(failure))

    return call


def _sync_stream(behaviour: Callable[..., Any]) -> Callable[..., Any]:
    def call(request: Any, context: Any) -> Iterator[Any]:
        try:
            yield from behaviour(request, context)
        except ANSWERED as failure:
            _abort_sync(context, error_of(failure))

    return call


def _abort_sync(context: Any, error: RpcError) -> NoReturn:
    # grpc.aio's context for plain-function handlers has no abort_with_status, and its abort()
    # given trailing metadata fails once a response went out (TOO_MANY_OPERATIONS): so the
    # details trailer (grpc-status-details-bin) is set first, then the call aborted.
    status = error.status()
    context.set_trailing_metadata(status.trailing_metadata)
    context.abort(status.code, status.details)
    raise AssertionError("abort_with_status returned")  # pragma: no cover - abort always raises
