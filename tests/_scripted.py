"""A scripted servicer for retry, hedging and circuit tests: each attempt answers what its
script says, and every attempt is recorded with its ``grpc-previous-rpc-attempts``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from nats.aio.client import Client

import nats_transport.aio

SERVICE = "test.retry.v1.Scripted"


@dataclass
class Script:
    """What the server answers, attempt by attempt (the last answer repeats)."""

    answers: list[str]
    headers_first: bool = False  # send initial metadata before failing (commits the call)
    pushback: str | None = None  # grpc-retry-pushback-ms on failures
    stream_first: bool = False  # server stream: send one message before the answer


@dataclass
class Scripted:
    """The servicer both transports run: answers from scripts, records every attempt."""

    scripts: dict[str, Script] = field(default_factory=dict)
    seen: dict[str, list[str | None]] = field(default_factory=dict)
    cancelled: list[str] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def _attempt(self, key: str, context: Any) -> tuple[Script, str]:
        metadata = dict(context.invocation_metadata())
        attempts = self.seen.setdefault(key, [])
        attempts.append(metadata.get("grpc-previous-rpc-attempts"))
        script = self.scripts[key]
        return script, script.answers[min(len(attempts) - 1, len(script.answers) - 1)]

    async def _fail(self, script: Script, answer: str, context: Any) -> None:
        if script.headers_first:
            await context.send_initial_metadata((("x-committed", "yes"),))
        if script.pushback is not None:
            context.set_trailing_metadata((("grpc-retry-pushback-ms", script.pushback),))
        if answer == "SLOW":
            await asyncio.sleep(30)  # longer than any deadline here: the call must time out

        await context.abort(grpc.StatusCode[answer], f"scripted {answer}")

    async def unary(self, request: bytes, context: Any) -> bytes:
        key = request.decode()
        script, answer = self._attempt(key, context)
        try:
            if answer.startswith("WAIT"):
                await self.release.wait()
                answer = answer.removeprefix("WAIT ")
            if answer == "OK":
                return str(len(self.seen[key])).encode()
            await self._fail(script, answer, context)
        except asyncio.CancelledError:
            self.cancelled.append(key)
            raise
        raise AssertionError("abort returned")

    async def server_stream(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        key = request.decode()
        script, answer = self._attempt(key, context)
        try:
            if script.stream_first:
                yield b"first"
            if answer == "OK":
                yield str(len(self.seen[key])).encode()
                return
            await self._fail(script, answer, context)
        except asyncio.CancelledError:
            self.cancelled.append(key)
            raise

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Unary": grpc.unary_unary_rpc_method_handler(self.unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(self.server_stream),
        })


@contextlib.asynccontextmanager
async def serving(nc: Client, target: str, servicer: Scripted) -> AsyncIterator[Scripted]:
    """``servicer`` served as ``target`` by a nats_transport server, stopped afterwards."""
    server = nats_transport.aio.server(nc, target)
    server.add_generic_rpc_handlers((servicer.handler(),))
    await server.start()
    try:
        yield servicer
    finally:
        await server.stop(None)
