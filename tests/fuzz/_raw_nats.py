"""A NATS publisher on a raw socket, for header blocks and bodies no client library would build."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlsplit


class RawPublisher:
    """One plain TCP connection speaking just enough of the NATS protocol to publish."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def connect(cls, url: str) -> RawPublisher:
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        await reader.readline()  # INFO
        options = {"verbose": False, "pedantic": False, "headers": True, "no_responders": True, "protocol": 1}
        writer.write(b"CONNECT " + json.dumps(options).encode() + b"\r\n")
        publisher = cls(reader, writer)
        await publisher.flush()
        return publisher

    def publish(self, subject: str, reply: str | None, header: bytes | None, payload: bytes) -> None:
        """Queue one HPUB (or PUB without a header block); :meth:`flush` sends it."""
        reply_part = f" {reply}" if reply else ""
        if header is None:
            line = f"PUB {subject}{reply_part} {len(payload)}\r\n"
            self._writer.write(line.encode() + payload + b"\r\n")
        else:
            line = f"HPUB {subject}{reply_part} {len(header)} {len(header) + len(payload)}\r\n"
            self._writer.write(line.encode() + header + payload + b"\r\n")

    async def flush(self, timeout: float = 5.0) -> None:
        """Send what is queued and wait for the server's PONG: everything is routed by then."""
        self._writer.write(b"PING\r\n")
        await self._writer.drain()
        while True:
            line = await asyncio.wait_for(self._reader.readline(), timeout)
            if line == b"PONG\r\n":
                return
            if line == b"PING\r\n":
                self._writer.write(b"PONG\r\n")
            elif not line.startswith(b"INFO"):
                raise AssertionError(f"nats-server refused a raw publish: {line!r}")

    async def close(self) -> None:
        self._writer.close()
        await self._writer.wait_closed()
