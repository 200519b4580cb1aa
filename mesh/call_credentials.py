"""Who a target's outgoing calls speak for: the caller it is serving, or itself.

A target calling another target on behalf of a caller forwards that caller's bearer token, so
the callee applies the caller's scopes (a player cannot reach, through quest-system, what it
could not reach directly). Work that belongs to no caller (a background loop, compensation after
the caller left) carries the target's own short-lived service token (scope ``service``).
A token the calling code set itself is left alone.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from typing import TypeVar

import grpc

from servicers.auth import current_authorization

ServiceToken = Callable[[], Awaitable[str]]

_TRequest = TypeVar("_TRequest")
_TResponse = TypeVar("_TResponse")
# What a client-streaming call is given to send, as grpc.aio's interceptors declare it.
_Requests = AsyncIterable[_TRequest] | Iterable[_TRequest]


class _ForwardAuthorization:
    def __init__(self, service_token: ServiceToken | None) -> None:
        self._service_token = service_token

    async def _with_authorization(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = list(details.metadata or ())
        if any(key.lower() == "authorization" for key, _ in metadata):
            return details
        token = current_authorization()
        if token is None and self._service_token is not None:
            token = await self._service_token()
        if not token:
            return details
        metadata.append(("authorization", f"Bearer {token}"))
        return grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            tuple(metadata),  # type: ignore[arg-type]  # pairs, which grpc.aio's calls take as well as a Metadata
            details.credentials,
            details.wait_for_ready,
        )


class _UnaryUnary(_ForwardAuthorization, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, _TRequest], Awaitable[grpc.aio.UnaryUnaryCall[_TRequest, _TResponse]]
        ],
        details: grpc.aio.ClientCallDetails,
        request: _TRequest,
    ) -> grpc.aio.UnaryUnaryCall[_TRequest, _TResponse]:
        return await continuation(await self._with_authorization(details), request)


class _UnaryStream(_ForwardAuthorization, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, _TRequest], Awaitable[grpc.aio.UnaryStreamCall[_TRequest, _TResponse]]
        ],
        details: grpc.aio.ClientCallDetails,
        request: _TRequest,
    ) -> grpc.aio.UnaryStreamCall[_TRequest, _TResponse]:
        return await continuation(await self._with_authorization(details), request)


class _StreamUnary(_ForwardAuthorization, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, _Requests[_TRequest]],
            Awaitable[grpc.aio.StreamUnaryCall[_TRequest, _TResponse]],
        ],
        details: grpc.aio.ClientCallDetails,
        request_iterator: _Requests[_TRequest],
    ) -> grpc.aio.StreamUnaryCall[_TRequest, _TResponse]:
        return await continuation(await self._with_authorization(details), request_iterator)


class _StreamStream(_ForwardAuthorization, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, _Requests[_TRequest]],
            Awaitable[grpc.aio.StreamStreamCall[_TRequest, _TResponse]],
        ],
        details: grpc.aio.ClientCallDetails,
        request_iterator: _Requests[_TRequest],
    ) -> grpc.aio.StreamStreamCall[_TRequest, _TResponse]:
        return await continuation(await self._with_authorization(details), request_iterator)


def forwarding_interceptors(service_token: ServiceToken | None) -> list[grpc.aio.ClientInterceptor]:
    """Client interceptors (all four call types) that add ``authorization`` to outgoing calls:
    the current caller's token, else ``service_token()``, else nothing."""
    return [_UnaryUnary(service_token), _UnaryStream(service_token), _StreamUnary(service_token),
            _StreamStream(service_token)]
