"""Properties of ``_metadata``: keys, values, NATS headers and ``grpc-timeout`` (§4, §8).

Proves, for inputs hypothesis draws: a key is accepted exactly when its lowercase form is in
gRPC's alphabet (and, for user metadata, not reserved); every value either travels and comes
back (bytes of ``-bin`` keys exactly, printable ASCII text as it is) or is refused with
``MetadataError``; metadata -> NATS headers -> metadata gives the input back with repeated keys
folded as the spec says, and the headers are safe to write on a NATS header line; the transport's
own headers never reach the application; and ``grpc-timeout`` is always well formed, never
shorter than the time it encodes, and read back within its unit's precision.
"""

from __future__ import annotations

import asyncio
import math
import re
import string

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from nats.aio.client import Client

from nats_transport import _metadata as md
from tests.fuzz._wire import (
    PRINTABLE,
    RESERVED_PREFIXES,
    TRANSPORT_KEYS,
    any_text,
    bin_metadata,
    printable_text,
    text_metadata,
)

pytestmark = pytest.mark.fuzz

GRPC_KEY = re.compile(r"[0-9a-z_.\-]+")
GRPC_TIMEOUT = re.compile(r"[0-9]{1,8}[HMSmun]")
UNIT_SECONDS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
LONGEST_TIMEOUT = 99_999_999 * 3600.0

keys = st.text(st.sampled_from(string.ascii_letters + string.digits + "_.-:/ \t\n\r,é"), max_size=12) | any_text
values = any_text | st.binary(max_size=20)


# -- keys ---------------------------------------------------------------------------------------


@given(keys)
@example("x-key\n")  # `$` in a pattern also matches before a final newline
@example("\u212a")  # KELVIN SIGN lowercases to an ASCII "k"
def test_a_key_is_accepted_exactly_when_its_lowercase_form_is_in_the_grpc_alphabet(key: str) -> None:
    if GRPC_KEY.fullmatch(key.lower()):
        assert md.normalize_key(key) == key.lower()
    else:
        with pytest.raises(md.MetadataError):
            md.normalize_key(key)


@given(keys | st.sampled_from(("grpc-x", "Nats-Grpc-Stream", ":path", "grpc-timeout")))
def test_user_metadata_keys_are_also_refused_when_reserved_for_the_transport(key: str) -> None:
    lowered = key.lower()
    if GRPC_KEY.fullmatch(lowered) and not lowered.startswith(RESERVED_PREFIXES):
        assert md.check_user_key(key) == lowered
    else:
        with pytest.raises(md.MetadataError):
            md.check_user_key(key)


# -- values ---------------------------------------------------------------------------------------


@given(st.sampled_from(("x-name", "x-name-bin")), values)
@example("x-name-bin", "caf\udce9")  # a str -bin value with a lone surrogate has no UTF-8 form
def test_a_value_either_travels_and_comes_back_or_is_refused_with_a_metadata_error(
    key: str, value: str | bytes
) -> None:
    try:
        wire = md.encode_value(key, value)
    except md.MetadataError:
        if key.endswith("-bin"):
            assert isinstance(value, str)  # bytes always travel
            return
        assert not isinstance(value, str) or any(ch not in PRINTABLE for ch in value)
        return
    assert all(ch in PRINTABLE for ch in wire)
    if key.endswith("-bin"):
        assert md.decode_value(key, wire) == (value.encode("utf-8") if isinstance(value, str) else value)
    else:
        assert md.decode_value(key, wire) == value


@given(st.text(st.sampled_from(string.ascii_letters + string.digits + "+/=-_ ,!"), max_size=16) | any_text)
def test_decoding_any_bin_value_gives_bytes_or_a_metadata_error(wire: str) -> None:
    try:
        decoded = md.decode_value("x-name-bin", wire)
    except md.MetadataError:
        return
    assert isinstance(decoded, bytes)


# -- NATS headers ------------------------------------------------------------------------------------


@st.composite
def mixed_case(draw: st.DrawFn, pair: tuple[str, str | bytes]) -> tuple[str, str | bytes]:
    key, value = pair
    return (key.upper() if draw(st.booleans()) else key), value


def _folded(metadata: list[tuple[str, str | bytes]]) -> tuple[tuple[str, str | bytes], ...]:
    """§4: keys lowercased; a repeated text key arrives as one value joined with ','; repeated
    -bin values arrive one by one."""
    groups: dict[str, list[str | bytes]] = {}
    for key, value in metadata:
        groups.setdefault(key.lower(), []).append(value)
    out: list[tuple[str, str | bytes]] = []
    for key, group in groups.items():
        if key.endswith("-bin"):
            out.extend((key, v.encode("utf-8") if isinstance(v, str) else v) for v in group)
        else:
            out.append((key, ",".join(str(v) for v in group)))
    return tuple(out)


@given(st.lists((text_metadata | bin_metadata).flatmap(mixed_case), max_size=10))
def test_metadata_survives_nats_headers_with_repeated_keys_folded_as_the_spec_says(
    metadata: list[tuple[str, str | bytes]],
) -> None:
    headers = md.to_headers(metadata)
    for key, value in headers.items():
        # Safe to write as a header line: no CR, LF or other byte outside printable ASCII.
        assert GRPC_KEY.fullmatch(key)
        assert all(ch in PRINTABLE for ch in value)
    assert md.from_headers(headers) == _folded(metadata)


@given(st.lists(text_metadata, max_size=4), st.dictionaries(st.sampled_from(("grpc-timeout", "x")), printable_text))
def test_to_headers_adds_to_the_header_dict_it_is_given(
    metadata: list[tuple[str, str]], existing: dict[str, str]
) -> None:
    headers = dict(existing)
    assert md.to_headers(metadata, headers) is headers
    added = md.to_headers(metadata)
    assert headers.keys() == existing.keys() | added.keys()
    for key, value in existing.items():
        # A key already there keeps its value, and a repeat joins on after it.
        assert headers[key] == (f"{value},{added[key]}" if key in added else value)


transport_header_names = st.sampled_from(TRANSPORT_KEYS).map(str) | st.sampled_from(
    ("nats-grpc-stream", "nats-grpc-window", "nats-grpc-anything")
)


@given(
    st.dictionaries(
        (transport_header_names | st.sampled_from(("X-User", "traceparent", "tracestate", "x-id"))).flatmap(
            lambda k: st.sampled_from((k, k.upper(), k.title()))
        ),
        printable_text,
    )
)
def test_the_application_never_sees_the_transport_headers_but_sees_all_others(headers: dict[str, str]) -> None:
    seen = md.from_headers(headers)
    transport = {k for k in headers if k.lower() in TRANSPORT_KEYS or k.lower().startswith("nats-grpc-")}
    assert [key for key, _ in seen] == [k.lower() for k in headers if k not in transport]


@given(st.dictionaries(keys, any_text | printable_text, max_size=5))
def test_reading_any_header_dict_gives_metadata_or_a_metadata_error(headers: dict[str, str]) -> None:
    try:
        seen = md.from_headers(headers)
    except md.MetadataError:
        # §4: a -bin value that is not base64, or (1.1) a shown text value outside printable ASCII.
        shown = {k: v for k, v in headers.items() if k.lower() not in TRANSPORT_KEYS}
        shown = {k: v for k, v in shown.items() if not k.lower().startswith("nats-grpc-")}
        assert any(k.lower().endswith("-bin") or not (v.isascii() and v.isprintable()) for k, v in shown.items())
        return
    assert all(key == key.lower() for key, _ in seen)


# -- header blocks -----------------------------------------------------------------------------------

header_lines = st.lists(
    st.binary(max_size=24)
    | st.builds(
        lambda name, value: name + b":" + value,
        st.sampled_from((b"k", b"K", b"grpc-timeout", b"x-bin", b" k", b"k ", b"a b", b"", b"\xc3\xa9", b"k\x1c",
                         b"k\x01", b"\tk")) | st.binary(max_size=8),
        st.binary(max_size=12),
    ),
    max_size=6,
).map(lambda lines: [line.replace(b"\r\n", b"") for line in lines])


def _nats_py_reads(block: bytes) -> dict[str, str] | None:
    """What a guarded connection made of a header block before parse_plain_block: nats-py's own
    parser, then repeated keys folded when there are fewer keys than lines."""
    parsed = asyncio.run(Client()._process_headers(block))
    if parsed and len(parsed) < block.count(b"\r\n") - 2:
        md.fold_repeated_lines(block, parsed)
    return parsed


@given(header_lines)
@example([b"grpc-timeout: 5S"])
@example([b"k: a", b"k: b", b"K: c"])
@example([b"no colon", b": empty key", b"k:\xff"])
def test_a_plain_header_block_reads_exactly_as_nats_py_reads_it(lines: list[bytes]) -> None:
    block = b"NATS/1.0\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n"
    assert (md.parse_plain_block(block) or None) == _nats_py_reads(block)


@pytest.mark.parametrize("block", [b"NATS/1.0 503\r\n\r\n", b"NATS/1.0 100 Idle\r\nk: v\r\n\r\n", b"NATS/1.1\r\n\r\n"])
def test_a_block_with_a_status_line_is_left_to_nats_py(block: bytes) -> None:
    assert md.parse_plain_block(block) is None


# -- grpc-timeout ------------------------------------------------------------------------------------


@given(st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from((0.0, -0.0, 1e-9, LONGEST_TIMEOUT)))
def test_encode_timeout_always_writes_one_to_eight_digits_and_a_unit(seconds: float) -> None:
    assert GRPC_TIMEOUT.fullmatch(md.encode_timeout(seconds))


@given(st.floats(0, LONGEST_TIMEOUT) | st.floats(0, 1e-3) | st.floats(0, 200))
def test_encode_timeout_never_shortens_a_deadline_and_stays_within_its_units_precision(seconds: float) -> None:
    decoded = md.decode_timeout(md.encode_timeout(seconds))
    # The finest unit whose count fits 8 digits is at most 1000 times the one below it, so
    # rounding up adds at most 1e-5 of the value, or 1 ns for values under 0.1 s.
    assert decoded >= seconds * (1 - 1e-12)
    assert decoded <= seconds * (1 + 1.0001e-5) + 1.0001e-9


@given(st.floats(LONGEST_TIMEOUT * 1.0001, allow_infinity=True))
def test_a_timeout_beyond_what_the_format_holds_is_the_longest_one(seconds: float) -> None:
    assert md.encode_timeout(seconds) == "99999999H"


@given(st.from_regex(GRPC_TIMEOUT, fullmatch=True))
def test_every_well_formed_grpc_timeout_is_read_exactly_and_encodes_back_no_shorter(wire: str) -> None:
    seconds = md.decode_timeout(wire)
    assert seconds == pytest.approx(int(wire[:-1]) * UNIT_SECONDS[wire[-1]], rel=1e-12)
    again = md.decode_timeout(md.encode_timeout(seconds))
    assert again >= seconds * (1 - 1e-12)


@given(st.text(st.sampled_from("0123456789HMSmun \t\n+-.e\uff11\u0661"), max_size=11) | any_text)
def test_reading_any_grpc_timeout_gives_seconds_or_a_value_error(wire: str) -> None:
    well_formed = GRPC_TIMEOUT.fullmatch(wire.strip()) is not None
    try:
        seconds = md.decode_timeout(wire)
    except ValueError:
        assert not well_formed
        return
    assert well_formed
    assert math.isfinite(seconds)
    assert seconds >= 0


@given(st.floats(0, 200) | st.sampled_from((0.1, 0.1000001, 98.999999, 99.0, 99.99999999)))
def test_encode_timeout_writes_the_finest_unit_whose_count_fits_eight_digits(seconds: float) -> None:
    text = md.encode_timeout(seconds)
    finest = next(
        unit
        for unit in ("n", "u", "m", "S", "M", "H")
        if (scaled := seconds / md._UNIT_SECONDS[unit]) < 100_000_000 and math.ceil(scaled) < 100_000_000
    )
    assert text[-1] == finest
    assert int(text[:-1]) == max(math.ceil(seconds / md._UNIT_SECONDS[finest]), 1)


_TIMEOUT_TEXT = st.text(alphabet="0123456789HMSmun \t\u0663x", max_size=12) | st.from_regex(r"\A[0-9]{1,9}[HMSmun]\Z")


@given(_TIMEOUT_TEXT)
@example("\u0663S")  # a non-ASCII digit, which int() would read
@example("123456789m")
@example(" 5S")
def test_decode_timeout_reads_what_the_grpc_timeout_grammar_allows_and_nothing_else(text: str) -> None:
    match = re.fullmatch(r"([0-9]{1,8})([HMSmun])", text.strip())
    if match is None:
        with pytest.raises(ValueError, match="malformed grpc-timeout"):
            md.decode_timeout(text)
    else:
        assert md.decode_timeout(text) == int(match.group(1)) * md._UNIT_SECONDS[match.group(2)]
