"""gRPC metadata <-> NATS headers, and the ``grpc-timeout`` format. Pure code, no I/O.

gRPC's rules apply: keys are lowercase ``[0-9a-z_.-]``; keys ending in ``-bin`` carry bytes,
base64-encoded on the wire; other values are printable ASCII. nats-py keeps one value per header
key, so repeated values are joined with ``,``: exact for ``-bin`` keys (base64 has no comma),
and the HTTP folding rule (RFC 9110 5.3) for text keys. Receivers join header lines that repeat a
key the same way (:func:`fold_repeated_lines`), where nats-py's parser would keep only the last.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Iterable, Mapping
from typing import Union

MetadataValue = Union[str, bytes]  # noqa: UP007 - used at runtime in isinstance checks' docs
MetadataTuple = tuple[str, MetadataValue]

# Header names the transport itself owns; user metadata may not use them.
TIMEOUT_HEADER = "grpc-timeout"
CONTENT_TYPE_HEADER = "content-type"
STREAM_HEADER = "nats-grpc-stream"
WINDOW_HEADER = "nats-grpc-window"
KEEPALIVE_HEADER = "nats-grpc-keepalive"  # wire protocol 1.1: the PING interval asked or promised
CALL_HEADER = "nats-grpc-call"  # wire protocol 1.1: the reply subject a cancel message names
RESERVED_PREFIXES = ("grpc-", "nats-grpc-", ":")
TRANSPORT_HEADERS = frozenset({TIMEOUT_HEADER, CONTENT_TYPE_HEADER, "te", "user-agent"})
TRACE_HEADERS = ("traceparent", "tracestate")

_KEY = re.compile(r"[0-9a-z_.\-]+")
_WINDOW = re.compile(r"[0-9]+")
MIN_WINDOW = 1024  # the least receive window a stream side may announce (wire spec §6.5)
MAX_WINDOW = 0xFFFFFFFF  # what a uint32 (ACCEPT's field, a CREDIT) can hold
_TIMEOUT = re.compile(r"^([0-9]{1,8})([HMSmun])\Z")
_UNIT_SECONDS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
# Finest unit first: the most precise encoding that fits in 8 digits wins.
_UNITS_BY_PRECISION = ("n", "u", "m", "S", "M", "H")


class MetadataError(ValueError):
    """Metadata that cannot travel: a bad key, a reserved key, or a non-ASCII text value."""


def normalize_key(key: str) -> str:
    """Lowercase and validate a metadata key."""
    lowered = key.lower()
    if not _KEY.fullmatch(lowered):  # fullmatch: `$` would also let a final newline through
        raise MetadataError(f"metadata key {key!r} has characters outside [0-9a-z_.-]")
    return lowered


def check_user_key(key: str) -> str:
    """Validate a key that application code supplies (reserved prefixes refused)."""
    lowered = normalize_key(key)
    if lowered.startswith(RESERVED_PREFIXES):
        raise MetadataError(f"metadata key {key!r} is reserved for the transport")
    return lowered


# Reserved keys a server's application may still send as trailing metadata (gRFC A6 pushback).
APPLICATION_TRAILERS = frozenset({"grpc-retry-pushback-ms"})


def check_trailing_key(key: str) -> str:
    """Validate a trailing-metadata key a handler supplies: user keys, plus the pushback key."""
    lowered = normalize_key(key)
    return lowered if lowered in APPLICATION_TRAILERS else check_user_key(lowered)


def encode_value(key: str, value: MetadataValue) -> str:
    """The wire form of one value: base64 for ``-bin`` keys, checked ASCII otherwise."""
    if key.endswith("-bin"):
        try:
            raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        except UnicodeEncodeError as exc:  # lone surrogates have no UTF-8 form
            raise MetadataError(f"metadata value for {key!r} is not valid unicode") from exc
        return base64.b64encode(raw).decode("ascii")
    if not isinstance(value, str):
        raise MetadataError(f"metadata value for {key!r} must be str (use a '-bin' key for bytes)")
    _check_printable(key, value)
    return value


def _check_printable(key: str, value: str) -> None:
    # For ASCII, isprintable() is exactly 0x20-0x7E: both checks run in C, once per value.
    if not (value.isascii() and value.isprintable()):
        raise MetadataError(
            f"metadata value for {key!r} is not printable ASCII; use a '-bin' key for other data"
        )


def decode_value(key: str, value: str) -> MetadataValue:
    """Inverse of :func:`encode_value` for one value."""
    if key.endswith("-bin"):
        try:
            return base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
        except ValueError as exc:  # binascii.Error, or a ValueError for non-ASCII text
            raise MetadataError(f"metadata value for {key!r} is not valid base64") from exc
    return value


def to_headers(
    metadata: Iterable[MetadataTuple] | None, headers: dict[str, str] | None = None
) -> dict[str, str]:
    """Add user metadata to a NATS header dict, joining repeated keys with ','."""
    out = headers if headers is not None else {}
    if metadata is None:
        return out
    for key, value in metadata:
        name = check_user_key(key)
        encoded = encode_value(name, value)
        previous = out.get(name)
        out[name] = encoded if previous is None else f"{previous},{encoded}"
    return out


def from_headers(headers: Mapping[str, str] | None) -> tuple[MetadataTuple, ...]:
    """User metadata from NATS headers, transport headers removed; ``-bin`` repeats split.

    Raises :class:`MetadataError` for a ``-bin`` value that is not base64 and for a text value
    that is not printable ASCII (wire spec §4): nats-py hands over any UTF-8 it received, with
    U+FFFD for bytes that are not, which no gRPC peer could have sent as a text value.
    """
    if not headers:
        return ()
    out: list[MetadataTuple] = []
    for raw_key, value in headers.items():
        key = raw_key.lower()
        if key in TRANSPORT_HEADERS or key.startswith("nats-grpc-"):
            continue
        if key.endswith("-bin"):
            out.extend((key, decode_value(key, part)) for part in value.split(","))
        else:
            _check_printable(key, value)
            out.append((key, value))
    return tuple(out)


_VERSION_LINE = b"NATS/1.0\r\n"


def parse_plain_block(block: bytes) -> dict[str, str] | None:
    """The headers of a header block with a bare version line, read exactly as nats-py (2.16)
    reads them, repeated keys joined (:func:`fold_repeated_lines`); None for any other block
    (a status line, say), which only nats-py's own parser knows how to read.

    Why not nats-py's parser: it is a coroutine and tests each key character by character in a
    generator; this one is plain and tests a key with two C calls, falling back to nats-py's exact
    rules only for a key that is not plain (its result is the same either way, see the tests).
    """
    if not block.startswith(_VERSION_LINE):
        return None
    out: dict[str, str] = {}
    for line in block[len(_VERSION_LINE) :].split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if not sep:
            continue  # the blank last line, or a line nats-py skips
        plain = name.decode("latin-1")
        # Printable ASCII without a space holds no whitespace and needs no trimming.
        key = plain if plain.isascii() and plain.isprintable() and " " not in plain else _nats_py_key(name)
        if key is not None:
            out[key] = value.strip().decode("utf-8", "replace")
    # CRLFs: the version line's, one per header line and the blank line's.
    if len(out) < block.count(b"\r\n") - 2:
        fold_repeated_lines(block, out)
    return out


def _nats_py_key(name: bytes) -> str | None:
    """A header line's key as nats-py (2.16) reads it: trimmed, ASCII and free of whitespace,
    or None for a line it skips."""
    try:
        key = name.strip().decode("ascii")
    except UnicodeDecodeError:
        return None
    return None if any(ch.isspace() for ch in key) else key


def fold_repeated_lines(block: bytes, parsed: dict[str, str]) -> dict[str, str]:
    """Join, in ``parsed``, the values of header lines of ``block`` that repeat a key.

    ``block`` is a raw NATS header block (``NATS/1.0...`` line first) and ``parsed`` the dict
    nats-py made of it, which keeps only the last line of a repeated key. HTTP field-line
    combination (RFC 9110 5.3), as wire spec §4 has it: keys compare without case, values join
    with ``,`` in line order, under the key's first spelling. Lines are read as nats-py reads them
    (split at the first ``:``, both sides trimmed; lines without ``:`` and keys that are not ASCII
    or hold whitespace are skipped), so keys that do not repeat keep nats-py's value. Returns
    ``parsed``.
    """
    seen: dict[str, tuple[str, list[str]]] = {}
    for line in block.split(b"\r\n")[1:]:  # the first line is the version (and status) line
        name, sep, raw_value = line.partition(b":")
        key = _nats_py_key(name) if sep else None
        if key is None:
            continue
        value = raw_value.strip().decode("utf-8", "replace")
        entry = seen.get(key.lower())
        if entry is None:
            seen[key.lower()] = (key, [value])
        else:
            entry[1].append(value)
    for lowered, (first, values) in seen.items():
        if len(values) > 1:
            for spelling in [k for k in parsed if k.lower() == lowered]:
                del parsed[spelling]
            parsed[first] = ",".join(values)
    return parsed


def encode_timeout(seconds: float) -> str:
    """``grpc-timeout`` for a remaining time, rounded up so a tiny deadline never reads as 0."""
    if 0.1 < seconds < 99.0:
        # Most deadlines: microseconds are the finest unit that fits 8 digits, as the loop below
        # would find after trying nanoseconds; written at once, it costs a fifth as much.
        return f"{math.ceil(seconds / _UNIT_SECONDS['u'])}u"
    if not math.isfinite(seconds):
        return "99999999H" if seconds > 0 else "1n"
    seconds = max(seconds, 0.0)
    for unit in _UNITS_BY_PRECISION:
        scaled = seconds / _UNIT_SECONDS[unit]  # may overflow to inf, which math.ceil refuses
        if scaled < 100_000_000 and (amount := math.ceil(scaled)) < 100_000_000:
            return f"{max(amount, 1)}{unit}"
    return "99999999H"


def decode_timeout(text: str) -> float:
    """Seconds from a ``grpc-timeout`` value; raises ``ValueError`` if malformed."""
    # Most values are bare ASCII digits and a unit: read those without the regex (the same
    # result; anything else, surrounding whitespace included, goes the regex's way).
    digits, unit = text[:-1], text[-1:]
    if unit in _UNIT_SECONDS and len(digits) <= 8 and digits.isascii() and digits.isdigit():
        return int(digits) * _UNIT_SECONDS[unit]
    match = _TIMEOUT.match(text.strip())
    if match is None:
        raise ValueError(f"malformed grpc-timeout {text[:20]!r}")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def decode_window(text: str | None) -> int | None:
    """The receive window a stream opening announces in ``nats-grpc-window`` (wire spec §6.5):
    None when absent or ``0`` (the peer takes the server's own, as 1.0 allowed); at most
    :data:`MAX_WINDOW`, since sending less than a window allows is always safe and 1.0 set no
    bound; ``ValueError`` unless ASCII digits of at least :data:`MIN_WINDOW`."""
    if text is None:
        return None
    # fullmatch, as int() also reads " 7", "+7", "1_0" and non-ASCII digits.
    if _WINDOW.fullmatch(text) is None:
        raise ValueError(f"{WINDOW_HEADER} {text[:20]!r} is not a decimal window of at least {MIN_WINDOW} bytes")
    digits = text.lstrip("0")
    if not digits:
        return None
    if len(digits) > 10:  # beyond MAX_WINDOW, and maybe beyond the 4300 digits int() reads
        return MAX_WINDOW
    value = int(digits)
    if value < MIN_WINDOW:
        raise ValueError(f"{WINDOW_HEADER} {text[:20]!r} is not a decimal window of at least {MIN_WINDOW} bytes")
    return min(value, MAX_WINDOW)
