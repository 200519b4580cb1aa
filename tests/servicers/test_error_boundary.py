"""ErrorBoundary: what handlers raise becomes the caller's status, for the four call kinds, async
and plain-function handlers, over NATS and over grpc.aio's own HTTP/2 server alike."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from nats.aio.client import Client

import nats_transport.aio
from servicers.error_boundary import STORAGE_MESSAGE, STORAGE_REASON, ErrorBoundary
from servicers.errors import DOMAIN, RpcError, invalid_argument, not_found
from servicers.named_store import WordedOutage
from servicers.storage import StorageUnavailable, ValueTooLarge

SERVICE = "test.boundary.Boundary"
KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
# (transport name, channel) of the fixture
Served = tuple[str, Any]


# A detail another service sent, of a type this process has no class for, forwarded as it came.
FOREIGN = any_pb2.Any(type_url="type.googleapis.com/other.v1.Hint", value=b"\x08\x2a")


def forwarded() -> RpcError:
    """An error passing on another service's packed details, then one of its own."""
    packed = any_pb2.Any()
    packed.Pack(error_details_pb2.ErrorInfo(reason="UPSTREAM_REASON", domain="other"))
    return RpcError(grpc.StatusCode.FAILED_PRECONDITION, "upstream said no",
                    [FOREIGN, packed, error_details_pb2.ErrorInfo(reason="FORWARDED", domain=DOMAIN)])


def failure(what: bytes) -> Exception:
    """What a handler raises when asked ``what``."""
    return {
        b"invalid": invalid_argument("player_id", "is required"),
        b"forwarded": forwarded(),
        b"missing": not_found("quest 'q1' does not exist", "QUEST_NOT_FOUND"),
        b"storage": StorageUnavailable("get clock.main: connection closed"),
        b"worded": WordedOutage("the clock store is unavailable"),
        b"too-large": ValueTooLarge("k", 2, 1),
        b"bug": RuntimeError("a bug"),
    }[what]


# Async handlers. A request-streaming one fails on its first request; a response-streaming one
# sends a response first, so the status follows data already sent.

async def async_unary_unary(request: bytes, context: Any) -> bytes:
    raise failure(request)


async def async_unary_stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
    yield b"first"
    raise failure(request)


async def async_stream_unary(requests: AsyncIterator[bytes], context: Any) -> bytes:
    async for request in requests:
        raise failure(request)
    return b"none"


async def async_stream_stream(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    async for request in requests:
        yield b"first"
        raise failure(request)


def sync_unary_unary(request: bytes, context: Any) -> bytes:
    raise failure(request)


def sync_unary_stream(request: bytes, context: Any) -> Iterator[bytes]:
    yield b"first"
    raise failure(request)


def sync_stream_unary(requests: Iterator[bytes], context: Any) -> bytes:
    for request in requests:
        raise failure(request)
    return b"none"


def sync_stream_stream(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
    for request in requests:
        yield b"first"
        raise failure(request)


def handlers() -> Any:
    make = {
        "unary_unary": grpc.unary_unary_rpc_method_handler,
        "unary_stream": grpc.unary_stream_rpc_method_handler,
        "stream_unary": grpc.stream_unary_rpc_method_handler,
        "stream_stream": grpc.stream_stream_rpc_method_handler,
    }
    methods = {}
    for kind in KINDS:
        methods[f"Async_{kind}"] = make[kind](globals()[f"async_{kind}"])
        methods[f"Sync_{kind}"] = make[kind](globals()[f"sync_{kind}"])
    return grpc.method_handlers_generic_handler(SERVICE, methods)


@contextlib.asynccontextmanager
async def over_nats(nc: Client) -> AsyncIterator[Any]:
    target = f"boundary-{uuid.uuid4().hex[:8]}"
    server = nats_transport.aio.server(nc, target, interceptors=[ErrorBoundary()])
    server.add_generic_rpc_handlers((handlers(),))
    await server.start()
    try:
        yield nats_transport.aio.channel(nc, target)
    finally:
        await server.stop(0)


@contextlib.asynccontextmanager
async def over_http2() -> AsyncIterator[Any]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        server = grpc.aio.server(interceptors=[ErrorBoundary()], migration_thread_pool=pool)
        server.add_generic_rpc_handlers((handlers(),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                yield channel
        finally:
            await server.stop(0)


@pytest.fixture(params=["nats", "http2"])
async def channel(request: pytest.FixtureRequest, nc: Client) -> AsyncIterator[Served]:
    serving: Callable[[], contextlib.AbstractAsyncContextManager[Any]] = (
        (lambda: over_nats(nc)) if request.param == "nats" else over_http2
    )
    async with serving() as channel:
        yield request.param, channel


async def outcome(
    served: Served, style: str, kind: str, what: bytes
) -> tuple[list[bytes], grpc.aio.AioRpcError]:
    """The responses received before the failure, and the failure."""
    transport, channel = served
    if transport == "http2" and style == "Sync" and kind.endswith("stream"):
        # Measured without the boundary too: a plain-function handler's context.abort() after
        # a response ends about half such calls with DEADLINE_EXCEEDED on grpc.aio's server.
        pytest.skip("grpc.aio cannot reliably abort a plain-function streaming handler after a response")
    method = f"/{SERVICE}/{style}_{kind}"
    multicallable = getattr(channel, kind)(method)
    received: list[bytes] = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if kind.startswith("unary"):
            call = multicallable(what, timeout=10)
        else:
            async def requests() -> AsyncIterator[bytes]:
                yield what
            call = multicallable(requests(), timeout=10)
        if kind.endswith("stream"):
            async for response in call:
                received.append(response)
        else:
            received.append(await call)
    return received, caught.value


def details_of(err: grpc.aio.AioRpcError) -> list[Message]:
    status = rpc_status.from_call(err)
    assert status is not None, "the status carries google.rpc details"
    assert status.message == err.details()
    unpacked: list[Message] = []
    for packed in status.details:
        for kind in (error_details_pb2.BadRequest, error_details_pb2.ErrorInfo):
            if packed.Is(kind.DESCRIPTOR):
                message = kind()
                packed.Unpack(message)
                unpacked.append(message)
    return unpacked


def sent_first(kind: str) -> list[bytes]:
    return [b"first"] if kind.endswith("stream") else []


@pytest.mark.parametrize("style", ["Async", "Sync"])
@pytest.mark.parametrize("kind", KINDS)
async def test_an_rpc_error_is_the_callers_status_with_its_details(channel: Served, style: str, kind: str) -> None:
    received, err = await outcome(channel, style, kind, b"invalid")
    assert received == sent_first(kind)
    assert (err.code(), err.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "player_id: is required")
    violation = error_details_pb2.BadRequest.FieldViolation(field="player_id", description="is required")
    assert details_of(err) == [error_details_pb2.BadRequest(field_violations=[violation])]

    _, err = await outcome(channel, style, kind, b"missing")
    assert (err.code(), err.details()) == (grpc.StatusCode.NOT_FOUND, "quest 'q1' does not exist")
    assert details_of(err) == [error_details_pb2.ErrorInfo(reason="QUEST_NOT_FOUND", domain=DOMAIN)]


@pytest.mark.parametrize("style", ["Async", "Sync"])
@pytest.mark.parametrize("kind", KINDS)
async def test_a_storage_outage_is_unavailable_without_its_cause(channel: Served, style: str, kind: str) -> None:
    for what in (b"storage", b"too-large"):
        received, err = await outcome(channel, style, kind, what)
        assert received == sent_first(kind)
        assert (err.code(), err.details()) == (grpc.StatusCode.UNAVAILABLE, STORAGE_MESSAGE)
        assert details_of(err) == [error_details_pb2.ErrorInfo(reason=STORAGE_REASON, domain=DOMAIN)]


@pytest.mark.parametrize("style", ["Async", "Sync"])
@pytest.mark.parametrize("kind", KINDS)
async def test_a_worded_outage_is_unavailable_in_its_words(channel: Served, style: str, kind: str) -> None:
    _, err = await outcome(channel, style, kind, b"worded")
    assert (err.code(), err.details()) == (grpc.StatusCode.UNAVAILABLE, "the clock store is unavailable")
    assert details_of(err) == [error_details_pb2.ErrorInfo(reason="STORE_UNAVAILABLE", domain=DOMAIN)]


@pytest.mark.parametrize("style", ["Async", "Sync"])
@pytest.mark.parametrize("kind", KINDS)
async def test_anything_else_is_left_to_the_server(channel: Served, style: str, kind: str) -> None:
    received, err = await outcome(channel, style, kind, b"bug")
    assert received == sent_first(kind)
    assert err.code() == grpc.StatusCode.UNKNOWN
    assert "STORAGE" not in (err.details() or "")


@pytest.mark.parametrize("style", ["Async", "Sync"])
@pytest.mark.parametrize("kind", KINDS)
async def test_packed_details_are_sent_as_they_came(channel: Served, style: str, kind: str) -> None:
    _, err = await outcome(channel, style, kind, b"forwarded")
    assert (err.code(), err.details()) == (grpc.StatusCode.FAILED_PRECONDITION, "upstream said no")
    status = rpc_status.from_call(err)
    assert status is not None
    own = any_pb2.Any()
    own.Pack(error_details_pb2.ErrorInfo(reason="FORWARDED", domain=DOMAIN))
    assert list(status.details) == [*forwarded().details[:2], own]  # not packed a second time


def test_an_rpc_error_names_packed_details_and_reads_a_packed_reason() -> None:
    error = forwarded()
    assert error.reason == "UPSTREAM_REASON"  # the first ErrorInfo the caller gets
    assert repr(error) == ("RpcError(FAILED_PRECONDITION, 'upstream said no', "
                           "details=[packed other.v1.Hint, packed google.rpc.ErrorInfo, ErrorInfo])")
    sent = status_pb2.Status.FromString(dict(error.status().trailing_metadata)["grpc-status-details-bin"])
    assert sent.details[0] == FOREIGN
