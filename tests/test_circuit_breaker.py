"""The per-target circuit breaker: opens after calls in a row heard nothing in time, fails fast
while open, lets one probe through after the cool-down, and never counts a target that answers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc
import pytest
from nats.aio.client import Client
from prometheus_client import CollectorRegistry

import nats_transport
import nats_transport.aio
from health.transport_metrics import TransportMetrics
from nats_transport._circuit import CircuitBreaker, CircuitBreakerOptions, CircuitState, circuit_states
from tests._scripted import SERVICE, Script, Scripted, serving
from tests._waiting import wait_for

TARGET = "circuit"
FAST = nats_transport.ChannelOptions(circuit_breaker=CircuitBreakerOptions(failures=3, cool_down=0.3))
D, U = grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_breaker_opens_probes_and_closes():
    clock = Clock()
    breaker = CircuitBreaker("t", CircuitBreakerOptions(failures=2, cool_down=5), clock)
    for _ in range(2):
        assert breaker.admit() is None
        breaker.record(D, "Deadline Exceeded", breaker.stamp())
    assert breaker.state is CircuitState.OPEN
    assert "open after 2 calls in a row" in (breaker.admit() or "")
    clock.now += 5
    assert breaker.state is CircuitState.HALF_OPEN
    assert breaker.admit() is None  # the probe
    assert "probe call is still running" in (breaker.admit() or "")
    breaker.record(grpc.StatusCode.NOT_FOUND, "no such quest", breaker.stamp())  # an answer, even an error, closes it
    assert breaker.state is CircuitState.CLOSED


def test_a_failed_probe_opens_the_circuit_again_and_a_cancelled_one_gives_no_verdict():
    clock = Clock()
    breaker = CircuitBreaker("t", CircuitBreakerOptions(failures=1, cool_down=1), clock)
    breaker.record(U, "the server stopped answering (no keepalive)", breaker.stamp())
    clock.now += 1
    assert breaker.admit() is None
    breaker.record(grpc.StatusCode.CANCELLED, "", breaker.stamp())
    assert breaker.state is CircuitState.HALF_OPEN
    assert breaker.admit() is None
    breaker.record(D, "Deadline Exceeded", breaker.stamp())
    assert breaker.state is CircuitState.OPEN


def test_a_silent_call_that_began_before_an_answer_does_not_count():
    # One replica of several dies holding calls: they all time out at once, after the others
    # answered calls that began later.
    clock = Clock()
    breaker = CircuitBreaker("t", CircuitBreakerOptions(failures=2), clock)
    held = [breaker.stamp() for _ in range(5)]
    clock.now += 1
    breaker.record(grpc.StatusCode.OK, "", breaker.stamp())
    clock.now += 1
    for started in held:
        breaker.record(U, "the server stopped answering (no keepalive)", started)
    assert breaker.state is CircuitState.CLOSED


def test_calls_whose_connection_broke_or_reconnected_give_no_verdict():
    reconnects = [0]
    breaker = CircuitBreaker("t", CircuitBreakerOptions(failures=1), reconnects=lambda: reconnects[0])
    started = breaker.stamp()
    reconnects[0] += 1
    breaker.record(D, "Deadline Exceeded", started)
    breaker.record(U, "the connection to NATS was lost during the call", breaker.stamp())
    assert breaker.state is CircuitState.CLOSED


@pytest.mark.parametrize(("code", "details"), [
    (U, "no server is serving this target"),
    (U, "server is shutting down"),
    (U, "storage unavailable"),
    (grpc.StatusCode.INTERNAL, "boom"),
])
def test_answers_and_no_responders_never_count(code, details):
    breaker = CircuitBreaker("t", CircuitBreakerOptions(failures=1))
    breaker.record(code, details, breaker.stamp())
    assert breaker.state is CircuitState.CLOSED


def test_a_success_in_between_resets_the_count():
    breaker = CircuitBreaker("t", CircuitBreakerOptions(failures=2))
    for code in (D, grpc.StatusCode.OK, D, grpc.StatusCode.OK, D):
        breaker.record(code, "", breaker.stamp())
    assert breaker.state is CircuitState.CLOSED


@pytest.fixture
async def scripted(nc: Client) -> AsyncIterator[Scripted]:
    async with serving(nc, TARGET, Scripted()) as servicer:
        yield servicer


async def _code(channel: nats_transport.aio.Channel, key: str, timeout: float) -> grpc.StatusCode:
    try:
        await channel.unary_unary(f"/{SERVICE}/Unary")(key.encode(), timeout=timeout)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_a_target_that_swallows_calls_is_failed_fast_then_probed(nc, scripted, caplog):
    caplog.set_level(logging.INFO, "nats_transport.circuit")
    scripted.scripts["slow"] = Script(["SLOW"])
    scripted.scripts["ok"] = Script(["OK"])
    channel = nats_transport.aio.channel(nc, TARGET, options=FAST)
    assert [await _code(channel, "slow", 0.05) for _ in range(3)] == [D, D, D]
    assert circuit_states(nc)[TARGET] is CircuitState.OPEN
    # Open: refused here, the server never sees it.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await channel.unary_unary(f"/{SERVICE}/Unary")(b"ok", timeout=5)
    assert refused.value.code() == U
    assert "circuit to 'circuit' is open" in (refused.value.details() or "")
    assert "ok" not in scripted.seen
    await wait_for(lambda: circuit_states(nc)[TARGET] is CircuitState.HALF_OPEN, timeout=5)
    assert await _code(channel, "ok", 5) == grpc.StatusCode.OK
    assert circuit_states(nc)[TARGET] is CircuitState.CLOSED
    transitions = [r.getMessage() for r in caplog.records if r.name == "nats_transport.circuit"]
    assert [t.split(":")[0] for t in transitions] == [
        "circuit to circuit is open", "circuit to circuit is half-open", "circuit to circuit is closed"]


async def test_streams_are_refused_while_the_circuit_is_open(nc, scripted):
    scripted.scripts["slow"] = Script(["SLOW"])
    channel = nats_transport.aio.channel(nc, TARGET, options=FAST)
    for _ in range(3):
        await _code(channel, "slow", 0.05)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        [m async for m in channel.unary_stream(f"/{SERVICE}/ServerStream")(b"slow", timeout=5)]
    assert refused.value.code() == U
    assert "is open" in (refused.value.details() or "")


async def test_the_breaker_can_be_turned_off(nc, scripted):
    scripted.scripts["slow"] = Script(["SLOW"])
    channel = nats_transport.aio.channel(nc, TARGET, options=nats_transport.ChannelOptions(circuit_breaker=None))
    assert [await _code(channel, "slow", 0.05) for _ in range(6)] == [D] * 6
    assert len(scripted.seen["slow"]) == 6


async def test_the_circuit_state_is_a_metric(nc, scripted):
    registry = CollectorRegistry()
    metrics = TransportMetrics(registry)
    scripted.scripts["slow"] = Script(["SLOW"])
    channel = nats_transport.aio.channel(nc, TARGET, options=FAST)
    assert await _code(channel, "slow", 0.05) == D
    metrics.refresh((), (nc,))
    assert registry.get_sample_value("nats_transport_circuit_state", {"target": TARGET}) == 0
    for _ in range(2):
        await _code(channel, "slow", 0.05)
    metrics.refresh((), (nc,))
    assert registry.get_sample_value("nats_transport_circuit_state", {"target": TARGET}) == 2
