"""The spec's expectations of a server, for the server fuzz: what it receives, what it must
answer, and a check of every reply it sends (docs/wire-protocol.md §3-§9).

``Call`` models one call both ways: as the fuzzer sends, it works out which statuses the spec
allows (exactly one where the spec prescribes one, a set where timing decides, any status of §9's
table where the spec is silent); as the server answers, it checks each reply and records the
status. ``verdict`` then lists every way the call broke the spec.
"""

from __future__ import annotations

import base64
import math
import re
from dataclasses import dataclass, field

from nats_transport import _envelope as env
from nats_transport._envelope import Kind
from nats_transport._framing import FramingError, decode_trailer_block
from tests.fuzz._wire import replace_surrogates, scan_frames

SERVICE = "fuzz.v1.Fuzz"
MAX_MESSAGE = 4096  # small, so that oversized frames are cheap to write
SERVER_WINDOW = 1024  # the least §6.5 allows, so that credit runs out often
PING_EVERY = 0.1
SILENCE_TIMEOUT = 0.5
SLACK = 1.0  # what a loaded 2-core machine may add to any bound on when an answer comes
LONG_SLEEP = 10.0  # a handler that outlives every bound: only a cancel or a deadline ends it in time

OK, CANCELLED, UNKNOWN, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED = 0, 1, 2, 4, 8
UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS = 12, 13, 14, 15
# What §9 lets the transport produce.
TABLE = frozenset(
    {CANCELLED, UNKNOWN, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS}
)
GRPC_TIMEOUT = re.compile(r"([0-9]{1,8})([HMSmun])")
# Headers a server drops before it shows metadata to a handler (§4): their values are not checked.
_DROPPED = frozenset({"grpc-timeout", "content-type", "te", "user-agent"})
UNIT_SECONDS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


@dataclass(frozen=True)
class Method:
    name: str
    request_streaming: bool
    response_streaming: bool

    @property
    def path(self) -> str:
        return f"/{SERVICE}/{self.name}"


ECHO = Method("Echo", False, False)
ABORT = Method("Abort", False, False)
SLEEP = Method("Sleep", False, False)
SPLIT = Method("Split", False, True)
CHAT = Method("Chat", True, True)
COLLECT = Method("Collect", True, False)
METHODS = (ECHO, ABORT, SLEEP, SPLIT, CHAT, COLLECT)


def sleep_seconds(request: bytes) -> float:
    """Sleep's request: ``long`` for LONG_SLEEP, else milliseconds (at most 300: fuzzed bodies
    reach this handler too, and must not stall the run)."""
    if request == b"long":
        return LONG_SLEEP
    return min(int(request), 300) / 1000 if request.isdigit() and len(request) <= 6 else 0.0


def abort_outcome(request: bytes) -> tuple[int, str | None]:
    """The status Abort ends with: code from the first byte, details from the rest (bytes that
    are not UTF-8 become lone surrogates, as a handler's text sometimes holds)."""
    code = request[0] % 17 if request else UNKNOWN
    if code == OK:
        return UNKNOWN, None  # an abort must carry an error (grpcio's rule); the text is the transport's
    # §3: lone surrogates travel as U+FFFD; outer spaces travel as %20 (1.1), so they arrive.
    return code, replace_surrogates(request[1:].decode("utf-8", "surrogateescape"))


# -- what the server receives, as the spec reads it --------------------------------------------------


def _b64_decodes(part: str) -> bool:
    try:
        base64.b64decode(part + "=" * (-len(part) % 4), validate=True)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class HeaderView:
    """What a header dict published with nats-py means to a server (§4, §8)."""

    headers: dict[str, str] | None

    def get(self, name: str) -> str | None:
        value = (self.headers or {}).get(name)
        return None if value is None else value.strip()  # nats-py trims values on both ends

    @property
    def timeout(self) -> float | str | None:
        """Seconds of ``grpc-timeout``, None when absent, "bad" when malformed."""
        value = self.get("grpc-timeout")
        if value is None:
            return None
        match = GRPC_TIMEOUT.fullmatch(value)
        return int(match[1]) * UNIT_SECONDS[match[2]] if match else "bad"

    @property
    def bad_metadata(self) -> bool:
        """A ``-bin`` value that is not base64, or a text value outside printable ASCII (§4,
        1.1): the server cannot decode its headers."""
        for key, value in (self.headers or {}).items():
            lowered = key.strip().lower()
            if lowered.startswith("nats-grpc-") or lowered in _DROPPED:
                continue
            if not lowered.endswith("-bin"):
                if not (value.strip().isascii() and value.strip().isprintable()):
                    return True
            elif not all(_b64_decodes(part) for part in value.strip().split(",")):
                return True
        return False

    @property
    def bad_window(self) -> bool:
        """A ``nats-grpc-window`` that is not decimal or below 1024 (§6.5, 1.1)."""
        value = self.get("nats-grpc-window")
        if value is None:
            return False
        if not (value and value.isascii() and value.isdigit()):
            return True
        return 0 < int(value) < 1024

    @property
    def keepalive_asked(self) -> float | None:
        """Seconds in ``nats-grpc-keepalive`` (0.0: no PINGs), None when absent or malformed."""
        value = self.get("nats-grpc-keepalive")
        if value is None or not (1 <= len(value) <= 9 and value.isascii() and value.isdigit()):
            return None
        return int(value) / 1000

    @property
    def silence_timeout(self) -> float | None:
        """When the server gives up a silent stream (§6.8): its own timeout for a client that
        announced nothing, never for one that asked for no PINGs, else no sooner than three of
        the client's intervals. (A 1.0 server always uses its own: within the same bound.)"""
        asked = self.keepalive_asked
        if asked is None:
            return SILENCE_TIMEOUT
        if asked == 0:
            return None
        return max(SILENCE_TIMEOUT, 3 * asked)

    @property
    def silence_timeout_or_never(self) -> float:
        return math.inf if self.silence_timeout is None else self.silence_timeout

    @property
    def window(self) -> int | None:
        """The server's initial send credit (§6.5), or None when the header is not plain decimal
        (Python's int() reads more forms than the spec names; the check is then skipped)."""
        value = self.get("nats-grpc-window")
        if value is None:
            return SERVER_WINDOW
        if not (value.isascii() and value.isdigit()):
            return None
        return min(int(value), 2**32 - 1) or SERVER_WINDOW


# -- one call: what was sent, what the spec allows, what came back ----------------------------------------


def _literal_subject(subject: str) -> bool:
    return all(tok and not any(ch.isspace() or ch in "*>" for ch in tok) for tok in subject.split("."))


@dataclass
class Call:
    """A call the fuzzer made: the spec's expectations, updated as the fuzzer sends, and the
    server's replies, checked as they arrive."""

    label: str
    reply: str
    mode: str  # "unary", "stream", or "either" when a raw header block may select either
    sent_at: float
    method: Method | None = None
    deadline: float | None = None
    handler_time: float = 0.0
    prompt: bool = False  # the spec has the server answer at once
    silence_timeout: float | None = SILENCE_TIMEOUT
    allowed: set[int] | None = None  # statuses the spec allows; None: any of TABLE, OK, extra
    extra_codes: frozenset[int] = frozenset()
    expected_payload: bytes | None = None
    expected_details: str | None = None
    drops_before: int | None = None  # set when nats-py may drop the message (raw header blocks)
    expect_accept: bool = False  # a stream opening the server can read: ACCEPT comes first (§6.3)
    cancelled_by_us: bool = False
    must_not_end: bool = False  # a cancelled unary call: the server sends it nothing more
    credit_limit: int | None = None
    last_sent_at: float = 0.0
    ended_by: float = math.inf  # a bound that later events set (a violation is answered at once)
    # The stream model: how far the server got in reading what the fuzzer sent (§6).
    phase: str = "general"  # "predictable", "racy", "decided" or "general", see _violation
    client_seq: int = 1
    client_stream: bytearray = field(default_factory=bytearray)
    client_frames: int = 0
    request_seen: bool = False
    outcome: frozenset[int] = frozenset({OK})  # what the handler ends with once it has run
    # What the server sent.
    form: str | None = None
    next_seq: int = 0
    stream: bytearray = field(default_factory=bytearray)
    frames_seen: int = 0
    messages_seen: int = 0
    accepted_subject: str | None = None
    credit_used: int = 0
    status: int | None = None
    details: str | None = None
    payload: bytes | None = None
    ended_at: float | None = None
    problems: list[str] = field(default_factory=list)

    # -- the fuzzer's side ----------------------------------------------------------------

    def _violation(self, code: int, now: float) -> None:
        """The fuzzer broke a rule the server checks (§6.1, §6.4, §3, §7): it ends the call at
        once with ``code``, unless the call ended before. Which status wins is certain only while
        nothing else can have ended the call ("predictable"); once the handler may finish
        ("racy") each later violation only adds a possible status."""
        self.ended_by = min(self.ended_by, now + SLACK)
        if self.phase == "predictable":
            self.phase, self.allowed = "decided", {code, UNAVAILABLE}
        elif self.phase == "racy" and self.allowed is not None:
            self.allowed.add(code)

    def _handler_may_end(self, codes: frozenset[int]) -> None:
        if self.phase == "predictable":
            self.phase, self.allowed = "racy", {*codes, UNAVAILABLE}

    def _unspecified(self) -> None:
        """The spec says nothing of what follows: any status of the table goes from here on."""
        if self.phase in ("predictable", "racy"):
            self.phase, self.allowed = "general", None

    def client_sends(self, body: bytes, now: float, *, opening: bool = False) -> None:
        """Update the model for a stream message the fuzzer sent (the opening included)."""
        self.last_sent_at = now
        if self.phase == "decided" or self.cancelled_by_us:
            return
        if len(body) < env.ENVELOPE_SIZE:
            self._violation(INTERNAL, now)
            return
        kind, seq, payload = env.unpack(body)
        if kind == Kind.CANCEL:  # honoured whatever its seq (§6.4); the server then sends nothing
            self.cancelled_by_us = True
            return
        expected = 0 if opening else self.client_seq
        if seq != expected % 2**32:
            self._violation(DATA_LOSS, now)
            return
        self.client_seq = expected + 1
        if kind == Kind.DATA:
            self._client_data(bytes(payload), now)
        elif kind == Kind.CREDIT:
            if len(payload) != env.CREDIT.size:
                self._violation(INTERNAL, now)
            elif self.credit_limit is not None:
                self.credit_limit += env.CREDIT.unpack(payload)[0]
        elif kind == Kind.HALF_CLOSE:
            self._requests_end(now)
        elif kind in (Kind.ACCEPT, Kind.HEADERS):  # kinds only a server sends: the spec is silent
            self._unspecified()
        # PING, and unknown kinds, which receivers ignore (§6.1), change nothing.

    def _client_data(self, payload: bytes, now: float) -> None:
        self.client_stream += payload
        scan = scan_frames(bytes(self.client_stream), MAX_MESSAGE)
        if scan.error is not None:
            self._violation(RESOURCE_EXHAUSTED if scan.error == "too_large" else INTERNAL, now)
            return
        new, self.client_frames = scan.frames[self.client_frames :], len(scan.frames)
        for flag, message in new:
            if flag == 0x80:  # a trailer frame from a client: its requests end, if it reads
                try:
                    decode_trailer_block(message)
                except FramingError:
                    self._violation(INTERNAL, now)
                    return
                self._requests_end(now)
                return
            if flag == 0x01:  # compressed, which v1 forbids: only the unary path says what follows
                self._unspecified()
            elif self.method is not None and not self.method.request_streaming and not self.request_seen:
                self.request_seen = True
                self._handler_may_end(self.outcome)

    def _requests_end(self, now: float) -> None:
        if self.method is None:
            return
        if self.method.request_streaming:
            self._handler_may_end(frozenset({OK}))
        elif not self.request_seen:  # §6.6: a half-close before the one request is INTERNAL
            self._handler_may_end(frozenset({INTERNAL}))

    # -- the server's side ----------------------------------------------------------------

    def observe(self, data: bytes, headers: dict[str, str] | None, now: float) -> None:
        try:
            self._observe(data, headers, now)
        except Exception as exc:  # a reply this test cannot even read is a finding too
            self.problems.append(f"unreadable reply {data[:40]!r}: {exc!r}")

    def _observe(self, data: bytes, headers: dict[str, str] | None, now: float) -> None:
        if self.ended_at is not None:
            self.problems.append(f"a message after the call ended: {data[:40]!r}")
        elif headers and headers.get("Status") == "503":
            self.problems.append("no responders, though the server subscribes to every call subject")
        elif not data:
            self.problems.append("an empty reply (§5: INTERNAL for a client)")
        elif env.is_envelope(data):
            self._envelope(data, headers, now)
        elif self.form is None and self.mode != "stream":
            self._bare(data, now)
        else:
            self.problems.append(f"bare frames where envelopes were due: {data[:40]!r}")

    def _bare(self, data: bytes, now: float) -> None:
        self.form = "bare"
        scan = scan_frames(data, 1 << 30)
        shape = [flag for flag, _ in scan.frames]
        if scan.error is not None or scan.rest or shape not in ([0x00], [0x00, 0x80], [0x80]):
            self.problems.append(f"a bare reply of the wrong shape (§5): {data[:60]!r}")
            return
        if shape[0] == 0x00:
            self.payload = scan.frames[0][1]
        if shape[-1] == 0x80:
            self._trailers(scan.frames[-1][1], now)
        else:
            self._end(OK, "", now)

    def _envelope(self, data: bytes, headers: dict[str, str] | None, now: float) -> None:
        if self.form == "bare":
            self.problems.append("an envelope after a bare reply")
            return
        self.form = "envelopes"
        kind, seq, view = env.unpack(data)
        payload = bytes(view)
        if kind == Kind.CANCEL:
            self._cancel(payload, now)
            return
        if seq != self.next_seq % 2**32:
            self.problems.append(f"{Kind(kind).name} seq {seq} where {self.next_seq} was due (§6.4)")
        first, self.next_seq = self.next_seq == 0, seq + 1
        if kind == Kind.ACCEPT:
            self._accept(payload, headers, first)
        elif kind == Kind.DATA:
            self._data(payload, first, now)
        elif kind == Kind.PING:
            if payload:
                self.problems.append("a PING with a payload")
        elif kind in (Kind.CREDIT, Kind.HEADERS) and self.mode != "unary" and self.accepted_subject:
            if len(payload) != (env.CREDIT.size if kind == Kind.CREDIT else 0):
                self.problems.append(f"a {Kind(kind).name} of {len(payload)} bytes")
        else:
            self.problems.append(f"kind {kind:#x} where the spec does not let a server send it")

    def _accept(self, payload: bytes, headers: dict[str, str] | None, first: bool) -> None:
        if self.mode == "unary" or not first:
            self.problems.append("an ACCEPT that is not the first reply of a stream (§6.3)")
            return
        window, subject = env.unpack_accept(memoryview(payload))
        if window < 1024 or not _literal_subject(subject):
            self.problems.append(f"ACCEPT with window {window} and subject {subject!r}")
        if headers and set(headers) - {"nats-grpc-keepalive"}:
            self.problems.append(f"headers on ACCEPT are never metadata: {headers}")
        self.mode, self.accepted_subject = "stream", subject

    def _data(self, payload: bytes, first: bool, now: float) -> None:
        if self.mode == "either":
            self.mode = "unary"  # no ACCEPT first: a fast-path reply in numbered chunks
        # The final DATA, only a trailer frame, is not flow controlled (§6.5).
        alone = scan_frames(payload, 1 << 30)
        at_boundary = scan_frames(bytes(self.stream), 1 << 30).rest == 0
        final = at_boundary and alone.error is None and not alone.rest and [f for f, _ in alone.frames] == [0x80]
        if self.mode == "stream" and not final:
            if self.accepted_subject is None:
                self.problems.append("DATA before ACCEPT that is not a lone trailer frame (§6.3)")
            self.credit_used += len(payload)
            if self.credit_limit is not None and self.credit_used > self.credit_limit:
                self.problems.append(f"{self.credit_used} bytes of DATA on {self.credit_limit} of credit (§6.5)")
        self.stream += payload
        scan = scan_frames(bytes(self.stream), 1 << 30)
        if scan.error is not None:
            self.problems.append(f"DATA that is not a frame stream: {bytes(self.stream[:60])!r}")
            return
        for flag, message in scan.frames[self.frames_seen :]:
            self.frames_seen += 1
            if self.ended_at is not None:
                self.problems.append("a frame after the trailer frame")
            elif flag == 0x80:
                self._trailers(message, now)
            elif flag == 0x00:
                self.messages_seen += 1
                self.payload = message
                if self.mode == "unary" and self.messages_seen > 1:
                    self.problems.append("a fast-path reply with more than one message frame (§5)")
            else:
                self.problems.append(f"a frame with flag {flag:#x} from a server")
        if self.ended_at is not None and scan.rest:
            self.problems.append("bytes after the trailer frame")

    def _cancel(self, payload: bytes, now: float) -> None:
        if self.mode == "unary":
            self.problems.append("a CANCEL on the fast path (§5 allows DATA and PING only)")
            return
        if not payload:
            self._end(CANCELLED, "", now)
            return
        scan = scan_frames(payload, 1 << 30)
        if scan.error is None and not scan.rest and [f for f, _ in scan.frames] == [0x80]:
            self._trailers(scan.frames[0][1], now)
        else:
            self.problems.append(f"a CANCEL whose payload is not one trailer frame: {payload[:60]!r}")

    def _trailers(self, block: bytes, now: float) -> None:
        try:
            decoded = decode_trailer_block(block)
        except FramingError as exc:
            self.problems.append(f"a trailer block a client cannot read: {exc}")
            return
        self._end(decoded.code, decoded.message, now)

    def _end(self, code: int, details: str, now: float) -> None:
        self.status, self.details, self.ended_at = code, details, now

    # -- the verdict ----------------------------------------------------------------------

    def dropped(self, drops_now: int) -> bool:
        return self.drops_before is not None and drops_now > self.drops_before

    def needs_end(self) -> bool:
        return not self.cancelled_by_us

    def settled(self, drops_now: int) -> bool:
        return self.ended_at is not None or not self.needs_end() or self.dropped(drops_now)

    def end_by(self) -> float:
        """When the spec has the server end the call at the latest, slack included: how long a
        test waits for the end (a bound on the wait; when an answer came is not itself judged)."""
        bounds = [self.ended_by]
        if self.prompt:
            bounds.append(self.sent_at + SLACK)
        if self.mode != "stream":
            bounds.append(self.sent_at + self.handler_time + SLACK)
        elif self.silence_timeout is not None:
            bounds.append(self.last_sent_at + self.silence_timeout + PING_EVERY + SLACK)
        if self.deadline is not None:
            bounds.append(self.sent_at + self.deadline + SLACK)
        return min(bounds)

    def verdict(self, drops_now: int) -> list[str]:
        problems = list(self.problems)
        if self.ended_at is None:
            if self.needs_end() and not self.dropped(drops_now):
                problems.append(f"no end by {self.end_by() - self.sent_at:.2f}s after it was sent")
            return problems
        if self.must_not_end:
            problems.append(f"answered ({self.status}) after its cancel (§5: nothing more is sent)")
        if self.cancelled_by_us and (self.status, self.details) == (CANCELLED, "cancelled by the client"):
            # Trailers the server could only have written after our CANCEL reached it.
            problems.append("answered the client's CANCEL with trailers (§6.7: nothing more is sent)")
        allowed = (TABLE | {OK} | self.extra_codes) if self.allowed is None else self.allowed
        if self.phase == "predictable" and not self.cancelled_by_us:
            allowed = {UNAVAILABLE}  # nothing else could end it: only the keepalive timeout
        if self.status not in allowed:
            problems.append(f"status {self.status} ({self.details!r}) where the spec allows {sorted(allowed)}")
        if self.status == OK and self.expected_payload is not None and self.payload != self.expected_payload:
            problems.append(f"OK with message {self.payload!r}, not {self.expected_payload!r}")
        wrong_details = self.expected_details is not None and self.details != self.expected_details
        if wrong_details and self.status in self.extra_codes:
            problems.append(f"details {self.details!r}, not {self.expected_details!r}")
        return problems


def unary_expectation(call: Call, target: Method | str, view: HeaderView, body: bytes) -> None:
    """What §4, §5, §8 and §9 let the server answer a fast-path call."""
    errors: set[int] = set()
    method = target if isinstance(target, Method) else None
    if method is None:
        errors.add(UNIMPLEMENTED)
    if view.timeout == "bad" or view.bad_metadata:
        errors.add(INTERNAL)
    if method is not None and (method.request_streaming or method.response_streaming):
        errors.add(INTERNAL)  # a streaming method without nats-grpc-stream
    scan = scan_frames(body, MAX_MESSAGE)
    if scan.error == "too_large":
        errors.add(RESOURCE_EXHAUSTED)
    elif scan.error or scan.rest or [flag for flag, _ in scan.frames] != [0x00]:
        errors.add(INTERNAL)  # not exactly one message frame
    if errors:
        call.allowed, call.prompt = errors, True
        return
    assert method is not None
    request = scan.frames[0][1]
    deadline = view.timeout if isinstance(view.timeout, float) else None
    call.deadline = deadline
    soon = {DEADLINE_EXCEEDED} if deadline is not None and deadline < 0.5 else set()
    if method is SLEEP:
        call.handler_time = sleep_seconds(request)
        call.expected_payload = b""
        if deadline is None or deadline > call.handler_time + 0.1:
            call.allowed = {OK}
        elif deadline < call.handler_time - 0.001:  # the deadline's timer fires before the sleep's
            call.allowed = {DEADLINE_EXCEEDED}
        else:
            call.allowed = {OK, DEADLINE_EXCEEDED}
    elif method is ABORT:
        code, details = abort_outcome(request)
        call.allowed, call.extra_codes, call.expected_details = {code} | soon, frozenset({code}), details
    else:
        call.allowed, call.expected_payload = {OK} | soon, request


def stream_expectation(call: Call, target: Method | str, view: HeaderView, opening: bytes) -> None:
    """What §6 lets the server do with a stream opening; later messages refine it (Call.client_sends)."""
    method = target if isinstance(target, Method) else None
    call.method, call.silence_timeout, call.credit_limit = method, view.silence_timeout, view.window
    deadline = view.timeout if isinstance(view.timeout, float) else None
    call.deadline = deadline
    if method is ABORT:
        call.extra_codes = frozenset(range(1, 17))
    if method is not None and not method.request_streaming:
        call.outcome = frozenset({OK}) if method is not ABORT else frozenset(range(1, 17))
    opening_errors: set[int] = set()
    call.phase = "predictable"  # the model below finds what the opening alone decides
    call.client_sends(opening, call.sent_at, opening=True)
    if call.phase == "decided" and call.allowed is not None:
        opening_errors = call.allowed - {UNAVAILABLE}
    rejections = ({UNIMPLEMENTED} if method is None else set()) | (
        {INTERNAL} if view.timeout == "bad" or view.bad_metadata or view.bad_window else set()
    )
    if rejections or opening_errors:
        # §6.3 rejects after ACCEPT; an opening the server cannot read ends the call at once too.
        # The spec does not say which wins when both apply.
        call.phase, call.allowed, call.prompt = "decided", rejections | opening_errors, True
    elif deadline is not None:
        call.phase, call.allowed = "general", None  # timing decides between outcomes
    call.expect_accept = len(opening) >= env.ENVELOPE_SIZE and not opening_errors and not call.cancelled_by_us
