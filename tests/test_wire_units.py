"""Table-driven unit tests of the pure wire modules: framing, metadata, envelopes and subjects."""

from __future__ import annotations

import base64
import itertools
import math
import struct

import pytest

from nats_transport import _envelope as env
from nats_transport import _framing, _subjects
from nats_transport import _metadata as md
from nats_transport._envelope import Kind
from nats_transport._framing import FrameDecoder, FrameTooLarge, FramingError, Trailers

# -- _framing: message frames ------------------------------------------------------------------


@pytest.mark.parametrize("payload", [b"", b"x", b"\x00\x80\xff" * 100, bytes(range(256)) * 300])
def test_a_message_frame_is_flag_zero_then_big_endian_length_then_payload(payload: bytes) -> None:
    frame = _framing.encode_message(payload)
    assert frame[0] == _framing.MESSAGE_FLAG
    assert struct.unpack(">I", frame[1:5])[0] == len(payload)
    assert frame[5:] == payload
    assert _framing.message_frame_header(len(payload)) == frame[:5]


@pytest.mark.parametrize(
    "payloads", [[b"one"], [b"one", b"", b"three"], [b"\x80" * 10, b"\x00" * 7, b"end"]]
)
def test_decode_complete_returns_every_frame_of_a_body_in_order(payloads: list[bytes]) -> None:
    body = _framing.join_frames(_framing.encode_message(p) for p in payloads)
    assert _framing.decode_complete(body, 1024) == [(_framing.MESSAGE_FLAG, p) for p in payloads]


def test_decode_complete_of_an_empty_body_is_no_frames() -> None:
    assert _framing.decode_complete(b"", 1024) == []


@pytest.mark.parametrize(
    "body",
    [b"\x00", b"\x00\x00\x00\x00", b"\x00\x00\x00\x00\x05abc", _framing.encode_message(b"ok") + b"\x00\x00"],
)
def test_decode_complete_refuses_a_truncated_frame(body: bytes) -> None:
    with pytest.raises(FramingError, match="truncated"):
        _framing.decode_complete(body, 1024)


def _three_frames() -> tuple[bytes, list[tuple[int, bytes]]]:
    trailer = _framing.encode_trailers(Trailers(0))
    body = _framing.encode_message(b"hello") + _framing.encode_message(b"") + trailer
    expected = [(0x00, b"hello"), (0x00, b""), (0x80, trailer[5:])]
    return body, expected


def test_frame_decoder_fed_one_byte_at_a_time_yields_each_frame_exactly_when_complete() -> None:
    body, expected = _three_frames()
    decoder = FrameDecoder(1024)
    out: list[tuple[int, bytes]] = []
    for i in range(len(body)):
        out.extend(decoder.feed(body[i : i + 1]))
    assert out == expected
    assert not decoder.mid_frame
    assert decoder.buffered == 0


@pytest.mark.parametrize("cuts", [(1,), (4,), (5,), (6,), (9, 10), (3, 11, 12, 13), (2, 7, 8, 20)])
def test_frame_decoder_reassembles_frames_split_at_arbitrary_points(cuts: tuple[int, ...]) -> None:
    body, expected = _three_frames()
    bounds = [0, *cuts, len(body)]
    decoder = FrameDecoder(1024)
    out: list[tuple[int, bytes]] = []
    for start, end in itertools.pairwise(bounds):
        out.extend(decoder.feed(memoryview(body)[start:end]))
    assert out == expected
    assert not decoder.mid_frame


def test_frame_decoder_reports_what_it_buffers_mid_frame() -> None:
    decoder = FrameDecoder(1024)
    assert decoder.feed(_framing.encode_message(b"abcdef")[:7]) == []
    assert decoder.mid_frame
    assert decoder.buffered == 7
    assert decoder.feed(b"cdef") == [(0x00, b"abcdef")]
    assert decoder.buffered == 0


def test_frame_decoder_refuses_an_oversize_frame_from_its_header_alone() -> None:
    decoder = FrameDecoder(max_message=10)
    with pytest.raises(FrameTooLarge) as caught:
        decoder.feed(_framing.message_frame_header(11))  # no body yet
    assert (caught.value.length, caught.value.limit) == (11, 10)
    assert isinstance(caught.value, FramingError)


def test_frame_decoder_accepts_a_frame_of_exactly_the_limit() -> None:
    assert FrameDecoder(10).feed(_framing.encode_message(b"0123456789")) == [(0x00, b"0123456789")]


@pytest.mark.parametrize("flag", [0x02, 0x7F, 0x81, 0xFF, int(Kind.DATA)])
def test_frame_decoder_refuses_an_unknown_flag(flag: int) -> None:
    with pytest.raises(FramingError, match="unknown frame flag"):
        FrameDecoder(1024).feed(bytes([flag]) + b"\x00\x00\x00\x01x")


def test_split_cuts_data_into_chunks_of_at_most_the_size() -> None:
    chunks = _framing.split(b"abcdefg", 3)
    assert [bytes(c) for c in chunks] == [b"abc", b"def", b"g"]
    assert [bytes(c) for c in _framing.split(b"", 3)] == [b""]


# -- _framing: trailer blocks ------------------------------------------------------------------


def _round_trip(trailers: Trailers) -> Trailers:
    frame = _framing.encode_trailers(trailers)
    assert frame[0] == _framing.TRAILER_FLAG
    assert struct.unpack(">I", frame[1:5])[0] == len(frame) - 5
    ((flag, block),) = _framing.decode_complete(frame, 1 << 20)
    assert flag == _framing.TRAILER_FLAG
    return _framing.decode_trailer_block(block)


@pytest.mark.parametrize(
    "trailers",
    [
        Trailers(0),
        Trailers(3, "bad field"),
        Trailers(5, "quête introuvable ✓ 100% done", b"\x00\x01\xff"),
        Trailers(13, "line\r\nbreak: and colon"),
        Trailers(2, "%41 is not a percent-escape here"),
        Trailers(14, "", None, (("retry-after", "5"),)),
        Trailers(0, "", None, (("k", "v1"), ("k", "v2"), ("blob-bin", b"\x00\xff"), ("blob-bin", b"z"))),
        Trailers(9, "emoji 🎮", bytes(range(256)), (("x-user", "alice"),)),
        Trailers(9, "  padded  "),
        Trailers(9, " "),
        Trailers(9, "\t tab and space \t"),
    ],
)
def test_trailers_survive_a_round_trip(trailers: Trailers) -> None:
    assert _round_trip(trailers) == trailers


@pytest.mark.parametrize(
    ("message", "wire"),
    [
        ("plain", "plain"),
        ("100%", "100%25"),
        ("é", "%C3%A9"),
        ("✓", "%E2%9C%93"),
        ("a\r\nb", "a%0D%0Ab"),
        ("tab\there", "tab%09here"),
        # Receivers trim values, so a space at either end travels escaped; inner ones as they are.
        ("  padded  ", "%20 padded %20"),
        (" lead", "%20lead"),
        ("trail ", "trail%20"),
        (" ", "%20"),
        ("  ", "%20%20"),
        ("a b", "a b"),
        ("\tx ", "%09x%20"),
    ],
)
def test_grpc_message_is_percent_encoded_utf8_on_the_wire(message: str, wire: str) -> None:
    block = _framing.encode_trailers(Trailers(2, message))[5:].decode("ascii")
    assert f"grpc-message: {wire}\r\n" in block


@pytest.mark.parametrize(
    ("wire", "message"),
    [("%41%42", "AB"), ("%e2%9c%93", "✓"), ("100%", "100%"), ("%zz", "%zz"), ("%4", "%4"), ("a%", "a%")],
)
def test_grpc_message_decoding_is_lenient_with_stray_percent_signs(wire: str, message: str) -> None:
    block = f"grpc-status: 2\r\ngrpc-message: {wire}\r\n".encode("ascii")
    assert _framing.decode_trailer_block(block).message == message


def test_the_trailer_block_keeps_one_line_per_repeated_key() -> None:
    trailers = Trailers(0, "", None, (("k", "a"), ("k", "b"), ("k-bin", b"\x01"), ("k-bin", b"\x02")))
    lines = _framing.encode_trailers(trailers)[5:].decode("ascii").split("\r\n")
    assert lines.count("k: a") == 1
    assert lines.count("k: b") == 1
    assert [line for line in lines if line.startswith("k-bin:")] == ["k-bin: AQ==", "k-bin: Ag=="]


def test_status_details_travel_base64_in_grpc_status_details_bin() -> None:
    block = _framing.encode_trailers(Trailers(3, "x", b"\xde\xad\xbe\xef"))[5:].decode("ascii")
    assert "grpc-status-details-bin: 3q2+7w==\r\n" in block


def test_senders_put_grpc_status_first() -> None:
    trailers = Trailers(3, "x", b"\x01", (("a", "b"),))
    assert _framing.encode_trailers(trailers)[5:].startswith(b"grpc-status: 3\r\n")


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        (b"grpc-status: 3\r\ngrpc-message: m\r\n", Trailers(3, "m")),
        (b"grpc-message: m\r\ngrpc-status: 3\r\n", Trailers(3, "m")),
        (b"x-a: 1\r\ngrpc-status: 0\r\nx-b: 2\r\n", Trailers(0, "", None, (("x-a", "1"), ("x-b", "2")))),
        (b"grpc-status-details-bin: AQ\r\nGRPC-STATUS: 5\r\n", Trailers(5, "", b"\x01")),
    ],
)
def test_receivers_take_grpc_status_from_any_line(block: bytes, expected: Trailers) -> None:
    assert _framing.decode_trailer_block(block) == expected


def test_trailer_block_decoding_lowercases_keys_and_accepts_unpadded_base64() -> None:
    block = b"Grpc-Status: 7\r\nX-Reason: nope\r\nGRPC-STATUS-DETAILS-BIN: 3q2+7w\r\nblob-bin: AP8\r\n"
    assert _framing.decode_trailer_block(block) == Trailers(
        7, "", b"\xde\xad\xbe\xef", (("x-reason", "nope"), ("blob-bin", b"\x00\xff"))
    )


@pytest.mark.parametrize(
    ("block", "complaint"),
    [
        (b"", "no grpc-status"),
        (b"grpc-message: hi\r\n", "no grpc-status"),
        (b"grpc-status: x\r\n", "bad grpc-status"),
        (b"grpc-status: -1\r\n", "bad grpc-status"),
        (b"grpc-status: 0\r\nno colon here\r\n", "malformed trailer line"),
        ("grpc-status: 0\r\nk: é\r\n".encode(), "not ASCII"),
        (b"grpc-status: 2\r\ngrpc-status-details-bin: a\r\n", "grpc-status-details-bin"),
        (b"grpc-status: 0\r\ngrpc-status: 0\r\n", "more than one grpc-status"),
        (b"grpc-status: 1\r\nx: y\r\nGrpc-Status: 2\r\n", "more than one grpc-status"),
        (b"grpc-message: m\r\ngrpc-status: 4\r\ngrpc-status: x\r\n", "more than one grpc-status"),
    ],
)
def test_a_malformed_trailer_block_is_a_framing_error(block: bytes, complaint: str) -> None:
    with pytest.raises(FramingError, match=complaint):
        _framing.decode_trailer_block(block)


def test_trailers_refuse_non_ascii_text_metadata() -> None:
    with pytest.raises(md.MetadataError):
        _framing.encode_trailers(Trailers(0, "", None, (("x-name", "José"),)))


# -- _metadata: keys -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "normalized"),
    [("x-user", "x-user"), ("X-User", "x-user"), ("TRACE-BIN", "trace-bin"), ("a.b_c-9", "a.b_c-9")],
)
def test_metadata_keys_are_lowercased(key: str, normalized: str) -> None:
    assert md.normalize_key(key) == normalized
    assert md.check_user_key(key) == normalized


@pytest.mark.parametrize("key", ["", "has space", "a/b", "a:b", "ключ", "tab\tkey", "new\nline", "a,b"])
def test_metadata_keys_outside_the_grpc_alphabet_are_refused(key: str) -> None:
    with pytest.raises(md.MetadataError):
        md.check_user_key(key)


@pytest.mark.parametrize(
    "key", ["grpc-timeout", "grpc-status", "Grpc-Message", "grpc-anything", "nats-grpc-stream", ":path"]
)
def test_reserved_metadata_keys_are_refused_for_user_metadata(key: str) -> None:
    with pytest.raises(md.MetadataError):
        md.check_user_key(key)
    with pytest.raises(md.MetadataError):
        md.to_headers([(key, "v")])


# -- _metadata: values -----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["José", "naïve", "tab\there", "line\nbreak", "\x7f", "✓"])
def test_non_ascii_or_control_text_values_are_refused(value: str) -> None:
    with pytest.raises(md.MetadataError, match="-bin"):
        md.encode_value("x-name", value)
    with pytest.raises(md.MetadataError):
        md.to_headers([("x-name", value)])


def test_text_values_must_be_str() -> None:
    with pytest.raises(md.MetadataError, match="-bin"):
        md.encode_value("x-name", b"bytes")


@pytest.mark.parametrize(
    ("value", "wire"),
    [(b"\x00\xff", "AP8="), (b"", ""), ("José", base64.b64encode("José".encode()).decode()), (b"abc", "YWJj")],
)
def test_bin_values_travel_base64(value: str | bytes, wire: str) -> None:
    assert md.encode_value("blob-bin", value) == wire
    expected = value.encode() if isinstance(value, str) else value
    assert md.decode_value("blob-bin", wire) == expected


@pytest.mark.parametrize("wire", ["AP8", "AP8=", "YWJj"])
def test_bin_values_decode_with_or_without_padding(wire: str) -> None:
    assert md.decode_value("blob-bin", wire) == base64.b64decode(wire + "=" * (-len(wire) % 4))


def test_a_bin_value_that_is_not_base64_is_a_metadata_error() -> None:
    with pytest.raises(md.MetadataError, match="base64"):
        md.decode_value("blob-bin", "not base64!")


def test_repeated_keys_join_with_commas_in_headers() -> None:
    headers = md.to_headers([("k", "a"), ("K", "b"), ("blob-bin", b"\x00"), ("blob-bin", b"\x01"), ("other", "x")])
    assert headers == {"k": "a,b", "blob-bin": "AA==,AQ==", "other": "x"}


def test_to_headers_adds_to_an_existing_header_dict() -> None:
    headers = {"grpc-timeout": "1S"}
    assert md.to_headers([("x", "y")], headers) is headers
    assert headers == {"grpc-timeout": "1S", "x": "y"}
    assert md.to_headers(None) == {}


def test_repeated_bin_values_split_back_into_separate_entries() -> None:
    headers = md.to_headers([("blob-bin", b"\x00,"), ("blob-bin", b""), ("blob-bin", b"\xff")])
    assert md.from_headers(headers) == (("blob-bin", b"\x00,"), ("blob-bin", b""), ("blob-bin", b"\xff"))


def test_repeated_text_values_arrive_folded_into_one_comma_joined_value() -> None:
    # nats-py keeps one value per header key: text repeats fold, as HTTP does (RFC 9110 5.3).
    assert md.from_headers(md.to_headers([("k", "a"), ("k", "b")])) == (("k", "a,b"),)


@pytest.mark.parametrize(
    "value", ["José", "\ufffd", "tab\there", "\x01", "a\x7fb", "line\nbreak", "✓"]
)
def test_from_headers_refuses_text_values_outside_printable_ascii(value: str) -> None:
    # What nats-py hands over for bytes a gRPC peer could not have sent (U+FFFD for non-UTF-8).
    with pytest.raises(md.MetadataError, match="x-name"):
        md.from_headers({"x-name": value})


@pytest.mark.parametrize("value", ["", " ", "plain", "~!@#$%^&*()_+{}|:<>?", "a,b"])
def test_from_headers_accepts_printable_ascii_text_values(value: str) -> None:
    assert md.from_headers({"x-name": value}) == (("x-name", value),)


def test_from_headers_lets_transport_headers_it_drops_hold_anything() -> None:
    assert md.from_headers({"nats-grpc-anything": "é", "user-agent": "é/1"}) == ()


# -- _metadata: repeated header lines --------------------------------------------------------


def _nats_py_dict(block: bytes) -> dict[str, str]:
    """What nats-py's parser (2.16.0) makes of a header block: the last line of a key wins."""
    out: dict[str, str] = {}
    for line in block.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().isascii() and not any(c.isspace() for c in name.strip().decode()):
            out[name.strip().decode()] = value.strip().decode("utf-8", "replace")
    return out


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([b"k: v"], {"k": "v"}),
        ([b"k: a", b"k: b"], {"k": "a,b"}),
        ([b"k: a", b"o: x", b"k: b", b"k: c"], {"k": "a,b,c", "o": "x"}),
        ([b"X-A: 1", b"x-a: 2"], {"X-A": "1,2"}),  # keys compare without case; the first spelling stays
        ([b"k-bin: AQ==", b"k-bin:Ag=="], {"k-bin": "AQ==,Ag=="}),
        ([b"k:  a ", b"k:b"], {"k": "a,b"}),  # values trimmed, as nats-py trims them
        ([b"k: a", b"k:"], {"k": "a,"}),  # an empty line value is a value
        ([b"k: a", b"no colon", b"k: b"], {"k": "a,b"}),
        ([b"bad key: 1", b"bad key: 2"], {}),  # nats-py skips keys with whitespace
        ([b"k: \xc3\xa9", b"k: \xff"], {"k": "\u00e9,\ufffd"}),
        ([b"t: 00-1:2", b"t: x"], {"t": "00-1:2,x"}),  # split at the first colon only
    ],
)
def test_repeated_header_lines_join_with_commas(lines: list[bytes], expected: dict[str, str]) -> None:
    block = b"NATS/1.0\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n"
    parsed = _nats_py_dict(block)
    assert md.fold_repeated_lines(block, parsed) is parsed
    assert parsed == expected


def test_folding_leaves_the_status_line_and_keys_that_do_not_repeat_alone() -> None:
    block = b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 7\r\n\r\n"
    parsed = {"Status": "100", "Description": "Idle Heartbeat", "Nats-Last-Consumer": "7"}
    assert md.fold_repeated_lines(block, dict(parsed)) == parsed


def test_from_headers_splits_joined_bin_lines_back_into_values() -> None:
    block = b"NATS/1.0\r\nx-bin: AQ==\r\nx-bin: Ag\r\nx: a\r\nX: b\r\n\r\n"
    folded = md.fold_repeated_lines(block, _nats_py_dict(block))
    assert md.from_headers(folded) == (("x-bin", b"\x01"), ("x-bin", b"\x02"), ("x", "a,b"))


# -- _metadata: nats-grpc-window ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "window"),
    [
        (None, None),
        ("0", None),
        ("00", None),
        ("1024", 1024),
        ("262144", 262144),
        ("4294967295", 2**32 - 1),
        ("4294967296", 2**32 - 1),  # more than a uint32 holds: the most one can, never an error
        ("9" * 5000, 2**32 - 1),  # more digits than int() reads
        ("0" * 20 + "1024", 1024),  # leading zeros are no digits of the value
    ],
)
def test_decode_window_reads_decimal_windows_and_0_as_absent(wire: str | None, window: int | None) -> None:
    assert md.decode_window(wire) == window


@pytest.mark.parametrize(
    "wire",
    ["1", "100", "1023", "0001023", "", "abc", "-5", "+2048", "1_024", "2048.0", "\uff11024", "0x400", " 2048"],
)
def test_decode_window_refuses_windows_below_1024_or_not_decimal(wire: str) -> None:
    with pytest.raises(ValueError, match=r"nats-grpc-window.*1024"):
        md.decode_window(wire)


def test_from_headers_drops_transport_headers_and_lowercases_keys() -> None:
    headers = {
        "grpc-timeout": "1S",
        "content-type": "application/grpc",
        "nats-grpc-stream": "1",
        "nats-grpc-window": "65536",
        "X-User": "alice",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    }
    assert md.from_headers(headers) == (
        ("x-user", "alice"),
        ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    )
    assert md.from_headers(None) == ()
    assert md.from_headers({}) == ()


# -- _metadata: grpc-timeout -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "wire"),
    [
        (0.0, "1n"),  # an expired deadline still reads as the smallest timeout, never as none
        (-5.0, "1n"),
        (1e-12, "1n"),  # rounded up, never down to zero
        (1e-9, "1n"),
        (1.5e-9, "2n"),
        (0.05, "50000000n"),
        (0.5, "500000u"),
        (1.0, "1000000u"),
        (99.999999, "99999999u"),
        (100.0, "100000m"),
        (3600.0, "3600000m"),
        (1e6, "1000000S"),
        (1e9, "16666667M"),
        (1e12, "99999999H"),  # capped at the largest value the format can hold
        (1e30, "99999999H"),
    ],
)
def test_encode_timeout_uses_the_finest_unit_that_fits_eight_digits(seconds: float, wire: str) -> None:
    assert md.encode_timeout(seconds) == wire


@pytest.mark.parametrize("seconds", [1e-6, 0.001, 0.1, 0.3, 0.25, 1.0, 2.5, 59.9, 123.456, 86400.0, 1e7])
def test_encode_timeout_never_shortens_the_deadline_and_stays_close(seconds: float) -> None:
    wire = md.encode_timeout(seconds)
    assert len(wire) <= 9
    decoded = md.decode_timeout(wire)
    assert decoded >= seconds * (1 - 1e-12)
    assert decoded <= seconds * 1.0001 + 1e-9


def test_encode_timeout_of_infinity_is_the_largest_timeout() -> None:
    assert md.encode_timeout(math.inf) == "99999999H"


@pytest.mark.parametrize(
    ("wire", "seconds"),
    [
        ("1H", 3600.0),
        ("2M", 120.0),
        ("3S", 3.0),
        ("1500m", 1.5),
        ("250u", 250e-6),
        ("7n", 7e-9),
        ("000000001S", None),  # 9 digits: malformed
        ("00000001S", 1.0),
        ("99999999H", 99999999 * 3600.0),
        ("0S", 0.0),
        (" 5m ", 0.005),
    ],
)
def test_decode_timeout_reads_every_unit(wire: str, seconds: float | None) -> None:
    if seconds is None:
        with pytest.raises(ValueError, match="grpc-timeout"):
            md.decode_timeout(wire)
    else:
        assert md.decode_timeout(wire) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "wire", ["", "S", "1", "1s", "1h", "1X", "1.5S", "-1S", "+1S", "1 S", "123456789S", "1e3m", "1SS"]
)
def test_decode_timeout_refuses_malformed_values(wire: str) -> None:
    with pytest.raises(ValueError, match="grpc-timeout"):
        md.decode_timeout(wire)


@pytest.mark.parametrize("wire", ["\uff11S", "\u0661S", "\u0967m"])  # fullwidth, Arabic-Indic, Devanagari
def test_decode_timeout_refuses_digits_outside_ascii(wire: str) -> None:
    with pytest.raises(ValueError, match="grpc-timeout"):
        md.decode_timeout(wire)


# -- _envelope -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(Kind))
@pytest.mark.parametrize("seq", [0, 1, 0xFFFFFFFF])
@pytest.mark.parametrize("payload", [b"", b"\x00\x80payload"])
def test_envelopes_pack_and_unpack(kind: Kind, seq: int, payload: bytes) -> None:
    body = env.pack(kind, seq, payload)
    assert len(body) == env.ENVELOPE_SIZE + len(payload)
    got_kind, got_seq, got_payload = env.unpack(body)
    assert (got_kind, got_seq, bytes(got_payload)) == (kind, seq, payload)


def test_envelope_sequence_numbers_wrap_at_32_bits() -> None:
    assert env.unpack(env.pack(Kind.DATA, 2**32 + 5))[1] == 5


def test_an_envelope_shorter_than_its_header_is_refused() -> None:
    with pytest.raises(ValueError, match="shorter"):
        env.unpack(b"\x21\x00\x00")


@pytest.mark.parametrize("kind", list(Kind))
def test_every_envelope_kind_is_recognised_as_an_envelope(kind: Kind) -> None:
    assert env.is_envelope(env.pack(kind, 0))


@pytest.mark.parametrize(
    "body",
    [
        b"",
        _framing.encode_message(b"hi"),
        _framing.encode_trailers(Trailers(0)),
        bytes([_framing.COMPRESSED_FLAG]) + b"\x00\x00\x00\x00",
    ],
)
def test_bare_grpc_frames_are_not_envelopes(body: bytes) -> None:
    assert not env.is_envelope(body)


def test_envelope_kinds_never_collide_with_frame_flags() -> None:
    flags = {_framing.MESSAGE_FLAG, _framing.COMPRESSED_FLAG, _framing.TRAILER_FLAG}
    assert not flags & env.ENVELOPE_KINDS


@pytest.mark.parametrize("window", [0, 1024, 256 * 1024, 0xFFFFFFFF])
def test_accept_carries_the_window_and_the_per_call_subject(window: int) -> None:
    body = env.pack_accept(4, window, "_INBOX.abc.17")
    kind, seq, payload = env.unpack(body)
    assert (kind, seq) == (Kind.ACCEPT, 4)
    assert env.unpack_accept(payload) == (window, "_INBOX.abc.17")


@pytest.mark.parametrize("payload", [b"", b"\x00\x00\x01", b"\x00\x00\x01\x00"])
def test_a_short_accept_payload_is_refused(payload: bytes) -> None:
    with pytest.raises(ValueError, match="ACCEPT"):
        env.unpack_accept(memoryview(payload))


# -- _subjects -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "target", "method", "subject"),
    [
        ("grpc", "quest", "/gaming.quest.v1.QuestService/GetQuest", "grpc.quest.gaming.quest.v1.QuestService.GetQuest"),
        ("grpc", "quest", "gaming.quest.v1.QuestService/GetQuest", "grpc.quest.gaming.quest.v1.QuestService.GetQuest"),
        ("acme", "npc-behavior", "/grpc.health.v1.Health/Check", "acme.npc-behavior.grpc.health.v1.Health.Check"),
        ("grpc", "t", "/Svc/M", "grpc.t.Svc.M"),
    ],
)
def test_call_subject_is_prefix_target_service_method(prefix: str, target: str, method: str, subject: str) -> None:
    assert _subjects.call_subject(prefix, target, method) == subject


@pytest.mark.parametrize(
    ("method", "prefix_len_of"), [("/gaming.quest.v1.QuestService/GetQuest", "grpc.quest."), ("/Svc/M", "grpc.t.")]
)
def test_method_of_inverts_call_subject(method: str, prefix_len_of: str) -> None:
    prefix, target = prefix_len_of.rstrip(".").split(".")
    subject = _subjects.call_subject(prefix, target, method)
    assert _subjects.method_of(subject, len(prefix_len_of)) == method


@pytest.mark.parametrize("method", ["", "/", "//", "/Service", "/Service/", "Service", "/Svc/M/extra", "//M"])
def test_call_subject_refuses_method_strings_not_of_the_form_service_slash_method(method: str) -> None:
    with pytest.raises(ValueError, match=r"package\.Service/Method"):
        _subjects.call_subject("grpc", "quest", method)


@pytest.mark.parametrize(
    "method",
    [
        "/pkg.Svc/Get Quest",  # whitespace would split the NATS protocol line
        "/pkg Svc/Get",
        "/pkg.Svc/Get\r\nPUB x 0",
        "/pkg.Svc/Get.Quest",  # a dot in the method name would be read back as part of the service
        "/gaming.quest.v1/QuestService.GetQuest",  # ...so this wrong path would reach GetQuest
        "/pkg.*/Get",  # wildcards would make the call subject match other methods
        "/pkg.Svc/>",
        "/pkg..Svc/Get",  # an empty token is not a valid subject
    ],
)
def test_call_subject_refuses_methods_that_cannot_be_a_literal_subject(method: str) -> None:
    with pytest.raises(ValueError, match="method"):
        _subjects.call_subject("grpc", "quest", method)


@pytest.mark.parametrize("name", ["quest", "npc-behavior", "x_1", "Quest2"])
def test_check_token_accepts_one_plain_token(name: str) -> None:
    assert _subjects.check_token(name, "target") == name


@pytest.mark.parametrize(
    "name",
    [
        "a.b",  # a dotted target would fall under target a's wildcard grpc.a.>
        "",
        ".",
        "a.",
        ".a",
        "a..b",
        "a b",
        "a*",
        ">",
        "qu/est",
        "é",
    ],
)
def test_check_token_refuses_dots_wildcards_spaces_and_empty_names(name: str) -> None:
    with pytest.raises(ValueError, match="target"):
        _subjects.check_token(name, "target")


@pytest.mark.parametrize("subject", ["grpc.quest.NoDot", "grpc.quest."])
def test_method_of_a_subject_without_service_and_method_is_none(subject: str) -> None:
    assert _subjects.method_of(subject, len("grpc.quest.")) is None
