"""NATS restarted under load: calls recover within seconds, and none hangs.

One ``mesh serve language-system time-manager`` host and a client, both reconnecting for ever,
on a nats-server of the test's own. Two loads run at once: Detect on language-system (answered
from memory: the transport alone) and GetTime on time-manager (read from a JetStream key-value
bucket: the transport and the storage; NOT_FOUND, a world without a clock, is an answer). Then
the nats-server goes away for OUTAGE seconds and is started again on the same port with the same
JetStream store: killed (SIGKILL) in the first round, stopped gracefully (SIGTERM) in the next,
and so on (``MESH_CHAOS_ROUNDS``).

The client uses the channel's defaults (no retry policy, the circuit breaker on) with the
short keepalives of the other scenarios: what an application sees. Calls fail while NATS is
away, UNAVAILABLE; the test waits, bounded by RECOVERY_BOUND, until calls succeed again for
good, asserts that they failed with the codes of an outage only, and reports how long from the
moment the server accepts clients again until the first answer and until the last failed call
(recovery), and the slowest call (wall time on a shared machine: reported, not asserted; a call
that never ends keeps the load from settling, which the bounded wait catches).
"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from gaming.time_manager.v1 import time_manager_pb2, time_manager_pb2_grpc

from nats_transport.testing import NatsServer
from tests.chaos._harness import (
    TARGET,
    ClientSetup,
    chaos_channel,
    detect_load,
    start_replicas,
    until,
)
from tests.chaos._load import OK, Load, Outcome, failure_details, failures_by_code, unary
from tests.chaos._processes import Processes
from tests.chaos._report import ROUNDS, SECONDS, Summary, time_limit
from tests.chaos.conftest import Clients

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(time_limit(per_round=25))]

STORAGE_TARGET = "time-manager"
# Each call's deadline: short, so that a call hanging past it would show.
DEADLINE = 3.0
# Calls must succeed again, for good, within this many seconds of NATS accepting clients.
RECOVERY_BOUND = 10.0
# How long NATS stays down: a process restarting, long enough for every client to notice.
OUTAGE = 1.0
SETUP = ClientSetup("channel defaults: no retry policy, circuit breaker on", retry=False, breaker=True)


def get_time_load(channel: grpc.aio.Channel, concurrency: int) -> Load:
    """GetTime of a world that has no clock: NOT_FOUND (an answer) once the servicer has read
    its bucket."""
    stub = time_manager_pb2_grpc.TimeManagerServiceStub(channel)
    request = time_manager_pb2.GetTimeRequest(world_id="chaos")

    async def call() -> tuple[grpc.StatusCode, str]:
        code, detail = await unary(stub.GetTime(request, timeout=DEADLINE))
        return (OK, "") if code == grpc.StatusCode.NOT_FOUND else (code, detail)

    return Load(call, concurrency)


def first_success_after(outcomes: list[Outcome], since: float) -> float | None:
    ended = [o.ended for o in outcomes if o.ended >= since and not o.failed]
    return min(ended) - since if ended else None


def last_failure_after(outcomes: list[Outcome], since: float) -> float:
    ended = [o.ended for o in outcomes if o.ended >= since and o.failed]
    return max(ended) - since if ended else 0.0


async def test_calls_recover_within_seconds_of_a_nats_restart_and_none_hangs(
        private_nats_server: NatsServer, processes: Processes, clients: Clients) -> None:
    server = private_nats_server
    await start_replicas(processes, server.url, 1, TARGET, STORAGE_TARGET)
    nc = await clients.connect(server.url)
    loads = {TARGET: detect_load(chaos_channel(nc, SETUP), concurrency=6),
             STORAGE_TARGET: get_time_load(chaos_channel(nc, SETUP, STORAGE_TARGET), concurrency=2)}
    restarts: list[tuple[float, float]] = []  # (stopped, accepting clients again)
    for load in loads.values():
        load.start()
    try:
        began = time.monotonic()
        await until(lambda: all(load.calm(began, calls=20) for load in loads.values()), 30,
                    "the loads never ran calm before the first restart")
        for round_ in range(ROUNDS):
            stopped = time.monotonic()
            # Blocking calls (they wait for the process): run beside the event loop, the load going on.
            await asyncio.to_thread(server.stop, kill=round_ % 2 == 0)
            await asyncio.sleep(OUTAGE)  # the fault's length, not a wait for anything
            await asyncio.to_thread(server.start)
            back = time.monotonic()
            restarts.append((stopped, back))

            def recovered_and_ran_on(since: float = back) -> bool:
                return (time.monotonic() - since >= SECONDS
                        and all(load.calm(since, calls=20) for load in loads.values()))

            await until(recovered_and_ran_on, RECOVERY_BOUND + SECONDS,
                        "calls did not succeed again for good after the restart")
    finally:
        for load in loads.values():
            await load.stop()

    for target, load in loads.items():
        rounds = [(stopped, back, load.between(stopped, next_stop))
                  for (stopped, back), next_stop in zip(restarts, [*(s for s, _ in restarts[1:]), float("inf")],
                                                        strict=True)]
        summary = Summary(
            f"NATS restarted ({target}, {SETUP.name})",
            calls=len(load.outcomes),
            failed=failures_by_code(load.outcomes),
            recovery_s=[round(last_failure_after(outcomes, back), 2) for _, back, outcomes in rounds],
            worst_latency_s=max(o.latency for o in load.outcomes),
            notes={"restarts": len(restarts),
                   "NATS away s": [round(back - stopped, 2) for stopped, back, _ in rounds],
                   "first answer after restart s": [_rounded(first_success_after(outcomes, back))
                                                    for _, back, outcomes in rounds],
                   "deadline s": DEADLINE},
            details=failure_details(load.outcomes),
        )
        summary.publish()
        assert set(summary.failed) <= {grpc.StatusCode.UNAVAILABLE.name, grpc.StatusCode.DEADLINE_EXCEEDED.name}, (
            summary.details)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
