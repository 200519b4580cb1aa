"""The admin HTTP server of a host process: ``/livez`` (alias ``/healthz``), ``/readyz``, ``/metrics``.

A small asyncio HTTP/1.1 responder: probes and scrapes are GETs with no body, so a web
framework would add weight without adding anything they need.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("health.admin")

# (ready, reason): reason is shown to humans in the 503 body.
Readiness = Callable[[], Awaitable[tuple[bool, str]]]
# Given the scraper's Accept header, (body, content type): Prometheus asks for OpenMetrics, the
# only exposition that carries exemplars.
MetricsText = Callable[[str], tuple[bytes, str]]

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class AdminServer:
    """Serves the probes and metrics on ``host:port`` (port 0 picks a free one)."""

    def __init__(self, readiness: Readiness, metrics: MetricsText, *, host: str = "0.0.0.0", port: int = 8080,
                 liveness: Callable[[], tuple[bool, str]] | None = None) -> None:
        self._readiness = readiness
        self._metrics = metrics
        self._liveness = liveness or (lambda: (True, "alive"))
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The port it listens on (after start)."""
        if self._server is None:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self._host, self._port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            method, path = _request_line(request)
            status, body, content_type = await self._route(method, path, _header(request, b"accept"))
            head = (
                f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode("ascii") + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            pass  # a half-open or garbage connection: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _route(self, method: str, path: str, accept: str = "") -> tuple[int, bytes, str]:
        text = "text/plain; charset=utf-8"
        if method not in ("GET", "HEAD"):
            return 405, b"only GET\n", text
        route = path.split("?", 1)[0]
        if route in ("/livez", "/healthz"):
            alive, reason = self._liveness()
            return (200 if alive else 503), f"{reason}\n".encode(), text
        if route == "/readyz":
            ready, reason = await self._readiness()
            return (200 if ready else 503), f"{reason}\n".encode(), text
        if route == "/metrics":
            body, content_type = self._metrics(accept)
            return 200, body, content_type
        return 404, b"not found: try /livez /readyz /metrics\n", text


def _request_line(request: bytes) -> tuple[str, str]:
    line = request.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    if len(parts) != 3:
        raise ValueError("bad request line")
    return parts[0], parts[1]


def _header(request: bytes, name: bytes) -> str:
    """The value of header ``name`` (lowercase) in a request head, or "" (repeats joined by ",")."""
    values = []
    for line in request.split(b"\r\n")[1:]:
        key, colon, value = line.partition(b":")
        if colon and key.strip().lower() == name:
            values.append(value.strip().decode("latin-1"))
    return ",".join(values)
