"""Properties of ``_framing``: frames and trailer blocks round-trip, and no input breaks a decoder.

Proves, for inputs hypothesis draws: a message frame decodes back to its payload; the
incremental ``FrameDecoder`` reads any byte stream exactly as the spec's frame rules do (§3)
however it is cut into chunks, yields each frame the moment it is complete and reports a bad
prefix the moment its 5 bytes are in; trailer blocks round-trip status, percent-encoded message
(any unicode), status details and repeated metadata; and decoding arbitrary bytes raises nothing
but ``FramingError``.
"""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from nats_transport import _framing
from nats_transport._framing import FrameDecoder, FrameTooLarge, FramingError, Trailers
from tests.fuzz._wire import (
    TRAILER_KEYS,
    any_text,
    frame,
    frame_bytes,
    replace_surrogates,
    scan_frames,
    trailer_blocks,
    trailers,
)

pytestmark = pytest.mark.fuzz

limits = st.integers(0, 300) | st.sampled_from((1 << 20, 4 * 1024 * 1024))
byte_streams = st.binary(max_size=400) | st.lists(frame_bytes(max_message=300), max_size=6).map(b"".join)


@st.composite
def cut(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` cut at arbitrary points (empty chunks included)."""
    points = sorted(draw(st.lists(st.integers(0, len(data)), max_size=8)))
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


# -- message frames ----------------------------------------------------------------------------


@given(st.binary(max_size=5000))
def test_a_message_frame_decodes_back_to_its_payload(payload: bytes) -> None:
    encoded = _framing.encode_message(payload)
    assert encoded[:5] == _framing.message_frame_header(len(payload))
    assert _framing.decode_complete(encoded, len(payload)) == [(_framing.MESSAGE_FLAG, payload)]


@given(st.lists(st.tuples(st.sampled_from((0x00, 0x01, 0x80)), st.binary(max_size=200)), max_size=8), st.data())
def test_frames_fed_in_any_chunking_come_out_whole_and_in_order(
    frames: list[tuple[int, bytes]], data: st.DataObject
) -> None:
    body = _framing.join_frames(frame(flag, payload) for flag, payload in frames)
    decoder = FrameDecoder(200)
    out: list[tuple[int, bytes]] = []
    for chunk in data.draw(cut(body)):
        out.extend(decoder.feed(memoryview(chunk)))
    assert out == frames
    assert not decoder.mid_frame
    assert decoder.buffered == 0


# -- any bytes ------------------------------------------------------------------------------------


@given(byte_streams, limits, st.data())
@example(_framing.message_frame_header(11), 10, None)  # too large, told before any payload byte
@example(b"\x21\x00\x00\x00\x00", 1024, None)  # an envelope kind is not a frame flag
def test_the_frame_decoder_reads_any_bytes_as_the_spec_does_however_they_are_chunked(
    stream: bytes, max_message: int, data: st.DataObject | None
) -> None:
    chunks = data.draw(cut(stream)) if data is not None else [stream[:3], stream[3:]]
    decoder = FrameDecoder(max_message)
    out: list[tuple[int, bytes]] = []
    fed = 0
    for chunk in chunks:
        fed += len(chunk)
        so_far = scan_frames(stream[:fed], max_message)
        if so_far.error is not None:
            # The bad prefix is complete in this chunk: the error comes now, never later, and
            # every frame finished in earlier chunks came out before it.
            with pytest.raises(FramingError) as caught:
                decoder.feed(chunk)
            assert isinstance(caught.value, FrameTooLarge) == (so_far.error == "too_large")
            assert list(so_far.frames[: len(out)]) == out
            assert fed - len(chunk) < so_far.error_at + 5 <= fed  # type: ignore[operator]
            return
        out.extend(decoder.feed(chunk))
        assert out == list(so_far.frames)
        assert decoder.buffered == so_far.rest
        assert decoder.mid_frame == bool(so_far.rest)
    assert scan_frames(stream, max_message).error is None


@given(byte_streams, limits)
def test_decode_complete_gives_back_the_exact_bytes_or_a_framing_error(stream: bytes, max_message: int) -> None:
    scan = scan_frames(stream, max_message)
    if scan.error == "too_large":
        with pytest.raises(FrameTooLarge) as too_large:
            _framing.decode_complete(stream, max_message)
        assert too_large.value.limit == max_message
        assert too_large.value.length > max_message
    elif scan.error == "flag" or scan.rest:  # an unknown flag, or a frame cut short
        with pytest.raises(FramingError) as malformed:
            _framing.decode_complete(stream, max_message)
        assert not isinstance(malformed.value, FrameTooLarge)
    else:
        frames = _framing.decode_complete(stream, max_message)
        assert _framing.join_frames(frame(flag, payload) for flag, payload in frames) == stream


@given(st.binary(max_size=300), st.integers(1, 400))
def test_split_cuts_into_chunks_of_the_size_that_join_back(data: bytes, size: int) -> None:
    chunks = [bytes(c) for c in _framing.split(data, size)]
    assert b"".join(chunks) == data
    assert all(len(c) == size for c in chunks[:-1])
    assert 0 < len(chunks[-1]) <= size or data == b""


# -- trailer blocks --------------------------------------------------------------------------------


def _spec_escape(message: str) -> str:
    """§3: bytes 0x20-0x7E except '%' as they are, every other byte as upper-case %XX, and a
    space at either end as %20 (1.1)."""
    raw = replace_surrogates(message).encode("utf-8")
    escaped = [chr(b) if 0x20 <= b <= 0x7E and b != 0x25 else f"%{b:02X}" for b in raw]
    if escaped and escaped[0] == " ":
        escaped[0] = "%20"
    if escaped and escaped[-1] == " ":
        escaped[-1] = "%20"
    return "".join(escaped)


@given(trailers)
@example(Trailers(13, "file \udcff not found"))  # a lone surrogate: details from a surrogateescape'd name
@example(Trailers(0, "", b"", (("k", "a"), ("k", "b"), ("k-bin", b""), ("k-bin", b",\x00"))))
def test_trailers_survive_a_round_trip_as_the_spec_reads_them(sent: Trailers) -> None:
    encoded = _framing.encode_trailers(sent)
    ((flag, block),) = _framing.decode_complete(encoded, 1 << 24)
    assert flag == _framing.TRAILER_FLAG
    text = block.decode("ascii")
    assert text.startswith(f"grpc-status: {sent.code}\r\n")
    assert text.endswith("\r\n")
    assert not text.endswith("\r\n\r\n")  # no blank line at the end
    # A message's outer spaces travel as %20 (§3, 1.1); a status with no details reads back as
    # None whether it was sent as None or as b"".
    expected = Trailers(sent.code, replace_surrogates(sent.message), sent.details or None, sent.metadata)
    assert _framing.decode_trailer_block(block) == expected


@given(any_text)
@example("100% \udc80 ✓\r\n")
def test_grpc_message_travels_percent_encoded_exactly_as_the_spec_says(message: str) -> None:
    lines = _framing.encode_trailers(Trailers(2, message))[5:].decode("ascii").split("\r\n")
    sent = [line.removeprefix("grpc-message: ") for line in lines if line.startswith("grpc-message: ")]
    assert sent == ([_spec_escape(message)] if message else [])


@given(st.text(st.sampled_from("%0123456789abcdefABCDEFGz é"), max_size=30))
def test_percent_decoding_decodes_escapes_and_keeps_malformed_percent_signs(wire: str) -> None:
    wire = wire.encode("ascii", "ignore").decode("ascii").strip()
    block = f"grpc-status: 2\r\ngrpc-message: {wire}\r\n".encode("ascii")
    unescaped = re.sub(rb"%([0-9A-Fa-f]{2})", lambda m: bytes([int(m[1], 16)]), wire.encode("ascii"))
    assert _framing.decode_trailer_block(block).message == unescaped.decode("utf-8", "replace")


def _lines(block: bytes) -> list[tuple[str, str]]:
    pairs = []
    for line in block.decode("ascii").split("\r\n"):
        if line:
            key, _, value = line.partition(":")
            pairs.append((key.strip().lower(), value.strip()))
    return pairs


@given(trailer_blocks)
@example(b"grpc-status: 0\r\nx-bin: !!\r\n")  # a -bin trailer that is not base64
@example(b"grpc-status: " + b"7" * 4301 + b"\r\n")  # more digits than Python's int() reads
@example(b"grpc-status: 3\r\ngrpc-status-details-bin: *\r\n")
def test_decoding_any_trailer_block_gives_trailers_or_a_framing_error(block: bytes) -> None:
    try:
        decoded = _framing.decode_trailer_block(block)
    except FramingError:
        return
    # Accepted: the spec's reasons for INTERNAL (§3) must all be absent.
    pairs = _lines(block)  # ASCII, or decode() above would have refused it
    assert all(":" in line for line in block.decode("ascii").split("\r\n") if line)
    statuses = [value for key, value in pairs if key == "grpc-status"]
    assert len(statuses) == 1  # on any line, but only once (§3, 1.1)
    assert statuses[0].isdigit()
    assert decoded.code == int(statuses[0])
    assert all(key == key.lower() and key not in TRAILER_KEYS for key, _ in decoded.metadata)
