"""``mesh conformance`` passes every case of docs/conformance.md with our own Python client.

The cases come from the page: each row of its tables whose first cell is a case id in backticks
runs here as one test, through the function registered under that id below. A row without a
function, or a function without a row, fails ``test_the_page_and_this_file_list_the_same_cases``,
so the page and the test cannot drift apart. One ``python -m mesh conformance``, with the default
flags the page's cases assume, serves the whole module on the session's nats-server; it is
stopped with SIGTERM at the end, and must say so and exit 0.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import grpc
import nats
import pytest
from gaming.conformance.v1 import conformance_pb2 as pb
from gaming.conformance.v1 import conformance_pb2_grpc
from google.protobuf import descriptor_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from nats.aio.client import Client

import nats_transport.aio
from mesh.cli import main
from nats_transport import ChannelOptions
from nats_transport._status import NO_SERVER
from nats_transport.testing import NatsServer, free_port
from tests._waiting import wait_for, wait_until

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "conformance.md"
SPEC = ROOT / "docs" / "wire-protocol.md"
CASE_ROW = re.compile(r"^\|\s*`([a-z0-9-]+)`\s*\|(.*)\|\s*$")
SECTION = re.compile(r"§(\d+(?:\.\d+)?)")
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

TARGET = "conformance"
LIMITED = "conformance-limited"
ABSENT = "conformance-absent"
SERVICE = "gaming.conformance.v1.ConformanceService"
CALL_ID = "conformance-call-id"
LIMIT_EXCEEDED = "Concurrent RPC limit exceeded!"
MiB = 1024 * 1024


def documented_cases() -> dict[str, str]:
    """Case id -> its row, in the page's order."""
    rows: dict[str, str] = {}
    for line in PAGE.read_text().splitlines():
        match = CASE_ROW.match(line)
        if match:
            assert match.group(1) not in rows, f"case {match.group(1)} is listed twice"
            rows[match.group(1)] = line
    return rows


def pattern(size: int) -> bytes:
    """The page's pattern(n): byte i is i % 251 (written out here, not imported from the server)."""
    block = bytes(range(251))
    return (block * (size // 251 + 1))[:size]


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# -- the server ------------------------------------------------------------------------------


@dataclass
class Process:
    """A ``mesh conformance`` subprocess, its stdout lines as they come, and its stderr file."""

    popen: subprocess.Popen[str]
    stderr: Path
    lines: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    def stop(self, number: signal.Signals = signal.SIGTERM) -> int:
        """Signal it, wait for it to exit, and return its exit code (killed after STOP_TIMEOUT)."""
        if self.popen.poll() is None:
            self.popen.send_signal(number)
        try:
            code = self.popen.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            code = self.popen.wait()
        if self.reader is not None:
            self.reader.join(timeout=STOP_TIMEOUT)
        assert self.popen.stdout is not None
        self.popen.stdout.close()
        return code


def _environment() -> dict[str, str]:
    # No MESH_* settings from the caller's shell: the flags given are the whole configuration.
    return {key: value for key, value in os.environ.items() if not key.startswith("MESH_")}


def start_conformance(url: str, stderr: Path, *flags: str) -> Process:
    """``python -m mesh conformance`` on ``url``, once it has printed its startup line."""
    with stderr.open("w") as errors:
        popen = subprocess.Popen([sys.executable, "-m", "mesh", "conformance", "--nats-url", url, *flags],
                                 cwd=ROOT, env=_environment(), stdout=subprocess.PIPE, stderr=errors, text=True)
    process = Process(popen, stderr)

    def read(stream: IO[str]) -> None:
        for line in stream:
            process.lines.append(line)

    assert popen.stdout is not None
    process.reader = threading.Thread(target=read, args=(popen.stdout,), daemon=True)
    process.reader.start()

    def ready() -> bool:
        if process.lines:
            return True
        if popen.poll() is not None:
            raise AssertionError(f"mesh conformance exited with {popen.returncode}: {stderr.read_text()[-2000:]}")
        return False

    try:
        wait_until(ready, READY_TIMEOUT, "the startup line of mesh conformance")
    except BaseException:
        process.stop(signal.SIGKILL)
        raise
    return process


@pytest.fixture(scope="module")
def conformance(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """One ``mesh conformance`` with its default flags for the module; stopped with SIGTERM after."""
    process = start_conformance(nats_server.url, tmp_path_factory.mktemp("conformance") / "stderr")
    yield process
    code = process.stop()
    errors = process.stderr.read_text()
    assert code == 0, errors
    assert process.lines[-1] == "mesh conformance: stopped\n", process.lines
    # Fail's raise_exception case must not leave a traceback in the log, nor any case an error.
    assert "Traceback" not in errors, errors[-3000:]
    assert '"level": "error"' not in errors, errors[-3000:]


@dataclass
class Peer:
    """What a case uses: a NATS connection, and channels and stubs on it."""

    nc: Client

    def channel(self, target: str = TARGET, **options: Any) -> nats_transport.aio.Channel:
        """A channel to ``target``; ``options`` are ChannelOptions fields (window, keepalive)."""
        return nats_transport.aio.channel(self.nc, target, options=ChannelOptions(**options) if options else None)

    def stub(self, target: str = TARGET, **options: Any) -> Any:
        """A ConformanceService stub on a fresh channel (see ``channel``)."""
        return conformance_pb2_grpc.ConformanceServiceStub(self.channel(target, **options))

    async def record(self, call_id: str) -> pb.GetCallRecordResponse:
        """GetCallRecord of ``call_id``."""
        reply: pb.GetCallRecordResponse = await self.stub().GetCallRecord(
            pb.GetCallRecordRequest(call_id=call_id), timeout=5)
        return reply

    async def wait_for_state(self, call_id: str, state: int, timeout: float = 5.0) -> pb.GetCallRecordResponse:
        """The record of ``call_id`` once it is in ``state``; fails after ``timeout`` seconds."""
        seen: list[pb.GetCallRecordResponse] = []

        async def reached() -> bool:
            seen.append(await self.record(call_id))
            return seen[-1].state == state

        await wait_for(reached, timeout)
        return seen[-1]


@pytest.fixture
async def peer(conformance: Process, nats_server: NatsServer) -> AsyncIterator[Peer]:
    client = await nats.connect(nats_server.url, max_reconnect_attempts=0)
    try:
        yield Peer(client)
    finally:
        await client.close()


# -- the cases -------------------------------------------------------------------------------

Case = Callable[[Peer], Awaitable[None]]
CASES: dict[str, Case] = {}


def case(name: str) -> Callable[[Case], Case]:
    """Register the function that runs the page's case ``name``."""
    def register(function: Case) -> Case:
        assert name not in CASES, name
        CASES[name] = function
        return function

    return register


def named(call_id: str) -> tuple[tuple[str, str], ...]:
    return ((CALL_ID, call_id),)


def new_call_id(what: str) -> str:
    return f"{what}-{uuid.uuid4().hex[:12]}"


async def failure(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    """The error ``call`` ends with (the test fails if it succeeds)."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def entries(reply: pb.EchoResponse) -> list[tuple[str, bytes]]:
    return [(entry.key, entry.value) for entry in reply.request_metadata]


def metadata_list(entries: list[tuple[str, str | bytes]]) -> list[pb.MetadataEntry]:
    return [pb.MetadataEntry(key=key, value=value if isinstance(value, bytes) else value.encode())
            for key, value in entries]


def assert_details(err: grpc.aio.AioRpcError, *, code: int, reason: str, field: str) -> None:
    """The three details the page lists for Fail and ServerStream errors, in order."""
    status = rpc_status.from_call(err)
    assert status is not None, "no grpc-status-details-bin"
    assert (status.code, status.message) == (code, err.details())
    names = [detail.type_url.rpartition("/")[2] for detail in status.details]
    assert names == ["google.rpc.ErrorInfo", "google.rpc.BadRequest", "google.rpc.RetryInfo"]
    info, bad, retry = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest(), error_details_pb2.RetryInfo()
    for detail, message in zip(status.details, (info, bad, retry), strict=True):
        assert detail.Unpack(message)
    assert (info.reason, info.domain, dict(info.metadata)) == (reason, "conformance.gaming", {"code": str(code)})
    assert [(v.field, v.description) for v in bad.field_violations] == [(field, "the client asked for this status")]
    assert retry.retry_delay.ToMilliseconds() == 1500


# Call kinds


@case("unary-echo")
async def _unary_echo(peer: Peer) -> None:
    reply = await peer.stub().Echo(pb.EchoRequest(payload=b"hello"))
    assert reply.payload == b"hello"
    assert not reply.HasField("time_remaining")
    assert [key for key, _ in entries(reply) if key.startswith(("grpc-", "nats-grpc-"))] == []


@case("unary-empty")
async def _unary_empty(peer: Peer) -> None:
    reply = await peer.stub().Echo(pb.EchoRequest())
    assert reply == pb.EchoResponse()
    assert reply.ByteSize() == 0


@case("server-stream")
async def _server_stream(peer: Peer) -> None:
    replies = [r async for r in peer.stub().ServerStream(pb.ServerStreamRequest(count=5, size=10))]
    assert [(r.index, r.payload) for r in replies] == [(i, pattern(10)) for i in range(5)]


@case("server-stream-empty")
async def _server_stream_empty(peer: Peer) -> None:
    call = peer.stub().ServerStream(pb.ServerStreamRequest(count=0))
    assert [r async for r in call] == []
    assert await call.code() == grpc.StatusCode.OK


@case("client-stream")
async def _client_stream(peer: Peer) -> None:
    payloads = [pattern(100)] * 5
    reply = await peer.stub().ClientStream(iter([pb.ClientStreamRequest(payload=p) for p in payloads]))
    assert (reply.count, reply.total_bytes, reply.sha256) == (5, 500, sha256(b"".join(payloads)))


@case("client-stream-empty")
async def _client_stream_empty(peer: Peer) -> None:
    reply = await peer.stub().ClientStream(iter([]))
    assert (reply.count, reply.total_bytes, reply.sha256.hex()) == (
        0, 0, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")


@case("client-stream-early-answer")
async def _client_stream_early_answer(peer: Peer) -> None:
    requests = [pb.ClientStreamRequest(payload=b"z", respond_after=2)] + [pb.ClientStreamRequest(payload=b"z")] * 9
    reply = await peer.stub().ClientStream(iter(requests))
    assert (reply.count, reply.total_bytes) == (2, 2)


@case("bidi-ping-pong")
async def _bidi_ping_pong(peer: Peer) -> None:
    call = peer.stub().BidiEcho()
    for index in range(5):
        await call.write(pb.BidiEchoRequest(payload=f"ping-{index}".encode()))
        reply = await call.read()  # before the next request is written: one at a time
        assert (reply.index, reply.payload, reply.half_closed) == (index, f"ping-{index}".encode(), False)
    await call.done_writing()
    last = await call.read()
    assert (last.index, last.payload, last.half_closed) == (5, b"", True)
    assert await call.read() is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK


# Errors


@case("error-details")
async def _error_details(peer: Peer) -> None:
    err = await failure(peer.stub().Fail(pb.FailRequest(code=5, message="quest q-1 not found", reason="QUEST_MISSING")))
    assert (err.code(), err.details()) == (grpc.StatusCode.NOT_FOUND, "quest q-1 not found")
    assert_details(err, code=5, reason="QUEST_MISSING", field="code")


@case("error-message-text")
async def _error_message_text(peer: Peer) -> None:
    message = "  spaced, 100% ünïcode ✓  "
    err = await failure(peer.stub().Fail(pb.FailRequest(code=3, message=message)))
    assert (err.code(), err.details()) == (grpc.StatusCode.INVALID_ARGUMENT, message)


@case("error-with-metadata")
async def _error_with_metadata(peer: Peer) -> None:
    reply_metadata = pb.ReplyMetadata(headers=metadata_list([("x-initial", "a")]),
                                      trailers=metadata_list([("x-trailing", "b"), ("x-trailing-bin", b"\x00\xff")]))
    err = await failure(peer.stub().Fail(pb.FailRequest(code=9, message="not now", reply_metadata=reply_metadata)))
    assert (err.code(), err.details()) == (grpc.StatusCode.FAILED_PRECONDITION, "not now")
    assert tuple(err.initial_metadata()) == (("x-initial", "a"),)
    # grpcio shows grpc-status-details-bin among the trailing metadata; it is the status, not ours.
    trailing = tuple(item for item in err.trailing_metadata() if item[0] != "grpc-status-details-bin")
    assert trailing == (("x-trailing", "b"), ("x-trailing-bin", b"\x00\xff"))


@case("error-handler-exception")
async def _error_handler_exception(peer: Peer) -> None:
    err = await failure(peer.stub().Fail(pb.FailRequest(raise_exception=True)))
    assert (err.code(), err.details()) == (grpc.StatusCode.UNKNOWN, "Exception calling application")


async def _stream_failure(call: Any) -> tuple[list[int], grpc.aio.AioRpcError]:
    received: list[int] = []

    async def read_all() -> None:
        async for reply in call:
            received.append(reply.index)

    return received, await failure(read_all())


@case("error-mid-stream")
async def _error_mid_stream(peer: Peer) -> None:
    request = pb.ServerStreamRequest(count=3, size=10, fail_code=10, fail_message="stream aborted")
    call = peer.stub().ServerStream(request)
    received, err = await _stream_failure(call)
    assert received == [0, 1, 2]
    assert (err.code(), err.details()) == (grpc.StatusCode.ABORTED, "stream aborted")
    assert_details(err, code=10, reason="STREAM_FAILED", field="fail_code")


@case("error-stream-trailers-only")
async def _error_stream_trailers_only(peer: Peer) -> None:
    reply_metadata = pb.ReplyMetadata(headers=metadata_list([("x-initial", "a")]),
                                      trailers=metadata_list([("x-trailing", "b")]))
    call = peer.stub().ServerStream(pb.ServerStreamRequest(count=0, fail_code=10, fail_message="gone",
                                                           reply_metadata=reply_metadata))
    received, err = await _stream_failure(call)
    assert received == []
    assert (err.code(), err.details()) == (grpc.StatusCode.ABORTED, "gone")
    assert tuple(err.initial_metadata()) == (("x-initial", "a"),)
    assert ("x-trailing", "b") in tuple(err.trailing_metadata())


@case("unimplemented-unary")
async def _unimplemented_unary(peer: Peer) -> None:
    err = await failure(peer.channel().unary_unary(f"/{SERVICE}/Missing")(b"", timeout=5))
    assert (err.code(), err.details()) == (grpc.StatusCode.UNIMPLEMENTED, "Method not found!")


@case("unimplemented-stream")
async def _unimplemented_stream(peer: Peer) -> None:
    call = peer.channel().unary_stream(f"/{SERVICE}/MissingStream")(b"", timeout=5)
    received, err = await _stream_failure(call)
    assert received == []
    assert (err.code(), err.details()) == (grpc.StatusCode.UNIMPLEMENTED, "Method not found!")


@case("no-responders-unary")
async def _no_responders_unary(peer: Peer) -> None:
    err = await failure(peer.stub(ABSENT).Echo(pb.EchoRequest(), timeout=5))
    # Not DEADLINE_EXCEEDED: it ended before its deadline, on NATS's 503 (our client's words for it).
    assert (err.code(), err.details()) == NO_SERVER


@case("no-responders-stream")
async def _no_responders_stream(peer: Peer) -> None:
    err = await failure(peer.stub(ABSENT).ServerStream(pb.ServerStreamRequest(count=1), timeout=5).read())
    assert (err.code(), err.details()) == NO_SERVER


async def _refused_while_limited_is_busy(peer: Peer, attempt: Callable[[Any], Awaitable[Any]]) -> None:
    call_id = new_call_id("hold")
    held = peer.stub(LIMITED).Sleep(pb.SleepRequest(duration_ms=10000), metadata=named(call_id))
    try:
        await peer.wait_for_state(call_id, pb.CALL_STATE_RUNNING)
        err = await failure(attempt(peer.stub(LIMITED)))
    finally:
        held.cancel()
        await wait_for(lambda: _accepts_a_call(peer))  # free for the next case, whichever it is
    assert (err.code(), err.details()) == (grpc.StatusCode.RESOURCE_EXHAUSTED, LIMIT_EXCEEDED)


async def _accepts_a_call(peer: Peer) -> bool:
    try:
        await peer.stub(LIMITED).Echo(pb.EchoRequest(), timeout=5)
    except grpc.aio.AioRpcError as err:
        if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return False
        raise
    return True


@case("limit-unary")
async def _limit_unary(peer: Peer) -> None:
    await _refused_while_limited_is_busy(peer, lambda stub: stub.Echo(pb.EchoRequest(), timeout=5))


@case("limit-stream")
async def _limit_stream(peer: Peer) -> None:
    await _refused_while_limited_is_busy(
        peer, lambda stub: stub.ServerStream(pb.ServerStreamRequest(count=1), timeout=5).read())


# Metadata


@case("metadata-request")
async def _metadata_request(peer: Peer) -> None:
    reply = await peer.stub().Echo(pb.EchoRequest(),
                                   metadata=(("x-text", "hello world"), ("x-data-bin", b"\x00\x01\xfe\xff")))
    # Our client adds no metadata of its own.
    assert entries(reply) == [("x-text", b"hello world"), ("x-data-bin", b"\x00\x01\xfe\xff")]


@case("metadata-repeated")
async def _metadata_repeated(peer: Peer) -> None:
    metadata = (("x-rep", "a"), ("x-rep", "b"), ("x-rep-bin", b"\x01"), ("x-rep-bin", b"\x02"))
    reply = await peer.stub().Echo(pb.EchoRequest(), metadata=metadata)
    assert entries(reply) == [("x-rep", b"a,b"), ("x-rep-bin", b"\x01"), ("x-rep-bin", b"\x02")]


@case("metadata-reply")
async def _metadata_reply(peer: Peer) -> None:
    reply_metadata = pb.ReplyMetadata(
        headers=metadata_list([("x-h", "1"), ("x-h", "2"), ("x-h-bin", b"\x00"), ("x-h-bin", b"\xff")]),
        trailers=metadata_list([("x-t", "1"), ("x-t", "2"), ("x-t-bin", b"\x00\x01")]))
    call = peer.stub().Echo(pb.EchoRequest(reply_metadata=reply_metadata))
    await call
    assert tuple(await call.initial_metadata()) == (("x-h", "1,2"), ("x-h-bin", b"\x00"), ("x-h-bin", b"\xff"))
    assert tuple(await call.trailing_metadata()) == (("x-t", "1"), ("x-t", "2"), ("x-t-bin", b"\x00\x01"))
    assert await call.code() == grpc.StatusCode.OK


@case("metadata-trace")
async def _metadata_trace(peer: Peer) -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    reply = await peer.stub().Echo(pb.EchoRequest(), metadata=(("traceparent", traceparent),))
    assert ("traceparent", traceparent.encode()) in entries(reply)


@case("metadata-stream")
async def _metadata_stream(peer: Peer) -> None:
    reply_metadata = pb.ReplyMetadata(headers=metadata_list([("x-h", "1")]), trailers=metadata_list([("x-t", "2")]))
    call = peer.stub().ServerStream(pb.ServerStreamRequest(count=2, size=4, reply_metadata=reply_metadata))
    assert tuple(await call.initial_metadata()) == (("x-h", "1"),)  # before any message is read
    assert [r.index async for r in call] == [0, 1]
    assert await call.code() == grpc.StatusCode.OK
    assert tuple(await call.trailing_metadata()) == (("x-t", "2"),)


@case("metadata-bad-value")
async def _metadata_bad_value(peer: Peer) -> None:
    call_id = new_call_id("bad-value")
    err = await failure(peer.stub().Echo(pb.EchoRequest(), metadata=(("x-text", "ünï"), *named(call_id))))
    assert err.code() == grpc.StatusCode.INTERNAL
    assert (await peer.record(call_id)).state == pb.CALL_STATE_UNSPECIFIED


# Deadlines and cancellation


@case("deadline-sent")
async def _deadline_sent(peer: Peer) -> None:
    reply = await peer.stub().Echo(pb.EchoRequest(), timeout=5)
    assert reply.HasField("time_remaining")
    assert 4.0 < reply.time_remaining.ToTimedelta().total_seconds() <= 5.0
    assert "grpc-timeout" not in dict(entries(reply))


@case("deadline-unary")
async def _deadline_unary(peer: Peer) -> None:
    call_id = new_call_id("deadline")
    err = await failure(peer.stub().Sleep(pb.SleepRequest(duration_ms=10000), timeout=0.3, metadata=named(call_id)))
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The server cut the 10 s sleep short for the deadline it was sent (a sleep that ran out
    # would be COMPLETED): what the page's timings stand for, seen without a clock.
    record = await peer.wait_for_state(call_id, pb.CALL_STATE_CANCELLED)
    assert record.deadline_exceeded


@case("deadline-stream")
async def _deadline_stream(peer: Peer) -> None:
    call_id = new_call_id("deadline-stream")
    call = peer.stub().BidiEcho(timeout=0.3, metadata=named(call_id))
    await call.write(pb.BidiEchoRequest(payload=b"1"))
    first = await call.read()
    assert (first.index, first.payload) == (0, b"1")
    err = await failure(call.read())
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    record = await peer.wait_for_state(call_id, pb.CALL_STATE_CANCELLED)
    assert record.deadline_exceeded
    assert record.messages_received == 1


@case("cancel-unary")
async def _cancel_unary(peer: Peer) -> None:
    call_id = new_call_id("cancel")
    call = peer.stub().Sleep(pb.SleepRequest(duration_ms=10000), metadata=named(call_id))
    await peer.wait_for_state(call_id, pb.CALL_STATE_RUNNING)
    assert call.cancel()
    # grpcio raises CancelledError here, ours the CANCELLED status: either says the call is over.
    with pytest.raises((asyncio.CancelledError, grpc.aio.AioRpcError)):
        await call
    assert await call.code() == grpc.StatusCode.CANCELLED
    record = await peer.wait_for_state(call_id, pb.CALL_STATE_CANCELLED, timeout=1.0)
    assert not record.deadline_exceeded


@case("cancel-stream")
async def _cancel_stream(peer: Peer) -> None:
    call_id = new_call_id("cancel-stream")
    call = peer.stub().ServerStream(pb.ServerStreamRequest(count=1000, interval_ms=50), metadata=named(call_id))
    assert (await call.read()).index == 0
    assert call.cancel()
    assert await call.code() == grpc.StatusCode.CANCELLED
    record = await peer.wait_for_state(call_id, pb.CALL_STATE_CANCELLED, timeout=1.0)
    assert not record.deadline_exceeded
    assert record.messages_sent < 1000


# Flow control


@case("flow-client-stream")
async def _flow_client_stream(peer: Peer) -> None:
    payloads = [pattern(1000)] * 64
    reply = await peer.stub().ClientStream(iter([pb.ClientStreamRequest(payload=p) for p in payloads]), timeout=30)
    assert (reply.count, reply.total_bytes, reply.sha256) == (64, 64000, sha256(b"".join(payloads)))


@case("flow-continuation")
async def _flow_continuation(peer: Peer) -> None:
    payload = pattern(100000)
    reply = await peer.stub().ClientStream(iter([pb.ClientStreamRequest(payload=payload)]), timeout=30)
    assert (reply.count, reply.total_bytes, reply.sha256) == (1, 100000, sha256(payload))


@case("flow-server-stream")
async def _flow_server_stream(peer: Peer) -> None:
    call = peer.stub(stream_window=1024).ServerStream(pb.ServerStreamRequest(count=64, size=1000), timeout=30)
    replies = [r async for r in call]
    assert [r.index for r in replies] == list(range(64))
    assert all(r.payload == pattern(1000) for r in replies)


@case("flow-backpressure")
async def _flow_backpressure(peer: Peer) -> None:
    call_id = new_call_id("backpressure")
    call = peer.stub(stream_window=1024).ServerStream(pb.ServerStreamRequest(count=64, size=1000), timeout=30,
                                                       metadata=named(call_id))
    assert (await call.read()).index == 0
    await asyncio.sleep(0.5)  # the case's pause: the client reads nothing for 500 ms (nothing is awaited)
    assert (await peer.record(call_id)).messages_sent <= 8
    rest = []
    while (reply := await call.read()) is not grpc.aio.EOF:
        rest.append(reply.index)
    assert rest == list(range(1, 64))
    assert await call.code() == grpc.StatusCode.OK


# Large messages


@case("large-response")
async def _large_response(peer: Peer) -> None:
    reply = await peer.stub().Large(pb.LargeRequest(response_size=2 * MiB), timeout=30)
    assert reply.payload == pattern(2 * MiB)


@case("large-request")
async def _large_request(peer: Peer) -> None:
    payload = pattern(2 * MiB)
    reply = await peer.stub().Large(pb.LargeRequest(payload=payload), timeout=30)
    assert (reply.received_size, reply.received_sha256) == (2 * MiB, sha256(payload))


@case("large-response-at-limit")
async def _large_response_at_limit(peer: Peer) -> None:
    reply = await peer.stub().Large(pb.LargeRequest(response_size=4 * MiB - 5), timeout=30)
    assert reply.ByteSize() == 4 * MiB
    assert reply.payload == pattern(4 * MiB - 5)


@case("large-request-at-limit")
async def _large_request_at_limit(peer: Peer) -> None:
    request = pb.LargeRequest(payload=pattern(4 * MiB - 5))
    assert request.ByteSize() == 4 * MiB
    reply = await peer.stub().Large(request, timeout=30)
    assert (reply.received_size, reply.received_sha256) == (4 * MiB - 5, sha256(request.payload))


@case("large-response-over-limit")
async def _large_response_over_limit(peer: Peer) -> None:
    err = await failure(peer.stub().Large(pb.LargeRequest(response_size=4 * MiB - 4), timeout=30))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


@case("large-request-over-limit")
async def _large_request_over_limit(peer: Peer) -> None:
    call_id = new_call_id("over-limit")
    request = pb.LargeRequest(payload=pattern(4 * MiB - 4))
    err = await failure(peer.stub().Large(request, timeout=30, metadata=named(call_id)))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (await peer.record(call_id)).state == pb.CALL_STATE_UNSPECIFIED


@case("large-stream")
async def _large_stream(peer: Peer) -> None:
    replies = [r async for r in peer.stub().ServerStream(pb.ServerStreamRequest(count=3, size=1500000), timeout=30)]
    assert [r.index for r in replies] == [0, 1, 2]
    assert all(r.payload == pattern(1500000) for r in replies)


# Keepalive: the client asks for a PING every 100 ms and gives a silent call up after 500 ms.
ASKING = {"keepalive_interval": 0.1, "keepalive_timeout": 0.5}
SILENT = {"keepalive_interval": None, "keepalive_timeout": None}


async def _two_requests_apart(gap: float) -> AsyncIterator[pb.ClientStreamRequest]:
    yield pb.ClientStreamRequest(payload=b"a")
    await asyncio.sleep(gap)  # the case's idle stretch, not a wait for anything
    yield pb.ClientStreamRequest(payload=b"b")


@case("keepalive-unary")
async def _keepalive_unary(peer: Peer) -> None:
    reply = await peer.stub(**ASKING).Sleep(pb.SleepRequest(duration_ms=1000), timeout=10)
    assert reply.slept_ms == 1000


@case("keepalive-unary-default")
async def _keepalive_unary_default(peer: Peer) -> None:
    reply = await peer.stub().Sleep(pb.SleepRequest(duration_ms=1000), timeout=10)
    assert reply.slept_ms == 1000


@case("keepalive-stream")
async def _keepalive_stream(peer: Peer) -> None:
    call = peer.stub(**ASKING).ServerStream(pb.ServerStreamRequest(count=1, interval_ms=1000), timeout=10)
    assert [r.index async for r in call] == [0]
    assert await call.code() == grpc.StatusCode.OK


@case("keepalive-client-pings")
async def _keepalive_client_pings(peer: Peer) -> None:
    reply = await peer.stub(**ASKING).ClientStream(_two_requests_apart(1.5), timeout=10)
    assert reply.count == 2


@case("keepalive-off")
async def _keepalive_off(peer: Peer) -> None:
    reply = await peer.stub(**SILENT).ClientStream(_two_requests_apart(1.5), timeout=10)
    assert reply.count == 2


# Discovery, health and reflection


@case("discovery-info")
async def _discovery_info(peer: Peer) -> None:
    answer = json.loads((await peer.nc.request(f"$SRV.INFO.{TARGET}", b"", timeout=5)).data)
    assert answer["name"] == TARGET
    assert answer["metadata"]["grpc.target"] == TARGET
    assert answer["metadata"]["grpc.services"] == (
        f"{SERVICE},grpc.health.v1.Health,grpc.reflection.v1alpha.ServerReflection")
    echo = {e["name"]: e for e in answer["endpoints"]}[f"{SERVICE}.Echo"]
    assert (echo["subject"], echo["queue_group"]) == (f"grpc.{TARGET}.{SERVICE}.Echo", TARGET)


@case("health")
async def _health(peer: Peer) -> None:
    stub = health_pb2_grpc.HealthStub(peer.channel())
    for service in ("", SERVICE):
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service


@case("reflection")
async def _reflection(peer: Peer) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(peer.channel())
    requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE)]
    listed, described = [reply async for reply in stub.ServerReflectionInfo(iter(requests), timeout=5)]
    assert SERVICE in {service.name for service in listed.list_services_response.service}
    files = [descriptor_pb2.FileDescriptorProto.FromString(raw).name
             for raw in described.file_descriptor_response.file_descriptor_proto]
    assert "gaming/conformance/v1/conformance.proto" in files


# -- the tests -------------------------------------------------------------------------------


def test_the_page_and_this_file_list_the_same_cases() -> None:
    documented = documented_cases()
    assert len(documented) >= 40, "the page's tables were not found"
    assert sorted(set(documented) - set(CASES)) == [], "cases on the page without a test here"
    assert sorted(set(CASES) - set(documented)) == [], "tests here without a case on the page"


def test_each_case_names_sections_the_wire_protocol_has() -> None:
    headings = {match.group(1) for match in re.finditer(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", SPEC.read_text(), re.M)}
    for name, row in documented_cases().items():
        cited = SECTION.findall(row.rsplit("|", 2)[1])
        assert cited, f"{name} names no section of the wire protocol"
        assert set(cited) <= headings, f"{name} names sections the wire protocol lacks: {set(cited) - headings}"


@pytest.mark.parametrize("name", list(documented_cases()))
async def test_case(name: str, peer: Peer) -> None:
    await CASES[name](peer)


def test_the_startup_line_is_the_one_the_page_shows(conformance: Process, nats_server: NatsServer) -> None:
    shown = next(line for line in PAGE.read_text().splitlines() if line.startswith("mesh conformance: gaming."))
    assert conformance.lines[0].rstrip("\n") == shown.replace("nats://127.0.0.1:4222", nats_server.url)


def test_the_flags_change_what_it_serves_and_sigint_stops_it(nats_server: NatsServer, tmp_path: Path) -> None:
    process = start_conformance(nats_server.url, tmp_path / "stderr", "--target", "conformance-flags",
                                "--window", "2048", "--keepalive-ms", "0")
    try:
        line = process.lines[0]
        assert "as conformance-flags, and as conformance-flags-limited one call at a time" in line
        assert "window 2048 B, no keepalive of its own" in line
    finally:
        code = process.stop(signal.SIGINT)
    assert code == 0
    assert process.lines[1:] == ["mesh conformance: stopped\n"]
    assert process.stderr.read_text() == ""


def test_an_unreachable_nats_is_one_line_and_exit_2() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    result = subprocess.run([sys.executable, "-m", "mesh", "conformance", "--nats-url", url, "--connect-timeout", "1"],
                            cwd=ROOT, env=_environment(), capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"mesh conformance: error: cannot reach NATS at {url} within 1 s")
    assert result.stderr.count("\n") == 1, result.stderr


@pytest.mark.parametrize("flags", [
    pytest.param(["--window", "1000"], id="a window below 1024"),
    pytest.param(["--keepalive-ms", "-1"], id="a negative keepalive"),
    pytest.param(["--target", "two words"], id="a target that is no subject token"),
    pytest.param(["--nats-url", "http://example.com"], id="a URL that is not NATS"),
])
def test_a_bad_flag_is_one_line_and_exit_2(flags: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["conformance", *flags, "--connect-timeout", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mesh conformance"), err
    assert err.count("\n") == 1, err
