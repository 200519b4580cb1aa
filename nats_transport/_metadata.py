"""gRPC metadata <-> NATS headers, and the ``grpc-timeout`` format. Pure code, no I/O.

gRPC's rules apply: keys are lowercase ``[0-9a-z_.-]``; keys ending in ``-bin`` carry bytes,
base64-encoded on the wire; other values are printable ASCII. nats-py keeps one value per header
key, so repeated values are joined with ``,``: exact for ``-bin`` keys (base64 has no comma),
and the HTTP folding rule (RFC 9110 5.3) for text keys.
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
    if not all(0x20 <= ord(ch) <= 0x7E for ch in value):
        raise MetadataError(
            f"metadata value for {key!r} is not printable ASCII; use a '-bin' key for other data"
        )
    return value


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
    """User metadata from NATS headers, transport headers removed; ``-bin`` repeats split."""
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
            out.append((key, value))
    return tuple(out)


def encode_timeout(seconds: float) -> str:
    """``grpc-timeout`` for a remaining time, rounded up so a tiny deadline never reads as 0."""
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
    match = _TIMEOUT.match(text.strip())
    if match is None:
        raise ValueError(f"malformed grpc-timeout {text[:20]!r}")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
