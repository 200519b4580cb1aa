"""``AccessPolicy``: the one server interceptor that decides who may call what, from the
``gaming.common.v1.access`` option each RPC declares in its proto.

Per call, by the method's declared ``Access``:

    grpc.health.v1 and server reflection      pass (probes and tools carry no tokens)
    no ``access`` option                      PERMISSION_DENIED: closed until someone decides
    public                                    pass; a token that verifies names the caller, a
                                              token that does not is ignored
    scopes, no bearer token                   UNAUTHENTICATED
    scopes, token rejected by the verifier    UNAUTHENTICATED (malformed, invalid, expired...)
    scopes, verifier cannot tell              UNAVAILABLE (the caller may retry)
    scopes, identity holds none of them       PERMISSION_DENIED naming the scopes required
    scopes, identity holds one                pass, with ``caller()`` set

Every refusal carries a ``google.rpc.ErrorInfo`` (domain ``gaming.mesh``) whose reason says which
row it is. The caller's identity and token are set in the handler's own context
(``servicers.auth.call_identity``) for all four call types.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from gaming.common.v1 import common_pb2
from google.protobuf import descriptor_pool

from servicers.auth.call_identity import set_call_identity
from servicers.auth.identity import Identity, TokenRejected, TokenVerifier, VerifierUnavailable
from servicers.errors import abort

log = logging.getLogger(__name__)

# Services every target serves beside its own, which must stay reachable without a token.
UNGUARDED_SERVICES = frozenset({
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
})
_BEARER = re.compile(r"bearer +(\S+) *", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class MethodAccess:
    """Who may call one method: anyone (``public``), or tokens holding one of ``scopes``."""

    public: bool
    scopes: tuple[str, ...]


def declared_access(service_names: Iterable[str]) -> dict[str, MethodAccess]:
    """The access option of every method of ``service_names``, by full method name
    (``/pkg.Service/Method``); methods without the option are left out.

    The services' generated ``_pb2`` modules must be imported (so their descriptors are in the
    default pool); the servicer modules that name them in SERVICE_NAMES import them.

    Raises:
        KeyError: a service is not in the descriptor pool.
    """
    pool = descriptor_pool.Default()
    table: dict[str, MethodAccess] = {}
    for service_name in service_names:
        service = pool.FindServiceByName(service_name)
        for method in service.methods:
            options = method.GetOptions()
            if options.HasExtension(common_pb2.access):
                access = options.Extensions[common_pb2.access]
                table[f"/{service.full_name}/{method.name}"] = MethodAccess(access.public, tuple(access.scopes))
    return table


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` entry, or None."""
    for key, value in metadata or ():
        if key.lower() == "authorization" and isinstance(value, str):
            found = _BEARER.fullmatch(value)
            if found:
                return found.group(1)
    return None


@dataclass(frozen=True, slots=True)
class _Refusal:
    code: grpc.StatusCode
    message: str
    reason: str


class AccessPolicy(grpc.aio.ServerInterceptor):
    """Admits or refuses each call by its method's declared access (see the module docstring).

    Args:
        access: the declared access of each full method name; a method not in it is denied.
        verifier: turns bearer tokens into identities.
        verify_public: verify tokens sent to public methods, to name the caller. The auth
            target turns it off: its own Validate, which a verifier may call, is public.
    """

    def __init__(self, access: Mapping[str, MethodAccess], verifier: TokenVerifier, *,
                 verify_public: bool = True) -> None:
        self._access = dict(access)
        self._verifier = verifier
        self._verify_public = verify_public

    @classmethod
    def for_services(cls, service_names: Iterable[str], verifier: TokenVerifier, *,
                     verify_public: bool = True) -> AccessPolicy:
        """The policy of ``service_names`` as their protos declare it."""
        return cls(declared_access(service_names), verifier, verify_public=verify_public)

    def __repr__(self) -> str:
        public = sum(1 for access in self._access.values() if access.public)
        return f"<AccessPolicy methods={len(self._access)} public={public} verifier={self._verifier!r}>"

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]], details: Any) -> Any:
        """The method's handler, run with the caller's identity, or one that refuses the call."""
        handler = await continuation(details)
        method: str = details.method
        if handler is None or method.split("/")[1] in UNGUARDED_SERVICES:
            return handler
        access = self._access.get(method)
        token = bearer_token(details.invocation_metadata)
        if access is None:
            return _refusing(handler, _Refusal(grpc.StatusCode.PERMISSION_DENIED,
                                               f"{method}: no access policy declared", "NO_ACCESS_POLICY"))
        if access.public:
            identity = await self._identify(token) if token is not None and self._verify_public else None
            return _with_identity(handler, identity, token)
        outcome = await self._admit(method, access.scopes, token)
        if isinstance(outcome, _Refusal):
            return _refusing(handler, outcome)
        return _with_identity(handler, outcome, token)

    async def _identify(self, token: str) -> Identity | None:
        """The identity behind a token sent to a public method; None if it does not verify."""
        try:
            return await self._verifier.verify(token)
        except (TokenRejected, VerifierUnavailable):
            return None  # public: the call goes on anonymously

    async def _admit(self, method: str, scopes: tuple[str, ...], token: str | None) -> Identity | _Refusal:
        if token is None:
            return _Refusal(grpc.StatusCode.UNAUTHENTICATED, f"{method} needs a bearer token", "TOKEN_MISSING")
        try:
            identity = await self._verifier.verify(token)
        except TokenRejected as rejected:
            detail = str(rejected)
            message = f"token {rejected.reason}" + (f": {detail}" if detail != rejected.reason else "")
            return _Refusal(grpc.StatusCode.UNAUTHENTICATED, message, f"TOKEN_{rejected.reason.upper()}")
        except VerifierUnavailable as err:
            log.warning("cannot verify a token for %s: %s", method, err)
            return _Refusal(grpc.StatusCode.UNAVAILABLE, "tokens cannot be verified right now", "VERIFIER_UNAVAILABLE")
        if not identity.holds_any(scopes):
            return _Refusal(grpc.StatusCode.PERMISSION_DENIED,
                            f"{method} needs a token with scope {' or '.join(scopes)}", "SCOPE_MISSING")
        return identity


def _with_identity(handler: Any, identity: Identity | None, token: str | None) -> Any:
    """``handler``, setting the caller's identity in its own context first."""
    behaviour = _behaviour(handler)

    if handler.response_streaming:
        async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
            set_call_identity(identity, token)
            result = behaviour(request, context)
            if hasattr(result, "__aiter__"):
                async for response in result:
                    yield response
            else:  # a handler that writes with context.write() and returns None
                await result

        return _handler_like(handler, streaming)

    async def unary(request: Any, context: Any) -> Any:
        set_call_identity(identity, token)
        return await behaviour(request, context)

    return _handler_like(handler, unary)


def _refusing(handler: Any, refusal: _Refusal) -> Any:
    return refusing_handler(handler, refusal.code, refusal.message, refusal.reason)


def refusing_handler(handler: Any, code: grpc.StatusCode, message: str, reason: str | None = None) -> Any:
    """A handler of the same kind as ``handler`` (so streaming calls fail cleanly) that only
    refuses the call, with an ErrorInfo ``reason`` when given; for server interceptors."""

    async def refuse(_request: Any, context: Any) -> None:
        await abort(context, code, message, reason)

    async def refuse_stream(_request: Any, context: Any) -> AsyncIterator[Any]:
        await abort(context, code, message, reason)
        yield  # pragma: no cover - never reached; makes this an async generator

    return _handler_like(handler, refuse_stream if handler.response_streaming else refuse)


def _behaviour(handler: Any) -> Callable[..., Any]:
    """The function behind a handler, whichever of the four kinds it is."""
    behaviour: Callable[..., Any] = {
        (False, False): handler.unary_unary,
        (True, False): handler.stream_unary,
        (False, True): handler.unary_stream,
        (True, True): handler.stream_stream,
    }[handler.request_streaming, handler.response_streaming]
    return behaviour


def _handler_like(handler: Any, behaviour: Callable[..., Any]) -> Any:
    """A handler of ``handler``'s kind and (de)serializers running ``behaviour``."""
    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[handler.request_streaming, handler.response_streaming]
    return make(behaviour, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
