"""Strategies for wire inputs, and a reference reading of the spec's frame rules (§3).

The reference scanner is written from the spec, not from ``_framing``: the property tests hold
the real decoder to it, and the server fuzz uses it to predict what a server must make of a
byte stream of frames.
"""

from __future__ import annotations

import base64
import string
import struct
from dataclasses import dataclass

from hypothesis import strategies as st

from nats_transport._envelope import Kind
from nats_transport._framing import Trailers

FRAME_FLAGS = (0x00, 0x01, 0x80)  # message, compressed message, trailer block
TRAILER_KEYS = ("grpc-status", "grpc-message", "grpc-status-details-bin")
TRANSPORT_KEYS = ("grpc-timeout", "content-type", "te", "user-agent")
RESERVED_PREFIXES = ("grpc-", "nats-grpc-", ":")
PRINTABLE = "".join(chr(c) for c in range(0x20, 0x7F))
KEY_ALPHABET = string.digits + string.ascii_lowercase + "_.-"


def frame(flag: int, payload: bytes, *, length: int | None = None) -> bytes:
    """A frame as the spec draws it; ``length`` may lie about the payload's size."""
    return struct.pack(">BI", flag, len(payload) if length is None else length) + payload


# -- the reference scanner -----------------------------------------------------------------------


@dataclass(frozen=True)
class FrameScan:
    """What a receiver with a ``max_message`` limit makes of a byte stream of frames."""

    frames: tuple[tuple[int, bytes], ...]  # every frame complete before the first error
    error: str | None  # "flag" (unknown flag) or "too_large" (announced length over the limit)
    error_at: int | None  # offset of the 5-byte prefix that is in error
    rest: int  # bytes of an unfinished frame at the end (0 when there is an error)


def scan_frames(data: bytes, max_message: int) -> FrameScan:
    """Read ``data`` by §3: flag, 4-byte length, payload; a bad prefix is an error as soon as
    its 5 bytes are there, whether or not the payload follows."""
    frames: list[tuple[int, bytes]] = []
    offset = 0
    while len(data) - offset >= 5:
        flag, length = struct.unpack_from(">BI", data, offset)
        if flag not in FRAME_FLAGS:
            return FrameScan(tuple(frames), "flag", offset, 0)
        if length > max_message:
            return FrameScan(tuple(frames), "too_large", offset, 0)
        if offset + 5 + length > len(data):
            break
        frames.append((flag, data[offset + 5 : offset + 5 + length]))
        offset += 5 + length
    return FrameScan(tuple(frames), None, None, len(data) - offset)


# -- text ------------------------------------------------------------------------------------------

# Every code point, lone surrogates included: handlers build details from anything, such as
# file names decoded with "surrogateescape".
# (st.text drops surrogates from any alphabet, hence the list of characters.)
any_text = st.text(max_size=60) | st.lists(st.characters() | st.characters(categories=["Cs"]), max_size=60).map("".join)
printable_text = st.text(st.sampled_from(PRINTABLE), max_size=40)
# Values as the spec lets them survive a trailer block: its receivers trim spaces at both ends.
trimmed_printable = printable_text.map(lambda s: s.strip(" "))


def replace_surrogates(text: str) -> str:
    """``text`` with each lone surrogate (no UTF-8 form) as U+FFFD."""
    return "".join("\ufffd" if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in text)


# -- metadata --------------------------------------------------------------------------------------


def is_user_key(key: str) -> bool:
    return not key.startswith(RESERVED_PREFIXES) and key not in TRANSPORT_KEYS


_key_body = st.text(st.sampled_from(KEY_ALPHABET), min_size=1, max_size=16)
text_keys = _key_body.filter(lambda k: is_user_key(k) and not k.endswith("-bin"))
bin_keys = _key_body.map(lambda k: f"{k}-bin").filter(is_user_key)
# A few keys drawn again and again, so repeated keys are common.
text_metadata = st.tuples(st.sampled_from(("x-a", "x-b", "k")) | text_keys, trimmed_printable)
bin_metadata = st.tuples(st.sampled_from(("x-a-bin", "blob-bin")) | bin_keys, st.binary(max_size=40))
metadata_lists = st.lists(text_metadata | bin_metadata, max_size=8)

trailers = st.builds(
    Trailers,
    code=st.integers(0, 2**31 - 1) | st.integers(0, 16),
    message=any_text,
    details=st.none() | st.binary(max_size=60),
    metadata=metadata_lists.map(tuple),
)


def base64_text(raw: bytes, *, padded: bool = True) -> str:
    text = base64.b64encode(raw).decode("ascii")
    return text if padded else text.rstrip("=")


# -- trailer blocks ----------------------------------------------------------------------------------


@st.composite
def trailer_lines(draw: st.DrawFn) -> bytes:
    """One ``key: value`` line, mostly of the shape a sender would write, sometimes broken."""
    key = draw(st.sampled_from(TRAILER_KEYS) | st.sampled_from(("x-id", "blob-bin", "Grpc-Status")) | _key_body)
    if key.lower() == "grpc-status":
        # Long runs of digits too: Python refuses to read an int of more than 4300 digits.
        value = draw(
            st.sampled_from((4300, 4301, 10_000)).map(lambda n: "7" * n)
            | st.integers(-5, 2**40).map(str)
            | st.text(string.digits, min_size=1, max_size=8)
            | printable_text
        )
    elif key.endswith("-bin"):
        value = draw(st.binary(max_size=20).map(base64_text) | printable_text)
    else:
        value = draw(printable_text)
    raw = f"{key}{draw(st.sampled_from((': ', ':', ' : ', '')))}{value}".encode("ascii")
    return raw + draw(st.sampled_from((b"\r\n", b"\n", b"")))


trailer_blocks = st.one_of(
    st.lists(trailer_lines(), max_size=6).map(b"".join),
    st.binary(max_size=80),
    st.tuples(st.lists(trailer_lines(), max_size=4).map(b"".join), st.binary(max_size=8)).map(b"".join),
)


# -- frames and envelopes ------------------------------------------------------------------------------


@st.composite
def frame_bytes(draw: st.DrawFn, max_message: int = 4096) -> bytes:
    """Bytes of a frame stream as a fuzzing peer writes them: whole frames, cut frames, unknown
    flags, lengths over the limit, trailer frames, or plain junk."""
    payload = draw(st.binary(max_size=120))
    shape = draw(st.sampled_from(("message", "message", "several", "cut", "flag", "too_large", "trailer", "junk")))
    if shape == "message":
        return frame(0x00, payload)
    if shape == "several":
        parts = draw(st.lists(st.binary(max_size=40), min_size=2, max_size=4))
        return b"".join(frame(0x00, part) for part in parts)
    if shape == "cut":
        whole = frame(0x00, payload)
        return whole[: draw(st.integers(0, len(whole) - 1))]
    if shape == "flag":
        bad = draw(st.integers(0, 255).filter(lambda f: f not in FRAME_FLAGS))
        return frame(bad, payload)
    if shape == "too_large":
        return frame(draw(st.sampled_from(FRAME_FLAGS)), payload, length=draw(st.integers(max_message + 1, 2**32 - 1)))
    if shape == "trailer":
        return frame(0x80, draw(trailer_blocks))
    return draw(st.binary(max_size=40))


KINDS = tuple(Kind)
CLIENT_KINDS = (Kind.DATA, Kind.HALF_CLOSE, Kind.CANCEL, Kind.CREDIT, Kind.PING)


@st.composite
def envelope_bodies(draw: st.DrawFn) -> bytes:
    """A stream-mode body of any kind (known or not), any seq, any payload, or one cut short."""
    kind = draw(st.sampled_from(KINDS).map(int) | st.integers(0, 255))
    seq = draw(st.integers(0, 3) | st.integers(0, 2**32 - 1))
    payload = draw(st.binary(max_size=4).map(bytes) | frame_bytes() | st.binary(max_size=30))
    body = struct.pack(">BI", kind, seq) + payload
    if draw(st.integers(0, 9)) == 9:  # rare variants at the high end: hypothesis starts low
        return body[: draw(st.integers(0, 4))]
    return body
