"""Service-config retries behave as grpcio's do: one table, run over HTTP/2 and over NATS.

Each case is a scripted server (what each attempt answers), a service config and a call. It runs
against grpcio (a grpc.aio server on a free port, a grpc.aio channel with the same config as its
``grpc.service_config`` option) and against ``nats_transport`` (its server on a real
nats-server, its channel with ``service_config=``). Both must end with the same status and the
server must have seen the same attempts, with the same ``grpc-previous-rpc-attempts``.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import nats
import pytest
from nats.aio.client import Client

import nats_transport
import nats_transport.aio
from nats_transport.testing import free_port
from tests._scripted import SERVICE, Script, Scripted, serving


def retry_config(attempts: int = 3, codes: tuple[str, ...] = ("UNAVAILABLE",), backoff: str = "0.01s",
                 name: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "methodConfig": [{
            "name": [name or {"service": SERVICE}],
            "retryPolicy": {"maxAttempts": attempts, "initialBackoff": backoff, "maxBackoff": backoff,
                            "backoffMultiplier": 1, "retryableStatusCodes": list(codes)},
        }],
        **extra,
    }


@dataclass
class Case:
    """One row: scripts, config, calls (key, kind, timeout) and what each call must end with."""

    scripts: dict[str, Script]
    config: dict[str, Any]
    calls: list[tuple[str, str]]  # (script key, "unary" | "stream")
    expected_codes: list[grpc.StatusCode]
    expected_attempts: dict[str, list[str | None]]
    timeout: float = 5.0


U, OK = grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.OK
THREE = [None, "1", "2"]
CASES: dict[str, Case] = {
    "retryable failures then OK": Case(
        {"a": Script(["UNAVAILABLE", "UNAVAILABLE", "OK"])}, retry_config(3), [("a", "unary")], [OK], {"a": THREE}),
    "attempts exhausted ends with the last failure": Case(
        {"a": Script(["UNAVAILABLE"])}, retry_config(3), [("a", "unary")], [U], {"a": THREE}),
    "maxAttempts above 5 is treated as 5": Case(
        {"a": Script(["UNAVAILABLE"])}, retry_config(9), [("a", "unary")], [U], {"a": [None, "1", "2", "3", "4"]}),
    "a code not listed is not retried": Case(
        {"a": Script(["INVALID_ARGUMENT", "OK"])}, retry_config(3), [("a", "unary")],
        [grpc.StatusCode.INVALID_ARGUMENT], {"a": [None]}),
    "several retryable codes": Case(
        {"a": Script(["ABORTED", "RESOURCE_EXHAUSTED", "OK"])}, retry_config(3, ("ABORTED", "RESOURCE_EXHAUSTED")),
        [("a", "unary")], [OK], {"a": THREE}),
    "initial metadata commits the call": Case(
        {"a": Script(["UNAVAILABLE", "OK"], headers_first=True)}, retry_config(3), [("a", "unary")], [U],
        {"a": [None]}),
    "negative pushback stops retries": Case(
        {"a": Script(["UNAVAILABLE", "OK"], pushback="-1")}, retry_config(3), [("a", "unary")], [U], {"a": [None]}),
    "unparseable pushback stops retries": Case(
        {"a": Script(["UNAVAILABLE", "OK"], pushback="soon")}, retry_config(3), [("a", "unary")], [U],
        {"a": [None]}),
    "pushback in ms retries": Case(
        {"a": Script(["UNAVAILABLE", "OK"], pushback="20")}, retry_config(3), [("a", "unary")], [OK],
        {"a": [None, "1"]}),
    "a method config applies to its method only": Case(
        {"a": Script(["UNAVAILABLE", "OK"])}, retry_config(3, name={"service": SERVICE, "method": "Other"}),
        [("a", "unary")], [U], {"a": [None]}),
    "the empty name is the default for every method": Case(
        {"a": Script(["UNAVAILABLE", "OK"])}, retry_config(3, name={}), [("a", "unary")], [OK], {"a": [None, "1"]}),
    "throttling stops retries once tokens fall to half": Case(
        {"a": Script(["UNAVAILABLE"]), "b": Script(["UNAVAILABLE"]), "c": Script(["UNAVAILABLE"])},
        retry_config(3, retryThrottling={"maxTokens": 10, "tokenRatio": 0.1}),
        [("a", "unary"), ("b", "unary"), ("c", "unary")], [U, U, U],
        # 10 tokens: a takes 3 (7 left), b takes 2 (5: at half, no retry), c takes 1 (no retry).
        {"a": THREE, "b": [None, "1"], "c": [None]}),
    "a server stream is retried before its first response": Case(
        {"s": Script(["UNAVAILABLE", "OK"])}, retry_config(3), [("s", "stream")], [OK], {"s": [None, "1"]}),
    "a server stream is not retried after its first response": Case(
        {"s": Script(["UNAVAILABLE", "OK"], stream_first=True)}, retry_config(3), [("s", "stream")], [U],
        {"s": [None]}),
}

Transport = Callable[[Scripted, dict[str, Any]], Any]


async def _run_case(channel: Any, case: Case) -> list[grpc.StatusCode]:
    unary = channel.unary_unary(f"/{SERVICE}/Unary")
    stream = channel.unary_stream(f"/{SERVICE}/ServerStream")
    codes = []
    for key, kind in case.calls:
        timeout = None if case.timeout < 0 else case.timeout
        try:
            if kind == "unary":
                await unary(key.encode(), timeout=timeout)
            else:
                [item async for item in stream(key.encode(), timeout=timeout)]
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as error:
            codes.append(error.code())
    return codes


async def _over_grpcio(servicer: Scripted, config: dict[str, Any], case: Case) -> list[grpc.StatusCode]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((servicer.handler(),))
    port = server.add_insecure_port(f"127.0.0.1:{free_port()}")
    await server.start()
    options = [("grpc.service_config", json.dumps(config)), ("grpc.enable_retries", 1)]
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            return await _run_case(channel, case)
    finally:
        await server.stop(None)


async def _over_nats(nc: Client, servicer: Scripted, config: dict[str, Any], case: Case,
                     target: str) -> list[grpc.StatusCode]:
    async with serving(nc, target, servicer):
        channel = nats_transport.aio.channel(nc, target, service_config=config)
        return await _run_case(channel, case)


async def test_the_config_timeout_bounds_a_call_without_one(nc: Client) -> None:
    # Not in the table: grpcio 1.85's asyncio channel reads a methodConfig timeout as a point
    # in time since its clock started, so its calls fail at once once the process is older
    # than the timeout. Ours counts from the call's start, as the service config doc says.
    servicer = Scripted({"a": Script(["SLOW"]), "b": Script(["OK"])})
    config = {"methodConfig": [{"name": [{"service": SERVICE}], "timeout": "0.3s"}]}
    server = nats_transport.aio.server(nc, "retry-config-timeout")
    server.add_generic_rpc_handlers((servicer.handler(),))
    await server.start()
    try:
        unary = nats_transport.aio.channel(nc, "retry-config-timeout", service_config=config).unary_unary(
            f"/{SERVICE}/Unary")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await unary(b"a")
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert await unary(b"b", timeout=30) == b"1"  # a longer own timeout is capped, not refused
        assert servicer.seen == {"a": [None], "b": [None]}
    finally:
        await server.stop(None)


@pytest.mark.parametrize("name", list(CASES))
async def test_retries_match_grpcio(name: str, nc: Client) -> None:
    case = CASES[name]
    results = {}
    for transport in ("grpcio", "nats"):
        servicer = Scripted({key: script for key, script in case.scripts.items()})
        # Each run gets its own throttle: grpcio keys it by server name, so does our channel.
        target = f"retry-{abs(hash((name, transport))) % 10**8}"
        if transport == "grpcio":
            codes = await _over_grpcio(servicer, case.config, case)
        else:
            codes = await _over_nats(nc, servicer, case.config, case, target)
        results[transport] = (codes, servicer.seen)
    assert results["grpcio"] == (case.expected_codes, case.expected_attempts), "grpcio does not do what the table says"
    assert results["nats"] == results["grpcio"]


def test_the_sync_channel_takes_the_same_service_config(nats_server) -> None:
    async def serve(servicer: Scripted) -> Any:
        nc = await nats.connect(nats_server.url)
        server = nats_transport.aio.server(nc, "retry-sync")
        server.add_generic_rpc_handlers((servicer.handler(),))
        await server.start()
        return nc, server

    servicer = Scripted({"a": Script(["UNAVAILABLE", "UNAVAILABLE", "OK"])})
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    nc, server = asyncio.run_coroutine_threadsafe(serve(servicer), loop).result(10)
    try:
        with nats_transport.channel(nats_server.url, "retry-sync", service_config=json.dumps(retry_config(3))) as ch:
            assert ch.unary_unary(f"/{SERVICE}/Unary")(b"a", timeout=5) == b"3"
        assert servicer.seen == {"a": [None, "1", "2"]}
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(None), loop).result(10)
        asyncio.run_coroutine_threadsafe(nc.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


async def test_wait_for_ready_waits_for_a_server_to_appear(nc: Client) -> None:
    servicer = Scripted({"a": Script(["OK"])})
    channel = nats_transport.aio.channel(nc, "retry-ready")
    unary = channel.unary_unary(f"/{SERVICE}/Unary")
    with pytest.raises(grpc.aio.AioRpcError) as fast:
        await unary(b"a", timeout=5)
    assert fast.value.code() == grpc.StatusCode.UNAVAILABLE  # without it: at once
    waiting = asyncio.ensure_future(unary(b"a", timeout=10, wait_for_ready=True))
    await asyncio.sleep(0.2)  # the scenario: the server comes up while the call waits
    assert not waiting.done()
    server = nats_transport.aio.server(nc, "retry-ready")
    server.add_generic_rpc_handlers((servicer.handler(),))
    await server.start()
    try:
        assert await waiting == b"1"
    finally:
        await server.stop(None)


async def test_wait_for_ready_from_the_config_still_ends_at_the_deadline(nc: Client) -> None:
    config = {"methodConfig": [{"name": [{"service": SERVICE}], "waitForReady": True}]}
    unary = nats_transport.aio.channel(nc, "retry-nobody", service_config=config).unary_unary(f"/{SERVICE}/Unary")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await unary(b"a", timeout=0.3)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
