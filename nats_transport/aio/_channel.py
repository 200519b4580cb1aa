"""A grpc.aio.Channel whose calls travel over NATS to one target, with standard interceptors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Generator, Mapping, Sequence
from typing import Any

import grpc
from nats.aio.client import Client

from nats_transport._circuit import breaker_for
from nats_transport._client import ReplyMux
from nats_transport._connection_guard import guard_connection
from nats_transport._options import ChannelOptions
from nats_transport._retry import CallPolicy, throttle_for
from nats_transport._service_config import ServiceConfig, parse_service_config
from nats_transport._subjects import call_subject, check_token
from nats_transport.aio._calls import Deserializer, Serializer, StreamCall, UnaryUnaryCall

_KINDS = {
    (False, False): ("intercept_unary_unary", grpc.aio.UnaryUnaryClientInterceptor),
    (False, True): ("intercept_unary_stream", grpc.aio.UnaryStreamClientInterceptor),
    (True, False): ("intercept_stream_unary", grpc.aio.StreamUnaryClientInterceptor),
    (True, True): ("intercept_stream_stream", grpc.aio.StreamStreamClientInterceptor),
}


class Channel(grpc.aio.Channel):  # type: ignore[misc]
    """Calls go to ``{prefix}.{target}.{Service}.{Method}``; replies come to one subscription
    per NATS connection. Closing the channel leaves the connection to its owner."""

    def __init__(
        self,
        nc: Client,
        target: str,
        *,
        interceptors: Sequence[Any] | None = None,
        options: ChannelOptions,
        service_config: str | Mapping[str, Any] | ServiceConfig | None = None,
    ) -> None:
        self._nc = guard_connection(nc)
        self._target = check_token(target, "target")
        self._options = options
        self._service_config = parse_service_config(service_config)
        self._interceptors = tuple(interceptors or ())
        for interceptor in self._interceptors:
            if not isinstance(interceptor, tuple(kind for _, kind in _KINDS.values())):
                raise ValueError(f"{interceptor!r} is not a grpc.aio client interceptor")
        self._closed = False

    def __repr__(self) -> str:
        pending = ReplyMux.of(self._nc).pending if not self._nc.is_closed else 0
        return f"<nats_transport.aio.Channel target={self._target!r} in_flight={pending}>"

    @property
    def target(self) -> str:
        """The logical server this channel calls."""
        return self._target

    async def __aenter__(self) -> Channel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self, grace: float | None = None) -> None:
        """Refuse new calls. The NATS connection belongs to the caller and stays open."""
        self._closed = True

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        """READY while the NATS connection is up, TRANSIENT_FAILURE while it reconnects."""
        if self._closed or self._nc.is_closed:
            return grpc.ChannelConnectivity.SHUTDOWN
        if self._nc.is_connected:
            return grpc.ChannelConnectivity.READY
        return grpc.ChannelConnectivity.TRANSIENT_FAILURE

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        """Poll the connection state until it differs (NATS reports no transitions to await)."""
        while self.get_state() == last_observed_state:  # noqa: ASYNC110 - nats-py has no state event
            await asyncio.sleep(0.05)

    async def channel_ready(self) -> None:
        """Return once the NATS connection is up."""
        while self.get_state() != grpc.ChannelConnectivity.READY:
            if self.get_state() == grpc.ChannelConnectivity.SHUTDOWN:
                raise RuntimeError("the channel or its NATS connection is closed")
            await asyncio.sleep(0.05)

    def _callable(
        self, method: str, serializer: Serializer, deserializer: Deserializer, kind: tuple[bool, bool]
    ) -> _MultiCallable:
        if self._closed:
            raise RuntimeError("the channel is closed")
        name, interface = _KINDS[kind]
        chain = tuple(i for i in self._interceptors if isinstance(i, interface))
        subject = call_subject(self._options.subject_prefix, self._target, method)
        return _MultiCallable(self, method, subject, serializer, deserializer, kind, name, chain)

    def _policy(self, method: str) -> CallPolicy:
        """How calls of ``method`` are attempted: its service config, the target's retry
        throttle and circuit breaker."""
        config = self._service_config
        breaker = self._options.circuit_breaker
        return CallPolicy(
            config.for_method(method),
            throttle_for(self._target, config.throttling),
            None if breaker is None else breaker_for(self._nc, self._target, breaker),
        )

    def unary_unary(self, method: str, request_serializer: Serializer = None,
                    response_deserializer: Deserializer = None, _registered_method: bool = False) -> Any:
        """A callable for a unary-unary method (what generated stubs use)."""
        return self._callable(method, request_serializer, response_deserializer, (False, False))

    def unary_stream(self, method: str, request_serializer: Serializer = None,
                     response_deserializer: Deserializer = None, _registered_method: bool = False) -> Any:
        """A callable for a server-streaming method."""
        return self._callable(method, request_serializer, response_deserializer, (False, True))

    def stream_unary(self, method: str, request_serializer: Serializer = None,
                     response_deserializer: Deserializer = None, _registered_method: bool = False) -> Any:
        """A callable for a client-streaming method."""
        return self._callable(method, request_serializer, response_deserializer, (True, False))

    def stream_stream(self, method: str, request_serializer: Serializer = None,
                      response_deserializer: Deserializer = None, _registered_method: bool = False) -> Any:
        """A callable for a bidirectional-streaming method."""
        return self._callable(method, request_serializer, response_deserializer, (True, True))


class _MultiCallable(
    grpc.aio.UnaryUnaryMultiCallable,  # type: ignore[misc]
    grpc.aio.UnaryStreamMultiCallable,  # type: ignore[misc]
    grpc.aio.StreamUnaryMultiCallable,  # type: ignore[misc]
    grpc.aio.StreamStreamMultiCallable,  # type: ignore[misc]
):
    """Starts calls of one method; runs the matching interceptors first."""

    def __init__(
        self,
        channel: Channel,
        method: str,
        subject: str,
        serializer: Serializer,
        deserializer: Deserializer,
        kind: tuple[bool, bool],
        hook: str,
        interceptors: tuple[Any, ...],
    ) -> None:
        self._channel = channel
        self._method = method
        self._subject = subject
        self._serializer = serializer
        self._deserializer = deserializer
        self._kind = kind
        self._hook = hook
        self._interceptors = interceptors
        self._policy = channel._policy(method)

    def __call__(
        self,
        request: Any = None,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        if not self._interceptors:
            return self._start(self._subject, request, timeout, metadata, wait_for_ready, self._policy)
        details = grpc.aio.ClientCallDetails(self._method, timeout, metadata, credentials, wait_for_ready)
        return _InterceptedCall(self, details, request)

    def _start(self, subject: str, request: Any, timeout: float | None, metadata: Any,
               wait_for_ready: bool | None, policy: CallPolicy) -> Any:
        channel = self._channel
        request_streaming, response_streaming = self._kind
        limit = policy.config.timeout
        if limit is not None:
            # The service config's timeout caps the call's own, as in grpcio.
            timeout = limit if timeout is None else min(timeout, limit)
        if not request_streaming and not response_streaming:
            return UnaryUnaryCall(
                channel._nc, channel._options, subject, request,
                self._serializer, self._deserializer, timeout, metadata, policy, wait_for_ready,
            )
        return StreamCall(
            channel._nc, channel._options, subject, self._serializer, self._deserializer, timeout, metadata,
            request=None if request_streaming else request,
            request_iterator=request if request_streaming else None,
            request_streaming=request_streaming,
            response_streaming=response_streaming,
            policy=policy,
        )

    async def _chain(self, index: int, details: Any, request: Any, owner: _InterceptedCall) -> Any:
        if index == len(self._interceptors):
            subject, policy = self._subject, self._policy
            if details.method != self._method:
                subject = call_subject(self._channel._options.subject_prefix, self._channel.target, details.method)
                policy = self._channel._policy(details.method)
            wait_for_ready = getattr(details, "wait_for_ready", None)
            call = self._start(subject, request, details.timeout, details.metadata, wait_for_ready, policy)
            owner._last_call = call
            return call

        async def continuation(next_details: Any, next_request: Any) -> Any:
            result = await self._chain(index + 1, next_details, next_request, owner)
            if not self._kind[1] and not isinstance(result, grpc.aio.Call | _InterceptedCall):
                # An inner interceptor answered with the response itself: callers up the chain
                # still get a call, as with grpc.aio.
                return _ResponseCall(result)
            return result

        interceptor = self._interceptors[index]
        return await getattr(interceptor, self._hook)(continuation, details, request)


class _ResponseCall:
    """A finished OK call around a response an interceptor produced itself."""

    def __init__(self, response: Any) -> None:
        self._response = response

    def __await__(self) -> Generator[Any, None, Any]:
        return self._result().__await__()

    async def _result(self) -> Any:
        return self._response

    async def initial_metadata(self) -> grpc.aio.Metadata:
        return grpc.aio.Metadata()

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        return grpc.aio.Metadata()

    async def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.OK

    async def details(self) -> str:
        return ""

    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def add_done_callback(self, callback: Any) -> None:
        callback(self)

    def time_remaining(self) -> float | None:
        return None


class _InterceptedCall:
    """The call handed back when interceptors run: it resolves to whatever the chain returned
    (a call, a response, or an async iterator of responses) and delegates to it."""

    def __init__(self, callable_: _MultiCallable, details: Any, request: Any) -> None:
        self._request_streaming, self._response_streaming = callable_._kind
        # The transport call the chain started last. An interceptor may hand back an async
        # iterator of responses instead of a call (OpenTelemetry's does for streams): cancel()
        # and the status then go to this call, as in grpc.aio.
        self._last_call: Any = None
        self._responses: AsyncIterator[Any] | None = None
        # With no request iterator, write() must reach the inner call once the chain has run.
        self._task = asyncio.get_running_loop().create_task(callable_._chain(0, details, request, self))

    async def _inner(self) -> Any:
        return await asyncio.shield(self._task)

    async def _call(self) -> Any:
        """The call object behind the chain's result: the result itself when it is a call."""
        inner = await self._inner()
        if hasattr(inner, "code") or self._last_call is None:
            return inner
        return self._last_call

    def __await__(self) -> Generator[Any, None, Any]:
        return self._response().__await__()

    async def _response(self) -> Any:
        result = await self._inner()
        if isinstance(result, grpc.aio.Call | UnaryUnaryCall | StreamCall | _ResponseCall):
            return await result
        return result

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        result = await self._inner()
        async for item in result:
            yield item

    async def read(self) -> Any:
        inner = await self._inner()
        if hasattr(inner, "read"):
            return await inner.read()
        if self._responses is None:
            self._responses = inner.__aiter__()
        try:
            return await self._responses.__anext__()
        except StopAsyncIteration:
            return grpc.aio.EOF

    async def write(self, request: Any) -> None:
        await (await self._inner()).write(request)

    async def done_writing(self) -> None:
        await (await self._inner()).done_writing()

    async def initial_metadata(self) -> Any:
        return await (await self._call()).initial_metadata()

    async def trailing_metadata(self) -> Any:
        return await (await self._call()).trailing_metadata()

    async def code(self) -> grpc.StatusCode:
        try:
            inner = await self._call()
        except grpc.aio.AioRpcError as err:
            return err.code()
        return await inner.code() if hasattr(inner, "code") else grpc.StatusCode.OK

    async def details(self) -> str:
        try:
            inner = await self._call()
        except grpc.aio.AioRpcError as err:
            return err.details() or ""
        return await inner.details() if hasattr(inner, "details") else ""

    def cancel(self) -> bool:
        if self._task.done() and not self._task.cancelled() and self._task.exception() is None:
            inner = self._task.result()
            if not hasattr(inner, "cancel"):
                inner = self._last_call
            return bool(inner.cancel()) if hasattr(inner, "cancel") else False
        return self._task.cancel()

    def cancelled(self) -> bool:
        return self._task.cancelled()

    def done(self) -> bool:
        if not self._task.done() or self._task.cancelled() or self._task.exception() is not None:
            return self._task.done()
        inner = self._task.result()
        return bool(inner.done()) if hasattr(inner, "done") else True

    def add_done_callback(self, callback: Any) -> None:
        self._task.add_done_callback(lambda _: callback(self))

    def time_remaining(self) -> float | None:
        return None
