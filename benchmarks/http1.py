"""A minimal asyncio HTTP/1.1 client: one keep-alive connection, GETs answered with Content-Length.

Just enough for the Envoy case: no chunked bodies, no redirects, no TLS. One connection serves
one call at a time (callers that want N calls in flight open N connections).
"""

from __future__ import annotations

import asyncio
import contextlib


class HttpError(Exception):
    """A non-2xx answer, or one this client cannot read."""


class Connection:
    """One HTTP/1.1 connection, reused for every request (``Connection: keep-alive``)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self._reader, self._writer

    async def get(self, path: str) -> bytes:
        """GET ``path``; the body. Raises HttpError on a non-2xx status (the connection stays
        usable if the answer was read whole) and OSError if the connection fails (it is dropped
        and the next call reconnects)."""
        reader, writer = await self._connect()
        request = f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nAccept: application/json\r\n\r\n"
        try:
            writer.write(request.encode("ascii"))
            head = await reader.readuntil(b"\r\n\r\n")
            status, length, close = _parse_head(head)
            body = await reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, HttpError):
            await self.close()
            raise
        if close:
            await self.close()
        if not 200 <= status < 300:
            raise HttpError(f"HTTP {status}: {body[:200]!r}")
        return body

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def _parse_head(head: bytes) -> tuple[int, int, bool]:
    """(status, Content-Length, whether the server closes) of a response head."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise HttpError(f"not an HTTP/1.x status line: {lines[0]!r}")
    length: int | None = None
    close = parts[0] == "HTTP/1.0"
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "transfer-encoding":
            raise HttpError(f"unsupported Transfer-Encoding: {value.strip()}")
        elif name == "connection":
            close = value.strip().lower() == "close"
    if length is None:
        raise HttpError("no Content-Length in the answer")
    return int(parts[1]), length, close
