"""gRPC length-prefixed framing and the gRPC-Web style trailer block. Pure code, no I/O.

A frame is ``flag (1 byte) | length (4 bytes, big-endian) | payload``. Flag 0x00 is a message,
0x80 the trailer block that ends a call. A frame may be split over several NATS messages; the
:class:`FrameDecoder` reassembles them.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from nats_transport._metadata import MetadataError, MetadataTuple, decode_value, encode_value

MESSAGE_FLAG = 0x00
COMPRESSED_FLAG = 0x01
TRAILER_FLAG = 0x80
HEADER_SIZE = 5
_HEADER = struct.Struct(">BI")


class FramingError(ValueError):
    """The bytes are not well-formed gRPC frames."""


def encode_message(payload: bytes) -> bytes:
    """One uncompressed message frame."""
    return _HEADER.pack(MESSAGE_FLAG, len(payload)) + payload


def message_frame_header(length: int) -> bytes:
    """The 5-byte prefix of a message frame of ``length`` bytes (to avoid copying big payloads)."""
    return _HEADER.pack(MESSAGE_FLAG, length)


@dataclass(frozen=True, slots=True)
class Trailers:
    """Status and trailing metadata of a finished call."""

    code: int
    message: str = ""
    details: bytes | None = None
    metadata: tuple[MetadataTuple, ...] = ()


def _percent_encode(text: str) -> str:
    # grpc-message is percent-encoded UTF-8 (gRPC over HTTP/2 spec): printable ASCII except '%'.
    out = []
    for byte in _utf8(text):
        out.append(chr(byte) if 0x20 <= byte <= 0x7E and byte != 0x25 else f"%{byte:02X}")
    # Receivers trim the spaces around a header value (nats-py and our trailer parser alike), so
    # a space at either end travels escaped (wire spec §3, 1.1); gRPC lets senders escape any byte.
    if out and out[0] == " ":
        out[0] = "%20"
    if out and out[-1] == " ":
        out[-1] = "%20"
    return "".join(out)


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates (details built from text decoded with "surrogateescape", say) have no
        # UTF-8 form: each travels as U+FFFD rather than failing the call's last message.
        return "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in text).encode("utf-8")


def _percent_decode(text: str) -> str:
    raw = bytearray()
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "%" and i + 2 < len(text) and _is_hex(text[i + 1 : i + 3]):
            raw.append(int(text[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.extend(ch.encode("utf-8"))
            i += 1
    return raw.decode("utf-8", errors="replace")


def _is_hex(pair: str) -> bool:
    return len(pair) == 2 and all(c in "0123456789abcdefABCDEF" for c in pair)


def encode_trailers(trailers: Trailers) -> bytes:
    """The trailer frame: an HTTP/1-style header block, one line per value, repeated keys kept."""
    lines = [f"grpc-status: {trailers.code}"]
    if trailers.message:
        lines.append(f"grpc-message: {_percent_encode(trailers.message)}")
    if trailers.details:
        lines.append(f"grpc-status-details-bin: {base64.b64encode(trailers.details).decode('ascii')}")
    for key, value in trailers.metadata:
        lines.append(f"{key}: {encode_value(key, value)}")
    block = ("\r\n".join(lines) + "\r\n").encode("ascii")
    return _HEADER.pack(TRAILER_FLAG, len(block)) + block


def decode_trailer_block(block: bytes) -> Trailers:
    """Parse a trailer block (without its 5-byte prefix)."""
    code: int | None = None
    message = ""
    details: bytes | None = None
    metadata: list[MetadataTuple] = []
    try:
        text = block.decode("ascii")
    except UnicodeDecodeError as exc:
        raise FramingError("trailer block is not ASCII") from exc
    for line in text.split("\r\n"):
        if not line:
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise FramingError(f"malformed trailer line {line[:40]!r}")
        key = key.strip().lower()
        value = value.strip()
        if key == "grpc-status":
            # Senders put it first; receivers take it from any line, but two are ambiguous (§3).
            if code is not None:
                raise FramingError("trailer block has more than one grpc-status")
            if not value.isdigit():
                raise FramingError(f"bad grpc-status {value[:20]!r}")
            try:
                code = int(value)
            except ValueError as exc:  # more digits than int() reads (sys.get_int_max_str_digits)
                raise FramingError(f"bad grpc-status {value[:20]!r}...") from exc
        elif key == "grpc-message":
            message = _percent_decode(value)
        elif key == "grpc-status-details-bin":
            try:
                details = base64.b64decode(value + "=" * (-len(value) % 4))
            except binascii.Error as exc:
                raise FramingError("bad grpc-status-details-bin") from exc
        else:
            try:
                metadata.append((key, decode_value(key, value)))
            except MetadataError as exc:  # a -bin trailer that is not base64
                raise FramingError(str(exc)) from exc
    if code is None:
        raise FramingError("trailer block has no grpc-status")
    return Trailers(code, message, details, tuple(metadata))


@dataclass(slots=True)
class FrameDecoder:
    """Incremental decoder: feed bytes as they arrive, take complete frames out.

    ``max_message`` bounds a single frame so a peer cannot make us buffer without limit; an
    oversized frame is reported as soon as its header is seen, before its body arrives.
    """

    max_message: int
    _buffer: bytearray | None = None
    _pending: int = 0

    @property
    def buffered(self) -> int:
        """Bytes held for frames not yet complete."""
        return len(self._buffer) if self._buffer else 0

    @property
    def mid_frame(self) -> bool:
        """Whether a frame has started but not finished."""
        return bool(self._buffer)

    def feed(self, data: bytes | memoryview) -> list[tuple[int, bytes]]:
        """Add bytes; return the (flag, payload) of every frame now complete."""
        if self._buffer:
            self._buffer += data
            view = memoryview(self._buffer)
        else:
            view = memoryview(data)
        frames: list[tuple[int, bytes]] = []
        offset = 0
        total = len(view)
        while total - offset >= HEADER_SIZE:
            flag, length = _HEADER.unpack_from(view, offset)
            if flag not in (MESSAGE_FLAG, COMPRESSED_FLAG, TRAILER_FLAG):
                raise FramingError(f"unknown frame flag 0x{flag:02x}")
            if length > self.max_message:
                raise FrameTooLarge(length, self.max_message)
            end = offset + HEADER_SIZE + length
            if end > total:
                break
            frames.append((flag, bytes(view[offset + HEADER_SIZE : end])))
            offset = end
        rest = view[offset:]
        self._buffer = bytearray(rest) if len(rest) else None
        view.release()
        return frames


class FrameTooLarge(FramingError):
    """A frame announces a message larger than the receiver accepts."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"message of {length} bytes exceeds the limit of {limit} bytes")
        self.length = length
        self.limit = limit


def decode_complete(body: bytes, max_message: int) -> list[tuple[int, bytes]]:
    """Decode a body that must hold whole frames only (a unary request or reply): what a
    :class:`FrameDecoder` fed ``body`` gives, and FramingError where it would be mid-frame."""
    # The decoder's rules without its buffer and views: every unary call decodes two bodies.
    if not isinstance(body, bytes):
        body = bytes(body)
    frames: list[tuple[int, bytes]] = []
    offset = 0
    total = len(body)
    while offset < total:
        if total - offset < HEADER_SIZE:
            raise FramingError("truncated frame")
        flag, length = _HEADER.unpack_from(body, offset)
        if flag not in (MESSAGE_FLAG, COMPRESSED_FLAG, TRAILER_FLAG):
            raise FramingError(f"unknown frame flag 0x{flag:02x}")
        if length > max_message:
            raise FrameTooLarge(length, max_message)
        end = offset + HEADER_SIZE + length
        if end > total:
            raise FramingError("truncated frame")
        frames.append((flag, body[offset + HEADER_SIZE : end]))
        offset = end
    return frames


def join_frames(parts: Iterable[bytes]) -> bytes:
    """Concatenate already-encoded frames."""
    return b"".join(parts)


def split(data: bytes | memoryview, size: int) -> Sequence[memoryview]:
    """Cut ``data`` into chunks of at most ``size`` bytes (continuation chunks of a big frame)."""
    view = memoryview(data)
    return [view[i : i + size] for i in range(0, len(view), size)] or [view]
