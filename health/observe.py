"""The shared core of server interceptors: wrap a handler so an observer sees each call's
messages and outcome (go-grpc-middleware's reporter). Metrics and call logs are observers."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Protocol

import grpc


class CallObserver(Protocol):
    """Told about one call as it runs."""

    def received(self) -> None: ...

    def sent(self) -> None: ...

    def finish(self, code: grpc.StatusCode) -> None: ...


Begin = Callable[[], CallObserver]


def grpc_type(request_streaming: bool, response_streaming: bool) -> str:
    """The ``grpc_type`` label of a call."""
    if request_streaming:
        return "bidi_stream" if response_streaming else "client_stream"
    return "server_stream" if response_streaming else "unary"


def split_method(method: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` -> (``pkg.Service``, ``Method``)."""
    service, _, name = method.lstrip("/").partition("/")
    return service, name


def observe_handler(handler: Any, begin: Begin) -> Any:
    """The same handler, with ``begin()`` called per call and the observer told what happens."""
    if not handler.request_streaming and not handler.response_streaming:
        return grpc.unary_unary_rpc_method_handler(
            _wrap_unary(handler.unary_unary, begin), handler.request_deserializer, handler.response_serializer)
    if not handler.request_streaming:
        return grpc.unary_stream_rpc_method_handler(
            _wrap_streaming(handler.unary_stream, begin, False),
            handler.request_deserializer, handler.response_serializer)
    if not handler.response_streaming:
        return grpc.stream_unary_rpc_method_handler(
            _wrap_unary(handler.stream_unary, begin, streaming_request=True),
            handler.request_deserializer, handler.response_serializer)
    return grpc.stream_stream_rpc_method_handler(
        _wrap_streaming(handler.stream_stream, begin, True),
        handler.request_deserializer, handler.response_serializer)


def _outcome(context: Any, failed: BaseException | None) -> grpc.StatusCode:
    """The status a handler ended with: what it set (abort, set_code), else what its way out means."""
    code = context.code() if hasattr(context, "code") else None
    if isinstance(code, grpc.StatusCode):
        return code
    if failed is None:
        return grpc.StatusCode.OK
    # CancelledError (client cancel, deadline) is a BaseException; any other exception is UNKNOWN.
    return grpc.StatusCode.UNKNOWN if isinstance(failed, Exception) else grpc.StatusCode.CANCELLED


def _count_requests(request: Any, call: CallObserver, streaming: bool) -> Any:
    if not streaming:
        call.received()
        return request
    if hasattr(request, "__aiter__"):
        return _counted_async(request, call)
    return _counted_sync(request, call)


async def _counted_async(requests: AsyncIterator[Any], call: CallObserver) -> AsyncIterator[Any]:
    async for request in requests:
        call.received()
        yield request


def _counted_sync(requests: Iterator[Any], call: CallObserver) -> Iterator[Any]:
    for request in requests:
        call.received()
        yield request


def _wrap_unary(behaviour: Callable[..., Any], begin: Begin, streaming_request: bool = False) -> Callable[..., Any]:
    # A plain-function handler must stay a plain function: the server runs it in its thread pool.
    if inspect.iscoroutinefunction(behaviour):
        async def run_async(request: Any, context: Any) -> Any:
            call = begin()
            failed: BaseException | None = None
            try:
                response = await behaviour(_count_requests(request, call, streaming_request), context)
                call.sent()
                return response
            except BaseException as exc:
                failed = exc
                raise
            finally:
                call.finish(_outcome(context, failed))
        return run_async

    def run_sync(request: Any, context: Any) -> Any:
        call = begin()
        failed: BaseException | None = None
        try:
            response = behaviour(_count_requests(request, call, streaming_request), context)
            call.sent()
            return response
        except BaseException as exc:
            failed = exc
            raise
        finally:
            call.finish(_outcome(context, failed))
    return run_sync


def _wrap_streaming(behaviour: Callable[..., Any], begin: Begin, streaming_request: bool) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behaviour) or inspect.iscoroutinefunction(behaviour):
        async def run_async(request: Any, context: Any) -> AsyncIterator[Any]:
            call = begin()
            failed: BaseException | None = None
            try:
                result = behaviour(_count_requests(request, call, streaming_request), context)
                if inspect.isasyncgen(result):
                    async for response in result:
                        call.sent()
                        yield response
                else:  # a coroutine that writes with context.write()
                    await result
            except BaseException as exc:
                failed = exc
                raise
            finally:
                call.finish(_outcome(context, failed))
        return run_async

    def run_sync(request: Any, context: Any) -> Iterator[Any]:
        call = begin()
        failed: BaseException | None = None
        try:
            for response in behaviour(_count_requests(request, call, streaming_request), context):
                call.sent()
                yield response
        except BaseException as exc:
            failed = exc
            raise
        finally:
            call.finish(_outcome(context, failed))
    return run_sync


