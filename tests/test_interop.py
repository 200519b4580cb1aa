"""The gRPC interop test cases (doc/interop-test-descriptions.md), run over NATS.

The interop suite's ``grpc.testing.TestService`` is served by raw-bytes handlers registered with
``grpc.method_handlers_generic_handler`` (no serializers: handlers get and return bytes), in two
flavours, ``async def`` and plain functions, as grpcio allows. Its messages are encoded here as
``4-byte header length | JSON header | payload``: the header holds what SimpleRequest and
StreamingOutputCallRequest would (response sizes, an interval, a status to echo), the payload is
the request's zero bytes. Responses are bare payloads of zeros, sized as asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from nats.aio.client import Client

import nats_transport
from tests._waiting import wait_for

SERVICE = "grpc.testing.TestService"
ECHO_INITIAL = "x-grpc-test-echo-initial"
ECHO_TRAILING = "x-grpc-test-echo-trailing-bin"
CODES = {code.value[0]: code for code in grpc.StatusCode}

# Sizes the interop descriptions use.
REQUEST_SIZES = [27182, 8, 1828, 45904]
RESPONSE_SIZES = [31415, 9, 2653, 58979]


def encode(header: dict | None = None, payload_size: int = 0) -> bytes:
    raw = json.dumps(header or {}).encode()
    return len(raw).to_bytes(4, "big") + raw + bytes(payload_size)


def decode(data: bytes) -> tuple[dict, bytes]:
    size = int.from_bytes(data[:4], "big")
    return json.loads(data[4 : 4 + size]), data[4 + size :]


# -- the test service, twice --------------------------------------------------------------------


def _echo_metadata(context) -> tuple[tuple[tuple[str, object], ...], tuple[tuple[str, object], ...]]:
    """(initial, trailing) metadata the client asked to have echoed."""
    incoming = dict(context.invocation_metadata())
    initial = ((ECHO_INITIAL, incoming[ECHO_INITIAL]),) if ECHO_INITIAL in incoming else ()
    trailing = ((ECHO_TRAILING, incoming[ECHO_TRAILING]),) if ECHO_TRAILING in incoming else ()
    return initial, trailing


def _status_of(header: dict) -> tuple[grpc.StatusCode, str] | None:
    status = header.get("response_status")
    if not status or not status.get("code"):
        return None
    return CODES[status["code"]], status.get("message", "")


class AsyncTestService:
    """TestService with ``async def`` handlers."""

    async def _start(self, context) -> None:
        initial, trailing = _echo_metadata(context)
        if initial:
            await context.send_initial_metadata(initial)
        if trailing:
            context.set_trailing_metadata(trailing)

    async def empty_call(self, request: bytes, context) -> bytes:
        await self._start(context)
        return b""

    async def unary_call(self, request: bytes, context) -> bytes:
        await self._start(context)
        header, _ = decode(request)
        status = _status_of(header)
        if status is not None:
            await context.abort(*status)
        return bytes(header.get("response_size", 0))

    async def streaming_input_call(self, request_iterator, context) -> bytes:
        await self._start(context)
        total = 0
        async for request in request_iterator:
            total += len(decode(request)[1])
        return encode({"aggregated_payload_size": total})

    async def streaming_output_call(self, request: bytes, context):
        await self._start(context)
        header, _ = decode(request)
        for size in header.get("response_sizes", []):
            if header.get("interval_us"):
                await asyncio.sleep(header["interval_us"] / 1e6)
            yield bytes(size)

    async def full_duplex_call(self, request_iterator, context):
        await self._start(context)
        async for request in request_iterator:
            header, _ = decode(request)
            status = _status_of(header)
            if status is not None:
                await context.abort(*status)
            for size in header.get("response_sizes", []):
                if header.get("interval_us"):
                    await asyncio.sleep(header["interval_us"] / 1e6)  # a sleeping server
                yield bytes(size)


class PlainTestService:
    """TestService with plain-function handlers (run in the server's thread pool)."""

    def _start(self, context) -> None:
        initial, trailing = _echo_metadata(context)
        if initial:
            context.send_initial_metadata(initial)
        if trailing:
            context.set_trailing_metadata(trailing)

    def _pause(self, context, seconds: float) -> None:
        # A sleeping server that still wakes up when its call ends (cancel or deadline).
        ended = threading.Event()
        if context.add_callback(ended.set):
            ended.wait(seconds)

    def empty_call(self, request: bytes, context) -> bytes:
        self._start(context)
        return b""

    def unary_call(self, request: bytes, context) -> bytes:
        self._start(context)
        header, _ = decode(request)
        status = _status_of(header)
        if status is not None:
            context.abort(*status)
        return bytes(header.get("response_size", 0))

    def streaming_input_call(self, request_iterator, context) -> bytes:
        self._start(context)
        return encode({"aggregated_payload_size": sum(len(decode(r)[1]) for r in request_iterator)})

    def streaming_output_call(self, request: bytes, context):
        self._start(context)
        header, _ = decode(request)
        for size in header.get("response_sizes", []):
            if header.get("interval_us"):
                self._pause(context, header["interval_us"] / 1e6)
            yield bytes(size)

    def full_duplex_call(self, request_iterator, context):
        self._start(context)
        for request in request_iterator:
            header, _ = decode(request)
            status = _status_of(header)
            if status is not None:
                context.abort(*status)
            for size in header.get("response_sizes", []):
                if header.get("interval_us"):
                    self._pause(context, header["interval_us"] / 1e6)
                if not context.is_active():
                    return
                yield bytes(size)


def _generic_handler(service) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "EmptyCall": grpc.unary_unary_rpc_method_handler(service.empty_call),
            "UnaryCall": grpc.unary_unary_rpc_method_handler(service.unary_call),
            "StreamingInputCall": grpc.stream_unary_rpc_method_handler(service.streaming_input_call),
            "StreamingOutputCall": grpc.unary_stream_rpc_method_handler(service.streaming_output_call),
            "FullDuplexCall": grpc.stream_stream_rpc_method_handler(service.full_duplex_call),
        },
    )


class Client_:
    """The interop client's view: raw-bytes multicallables on an asyncio channel."""

    def __init__(self, channel: nats_transport.aio.Channel, server: nats_transport.aio.Server) -> None:
        self.channel = channel
        self.server = server
        path = f"/{SERVICE}/"
        self.empty_call = channel.unary_unary(path + "EmptyCall")
        self.unary_call = channel.unary_unary(path + "UnaryCall")
        self.streaming_input_call = channel.stream_unary(path + "StreamingInputCall")
        self.streaming_output_call = channel.unary_stream(path + "StreamingOutputCall")
        self.full_duplex_call = channel.stream_stream(path + "FullDuplexCall")


@pytest.fixture(params=[AsyncTestService, PlainTestService], ids=["async-handlers", "plain-handlers"])
async def client(request, nc: Client) -> AsyncIterator[Client_]:
    target = f"interop-{uuid.uuid4().hex[:12]}"
    server = nats_transport.aio.server(nc, target)
    server.add_generic_rpc_handlers((_generic_handler(request.param()),))
    await server.start()
    channel = nats_transport.aio.channel(nc, target)
    yield Client_(channel, server)
    await channel.close()
    await server.stop(grace=None)


# -- the cases ----------------------------------------------------------------------------------


async def test_empty_unary(client):
    response = await client.empty_call(b"", timeout=5)

    assert response == b""


async def test_large_unary(client):
    response = await client.unary_call(encode({"response_size": 314159}, payload_size=271828), timeout=10)

    assert len(response) == 314159
    assert response == bytes(314159)


@pytest.mark.parametrize(
    "message",
    ["test status message", "\t\ntest with whitespace\r\nand Unicode BMP ☺ and non-BMP 😈\t\n"],
    ids=["ascii", "special-unicode"],
)
async def test_status_code_and_message_of_unary_and_full_duplex_calls(client, message):
    status = {"response_status": {"code": 2, "message": message}}

    with pytest.raises(grpc.aio.AioRpcError) as unary:
        await client.unary_call(encode(status), timeout=5)
    call = client.full_duplex_call(timeout=5)
    await call.write(encode(status))
    await call.done_writing()
    with pytest.raises(grpc.aio.AioRpcError) as duplex:
        await call.read()

    assert (unary.value.code(), unary.value.details()) == (grpc.StatusCode.UNKNOWN, message)
    assert (duplex.value.code(), duplex.value.details()) == (grpc.StatusCode.UNKNOWN, message)
    assert await call.code() == grpc.StatusCode.UNKNOWN
    assert await call.details() == message


async def test_custom_metadata_of_a_unary_call(client):
    metadata = ((ECHO_INITIAL, "test_initial_metadata_value"), (ECHO_TRAILING, b"\x0a\x0b\x0a\x0b\x0a\x0b"))

    call = client.unary_call(encode({"response_size": 314159}, payload_size=271828), metadata=metadata, timeout=10)
    response = await call

    assert len(response) == 314159
    assert (await call.initial_metadata())[ECHO_INITIAL] == "test_initial_metadata_value"
    assert (await call.trailing_metadata())[ECHO_TRAILING] == b"\x0a\x0b\x0a\x0b\x0a\x0b"


async def test_custom_metadata_of_a_full_duplex_call(client):
    metadata = ((ECHO_INITIAL, "test_initial_metadata_value"), (ECHO_TRAILING, b"\x0a\x0b\x0a\x0b\x0a\x0b"))

    call = client.full_duplex_call(metadata=metadata, timeout=10)
    await call.write(encode({"response_sizes": [314159]}, payload_size=271828))
    await call.done_writing()
    responses = [len(r) async for r in call]

    assert responses == [314159]
    assert (await call.initial_metadata())[ECHO_INITIAL] == "test_initial_metadata_value"
    assert (await call.trailing_metadata())[ECHO_TRAILING] == b"\x0a\x0b\x0a\x0b\x0a\x0b"
    assert await call.code() == grpc.StatusCode.OK


async def test_unimplemented_method(client):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.channel.unary_unary(f"/{SERVICE}/UnimplementedCall")(b"", timeout=5)

    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_unimplemented_service(client):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.channel.unary_unary("/grpc.testing.UnimplementedService/UnimplementedCall")(b"", timeout=5)

    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_unimplemented_streaming_method(client):
    call = client.channel.stream_stream(f"/{SERVICE}/UnimplementedStreamingCall")(timeout=5)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()

    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_timeout_on_sleeping_server(client):
    call = client.full_duplex_call(timeout=0.001)
    with contextlib.suppress(grpc.aio.AioRpcError):  # the deadline may pass before the request is sent
        await call.write(encode({"response_sizes": [1], "interval_us": 10_000_000}, payload_size=27182))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()

    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert await call.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_timeout_on_a_server_sleeping_mid_stream(client):
    call = client.full_duplex_call(timeout=0.3)
    await call.write(encode({"response_sizes": [9]}))
    assert len(await call.read()) == 9
    await call.write(encode({"response_sizes": [1], "interval_us": 10_000_000}))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()

    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await wait_for(lambda: client.server.in_flight == 0)


async def test_client_streaming(client):
    async def requests():
        for size in REQUEST_SIZES:
            yield encode(payload_size=size)

    response = await client.streaming_input_call(requests(), timeout=10)

    assert decode(response)[0]["aggregated_payload_size"] == 74922


async def test_server_streaming(client):
    call = client.streaming_output_call(encode({"response_sizes": RESPONSE_SIZES}), timeout=10)
    sizes = [len(r) async for r in call]

    assert sizes == RESPONSE_SIZES
    assert await call.code() == grpc.StatusCode.OK


async def test_ping_pong(client):
    call = client.full_duplex_call(timeout=10)
    sizes = []
    for request_size, response_size in zip(REQUEST_SIZES, RESPONSE_SIZES, strict=True):
        await call.write(encode({"response_sizes": [response_size]}, payload_size=request_size))
        response = await call.read()
        sizes.append(len(response))
        assert response == bytes(response_size)
    await call.done_writing()

    assert sizes == RESPONSE_SIZES
    assert await call.read() is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK


async def test_empty_stream(client):
    call = client.full_duplex_call(timeout=5)
    await call.done_writing()

    assert await call.read() is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK


async def test_cancel_after_begin(client):
    call = client.streaming_input_call(timeout=5)

    assert call.cancel()

    assert call.cancelled()
    assert await call.code() == grpc.StatusCode.CANCELLED
    await wait_for(lambda: client.server.in_flight == 0)


async def test_cancel_after_first_response(client):
    call = client.full_duplex_call(timeout=10)
    await call.write(encode({"response_sizes": [31415]}, payload_size=27182))
    assert len(await call.read()) == 31415

    assert call.cancel()

    assert await call.code() == grpc.StatusCode.CANCELLED
    await wait_for(lambda: client.server.in_flight == 0)
