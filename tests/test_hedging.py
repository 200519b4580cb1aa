"""Hedged unary calls follow gRFC A6 (grpcio does not implement hedging, so this is the spec's table).

Copies go to the target's queue group, so NATS picks the replica of each; here one server takes
them all, which is enough to see what the client sends and when.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from nats.aio.client import Client

import nats_transport
import nats_transport.aio
from tests._scripted import SERVICE, Script, Scripted, serving
from tests._waiting import wait_for

U, OK = grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.OK


def hedging(attempts: int = 3, delay: str = "0.05s", codes: tuple[str, ...] = ("UNAVAILABLE",),
            **extra: Any) -> dict[str, Any]:
    return {"methodConfig": [{"name": [{"service": SERVICE}], "hedgingPolicy": {
        "maxAttempts": attempts, "hedgingDelay": delay, "nonFatalStatusCodes": list(codes)}}], **extra}


TARGET = "hedged"


@pytest.fixture
async def scripted(nc: Client) -> AsyncIterator[Scripted]:
    async with serving(nc, TARGET, Scripted()) as servicer:
        yield servicer


async def _call(nc: Client, servicer: Scripted, config: dict[str, Any], key: str,
                timeout: float = 5.0) -> grpc.StatusCode:
    # Retry throttles live per target and policy: only the "throttled" case has one.
    channel = nats_transport.aio.channel(nc, TARGET, service_config=config)
    try:
        await channel.unary_unary(f"/{SERVICE}/Unary")(key.encode(), timeout=timeout)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return OK


@pytest.mark.parametrize(("answers", "config", "code", "attempts"), [
    # The first copy hangs; the second goes after hedgingDelay and wins.
    (["SLOW", "OK"], hedging(3, "0.05s"), OK, [None, "1"]),
    # A non-fatal failure sends the next copy at once: a 10 s delay would outlive the call.
    (["UNAVAILABLE", "OK"], hedging(3, "10s"), OK, [None, "1"]),
    # A fatal code ends the call: no more copies.
    (["INVALID_ARGUMENT", "OK"], hedging(3, "10s"), grpc.StatusCode.INVALID_ARGUMENT, [None]),
    # Every copy fails non-fatally: the last failure is the call's.
    (["UNAVAILABLE"], hedging(3, "10s"), U, [None, "1", "2"]),
    # hedgingDelay 0: all copies at once, the one that answers OK wins.
    (["SLOW", "SLOW", "OK"], hedging(3, "0s"), OK, [None, "1", "2"]),
    # Throttled at half the tokens (2 of 2, one failure leaves 1): no copy after the first.
    (["UNAVAILABLE", "OK"], hedging(3, "10s", retryThrottling={"maxTokens": 2, "tokenRatio": 0.1}), U, [None]),
], ids=["slow-first", "non-fatal-shortcut", "fatal", "all-fail", "zero-delay", "throttled"])
async def test_hedging_follows_a6(nc, scripted, answers, config, code, attempts):
    scripted.scripts["k"] = Script(answers)
    assert await _call(nc, scripted, config, "k") == code
    assert sorted(scripted.seen["k"], key=str) == sorted(attempts, key=str)


async def test_a_pushback_not_to_retry_stops_further_copies(nc, scripted):
    scripted.scripts["k"] = Script(["UNAVAILABLE", "OK"], pushback="-1")
    assert await _call(nc, scripted, hedging(3, "10s"), "k") == U
    assert scripted.seen["k"] == [None]


async def test_committed_copies_are_not_hedged_further(nc, scripted):
    scripted.scripts["k"] = Script(["UNAVAILABLE", "OK"], headers_first=True)
    assert await _call(nc, scripted, hedging(3, "10s"), "k") == U
    assert scripted.seen["k"] == [None]


async def test_the_deadline_covers_every_copy(nc, scripted):
    scripted.scripts["k"] = Script(["SLOW"])
    assert await _call(nc, scripted, hedging(3, "0.05s"), "k", timeout=0.5) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert len(scripted.seen["k"]) == 3


async def test_the_losing_copies_are_cancelled_on_their_servers(nc, scripted):
    # Wire protocol 1.1 carries the cancel of a unary call to the replica running it.
    scripted.scripts["k"] = Script(["SLOW", "OK"])
    assert await _call(nc, scripted, hedging(2, "0.05s"), "k") == OK
    await wait_for(lambda: scripted.cancelled == ["k"], timeout=2)
