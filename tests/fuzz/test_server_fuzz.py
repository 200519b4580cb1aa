"""A real server under random traffic never breaks, answers only as the spec allows, and ends every
call in time.

A hypothesis state machine drives one ``nats_transport.aio.server`` (a raw-bytes servicer, small
limits, fast keepalives) on a real nats-server. Its steps publish, with a plain nats-py client or
as raw protocol bytes on a socket: unary calls with random header blocks (good and bad
``grpc-timeout``, metadata, ``nats-grpc-*`` headers) and bodies (whole, cut, wrongly flagged or
oversized frames, envelopes, junk); stream openings; stream messages of every kind, with right or
wrong seq and any payload, to the per-call subject ACCEPT announced; messages to per-call
subjects of no call; and cancel messages. Everything the server sends back is read and held to
``docs/wire-protocol.md``:

- every reply is well formed: bare frames of an allowed shape (§5), or envelopes of a kind a
  server sends, numbered in order (§6.4), with nothing after the message that ends the call and
  DATA within the credit the fuzzer gave (§6.5);
- every call ends with a status the table of §9 allows for what was sent, and with exactly the
  one the spec prescribes where it prescribes one (an unknown method is UNIMPLEMENTED, a wrong
  seq DATA_LOSS, a bad frame INTERNAL or RESOURCE_EXHAUSTED, a unary request of other than one
  message frame INTERNAL, a handler's abort its own code and text, ...);
- every call ends by its deadline, its handler's time or the server's keepalive timeout, plus a
  slack for a loaded machine; a unary call cancelled by a cancel message never gets an answer;
- after every example the server holds no call, its connection is healthy, nothing it sent was
  unreadable to a client, and a well-formed unary call and a stream call on it succeed.

A property times deadlines on their own (§8), including a stream call of a method with a unary
request whose request never arrives.
"""

from __future__ import annotations

import asyncio
import struct
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import grpc
import nats
import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

import nats_transport
import nats_transport.aio
from nats_transport import ServerOptions
from nats_transport import _envelope as env
from nats_transport._envelope import Kind
from nats_transport._framing import encode_message, encode_trailers
from nats_transport._metadata import encode_timeout
from nats_transport.testing import NatsServer
from tests._waiting import wait_for
from tests.fuzz._profiles import io_settings
from tests.fuzz._raw_nats import RawPublisher
from tests.fuzz._server_model import (
    ABORT,
    CHAT,
    COLLECT,
    DEADLINE_EXCEEDED,
    ECHO,
    MAX_MESSAGE,
    METHODS,
    PING_EVERY,
    SERVER_WINDOW,
    SERVICE,
    SILENCE_TIMEOUT,
    SLACK,
    SLEEP,
    SPLIT,
    UNAVAILABLE,
    Call,
    HeaderView,
    Method,
    sleep_seconds,
    stream_expectation,
    unary_expectation,
)
from tests.fuzz._wire import (
    base64_text,
    bin_keys,
    envelope_bodies,
    frame_bytes,
    printable_text,
    text_keys,
    trailers,
)

pytestmark = pytest.mark.fuzz

T = TypeVar("T")


async def eventually(predicate: Callable[[], bool], timeout: float) -> bool:
    """Whether ``predicate`` holds within ``timeout`` seconds: ``wait_for`` as a yes or no, for
    waits whose failure the caller explains better."""
    try:
        await wait_for(predicate, timeout)
    except AssertionError:
        return False
    return True


# -- the server under test -------------------------------------------------------------------------

OPTIONS = ServerOptions(
    max_message_size=MAX_MESSAGE,
    stream_window=SERVER_WINDOW,
    keepalive_interval=PING_EVERY,
    keepalive_timeout=SILENCE_TIMEOUT,
)
CODES = {code.value[0]: code for code in grpc.StatusCode}


async def _echo(request: bytes, context: Any) -> bytes:
    return request


async def _abort(request: bytes, context: Any) -> bytes:
    code = CODES[request[0] % 17] if request else grpc.StatusCode.UNKNOWN
    await context.abort(code, request[1:].decode("utf-8", "surrogateescape"))
    raise AssertionError("abort returned")


async def _sleep(request: bytes, context: Any) -> bytes:
    await asyncio.sleep(sleep_seconds(request))  # the handler's own work, not a wait in the test
    return b""


async def _split(request: bytes, context: Any) -> AsyncIterator[bytes]:
    for start in range(0, max(len(request), 1), 40):
        yield request[start : start + 40]


async def _chat(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    async for request in requests:
        yield request


async def _collect(requests: AsyncIterator[bytes], context: Any) -> bytes:
    return b"".join([request async for request in requests])


def _servicer() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(_echo),
            "Abort": grpc.unary_unary_rpc_method_handler(_abort),
            "Sleep": grpc.unary_unary_rpc_method_handler(_sleep),
            "Split": grpc.unary_stream_rpc_method_handler(_split),
            "Chat": grpc.stream_stream_rpc_method_handler(_chat),
            "Collect": grpc.stream_unary_rpc_method_handler(_collect),
        },
    )


# -- the harness: one server, and the connections that talk to it ---------------------------------------


class Harness:
    """The server under test on its own connection, a fuzzing client and a raw socket, one
    event loop for all of them, and a well-behaved channel to check the server still serves."""

    def __init__(self, runner: asyncio.Runner, url: str) -> None:
        self.runner = runner
        self.url = url
        self.target = f"fuzz-{uuid.uuid4().hex[:8]}"
        self.calls: dict[str, Call] = {}
        self.strays: list[str] = []
        self._tokens = iter(range(1, 1 << 62))

    def run(self, coro: Awaitable[T], timeout: float = 30.0) -> T:
        return self.runner.run(asyncio.wait_for(coro, timeout))

    async def start(self) -> None:
        self.server_nc = await nats.connect(self.url, max_reconnect_attempts=0)
        # Guarded, so that a reply nats-py cannot parse is counted instead of killing the reader.
        self.fuzz_nc = nats_transport.guard_connection(await nats.connect(self.url, max_reconnect_attempts=0))
        self.client_nc = await nats.connect(self.url, max_reconnect_attempts=0)
        self.raw = await RawPublisher.connect(self.url)
        self.server = nats_transport.aio.server(self.server_nc, self.target, options=OPTIONS)
        self.server.add_generic_rpc_handlers((_servicer(),))
        await self.server.start()
        self.inbox = self.fuzz_nc.new_inbox()
        await self.fuzz_nc.subscribe(f"{self.inbox}.*", cb=self._on_reply)
        await self.fuzz_nc.flush()
        self.channel = nats_transport.aio.channel(self.client_nc, self.target)

        async def serving() -> bool:
            try:
                await self.channel.unary_unary(ECHO.path)(b"", timeout=2)
            except grpc.aio.AioRpcError:
                return False
            return True

        # A precondition: on a loaded machine a new server may not answer for a moment.
        await wait_for(serving, 10)

    async def stop(self) -> None:
        await self.server.stop(0)
        await self.raw.close()
        for nc in (self.client_nc, self.fuzz_nc, self.server_nc):
            await nc.close()

    async def _on_reply(self, msg: Any) -> None:
        call = self.calls.get(msg.subject)
        if call is None:
            self.strays.append(msg.subject)
        else:
            call.observe(msg.data, msg.headers, time.monotonic())

    def new_call(self, label: str, mode: str, **fields: Any) -> Call:
        reply = f"{self.inbox}.{next(self._tokens)}"
        now = time.monotonic()
        call = Call(label, reply, mode, now, last_sent_at=now, **fields)
        self.calls[reply] = call
        return call

    def call_subject(self, method: Method | str) -> str:
        name = method.path[1:].replace("/", ".") if isinstance(method, Method) else method
        return f"grpc.{self.target}.{name}"

    @property
    def drops(self) -> int:
        return nats_transport.dropped_messages(self.server_nc)

    async def settle(self, calls: list[Call]) -> None:
        """Wait until every call has ended (or needs no end), up to the latest bound; then hold
        each to the spec."""
        pending = [c for c in calls if not c.settled(self.drops)]
        if pending:
            timeout = min(max(c.end_by() for c in pending) - time.monotonic(), 15.0)
            # If some call never settles, the verdicts below say which and why.
            await eventually(lambda: all(c.settled(self.drops) for c in pending), max(timeout, 0.05))
        for call in calls:  # what the examples reached, for --hypothesis-show-statistics
            event(f"{call.mode} call ended {call.status}" if call.ended_at else f"{call.mode} call ended by the fuzzer")
        problems = [f"{c.label}: {p}" for c in calls for p in c.verdict(self.drops)]
        assert not problems, "\n".join(problems)

    async def assert_serving(self) -> None:
        """The server holds no call, its connection is healthy, nothing it sent was unreadable,
        and a well-formed unary and stream call succeed on it."""
        def server_idle() -> bool:  # (_streams: the open stream calls; no public view of them)
            return self.server.in_flight == 0 and not self.server._streams

        await wait_for(server_idle, 2 + SLACK)
        assert await self.channel.unary_unary(ECHO.path)(b"still there?", timeout=5) == b"still there?"
        chat = self.channel.stream_stream(CHAT.path)(timeout=5)
        await chat.write(b"one")
        assert await chat.read() == b"one"
        await chat.done_writing()
        assert await chat.read() is grpc.aio.EOF
        assert await chat.code() == grpc.StatusCode.OK
        assert self.server_nc.is_connected
        assert nats_transport.connection_problem(self.server_nc) is None
        assert nats_transport.dropped_messages(self.fuzz_nc) == 0, "the server sent what nats-py cannot parse"
        assert not self.strays, f"replies to subjects no call used: {self.strays[:3]}"


@pytest.fixture(scope="module")
def harness(nats_server: NatsServer) -> Iterator[Harness]:
    with asyncio.Runner() as runner:
        h = Harness(runner, nats_server.url)
        h.run(h.start())
        try:
            yield h
        finally:
            h.run(h.stop())


# -- strategies ---------------------------------------------------------------------------------------

good_timeouts = st.floats(0.02, 1.5).map(encode_timeout) | st.sampled_from(("30S", "99999999H", "0n", "1n", " 250m "))
timeouts = good_timeouts | st.sampled_from(("", "1s", "1.5S", "-1S", "123456789S", "1e3m", "S", "abc", "\u0661S"))
text_metadata = st.tuples(
    text_keys | st.sampled_from(("X-Upper", "grpc-custom", "traceparent", "te", "user-agent", "content-type")),
    printable_text | st.sampled_from(("é", "naïve")),  # not printable ASCII: INTERNAL (§4, 1.1)
)
good_base64 = st.binary(max_size=12).map(base64_text) | st.lists(
    st.binary(max_size=6).map(lambda b: base64_text(b, padded=False)), max_size=3
).map(",".join)
good_bin_metadata = st.tuples(bin_keys | st.just("X-Blob-Bin"), good_base64)
bin_metadata = st.tuples(
    bin_keys | st.just("X-Blob-Bin"),
    good_base64 | st.sampled_from(("!!", "A", "é", "AA==,%%", "zzé", "AP8=,ÿ")),  # not base64: INTERNAL (§4)
)
# Below 1024 or not decimal: INTERNAL after ACCEPT (§6.5, 1.1); above 2^32-1: taken as 2^32-1.
windows = st.sampled_from(("0", "-5", "abc", "1_000", "+7", "99999999999")) | st.integers(1, 100).map(str)
windows |= st.integers(1024, 300_000).map(str)
keepalives = st.sampled_from(("0", "abc", "-1", "1234567890", "")) | st.integers(1, 200).map(str)


@st.composite
def header_dicts(draw: st.DrawFn, *, stream: bool) -> dict[str, str] | None:
    """Headers as nats-py publishes them (keys it accepts, values it trims). Most are clean, so
    that calls get past the door often enough to reach the handler and the stream rules."""
    if not stream and draw(st.integers(0, 3)) == 3:
        return None
    # Rare variants sit at the high end of each draw: hypothesis starts from the low end.
    clean = draw(st.integers(0, 2)) < 2
    headers: dict[str, str] = {}
    if draw(st.integers(0, 2)) == 2:
        headers["grpc-timeout"] = draw(good_timeouts if clean else timeouts)
    for key, value in draw(st.lists(text_metadata | (good_bin_metadata if clean else bin_metadata), max_size=3)):
        headers[key] = value
    if stream:
        headers["nats-grpc-stream"] = draw(st.sampled_from(("1", "yes", "0")))  # any non-empty value
    elif draw(st.integers(0, 4)) == 4:
        headers["nats-grpc-stream"] = ""  # empty: still the fast path
    if draw(st.booleans()):
        headers["nats-grpc-window"] = draw(windows)
    if draw(st.booleans()):
        headers["nats-grpc-keepalive"] = draw(keepalives)
    if draw(st.integers(0, 5)) == 5:
        headers["nats-grpc-anything"] = draw(printable_text)
    return headers


RAW_HEADER_BLOCKS = (
    b"NATS/1.0",
    b"NATS/",
    b"N",
    b"NATS/1.0\r\n",
    b"NATS/1.0\r\nfoo: bar",
    b"NATS/1.0\r\nno colon here\r\n\r\n",
    b"NATS/1.0\r\n: value\r\n\r\n",
    b"NATS/1.0\r\n\xff\xfe\xc3: \xff\xfe\x80\r\n\r\n",
    b"NATS/1.0 \xff\xfe\xfd bad\r\n\r\n",
    b"NATS/1.0 abc\r\n\r\n",
    b"NATS/1.0 503\r\n\r\n",
    b"NATS/1.0 100 Idle Heartbeat\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n\r\n",
    b"NATS/1.0\r\ngrpc-timeout: 99999999999999999999H\r\n\r\n",
    b"NATS/1.0\r\nx-trace-bin: \xc3\xa9\r\n\r\n",
    b"NATS/1.0\r\n" + b"k: v\r\n" * 500 + b"\r\n",
)
raw_line_keys = st.sampled_from(
    (b"grpc-timeout", b"x-bin", b"X-Key", b"traceparent", b"nats-grpc-window", b"nats-grpc-keepalive")
)


@st.composite
def raw_header_blocks(draw: st.DrawFn) -> bytes:
    """Header blocks nats-server forwards as they are, including ones nats-py cannot parse. No
    block selects stream mode: such a call has no end a unary fuzz step could wait for."""
    if draw(st.booleans()):
        return draw(st.sampled_from(RAW_HEADER_BLOCKS))
    lines = draw(
        st.lists(
            st.tuples(raw_line_keys | st.binary(min_size=1, max_size=6), st.binary(max_size=12)).map(
                lambda kv: kv[0] + b": " + kv[1].replace(b"\r", b"").replace(b"\n", b"") + b"\r\n"
            ),
            max_size=4,
        )
    )
    block = b"NATS/1.0\r\n" + b"".join(lines) + b"\r\n"
    return block if b"nats-grpc-stream" not in block.lower() else b"NATS/1.0\r\n\r\n"


def request_for(method: Method) -> st.SearchStrategy[bytes]:
    if method is SLEEP:
        return st.integers(0, 300).map(lambda ms: str(ms).encode())
    if method is ABORT:
        return st.binary(min_size=1, max_size=40)
    return st.binary(max_size=120)


unary_targets = st.sampled_from(
    (*METHODS, *METHODS, *METHODS, "no.such.Service.Method", "nodots", f"{SERVICE}.Nope")
)


@st.composite
def unary_bodies(draw: st.DrawFn, target: Method | str) -> bytes:
    """One good request frame, or anything else."""
    if isinstance(target, Method) and draw(st.integers(0, 2)) < 2:
        return encode_message(draw(request_for(target)))
    return draw(frame_bytes(MAX_MESSAGE) | envelope_bodies() | st.binary(max_size=30))


@st.composite
def stream_openings(draw: st.DrawFn, method: Method | str) -> bytes:
    """DATA seq 0 with requests (whole, partial or bad frames), or now and then any envelope."""
    if draw(st.integers(0, 5)) == 5:
        return draw(envelope_bodies())
    if isinstance(method, Method) and not draw(st.booleans()):
        frames = [encode_message(r) for r in draw(st.lists(request_for(method), max_size=2))]
        return env.pack(Kind.DATA, 0, b"".join(frames))
    return env.pack(Kind.DATA, 0, draw(st.just(b"") | frame_bytes(MAX_MESSAGE)))


stream_kinds = st.sampled_from(
    (Kind.DATA, Kind.DATA, Kind.DATA, Kind.CREDIT, Kind.PING, Kind.HALF_CLOSE, Kind.CANCEL, Kind.ACCEPT, Kind.HEADERS)
).map(int) | st.integers(0, 255)


@st.composite
def stream_messages(draw: st.DrawFn, seq: int) -> bytes:
    """A message to a per-call subject: mostly the right seq, any kind, a payload for its kind."""
    kind = draw(stream_kinds)
    if draw(st.integers(0, 5)) == 5:
        seq = draw(st.integers(0, 2**32 - 1))
    if kind == Kind.DATA:
        payload = draw(frame_bytes(MAX_MESSAGE) | st.binary(max_size=20).map(encode_message))
    elif kind == Kind.CREDIT:
        payload = draw(st.integers(0, 2**32 - 1).map(env.CREDIT.pack) | st.binary(max_size=6))
    elif kind == Kind.CANCEL:
        payload = draw(st.just(b"") | trailers.map(encode_trailers) | st.binary(max_size=10))
    else:
        payload = draw(st.just(b"") | st.binary(max_size=10))
    body = struct.pack(">BI", kind, seq % 2**32) + payload
    return body[: draw(st.integers(0, 4))] if draw(st.integers(0, 12)) == 12 else body


# -- the state machine -----------------------------------------------------------------------------------


class ServerFuzz(RuleBasedStateMachine):
    """Random traffic to one server; see the module docstring for what is checked."""

    harness: Harness

    def __init__(self) -> None:
        super().__init__()
        self.h = type(self).harness
        self.calls: list[Call] = []

    def _publish(self, subject: str, body: bytes, reply: str | None, headers: dict[str, str] | None) -> None:
        async def publish() -> None:
            await self.h.fuzz_nc.publish(subject, body, reply=reply or "", headers=headers)
            await self.h.fuzz_nc.flush()  # sent now, so the times the model keeps are true

        self.h.run(publish())

    def _streams(self) -> list[Call]:
        # From the model only, so that what hypothesis draws never depends on timing.
        return [c for c in self.calls if c.expect_accept]

    @rule(destination=unary_targets, data=st.data())
    def unary_call(self, destination: Method | str, data: st.DataObject) -> None:
        shape = data.draw(st.sampled_from(("headers", "headers", "headers", "raw header block", "cancelled")))
        if shape == "cancelled":
            self._cancelled_unary_call(data)
            return
        body = data.draw(unary_bodies(destination))
        subject = self.h.call_subject(destination)
        if shape == "raw header block":
            block = data.draw(raw_header_blocks())
            call = self.h.new_call(f"unary {subject} raw {block[:30]!r}", "either", drops_before=self.h.drops)
            call.handler_time = 0.3  # whatever Sleep reads in a fuzzed body, at most 0.3 s
            if destination is ABORT:
                call.extra_codes = frozenset(range(1, 17))  # the handler's own code, if it runs
            self.h.raw.publish(subject, call.reply, block, body)
            self.h.run(self.h.raw.flush())
        else:
            headers = data.draw(header_dicts(stream=False))
            call = self.h.new_call(f"unary {subject} {headers} body {body[:30]!r}", "unary")
            unary_expectation(call, destination, HeaderView(headers), body)
            self._publish(subject, body, call.reply, headers)
        self.calls.append(call)
        self.h.run(self.h.settle([call]))

    def _cancelled_unary_call(self, data: st.DataObject) -> None:
        # §5 (1.1): the replica running the call stops its handler and sends nothing more. The
        # handler would sleep past every bound, so the server going idle shows it stopped.
        asked = data.draw(st.none() | keepalives)
        body = data.draw(st.just(b"") | trailers.map(encode_trailers) | st.binary(max_size=10))
        headers = None if asked is None else {"nats-grpc-keepalive": asked}
        call = self.h.new_call(f"cancelled unary Sleep, cancel {body[:30]!r}", "unary", cancelled_by_us=True)
        call.must_not_end = True
        self.calls.append(call)
        self._publish(self.h.call_subject(SLEEP), encode_message(b"long"), call.reply, headers)
        self._publish(f"grpc.$cancel.{self.h.target}", body, None, {"nats-grpc-call": call.reply})

    @rule(destination=unary_targets, data=st.data())
    def open_stream(self, destination: Method | str, data: st.DataObject) -> None:
        headers = data.draw(header_dicts(stream=True))
        opening = data.draw(stream_openings(destination))
        subject = self.h.call_subject(destination)
        call = self.h.new_call(f"stream {subject} {headers} opening {opening[:30]!r}", "stream")
        stream_expectation(call, destination, HeaderView(headers), opening)
        self.calls.append(call)
        self._publish(subject, opening, call.reply, headers)
        if call.expect_accept:
            # §6.3: ACCEPT comes first, and tells the fuzzer the per-call subject.
            self.h.run(self._first_answer(call))

    async def _first_answer(self, call: Call) -> None:
        await eventually(lambda: call.accepted_subject is not None or call.ended_at is not None, 2 + SLACK)
        assert call.accepted_subject is not None, f"{call.label}: no ACCEPT (status {call.status}, {call.problems})"

    @precondition(lambda self: bool(self._streams()))
    @rule(pick=st.integers(0, 1 << 16), data=st.data())
    def send_on_stream(self, pick: int, data: st.DataObject) -> None:
        streams = self._streams()
        call = streams[pick % len(streams)]
        body = data.draw(stream_messages(call.client_seq))
        call.client_sends(body, time.monotonic())
        self._publish(call.accepted_subject or "", body, None, data.draw(st.none() | st.just({"x-ignored": "1"})))

    @rule(
        where=st.sampled_from(("stream subject of no call", "cancel naming no running call")),
        suffix=st.sampled_from(("999999999", "0", "not-a-number", "9" * 30)),
        named=st.none() | st.sampled_from(("", "nobody", "_INBOX.x.1")),
        body=envelope_bodies() | trailers.map(encode_trailers),
    )
    def send_a_stray_message(self, where: str, suffix: str, named: str | None, body: bytes) -> None:
        """Messages that belong to no call: the server ignores them and answers nothing (§6, §5)."""
        if where == "stream subject of no call":
            self._publish(f"{self.h.server._stream_prefix}.{suffix}", body, None, None)
            return
        if named is None and self.calls:
            named = self.calls[-1].reply  # a call that has ended, been cancelled, or is a stream
        headers = None if named is None else {"nats-grpc-call": named}
        self._publish(f"grpc.$cancel.{self.h.target}", body, None, headers)

    @invariant()
    def every_reply_so_far_is_well_formed(self) -> None:
        problems = [f"{c.label}: {p}" for c in self.calls for p in c.problems]
        assert not problems, "\n".join(problems)

    def teardown(self) -> None:
        self.h.run(self._finish(), timeout=30 + 3 * SLACK)

    async def _finish(self) -> None:
        for call in self.calls:
            if call.ended_at is None and call.mode == "stream" and call.needs_end() and call.silence_timeout is None:
                # The opening asked for no keepalives, so nothing times it out (§6.8): the fuzzer
                # ends it the way a client would.
                subject = call.accepted_subject
                if subject is not None:
                    await self.h.fuzz_nc.publish(subject, env.pack(Kind.CANCEL, call.client_seq))
                call.cancelled_by_us = True
        await self.h.settle(self.calls)
        await self.h.assert_serving()


SERVER_FUZZ_TIMEOUT = 90 + 4 * io_settings().max_examples


@pytest.mark.timeout(SERVER_FUZZ_TIMEOUT)
def test_random_traffic_never_breaks_the_server_and_gets_only_answers_the_spec_allows(harness: Harness) -> None:
    ServerFuzz.harness = harness
    run_state_machine_as_test(ServerFuzz, settings=io_settings())
    harness.run(harness.assert_serving())


# -- deadlines ------------------------------------------------------------------------------------------------


async def _open_and_wait(h: Harness, call: Call, subject: str, body: bytes, headers: dict[str, str]) -> None:
    await h.fuzz_nc.publish(subject, body, reply=call.reply, headers=headers)
    await eventually(lambda: call.ended_at is not None, (call.deadline or 0.0) + SLACK)  # the caller says why not


@pytest.mark.timeout(SERVER_FUZZ_TIMEOUT)
@io_settings(share=0.5)
@given(
    method=st.sampled_from((CHAT, COLLECT, SLEEP)),
    mode=st.sampled_from(("fast path", "stream")),
    deadline=st.floats(0.05, 0.3),
    asked=st.sampled_from((None, "0", "100")),
    requests=st.lists(st.binary(max_size=30), max_size=2),
)
def test_a_call_whose_deadline_passes_ends_with_deadline_exceeded_on_time(
    harness: Harness, method: Method, mode: str, deadline: float, asked: str | None, requests: list[bytes]
) -> None:
    """§8: the server ends the call with DEADLINE_EXCEEDED when ``arrival + grpc-timeout`` passes,
    on the fast path and in stream mode, whatever else it waits for (a long handler, more
    requests, a half-close that never comes), and not before."""
    if mode == "fast path" and method is not SLEEP:
        mode = "stream"  # streaming methods have no fast path
    headers = {"grpc-timeout": encode_timeout(deadline)}
    if asked is not None:
        headers["nats-grpc-keepalive"] = asked
    frames = [encode_message(b"long")] if method is SLEEP else [encode_message(r) for r in requests]
    if mode == "stream":
        headers["nats-grpc-stream"] = "1"
        body = env.pack(Kind.DATA, 0, b"".join(frames))
    else:
        body = frames[0]
    call = harness.new_call(f"{mode} {method.name} with {deadline:.3f}s", mode if mode == "stream" else "unary")
    call.deadline = deadline
    harness.run(_open_and_wait(harness, call, harness.call_subject(method), body, headers))
    assert call.ended_at is not None, f"{call.label}: no end {deadline + SLACK:.2f}s after it was sent"
    stalled = call.ended_at - call.sent_at >= HeaderView(headers).silence_timeout_or_never
    if call.status == UNAVAILABLE and stalled:
        # The process stood still past the keepalive timeout (a loaded machine): both timers
        # were due when it resumed, and a server that heard nothing for that long may say so.
        return
    assert (call.status, call.details) == (DEADLINE_EXCEEDED, "Deadline Exceeded")
    assert call.ended_at >= call.sent_at + deadline - 0.002, "ended before its deadline"
    assert not call.problems, call.problems
    harness.run(wait_for(lambda: harness.server.in_flight == 0, 2 + SLACK))


@pytest.mark.parametrize(
    ("method", "opening"),
    [(ECHO, b""), (SPLIT, encode_message(b"half a request")[:8])],
    ids=["Echo with no request yet", "Split with its request cut short"],
)
def test_a_unary_request_stream_call_ends_at_its_deadline_before_its_request_arrives(
    harness: Harness, method: Method, opening: bytes
) -> None:
    headers = {"nats-grpc-stream": "1", "grpc-timeout": "100m", "nats-grpc-keepalive": "0"}
    call = harness.new_call(f"stream {method.name} waiting for its request", "stream", deadline=0.1)
    opening_data = env.pack(Kind.DATA, 0, opening)
    try:
        harness.run(_open_and_wait(harness, call, harness.call_subject(method), opening_data, headers))
        assert call.ended_at is not None, "no end 1.1 s after a 0.1 s deadline"
        assert call.status == DEADLINE_EXCEEDED
    finally:
        if call.ended_at is None and call.accepted_subject is not None:
            harness.run(harness.fuzz_nc.publish(call.accepted_subject, env.pack(Kind.CANCEL, 1)))
        harness.run(wait_for(lambda: harness.server.in_flight == 0, 2 + SLACK))


@pytest.mark.parametrize(
    ("method", "opening"),
    [(CHAT, b""), (COLLECT, b""), (SLEEP, encode_message(b"long"))],
    ids=["Chat", "Collect", "Sleep while it sleeps"],
)
def test_a_server_that_receives_cancel_while_its_handler_runs_sends_nothing_more(
    harness: Harness, method: Method, opening: bytes
) -> None:
    call = harness.new_call(f"stream {method.name} cancelled by the client", "stream")

    async def cancel_and_listen() -> None:
        await harness.fuzz_nc.publish(
            harness.call_subject(method), env.pack(Kind.DATA, 0, opening), reply=call.reply,
            headers={"nats-grpc-stream": "1"},
        )
        await wait_for(lambda: call.accepted_subject is not None, 2 + SLACK)
        assert call.accepted_subject is not None
        await harness.fuzz_nc.publish(call.accepted_subject, env.pack(Kind.CANCEL, 1))
        await wait_for(lambda: harness.server.in_flight == 0, 2 + SLACK)  # the handler was cancelled
        await harness.server_nc.flush()  # whatever the server sent is on its way to the fuzzer
        await harness.fuzz_nc.flush()
        await eventually(lambda: call.ended_at is not None, 0.2)  # a bounded look for a wrong answer

    harness.run(cancel_and_listen())
    assert call.ended_at is None, f"answered a CANCEL with status {call.status} ({call.details!r})"
    assert not call.problems, call.problems

