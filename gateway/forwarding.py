"""Any gRPC method, forwarded as raw bytes from an HTTP/2 call to the target serving it over NATS.

Nothing is decoded: the handlers have no (de)serializers, so messages cross as the bytes the
client sent. What the forwarder carries besides the messages:

- metadata both ways (``gateway.metadata`` says which keys belong to one hop only);
- the remaining deadline, as the NATS call's timeout;
- cancellation: a client that cancels, or whose deadline passes, cancels the NATS call (streams
  tell the target with a CANCEL frame; a unary call over NATS has no such frame, so the target
  stops at its deadline);
- status, details and trailing metadata, unchanged, rich ``grpc-status-details-bin`` included.

A method whose call type the target's descriptors give is served by a handler of that type (a
unary method uses the NATS transport's one-message fast path). Anything else (a service
discovery has not seen yet, descriptors still loading) gets a bidi handler that resolves the
service first: HTTP/2 frames every call type alike, and a nats_transport server serves any
method over a stream, so a bidi relay is correct for all four.

Streaming handlers are async generators that yield each response, not coroutines that call
``context.write``: server interceptors (OpenTelemetry's among them) wrap a streaming handler by
iterating it, which a coroutine cannot be. Client interceptors for the NATS channels come from
the ``interceptors`` factory, per target; without one the channels have none.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, NoReturn

import grpc
from nats.aio.client import Client

import nats_transport.aio
from gateway import metadata
from gateway.descriptor_index import MethodKind
from gateway.discovery import Discovery
from gateway.schemas import Schemas
from nats_transport import ChannelOptions

Context = Any  # grpc.aio.ServicerContext; grpc ships no types
# target -> the grpc.aio client interceptors of the NATS channel to it
ChannelInterceptors = Callable[[str], Sequence[Any]]


def split_method(path: str) -> tuple[str, str] | None:
    """``("pkg.Service", "Method")`` from ``/pkg.Service/Method``; None for anything else."""
    if not path.startswith("/"):
        return None
    service, slash, method = path[1:].partition("/")
    if not slash or not service or not method or "/" in method:
        return None
    return service, method


class Forwarder(grpc.GenericRpcHandler):
    """The grpc.aio generic handler behind every method the ingress does not serve itself.

    ``interceptors``: the client interceptors of the channel to a target (tracing's, say),
    asked once per target; None installs none.
    """

    def __init__(
        self, nc: Client, discovery: Discovery, schemas: Schemas, options: ChannelOptions | None = None,
        *, interceptors: ChannelInterceptors | None = None,
    ) -> None:
        self._nc = nc
        self._discovery = discovery
        self._schemas = schemas
        self._options = options or ChannelOptions()
        self._interceptors = interceptors
        self._channels: dict[str, nats_transport.aio.Channel] = {}
        # (target, path) -> the method's kind and its handler, made once: a handler holds a
        # multicallable of the target's channel (its call policy looked up when made), and
        # making them per call cost the ingress about a tenth of its CPU per call.
        self._handlers: dict[tuple[str, str], tuple[MethodKind, Any]] = {}

    def __repr__(self) -> str:
        return f"<gateway.Forwarder targets={sorted(self._channels)}>"

    def channel(self, target: str) -> nats_transport.aio.Channel:
        """The (cached) NATS channel to ``target``."""
        channel = self._channels.get(target)
        if channel is None:
            # None rather than an empty list: a channel without interceptors runs none of their code.
            interceptors = None if self._interceptors is None else list(self._interceptors(target)) or None
            channel = self._channels[target] = nats_transport.aio.channel(
                self._nc, target, options=self._options, interceptors=interceptors)
        return channel

    def service(self, handler_call_details: Any) -> Any:
        # Called synchronously by grpc.aio for each call: only table look-ups here, anything
        # that must wait (a discovery poll) happens inside the handler.
        path: str = handler_call_details.method
        parts = split_method(path)
        if parts is None:
            return None  # grpc answers UNIMPLEMENTED
        service, method = parts
        target = self._discovery.target_of(service)
        kind = None if target is None else self._schemas.method_kind(target, service, method)
        if target is None or kind is None:
            return grpc.stream_stream_rpc_method_handler(functools.partial(self._resolve_and_forward, service, path))
        # Only methods the target's descriptors name get here, so the cache is bounded by them.
        cached = self._handlers.get((target, path))
        if cached is not None and cached[0] == kind:
            return cached[1]
        handler = _handler(kind, self.channel(target), path)
        self._handlers[target, path] = (kind, handler)
        return handler

    async def _resolve_and_forward(
        self, service: str, path: str, requests: AsyncIterator[bytes], context: Context
    ) -> AsyncIterator[bytes]:
        target = await self._discovery.resolve(service)
        if target is None:
            if self._discovery.knows(service):
                await abort(context, grpc.StatusCode.UNAVAILABLE, f"no live target serves {service}")
            await abort(context, grpc.StatusCode.UNIMPLEMENTED, f"unknown service {service}")
        async for message in _relay_stream(self.channel(target).stream_stream(path), requests, context):
            yield message


def _handler(kind: MethodKind, channel: nats_transport.aio.Channel, path: str) -> Any:
    if kind.client_streaming and kind.server_streaming:
        return grpc.stream_stream_rpc_method_handler(functools.partial(_relay_stream, channel.stream_stream(path)))
    if kind.client_streaming:
        return grpc.stream_unary_rpc_method_handler(functools.partial(_stream_unary, channel.stream_unary(path)))
    if kind.server_streaming:
        return grpc.unary_stream_rpc_method_handler(functools.partial(_relay_stream, channel.unary_stream(path)))
    return grpc.unary_unary_rpc_method_handler(functools.partial(_unary_unary, channel.unary_unary(path)))


def _call_options(context: Context) -> dict[str, Any]:
    return {
        "timeout": metadata.remaining_timeout(context.time_remaining()),
        "metadata": metadata.request_metadata(context.invocation_metadata()),
    }


# -- the relays -------------------------------------------------------------------------------


async def _unary_unary(start: Callable[..., Any], request: bytes, context: Context) -> bytes:
    call = start(request, **_call_options(context))
    return await _relay_response(call, context)


async def _stream_unary(start: Callable[..., Any], requests: AsyncIterator[bytes], context: Context) -> bytes:
    call = start(requests, **_call_options(context))
    return await _relay_response(call, context)


async def _relay_response(call: Any, context: Context) -> bytes:
    """Await a single-response call and hand its outcome to the HTTP/2 side."""
    try:
        response: bytes = await call
    except grpc.aio.AioRpcError as err:
        await _fail(context, err)
    except asyncio.CancelledError:
        call.cancel()  # the client went away or its deadline passed
        raise
    await _send_initial(context, await call.initial_metadata())
    _set_trailing(context, await call.trailing_metadata())
    return response


async def _relay_stream(start: Callable[..., Any], request: Any, context: Context) -> AsyncIterator[bytes]:
    """Start a response-streaming call (``request``: the one message or the client's stream),
    yield its responses to the HTTP/2 side as they come, then hand on its outcome."""
    call = start(request, **_call_options(context))
    ended = False
    try:
        message = await _first_message(call, context)
        while message is not grpc.aio.EOF:
            yield message
            message = await call.read()
        trailing = await call.trailing_metadata()
        ended = True
    except grpc.aio.AioRpcError as err:
        ended = True
        await _fail(context, err)
    finally:
        # The client went away or its deadline passed: while a read was awaited (the handler is
        # cancelled), or while a response was being sent (grpc closes this generator then).
        if not ended:
            call.cancel()
    _set_trailing(context, trailing)


async def _first_message(call: Any, context: Context) -> Any:
    """The first response (or EOF), with the target's initial metadata sent on before it.

    The target's headers may come alone, ahead of any message (pass them on at once: the client
    may be waiting for them), or with the first message (the NATS call knows them only once that
    message is read), so whichever comes first is waited for.
    """
    headers = asyncio.ensure_future(call.initial_metadata())
    reading = asyncio.ensure_future(call.read())
    try:
        await asyncio.wait((headers, reading), return_when=asyncio.FIRST_COMPLETED)
        if headers.done():
            await _send_initial(context, headers.result())
            return await reading
        message = reading.result()  # raises the call's error, if that is how it ended
        await _send_initial(context, await headers)
        return message
    finally:
        for task in (headers, reading):
            if not task.done():
                task.cancel()


def _set_trailing(context: Context, trailing: Any) -> None:
    pairs = metadata.trailing_metadata(trailing)
    if pairs:  # none is grpc's default: most calls need not cross into grpc for it
        context.set_trailing_metadata(pairs)


async def _send_initial(context: Context, initial: Any) -> None:
    pairs = metadata.initial_metadata(initial)
    if pairs:
        await context.send_initial_metadata(pairs)


async def _fail(context: Context, err: grpc.aio.AioRpcError) -> NoReturn:
    """End the HTTP/2 call with the target's status, details and trailers, unchanged."""
    initial = metadata.initial_metadata(err.initial_metadata())
    if initial:
        # Already sent with the first message, perhaps: the trailers still go.
        with contextlib.suppress(Exception):
            await context.send_initial_metadata(initial)
    await abort(context, err.code(), err.details() or "", metadata.trailing_metadata(err.trailing_metadata()))


async def abort(context: Context, code: grpc.StatusCode, details: str, trailing: Any = ()) -> NoReturn:
    """``context.abort``, typed as never returning (grpc ships no types to say so)."""
    await context.abort(code, details, trailing)
    raise AssertionError("context.abort returned")
