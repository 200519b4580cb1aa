"""``nats_transport.time_remaining()``: what a handler has left of its caller's deadline."""

from __future__ import annotations

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
