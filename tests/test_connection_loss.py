"""A unary call whose connection breaks while it waits: if the server still has the call, its
keepalives resume and the call completes; if nothing is heard after the break, the call fails
UNAVAILABLE within seconds instead of waiting out its deadline."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import nats
import pytest

import nats_transport.aio
from tests._waiting import wait_for


def _add_slow(server: Any, entered: asyncio.Event) -> None:
    async def slow(request: bytes, context: Any) -> bytes:
        entered.set()
        await asyncio.sleep(4)  # the handler's work: long enough for NATS to restart under it
        return b"late"

    handler = grpc.unary_unary_rpc_method_handler(slow)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.Slow", {"Call": handler}),))


@pytest.mark.parametrize(("server_reconnects", "outcome"), [
    (True, "late"),
    (False, "the connection to NATS was lost during the call"),
])
async def test_a_call_in_flight_when_nats_restarts_completes_or_fails_unavailable_before_its_deadline(
        private_nats_server, server_reconnects, outcome):
    client_nc = await nats.connect(private_nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    server_nc = await nats.connect(private_nats_server.url, reconnect_time_wait=0.1, max_reconnect_attempts=-1)
    server = nats_transport.aio.server(server_nc, "slow")
    entered = asyncio.Event()
    _add_slow(server, entered)
    await server.start()
    try:
        call = asyncio.ensure_future(nats_transport.aio.channel(client_nc, "slow").unary_unary("/t.Slow/Call")(
            b"", timeout=60))
        await asyncio.wait_for(entered.wait(), 10)  # the call is in the handler when NATS goes
        if not server_reconnects:
            await server_nc.close()  # the replica's connection is gone for good, its call with it
        await asyncio.to_thread(private_nats_server.restart)
        await wait_for(lambda: call.done(), timeout=15)
        if server_reconnects:
            assert call.result() == outcome.encode()
        else:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                call.result()
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert caught.value.details() == outcome
    finally:
        await server.stop(0)
        await client_nc.close()
        if not server_nc.is_closed:
            await server_nc.close()
