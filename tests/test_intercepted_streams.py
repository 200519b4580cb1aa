"""A client interceptor may answer a stream with an async iterator of its own (OpenTelemetry's
does): the call it hands back still reads, reports its status and cancels, as in grpc.aio."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from nats.aio.client import Client

import nats_transport
import nats_transport.aio
from tests._scripted import SERVICE, Script, Scripted, serving
from tests._waiting import wait_for


class Rewrapping(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Hands back a generator over the call's responses, not the call."""

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> AsyncIterator[Any]:
        call = await continuation(details, request)

        async def responses() -> AsyncIterator[Any]:
            async for response in call:
                yield response

        return responses()


async def test_cancel_reaches_the_server_through_an_interceptor_that_rewraps_the_stream(nc: Client) -> None:
    servicer = Scripted({"s": Script(["SLOW"], stream_first=True)})
    async with serving(nc, "rewrapped", servicer):
        channel = nats_transport.aio.channel(nc, "rewrapped", interceptors=[Rewrapping()])
        call = channel.unary_stream(f"/{SERVICE}/ServerStream")(b"s", timeout=30)
        assert await call.read() == b"first"
        assert call.cancel()
        await wait_for(lambda: servicer.cancelled == ["s"], timeout=2)
        assert await call.code() == grpc.StatusCode.CANCELLED


async def test_read_and_status_work_through_an_interceptor_that_rewraps_the_stream(nc: Client) -> None:
    servicer = Scripted({"s": Script(["OK"], stream_first=True)})
    async with serving(nc, "rewrapped", servicer):
        channel = nats_transport.aio.channel(nc, "rewrapped", interceptors=[Rewrapping()])
        call = channel.unary_stream(f"/{SERVICE}/ServerStream")(b"s", timeout=5)
        assert [await call.read(), await call.read(), await call.read()] == [b"first", b"1", grpc.aio.EOF]
        assert await call.code() == grpc.StatusCode.OK
