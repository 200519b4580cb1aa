"""The envelope of stream-mode NATS messages: ``kind (1 byte) | seq (4 bytes BE) | payload``.

Unary replies are bare gRPC frames, whose first byte is a frame flag (0x00, 0x01 or 0x80);
envelope kinds are chosen outside that set so one reply subscription can carry both.
"""

from __future__ import annotations

import struct
from enum import IntEnum

ENVELOPE = struct.Struct(">BI")
ENVELOPE_SIZE = ENVELOPE.size
CREDIT = struct.Struct(">I")


class Kind(IntEnum):
    """What a stream-mode message carries."""

    DATA = 0x21  # payload: gRPC frame bytes; a frame may continue in the next DATA
    HALF_CLOSE = 0x22  # client -> server: no more requests
    CANCEL = 0x23  # either side abandons the call; payload: optional UTF-8 reason
    CREDIT = 0x24  # payload: 4-byte BE count of bytes the sender may add to its window
    PING = 0x25  # keepalive on an idle call; no payload
    ACCEPT = 0x26  # server -> client, first message: payload = 4-byte window | per-call subject
    HEADERS = 0x27  # server -> client: initial metadata in the NATS headers; no payload


ENVELOPE_KINDS = frozenset(int(k) for k in Kind)


def pack(kind: Kind, seq: int, payload: bytes | memoryview = b"") -> bytes:
    """One stream-mode message body."""
    return ENVELOPE.pack(kind, seq & 0xFFFFFFFF) + payload


def is_envelope(body: bytes) -> bool:
    """Whether a body is a stream-mode message rather than bare gRPC frames."""
    return bool(body) and body[0] in ENVELOPE_KINDS


def unpack(body: bytes) -> tuple[int, int, memoryview]:
    """(kind, seq, payload) of a stream-mode message; raises ``ValueError`` if too short."""
    if len(body) < ENVELOPE_SIZE:
        raise ValueError("stream message shorter than its envelope")
    kind, seq = ENVELOPE.unpack_from(body)
    return kind, seq, memoryview(body)[ENVELOPE_SIZE:]


def pack_accept(seq: int, window: int, subject: str) -> bytes:
    """The server's first stream message: its receive window and the per-call subject."""
    return pack(Kind.ACCEPT, seq, CREDIT.pack(window) + subject.encode("ascii"))


def unpack_accept(payload: memoryview) -> tuple[int, str]:
    """(window, per-call subject) from an ACCEPT payload."""
    if len(payload) < CREDIT.size + 1:
        raise ValueError("ACCEPT payload too short")
    (window,) = CREDIT.unpack_from(payload)
    return window, bytes(payload[CREDIT.size :]).decode("ascii")
