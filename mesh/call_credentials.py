"""Who a target's outgoing calls speak for: the caller it is serving, or itself.

A target calling another target on behalf of a caller forwards that caller's bearer token, so
the callee applies the caller's scopes (a player cannot reach, through quest-system, what it
could not reach directly). Work that belongs to no caller (a background loop, compensation after
the caller left) carries the target's own short-lived service token (scope ``service``).
A token the calling code set itself is left alone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from servicers.auth import current_authorization

ServiceToken = Callable[[], Awaitable[str]]


class _ForwardAuthorization:
    def __init__(self, service_token: ServiceToken | None) -> None:
        self._service_token = service_token

    async def _with_authorization(self, details: Any) -> Any:
        metadata = list(details.metadata or ())
        if any(key.lower() == "authorization" for key, _ in metadata):
            return details
        token = current_authorization()
        if token is None and self._service_token is not None:
            token = await self._service_token()
        if not token:
            return details
        metadata.append(("authorization", f"Bearer {token}"))
        return grpc.aio.ClientCallDetails(details.method, details.timeout, tuple(metadata),
                                          details.credentials, details.wait_for_ready)


class _UnaryUnary(_ForwardAuthorization, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(await self._with_authorization(details), request)


class _UnaryStream(_ForwardAuthorization, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(await self._with_authorization(details), request)


class _StreamUnary(_ForwardAuthorization, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(await self._with_authorization(details), request_iterator)


class _StreamStream(_ForwardAuthorization, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(await self._with_authorization(details), request_iterator)


def forwarding_interceptors(service_token: ServiceToken | None) -> list[Any]:
    """Client interceptors (all four call types) that add ``authorization`` to outgoing calls:
    the current caller's token, else ``service_token()``, else nothing."""
    return [_UnaryUnary(service_token), _UnaryStream(service_token), _StreamUnary(service_token),
            _StreamStream(service_token)]
