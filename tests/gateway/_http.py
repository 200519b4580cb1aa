"""A curl-like HTTP client for edge tests (urllib in a thread), and gRPC-Web framing."""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.client import HTTPResponse
from typing import Any


@dataclass(frozen=True)
class Reply:
    """One HTTP answer, headers lowercased."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _request(method: str, url: str, body: bytes | None, headers: dict[str, str]) -> Reply:
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return Reply(response.status, {k.lower(): v for k, v in response.headers.items()}, response.read())
    except urllib.error.HTTPError as err:
        return Reply(err.code, {k.lower(): v for k, v in err.headers.items()}, err.read())


async def fetch(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> Reply:
    """``curl -X method url`` (a JSON body unless ``body`` is bytes); 4xx/5xx are answers too."""
    sent = dict(headers or {})
    if body is not None and not isinstance(body, bytes):
        body = json.dumps(body).encode()
        sent.setdefault("content-type", "application/json")
    return await asyncio.to_thread(_request, method, url, body, sent)


class EventStream:
    """A Server-Sent Events response read one ``data:`` line at a time."""

    def __init__(self, response: HTTPResponse) -> None:
        self.response = response
        self.headers = {k.lower(): v for k, v in response.headers.items()}

    @classmethod
    async def open(cls, url: str) -> EventStream:
        request = urllib.request.Request(url, headers={"accept": "text/event-stream"})
        return cls(await asyncio.to_thread(urllib.request.urlopen, request, None, 10))

    async def next(self) -> Any:
        """The next event's JSON (the socket timeout bounds the wait)."""
        while True:
            line = await asyncio.to_thread(self.response.readline)
            assert line, "the event stream ended"
            if line.strip():
                assert line.startswith(b"data: "), line
                return json.loads(line[len(b"data: "):])

    async def close(self) -> None:
        await asyncio.to_thread(self.response.close)


def grpc_web_request(message: bytes) -> bytes:
    """One length-prefixed gRPC-Web data frame."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def grpc_web_frames(body: bytes) -> tuple[list[bytes], dict[str, str]]:
    """Split a gRPC-Web response body into its messages and its trailer frame's fields."""
    messages: list[bytes] = []
    trailers: dict[str, str] = {}
    while body:
        flag, size = body[0], int.from_bytes(body[1:5], "big")
        payload, body = body[5:5 + size], body[5 + size:]
        if flag & 0x80:
            for line in payload.decode().split("\r\n"):
                if line:
                    key, _, value = line.partition(":")
                    trailers[key.strip().lower()] = value.strip()
        else:
            messages.append(payload)
    return messages, trailers


def decode_grpc_web_text(body: bytes) -> bytes:
    """grpc-web-text bodies are base64, possibly several padded chunks back to back."""
    decoded = b""
    for chunk in body.replace(b"\r\n", b"").split(b"="):
        if chunk:
            decoded += base64.b64decode(chunk + b"=" * (-len(chunk) % 4))
    return decoded
