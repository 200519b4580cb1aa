"""``RequireToken``: a server interceptor that lets only callers with a valid access token in.

Any service adds it to its server for the methods it wants to protect::

    server = nats_transport.aio.server(nc, "payment", interceptors=[
        RequireToken.over(deps.channel("auth"), ["/gaming.payment.v1.PaymentService/Charge"]),
    ])

A protected call must carry ``authorization: Bearer <access token>`` metadata. The interceptor
asks the auth service (Validate, over the mesh) on every call, never from a cache, so a logout
shuts the door at once on every replica of every service. Inside the handler, ``caller()``
says whose token it was.
"""

from __future__ import annotations

import contextvars
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc
from gaming.auth.v1 import auth_pb2, auth_pb2_grpc

log = logging.getLogger(__name__)

Validate = Callable[..., Awaitable[auth_pb2.ValidateResponse]]
_METHOD = re.compile(r"/[A-Za-z_][\w.]*/\w+")
_BEARER = re.compile(r"bearer +(\S+) *", re.IGNORECASE)
# Validate's own verdicts on the token; anything else (UNAVAILABLE, DEADLINE_EXCEEDED...) says
# nothing about the caller, so it is reported as UNAVAILABLE, which clients may retry.
_TOKEN_REJECTED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT)

_caller: contextvars.ContextVar[auth_pb2.ValidateResponse | None] = contextvars.ContextVar(
    "servicers.auth.caller", default=None
)


def caller() -> auth_pb2.ValidateResponse | None:
    """Who made the current call, as validated by ``RequireToken``; None on unprotected methods.

    The interceptor runs in the call's own task, just before the handler, so the value is set
    for that call only.
    """
    return _caller.get()


class RequireToken(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc ships no types
    """Rejects calls to ``methods`` that lack a valid bearer access token, with UNAUTHENTICATED.

    Args:
        validate: the auth service's Validate, e.g. ``AuthServiceStub(channel).Validate``;
            called as ``await validate(ValidateRequest(...), timeout=...)``.
        methods: full method names to protect, like ``/gaming.payment.v1.PaymentService/Charge``;
            other methods pass through untouched.
        timeout: deadline of each Validate call, in seconds.
    """

    def __init__(self, validate: Validate, methods: Iterable[str], *, timeout: float = 2.0) -> None:
        self._validate = validate
        self._methods = frozenset(methods)
        for method in self._methods:
            if not _METHOD.fullmatch(method):
                raise ValueError(f"{method!r} is not a full method name like /pkg.Service/Method")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self._timeout = timeout

    @classmethod
    def over(cls, channel: Any, methods: Iterable[str], *, timeout: float = 2.0) -> RequireToken:
        """The interceptor validating through the auth service on ``channel`` (a grpc.aio.Channel,
        such as ``deps.channel("auth")``)."""
        return cls(auth_pb2_grpc.AuthServiceStub(channel).Validate, methods, timeout=timeout)

    def __repr__(self) -> str:
        return f"<RequireToken methods={sorted(self._methods)}>"

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]], details: Any) -> Any:
        """Pass the call on if its method is unprotected or its token valid; else a handler that
        rejects it."""
        handler = await continuation(details)
        if handler is None or details.method not in self._methods:
            return handler
        token = bearer_token(details.invocation_metadata)
        if token is None:
            return _rejecting(handler, grpc.StatusCode.UNAUTHENTICATED, "missing bearer token")
        try:
            identity = await self._validate(auth_pb2.ValidateRequest(access_token=token), timeout=self._timeout)
        except grpc.aio.AioRpcError as err:
            if err.code() in _TOKEN_REJECTED:
                return _rejecting(handler, grpc.StatusCode.UNAUTHENTICATED, err.details() or "invalid token")
            log.warning("cannot validate a token for %s: %s %s", details.method, err.code().name, err.details())
            return _rejecting(handler, grpc.StatusCode.UNAVAILABLE, "the auth service cannot be reached")
        _caller.set(identity)
        return handler


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` entry, or None."""
    for key, value in metadata or ():
        if key.lower() == "authorization" and isinstance(value, str):
            found = _BEARER.fullmatch(value)
            if found:
                return found.group(1)
    return None


def _rejecting(handler: Any, code: grpc.StatusCode, message: str) -> Any:
    """A handler of the same kind as ``handler`` (so streaming calls fail cleanly) that only aborts."""

    async def reject(_request: Any, context: Any) -> None:
        await context.abort(code, message)

    async def reject_stream(_request: Any, context: Any) -> Any:
        await context.abort(code, message)
        yield  # pragma: no cover - never reached; makes this an async generator

    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[handler.request_streaming, handler.response_streaming]
    return make(
        reject_stream if handler.response_streaming else reject,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
