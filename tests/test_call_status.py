"""The status a served call ends with, wherever its failure is decided: in the handler (set, then
returned or raised), in the stream I/O a handler runs (sticky even when the handler swallows the
exception), or after it (a response over the limit); and what interceptors and ``$SRV.STATS`` see
of it. Raw-bytes methods keep each case exact."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from nats.aio.client import Client

import nats_transport
import nats_transport.aio

MiB = 1024 * 1024
SERVICE = "test.Status"


def _strict(data: bytes) -> bytes:
    """A request deserializer that refuses b"bad"."""
    if data == b"bad":
        raise ValueError("undecodable")
    return data


class CodeAtUnwind(grpc.aio.ServerInterceptor):
    """Records, per method, the code a handler's context holds as the handler unwinds (what
    metrics and call-log interceptors read)."""

    def __init__(self) -> None:
        self.seen: dict[str, grpc.StatusCode | None] = {}

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        if handler is None or not handler.request_streaming or handler.response_streaming:
            return handler
        behaviour, method = handler.stream_unary, details.method

        async def observed(requests: Any, context: Any) -> Any:
            try:
                return await behaviour(requests, context)
            finally:
                self.seen[method] = context.code()

        return grpc.stream_unary_rpc_method_handler(
            observed, handler.request_deserializer, handler.response_serializer
        )


@contextlib.asynccontextmanager
async def serving(
    nc: Client, methods: dict[str, grpc.RpcMethodHandler[Any, Any]], **server_args: Any
) -> AsyncIterator[tuple[nats_transport.aio.Server, nats_transport.aio.Channel]]:
    target = f"status-{uuid.uuid4().hex[:10]}"
    server = nats_transport.aio.server(nc, target, **server_args)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, methods)])
    await server.start()
    try:
        async with nats_transport.aio.channel(nc, target) as channel:
            yield server, channel
    finally:
        await server.stop(0)


def unary(channel: nats_transport.aio.Channel, method: str) -> Callable[..., Any]:
    return channel.unary_unary(f"/{SERVICE}/{method}")


async def failure_of(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def test_a_response_over_the_limit_of_a_unary_call_sent_as_a_stream_is_resource_exhausted(
    nc: Client,
) -> None:
    # The request is too big for one NATS message, so the call goes in stream mode; its response
    # is over the server's message limit.
    limit = 2 * MiB
    assert nc.max_payload < 1.5 * MiB

    async def huge(request: bytes, context: Any) -> bytes:
        return b"r" * (limit + 1)

    methods = {"Huge": grpc.unary_unary_rpc_method_handler(huge)}
    options = nats_transport.ServerOptions(max_message_size=limit)
    async with serving(nc, methods, options=options) as (server, channel):
        err = await failure_of(unary(channel, "Huge")(b"q" * int(1.5 * MiB), timeout=10))

    details = f"response of {limit + 1} bytes exceeds the limit of {limit}"
    assert (err.code(), err.details()) == (grpc.StatusCode.RESOURCE_EXHAUSTED, details)
    assert server.endpoint_stats[f"{SERVICE}.Huge"].last_error == f"RESOURCE_EXHAUSTED: {details}"


async def test_a_unary_response_over_the_limit_is_counted_with_its_reason(nc: Client) -> None:
    limit = 64 * 1024

    async def huge(request: bytes, context: Any) -> bytes:
        return b"r" * (limit + 1)

    methods = {"Huge": grpc.unary_unary_rpc_method_handler(huge)}
    options = nats_transport.ServerOptions(max_message_size=limit)
    async with serving(nc, methods, options=options) as (server, channel):
        err = await failure_of(unary(channel, "Huge")(b"q", timeout=5))

    details = f"response of {limit + 1} bytes exceeds the limit of {limit}"
    assert (err.code(), err.details()) == (grpc.StatusCode.RESOURCE_EXHAUSTED, details)
    assert server.endpoint_stats[f"{SERVICE}.Huge"].last_error == f"RESOURCE_EXHAUSTED: {details}"


async def test_an_undecodable_request_fails_a_stream_even_when_the_handler_swallows_it(nc: Client) -> None:
    swallowed: list[BaseException] = []

    async def upload(requests: Any, context: Any) -> bytes:
        try:
            async for _ in requests:
                pass
        except Exception as exc:  # the handler carries on: the call's status must not
            swallowed.append(exc)
        return b"done"

    interceptor = CodeAtUnwind()
    methods = {"Upload": grpc.stream_unary_rpc_method_handler(upload, request_deserializer=_strict)}
    async with serving(nc, methods, interceptors=[interceptor]) as (server, channel):
        err = await failure_of(channel.stream_unary(f"/{SERVICE}/Upload")(iter([b"ok", b"bad"]), timeout=5))

    assert (err.code(), err.details()) == (grpc.StatusCode.INTERNAL, "Exception deserializing request!")
    assert len(swallowed) == 1
    assert interceptor.seen[f"/{SERVICE}/Upload"] == grpc.StatusCode.INTERNAL
    assert server.endpoint_stats[f"{SERVICE}.Upload"].last_error.startswith("INTERNAL")


@pytest.mark.parametrize("way_out", ["returns", "raises"])
async def test_a_status_the_handler_set_stands_whether_it_returns_or_raises(nc: Client, way_out: str) -> None:
    async def lookup(request: bytes, context: Any) -> bytes:
        context.set_code(grpc.StatusCode.NOT_FOUND)
        context.set_details("no such thing")
        if way_out == "raises":
            raise RuntimeError("and then it broke")
        return b"ignored"

    methods = {"Lookup": grpc.unary_unary_rpc_method_handler(lookup)}
    async with serving(nc, methods) as (server, channel):
        err = await failure_of(unary(channel, "Lookup")(b"q", timeout=5))

    assert (err.code(), err.details()) == (grpc.StatusCode.NOT_FOUND, "no such thing")
    assert server.endpoint_stats[f"{SERVICE}.Lookup"].last_error == "NOT_FOUND: no such thing"


async def test_a_handler_exception_is_unknown_with_the_generic_message(nc: Client) -> None:
    async def broken(request: bytes, context: Any) -> bytes:
        raise RuntimeError("internal detail that must not leak")

    methods = {"Broken": grpc.unary_unary_rpc_method_handler(broken)}
    async with serving(nc, methods) as (server, channel):
        err = await failure_of(unary(channel, "Broken")(b"q", timeout=5))

    assert (err.code(), err.details()) == (grpc.StatusCode.UNKNOWN, "Exception calling application")
    assert server.endpoint_stats[f"{SERVICE}.Broken"].last_error == "UNKNOWN: Exception calling application"
