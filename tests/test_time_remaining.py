"""``nats_transport.time_remaining()``: what a handler has left of its caller's deadline; and
``nats_transport.detached()``: work a handler starts that must not inherit it."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

import nats_transport
from tests._serving import served

SEEN: list[float | None] = []


def _add(servicer: Any, server: Any) -> None:
    async def remaining(request: bytes, context: Any) -> bytes:
        SEEN.append(nats_transport.time_remaining())
        return b""

    handler = grpc.unary_unary_rpc_method_handler(remaining)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.Time", {"Remaining": handler}),))


async def test_a_handler_sees_what_is_left_of_the_callers_deadline_and_none_without_one(nc):
    SEEN.clear()
    async with served(nc, _add, None) as channel:
        call = channel.unary_unary("/t.Time/Remaining")
        await call(b"", timeout=30)
        await call(b"")
    with_deadline, without = SEEN
    assert with_deadline is not None
    assert 0 < with_deadline <= 30
    assert without is None
    assert nats_transport.time_remaining() is None  # outside any call


async def test_work_started_in_a_detached_context_calls_without_the_handlers_deadline(nc):
    # A handler starts background work that calls another method later; run in a plain task it
    # inherits the handler's deadline (and would die with it), run detached it has none.
    seen: dict[str, float | None] = {}
    started: list[asyncio.Task[Any]] = []
    channel_box: list[Any] = []

    async def later(label: str) -> None:
        await channel_box[0].unary_unary("/t.Time/Record")(label.encode())

    async def start(request: bytes, context: Any) -> bytes:
        label = request.decode()
        context_of = nats_transport.detached() if label == "detached" else None
        started.append(asyncio.get_running_loop().create_task(later(label), context=context_of))
        return b""

    async def record(request: bytes, context: Any) -> bytes:
        seen[request.decode()] = nats_transport.time_remaining()
        return b""

    def add(servicer: Any, server: Any) -> None:
        handlers = {"Start": grpc.unary_unary_rpc_method_handler(start),
                    "Record": grpc.unary_unary_rpc_method_handler(record)}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.Time", handlers),))

    async with served(nc, add, None) as channel:
        channel_box.append(channel)
        for label in ("inherited", "detached"):
            await channel.unary_unary("/t.Time/Start")(label.encode(), timeout=30)
        await asyncio.gather(*started)
    inherited = seen["inherited"]
    assert inherited is not None
    assert 0 < inherited <= 30, "a plain task's calls carry the handler's deadline"
    assert seen["detached"] is None, "a detached task's calls carry none"
