"""A grpc.aio.Channel whose calls travel over NATS to one target, with standard interceptors."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import grpc
from nats.aio.client import Client

from nats_transport._circuit import breaker_for
from nats_transport._client import ReplyMux
from nats_transport._connection_guard import guard_connection
from nats_transport._options import ChannelOptions
from nats_transport._retry import CallPolicy, throttle_for
from nats_transport._service_config import ServiceConfig, parse_service_config
from nats_transport._subjects import call_subject, check_token
from nats_transport.aio._call_base import Deserializer, Serializer
from nats_transport.aio._calls import UnaryUnaryCall
from nats_transport.aio._intercepted import Chain, InterceptedCall
from nats_transport.aio._stream_call import StreamCall

_TRequest = TypeVar("_TRequest")
_TResponse = TypeVar("_TResponse")
_MultiCallableT = TypeVar("_MultiCallableT", bound="_MultiCallable")
# Metadata as grpc.aio's callables take it: a grpc.aio.Metadata or a sequence of (key, value).
_MetadataArg = grpc.aio.Metadata | Sequence[tuple[str, str | bytes]]

_KINDS = {
    (False, False): ("intercept_unary_unary", grpc.aio.UnaryUnaryClientInterceptor),
    (False, True): ("intercept_unary_stream", grpc.aio.UnaryStreamClientInterceptor),
    (True, False): ("intercept_stream_unary", grpc.aio.StreamUnaryClientInterceptor),
    (True, True): ("intercept_stream_stream", grpc.aio.StreamStreamClientInterceptor),
}


class Channel(grpc.aio.Channel):
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
        self, factory: type[_MultiCallableT], method: str, serializer: Serializer, deserializer: Deserializer,
        kind: tuple[bool, bool],
    ) -> _MultiCallableT:
        if self._closed:
            raise RuntimeError("the channel is closed")
        name, interface = _KINDS[kind]
        chain = tuple(i for i in self._interceptors if isinstance(i, interface))
        subject = call_subject(self._options.subject_prefix, self._target, method)
        return factory(self, method, subject, serializer, deserializer, kind, name, chain)

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

    # The serializers are typed as grpc.aio's; None leaves requests and responses as bytes.

    def unary_unary(
        self,
        method: str,
        request_serializer: Callable[[_TRequest], bytes] | None = None,
        response_deserializer: Callable[[bytes], _TResponse] | None = None,
        _registered_method: bool = False,
    ) -> grpc.aio.UnaryUnaryMultiCallable[_TRequest, _TResponse]:
        """A callable for a unary-unary method (what generated stubs use)."""
        return self._callable(_UnaryRequestCallable, method, request_serializer, response_deserializer, (False, False))

    def unary_stream(
        self,
        method: str,
        request_serializer: Callable[[_TRequest], bytes] | None = None,
        response_deserializer: Callable[[bytes], _TResponse] | None = None,
        _registered_method: bool = False,
    ) -> grpc.aio.UnaryStreamMultiCallable[_TRequest, _TResponse]:
        """A callable for a server-streaming method."""
        return self._callable(_UnaryRequestCallable, method, request_serializer, response_deserializer, (False, True))

    def stream_unary(
        self,
        method: str,
        request_serializer: Callable[[_TRequest], bytes] | None = None,
        response_deserializer: Callable[[bytes], _TResponse] | None = None,
        _registered_method: bool = False,
    ) -> grpc.aio.StreamUnaryMultiCallable[_TRequest, _TResponse]:
        """A callable for a client-streaming method."""
        return self._callable(_StreamRequestCallable, method, request_serializer, response_deserializer, (True, False))

    def stream_stream(
        self,
        method: str,
        request_serializer: Callable[[_TRequest], bytes] | None = None,
        response_deserializer: Callable[[bytes], _TResponse] | None = None,
        _registered_method: bool = False,
    ) -> grpc.aio.StreamStreamMultiCallable[_TRequest, _TResponse]:
        """A callable for a bidirectional-streaming method."""
        return self._callable(_StreamRequestCallable, method, request_serializer, response_deserializer, (True, True))


class _MultiCallable:
    """Starts calls of one method; runs the matching interceptors first. The two subclasses
    give ``__call__`` the signatures grpc.aio gives a unary and a streaming request."""

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

    def _intercepted(self, request: Any, timeout: float | None, metadata: _MetadataArg | None,
                     credentials: grpc.CallCredentials | None, wait_for_ready: bool | None) -> InterceptedCall:
        """Run the interceptors in a task; the call answers from the call they hand back."""
        # Interceptors see the metadata as the caller passed it (grpc.aio makes it a Metadata first).
        details = grpc.aio.ClientCallDetails(
            self._method, timeout, metadata, credentials, wait_for_ready  # type: ignore[arg-type]
        )
        chain = Chain(self._interceptors, self._hook, self._kind, self._start_intercepted)
        return InterceptedCall(chain.run(0, details, request), timeout)

    def _start_intercepted(self, details: Any, request: Any) -> Any:
        """Start the call the interceptors asked for (they may change the method)."""
        subject, policy = self._subject, self._policy
        if details.method != self._method:
            subject = call_subject(self._channel._options.subject_prefix, self._channel.target, details.method)
            policy = self._channel._policy(details.method)
        wait_for_ready = getattr(details, "wait_for_ready", None)
        return self._start(subject, request, details.timeout, details.metadata, wait_for_ready, policy)

    def _start(self, subject: str, request: Any, timeout: float | None, metadata: Any,
               wait_for_ready: bool | None, policy: CallPolicy) -> UnaryUnaryCall | StreamCall:
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


class _UnaryRequestCallable(
    _MultiCallable,
    grpc.aio.UnaryUnaryMultiCallable[Any, Any],
    grpc.aio.UnaryStreamMultiCallable[Any, Any],
):
    """A unary-unary or unary-stream method: the request is the one positional argument."""

    def __call__(
        self,
        request: Any = None,
        *,
        timeout: float | None = None,
        metadata: _MetadataArg | None = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:  # a UnaryUnaryCall or a StreamCall, by the method's kind
        if not self._interceptors:
            return self._start(self._subject, request, timeout, metadata, wait_for_ready, self._policy)
        return self._intercepted(request, timeout, metadata, credentials, wait_for_ready)


class _StreamRequestCallable(
    _MultiCallable,
    grpc.aio.StreamUnaryMultiCallable[Any, Any],
    grpc.aio.StreamStreamMultiCallable[Any, Any],
):
    """A stream-unary or stream-stream method: as grpc.aio's, every argument may be passed by
    position or by name (``request_iterator=``), and the requests may come later by ``write()``."""

    def __call__(
        self,
        request_iterator: Any = None,
        timeout: float | None = None,
        metadata: _MetadataArg | None = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:  # a StreamCall, or an InterceptedCall
        if not self._interceptors:
            return self._start(self._subject, request_iterator, timeout, metadata, wait_for_ready, self._policy)
        return self._intercepted(request_iterator, timeout, metadata, credentials, wait_for_ready)
