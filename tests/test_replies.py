"""The reply shaping and size checks of nats_transport._replies, case by case: pure functions, no
NATS. What goes on the wire is decoded back (envelopes, frames, trailers) and compared with what
each case expects."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import pytest

from nats_transport import _envelope as env
from nats_transport import _framing
from nats_transport._context import CallState
from nats_transport._envelope import Kind
from nats_transport._metadata import MetadataTuple
from nats_transport._replies import (
    METADATA_RESERVE,
    Message,
    call_metadata_refusal,
    headers_size,
    initial_metadata_fits,
    message_too_large,
    reply_chunks,
    status_reply,
    stream_chunk_size,
    unary_reply,
)

MAX_PAYLOAD = 64 * 1024
MAX_MESSAGE = 4 * MAX_PAYLOAD
OK, UNKNOWN, NOT_FOUND, EXHAUSTED = (0, 2, 5, 8)
BIG_HEADERS = {"huge-bin": "m" * MAX_PAYLOAD}
SMALL_HEADERS = {"x-initial": "yes"}


@dataclass(frozen=True)
class Case:
    """One call's outcome as the handler left it, and the reply it must get."""

    name: str
    response: bytes | None
    code: grpc.StatusCode | None = None
    details: str | None = None
    trailing: tuple[MetadataTuple, ...] = ()
    status_details: bytes | None = None
    headers: dict[str, str] | None = None
    seq: int = 0
    # Expected: the response message (None: no message frame), the trailer frame (None: none),
    # the initial metadata sent, and whether the reply goes as numbered DATA chunks.
    message: bytes | None = None
    trailers: _framing.Trailers | None = None
    sent_headers: dict[str, str] | None = None
    numbered: bool = False


def _state(case: Case) -> CallState:
    state = CallState("/pkg.Service/Method", (), None, "nats:_INBOX.abc.1")
    state.code, state.details = case.code, case.details
    state.trailing_metadata, state.status_details = case.trailing, case.status_details
    return state


CASES = [
    Case("plain OK is the bare message frame, no trailers", b"answer", message=b"answer"),
    Case("an explicit OK is the same", b"answer", code=grpc.StatusCode.OK, message=b"answer"),
    Case(
        "OK with details adds the trailer frame",
        b"answer",
        details="fine",
        message=b"answer",
        trailers=_framing.Trailers(OK, "fine"),
    ),
    Case(
        "OK with trailing metadata and status details adds the trailer frame",
        b"answer",
        trailing=(("x-t", "1"),),
        status_details=b"\x08\x00",
        message=b"answer",
        trailers=_framing.Trailers(OK, "", b"\x08\x00", (("x-t", "1"),)),
    ),
    Case(
        "a status the handler set is sent without a message",
        None,
        code=grpc.StatusCode.NOT_FOUND,
        details="no such quest",
        trailing=(("x-t", "1"),),
        trailers=_framing.Trailers(NOT_FOUND, "no such quest", None, (("x-t", "1"),)),
    ),
    Case(
        "a set status wins over a returned response",
        b"answer",
        code=grpc.StatusCode.NOT_FOUND,
        trailers=_framing.Trailers(NOT_FOUND),
    ),
    Case("no response and no status is UNKNOWN", None, trailers=_framing.Trailers(UNKNOWN)),
    Case(
        "an empty response is still a message",
        b"",
        message=b"",
    ),
    Case(
        "a response over the message limit is RESOURCE_EXHAUSTED, without the trailing metadata",
        b"r" * (MAX_MESSAGE + 1),
        details="ignored",
        trailing=(("x-t", "1"),),
        trailers=_framing.Trailers(EXHAUSTED, message_too_large("response", MAX_MESSAGE + 1, MAX_MESSAGE)),
    ),
    Case(
        "a response at the message limit goes (in chunks: it is bigger than max_payload)",
        b"r" * MAX_MESSAGE,
        message=b"r" * MAX_MESSAGE,
        trailers=_framing.Trailers(OK),
        numbered=True,
    ),
    Case(
        "initial metadata rides on the reply",
        b"answer",
        headers=SMALL_HEADERS,
        message=b"answer",
        sent_headers=SMALL_HEADERS,
    ),
    Case(
        "initial metadata too big to travel is dropped and the call is RESOURCE_EXHAUSTED",
        b"answer",
        headers=BIG_HEADERS,
        trailing=(("x-t", "1"),),
        status_details=b"\x08\x05",
        trailers=_framing.Trailers(
            EXHAUSTED, "initial metadata exceeds the connection's max_payload", b"\x08\x05", (("x-t", "1"),)
        ),
    ),
    Case(
        "after PINGs a plain OK reply is numbered chunks ending with a trailer frame",
        b"answer",
        seq=3,
        message=b"answer",
        trailers=_framing.Trailers(OK),
        numbered=True,
    ),
    Case(
        "after PINGs a failure is numbered too",
        None,
        code=grpc.StatusCode.NOT_FOUND,
        seq=1,
        trailers=_framing.Trailers(NOT_FOUND),
        numbered=True,
    ),
    Case(
        "a reply bigger than max_payload goes in numbered chunks, metadata on the first",
        b"b" * (MAX_PAYLOAD * 3),
        headers=SMALL_HEADERS,
        message=b"b" * (MAX_PAYLOAD * 3),
        trailers=_framing.Trailers(OK),
        sent_headers=SMALL_HEADERS,
        numbered=True,
    ),
]


def _decode(messages: list[Message], seq: int) -> tuple[list[tuple[int, bytes]], dict[str, str] | None, bool]:
    """The frames a client reassembles from ``messages``, the headers it sees first, and
    whether they came numbered."""
    first_headers = messages[0][1]
    if len(messages) == 1 and not env.is_envelope(messages[0][0]):
        return _framing.decode_complete(messages[0][0], 1 << 30), first_headers, False
    payload = bytearray()
    for number, (body, headers) in enumerate(messages, start=seq):
        kind, got, chunk = env.unpack(body)
        assert (kind, got) == (Kind.DATA, number)
        assert number == seq or headers is None, "only the first chunk carries headers"
        payload += chunk
    return _framing.decode_complete(bytes(payload), 1 << 30), first_headers, True


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_a_unary_reply_is_shaped_as_its_outcome_says(case: Case) -> None:
    messages, status = unary_reply(_state(case), case.response, case.headers, MAX_PAYLOAD, MAX_MESSAGE, case.seq)

    for body, headers in messages:  # every message fits, headers included
        assert len(body) + (headers_size(headers) if headers else 0) <= MAX_PAYLOAD
    frames, headers, numbered = _decode(messages, case.seq)
    assert numbered == case.numbered
    assert headers == case.sent_headers
    expected: list[tuple[int, bytes]] = []
    if case.message is not None:
        expected.append((_framing.MESSAGE_FLAG, case.message))
    if case.trailers is not None:
        expected.append((_framing.TRAILER_FLAG, _framing.encode_trailers(case.trailers)[_framing.HEADER_SIZE :]))
    assert frames == expected
    # The status reported with the reply is the one it carries (None: plain OK, nothing sent).
    if case.trailers is None or (case.numbered and case.trailers == _framing.Trailers(OK)):
        assert status is None
    else:
        assert status == case.trailers


@pytest.mark.parametrize(
    ("code", "details", "seq"),
    [
        (grpc.StatusCode.UNAVAILABLE, "server is shutting down", None),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "Concurrent RPC limit exceeded!", 0),
        (grpc.StatusCode.UNAVAILABLE, "server is shutting down", 7),
    ],
)
def test_a_status_reply_is_a_bare_trailer_frame_or_one_numbered_data_message(
    code: grpc.StatusCode, details: str, seq: int | None
) -> None:
    body = status_reply(code, details, seq)

    if seq is None:
        assert not env.is_envelope(body)
        frames = _framing.decode_complete(body, 1 << 20)
    else:
        kind, got, payload = env.unpack(body)
        assert (kind, got) == (Kind.DATA, seq)
        frames = _framing.decode_complete(bytes(payload), 1 << 20)
    assert [flag for flag, _ in frames] == [_framing.TRAILER_FLAG]
    assert _framing.decode_trailer_block(frames[0][1]) == _framing.Trailers(code.value[0], details)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, 12),
        ({"a": "b"}, 12 + 1 + 1 + 4),
        ({"grpc-timeout": "5S", "x": ""}, 12 + (12 + 2 + 4) + (1 + 0 + 4)),
    ],
)
def test_a_header_block_is_measured_as_nats_counts_it(headers: dict[str, str], expected: int) -> None:
    assert headers_size(headers) == expected


@pytest.mark.parametrize(
    ("value_size", "fits"),
    [
        (MAX_PAYLOAD - METADATA_RESERVE - headers_size({"k": ""}), True),
        (MAX_PAYLOAD - METADATA_RESERVE - headers_size({"k": ""}) + 1, False),
    ],
)
def test_initial_metadata_fits_only_with_room_left_for_the_body(value_size: int, fits: bool) -> None:
    assert initial_metadata_fits({"k": "v" * value_size}, MAX_PAYLOAD) is fits


@pytest.mark.parametrize(
    ("value_size", "refused"),
    [
        (MAX_PAYLOAD - env.ENVELOPE_SIZE - _framing.HEADER_SIZE - headers_size({"k": ""}), False),
        (MAX_PAYLOAD - env.ENVELOPE_SIZE - _framing.HEADER_SIZE - headers_size({"k": ""}) + 1, True),
    ],
)
def test_a_calls_opening_metadata_is_refused_when_its_opening_message_cannot_fit(
    value_size: int, refused: bool
) -> None:
    headers = {"k": "v" * value_size}
    refusal = call_metadata_refusal(headers, MAX_PAYLOAD)
    if refused:
        assert refusal == (
            f"metadata of {headers_size(headers)} bytes exceeds the connection's max_payload of {MAX_PAYLOAD}"
        )
    else:
        assert refusal is None


@pytest.mark.parametrize("size", [1, 1000, MAX_PAYLOAD, 5 * MAX_PAYLOAD + 17])
@pytest.mark.parametrize("headers", [None, SMALL_HEADERS])
def test_reply_chunks_fit_and_reassemble_in_order(size: int, headers: dict[str, str] | None) -> None:
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)

    messages = reply_chunks(body, headers, MAX_PAYLOAD, 5)

    payload = b""
    for number, (chunk, chunk_headers) in enumerate(messages, start=5):
        assert len(chunk) + (headers_size(chunk_headers) if chunk_headers else 0) <= MAX_PAYLOAD
        assert chunk_headers == (headers if number == 5 else None)
        kind, got, piece = env.unpack(chunk)
        assert (kind, got) == (Kind.DATA, number)
        payload += bytes(piece)
    assert payload == body
    assert stream_chunk_size(MAX_PAYLOAD) == MAX_PAYLOAD - env.ENVELOPE_SIZE
