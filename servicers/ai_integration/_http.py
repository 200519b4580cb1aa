"""A small HTTP/1.1 client on asyncio streams: one POST per connection, bodies read as they come.

Why not ``urllib`` in a thread: a thread blocked in ``read()`` cannot be cancelled, so a caller
that goes away (a cancelled StreamGenerate, a missed deadline) would leave the remote model
generating until it finished. Here the request is a task on the event loop: cancelling it closes
the socket at once, and the remote server sees the disconnect and stops.

Each request opens its own connection and sends ``Connection: close`` (no pooling: an inference
call lasts far longer than a TCP or TLS handshake). Responses may be sized by Content-Length,
chunked, or delimited by the server closing the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

# Bounds on what a server may send us: a status line or header, all headers, a whole body.
MAX_LINE = 64 * 1024
MAX_HEADERS = 100
MAX_BODY = 16 * 1024 * 1024


class ProtocolError(Exception):
    """The server's answer is not HTTP/1.1 we can read, or exceeds our bounds."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where to send requests: a parsed ``http://`` or ``https://`` base URL."""

    scheme: str
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """``url`` as an endpoint.

        Raises:
            ValueError: not an absolute http(s) URL.
        """
        parts: SplitResult = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(parts.scheme, parts.hostname, port, parts.path.rstrip("/"))

    @property
    def authority(self) -> str:
        """The Host header: the port is left out when it is the scheme's default."""
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


class Response:
    """A response whose status and headers have arrived; the body is read on demand."""

    def __init__(
        self, status: int, headers: dict[str, str], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.status = status
        self.headers = headers
        self._reader = reader
        self._writer = writer

    def __repr__(self) -> str:
        return f"<Response status={self.status}>"

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body, piece by piece as it arrives (de-chunked)."""
        total = 0
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            pieces = self._dechunked()
        elif "content-length" in self.headers:
            pieces = self._sized(_content_length(self.headers["content-length"]))
        else:
            pieces = self._until_closed()
        async for piece in pieces:
            total += len(piece)
            if total > MAX_BODY:
                raise ProtocolError(f"response body larger than {MAX_BODY} bytes")
            yield piece

    async def read(self) -> bytes:
        """The whole body."""
        return b"".join([piece async for piece in self.chunks()])

    async def lines(self) -> AsyncIterator[bytes]:
        """The body split into lines (without line endings), as each line completes."""
        pending = b""
        async for piece in self.chunks():
            pending += piece
            *complete, pending = pending.split(b"\n")
            for line in complete:
                yield line.rstrip(b"\r")
            if len(pending) > MAX_LINE:
                raise ProtocolError("response line too long")
        if pending:
            yield pending.rstrip(b"\r")

    async def close(self) -> None:
        """Close the connection (the server sees the client go)."""
        self._writer.close()
        # Already broken is fine: closing is all we wanted.
        with contextlib.suppress(OSError, ssl.SSLError):
            await self._writer.wait_closed()

    async def _sized(self, length: int) -> AsyncIterator[bytes]:
        left = length
        while left:
            piece = await self._reader.read(min(left, 65536))
            if not piece:
                raise asyncio.IncompleteReadError(b"", left)
            left -= len(piece)
            yield piece

    async def _until_closed(self) -> AsyncIterator[bytes]:
        while piece := await self._reader.read(65536):
            yield piece

    async def _dechunked(self) -> AsyncIterator[bytes]:
        while True:
            size_line = await self._reader.readline()
            if not size_line.endswith(b"\n"):
                raise asyncio.IncompleteReadError(size_line, None)
            try:
                size = int(size_line.split(b";")[0].strip(), 16)
            except ValueError as err:
                raise ProtocolError(f"bad chunk size {size_line[:40]!r}") from err
            if size == 0:
                # Trailers, if any, end with an empty line; nothing in them matters to us.
                while (await self._reader.readline()).strip():
                    pass
                return
            yield await self._reader.readexactly(size)
            await self._reader.readexactly(2)  # the CRLF after each chunk


def _content_length(text: str) -> int:
    if not text.strip().isdigit():
        raise ProtocolError(f"bad Content-Length {text[:40]!r}")
    return int(text)


async def post(endpoint: Endpoint, path: str, body: bytes, headers: Mapping[str, str]) -> Response:
    """Send one POST and wait for the status line and headers. Close the response when done.

    Raises:
        OSError: the connection could not be made or broke (``ssl.SSLError`` included).
        asyncio.IncompleteReadError: the server closed the connection before answering.
        ProtocolError: the answer is not HTTP/1.x.
    """
    context = ssl.create_default_context() if endpoint.scheme == "https" else None
    reader, writer = await asyncio.open_connection(
        endpoint.host, endpoint.port, ssl=context, limit=MAX_LINE
    )
    try:
        head = [
            f"POST {endpoint.path}{path} HTTP/1.1",
            f"Host: {endpoint.authority}",
            "Connection: close",
            f"Content-Length: {len(body)}",
            *(f"{name}: {value}" for name, value in headers.items()),
        ]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()
        status = await _read_status(reader)
        return Response(status, await _read_headers(reader), reader, writer)
    except BaseException:
        writer.close()
        raise


async def _read_status(reader: asyncio.StreamReader) -> int:
    while True:
        line = await reader.readline()
        if not line.endswith(b"\n"):
            raise asyncio.IncompleteReadError(line, None)
        parts = line.decode("latin-1").split(None, 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise ProtocolError(f"bad status line {line[:80]!r}")
        status = int(parts[1])
        if not 100 <= status < 200:
            return status
        await _read_headers(reader)  # an interim response (100 Continue): skip it


async def _read_headers(reader: asyncio.StreamReader) -> dict[str, str]:
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS):
        line = await reader.readline()
        if not line.endswith(b"\n"):
            raise asyncio.IncompleteReadError(line, None)
        text = line.decode("latin-1").strip()
        if not text:
            return headers
        name, sep, value = text.partition(":")
        if not sep:
            raise ProtocolError(f"bad header line {line[:80]!r}")
        key = name.strip().lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    raise ProtocolError(f"more than {MAX_HEADERS} response headers")
