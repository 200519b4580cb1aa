"""From a call's NATS message to the handler that serves it: the methods a server registered, its
generic handlers and its interceptors, and the CallState the handler will see."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import grpc
from nats.aio.msg import Msg

from nats_transport import _status
from nats_transport._call_status import CallStatus
from nats_transport._context import CallState
from nats_transport._metadata import TIMEOUT_HEADER, MetadataError, decode_timeout, from_headers
from nats_transport._subjects import method_of

Resolve = Callable[[Any], Coroutine[Any, Any, Any]]


class HandlerCallDetails(NamedTuple):
    """What generic handlers and interceptors are told of a call (``grpc.HandlerCallDetails``)."""

    method: str
    invocation_metadata: Sequence[tuple[str, Any]]


class CallRouter:
    """The handlers of one server, found by method name.

    ``services`` lists the methods of each service, for the NATS Services API. Interceptors are
    wrapped around the lookup once, by :meth:`intercept_with`, when the server starts.
    """

    def __init__(self, prefix_len: int) -> None:
        self._prefix_len = prefix_len  # of "<subject prefix>.<target>." in a call's subject
        self._generic: list[grpc.GenericRpcHandler] = []
        self._registered: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
        self.services: dict[str, list[str]] = {}
        self._resolve: Resolve | None = None  # the interceptor chain; None when there are none

    def add_generic(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        """Add handlers that pick methods themselves."""
        for handler in handlers:
            self._generic.append(handler)
            name = getattr(handler, "service_name", None)
            if callable(name):
                self.services.setdefault(name(), [])
            # grpc.method_handlers_generic_handler keeps "/svc/method" keys: list them for $SRV.
            for path in getattr(handler, "_method_handlers", None) or {}:
                service, _, method = path.lstrip("/").partition("/")
                methods = self.services.setdefault(service, [])
                if method and method not in methods:
                    methods.append(method)

    def add_registered(self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]]) -> None:
        """Add a service's method handlers by method name."""
        for method, handler in handlers.items():
            self._registered[f"/{service}/{method}"] = handler
        self.services.setdefault(service, []).extend(m for m in handlers if m not in self.services.get(service, []))

    def intercept_with(self, interceptors: Sequence[Any]) -> None:
        """Run lookups through ``interceptors``, in order (the first is outermost)."""
        if not interceptors:
            self._resolve = None
            return

        async def resolve(call_details: Any) -> Any:
            return self.find(call_details)

        continuation: Resolve = resolve
        for interceptor in reversed(interceptors):
            continuation = _wrap_interceptor(interceptor, continuation)
        self._resolve = continuation

    def find(self, call_details: Any) -> Any:
        """The handler of ``call_details.method``, or None."""
        handler = self._registered.get(call_details.method)
        if handler is not None:
            return handler
        for generic in self._generic:
            found = generic.service(call_details)
            if found is not None:
                return found
        return None

    async def prepare(self, msg: Msg) -> tuple[CallState, Any]:
        """The state of the call ``msg`` opens and its handler; raises CallStatus when there is
        no such method or its headers are malformed (the call is then refused)."""
        method = method_of(msg.subject, self._prefix_len)
        if method is None:
            raise CallStatus(*_status.UNIMPLEMENTED_METHOD)
        state = call_state(msg, method)
        if self._resolve is None:
            handler: Any = self._registered.get(method)
            if handler is None:
                handler = self.find(HandlerCallDetails(method, state.invocation_metadata))
        else:
            # Interceptors get grpc's metadatum objects (.key/.value), made only when there are any.
            handler = await self._resolve(HandlerCallDetails(method, state.invocation_metadatum()))
        if handler is None:
            raise CallStatus(*_status.UNIMPLEMENTED_METHOD)
        return state, handler


def call_state(msg: Msg, method: str) -> CallState:
    """The CallState of a call message: its deadline and metadata, from its headers."""
    headers = msg.headers
    deadline = None
    metadata: tuple[tuple[str, Any], ...] = ()
    if headers:
        timeout = headers.get(TIMEOUT_HEADER)
        if timeout is not None:
            try:
                deadline = time.monotonic() + decode_timeout(timeout)
            except ValueError as exc:
                raise CallStatus(grpc.StatusCode.INTERNAL, str(exc)) from exc
        if timeout is None or len(headers) > 1:  # else the deadline is all there is
            try:
                metadata = from_headers(headers)
            except MetadataError as exc:
                raise CallStatus(grpc.StatusCode.INTERNAL, str(exc)) from exc
    return CallState(method, metadata, deadline, peer=f"nats:{msg.reply}")


def _wrap_interceptor(interceptor: Any, continuation: Resolve) -> Resolve:
    async def call(details: Any) -> Any:
        if inspect.iscoroutinefunction(interceptor.intercept_service):
            return await interceptor.intercept_service(continuation, details)

        # A grpc.ServerInterceptor is synchronous and so is its continuation: run it in a thread
        # whose continuation resolves the rest of the chain on this loop, keeping the order.
        loop = asyncio.get_running_loop()

        def sync_continuation(call_details: Any) -> Any:
            return asyncio.run_coroutine_threadsafe(continuation(call_details), loop).result()

        return await asyncio.to_thread(interceptor.intercept_service, sync_continuation, details)

    return call
