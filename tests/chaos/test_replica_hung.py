"""A hung replica (SIGSTOP) under load: with a retry policy on UNAVAILABLE, calls go to the other
replica within the keepalive timeout, and none fails, provided NATS notices the hang.

Two ``mesh serve language-system`` replicas, eight Detect calls always in flight; one replica
is stopped with SIGSTOP. Its process hangs but its socket stays open, so neither NATS nor the
callers are told anything: the calls it holds go silent and fail UNAVAILABLE at the channel's
keepalive timeout (2 s), and the retry policy sends each again. Where the retry goes depends on
whether the hung replica is still in the target's queue group:

- on a nats-server that pings idle clients every 0.5 s and closes one that leaves a PING
  unanswered (``ping_interval``/``ping_max``), the hung replica is gone from the queue group
  within 1.5 s, before the first keepalive timeout, so every retry reaches the live replica: no
  call fails (the slowest takes about the keepalive timeout, a sweep and a backoff: reported);
- on a nats-server with the default settings (a PING every 2 minutes) the hung replica keeps
  its share of the calls: every attempt that lands on it costs the keepalive timeout, a call
  whose attempts keep landing there runs out its deadline, and throughput collapses. That
  variant is the baseline: it reports the cost, and asserts only that calls did wait on the hung
  replica and failed with the codes of silence if at all.

After ``MESH_CHAOS_SECONDS`` (and the load settling, where it can) the replica is continued,
rejoins, and the next round stops the other one (``MESH_CHAOS_ROUNDS`` rounds). One summary line
per variant: calls, failures by code, recovery per round (from the stop to the end of the last
failed or slowed call) and the worst call latency. Those figures are reported, not asserted (wall
time on a shared machine); a call that never ends keeps the load from settling (a bounded wait)
or from stopping (the test's timeout).
"""

from __future__ import annotations

import time

import grpc
import pytest

from nats_transport.testing import NatsServer
from tests.chaos._harness import (
    CONCURRENCY,
    KEEPALIVE_TIMEOUT,
    ClientSetup,
    calm_for_at_least,
    chaos_channel,
    detect_load,
    load_runs_for,
    start_replicas,
    until,
)
from tests.chaos._load import failure_details, failures_by_code, recovery_after
from tests.chaos._monitoring import HOST_CONNECTION, connections
from tests.chaos._processes import Processes
from tests.chaos._report import ROUNDS, SECONDS, Summary, time_limit
from tests.chaos.conftest import STALE_AFTER, Clients

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(time_limit(per_round=15))]

# The circuit breaker is off: with it on, the calls the hung replica holds, timing out together,
# open it for the whole target (see test_replica_killed.py).
SETUP = ClientSetup("retry policy, no circuit breaker", retry=True, breaker=False)


async def hang_replicas_under_load(server: NatsServer, processes: Processes, clients: Clients, *,
                                   nats_notices: bool) -> Summary:
    """Stop one of two replicas per round, under load; continue it when the round is over."""
    replicas = await start_replicas(processes, server.url, 2)
    nc = await clients.connect(server.url)
    load = detect_load(chaos_channel(nc, SETUP))
    stops: list[float] = []
    dropped: list[float] = []  # seconds from each stop until nats-server closed the hung replica
    load.start()
    try:
        began = time.monotonic()
        await calm_for_at_least(load, began, 1.0)  # a second of normal load, to compare the rate with
        for round_ in range(ROUNDS):
            victim = replicas[round_ % 2]
            stops.append(time.monotonic())
            victim.stop()
            if nats_notices:

                async def hung_replica_closed() -> bool:
                    return len(await connections(server, HOST_CONNECTION)) == 1

                await until(hung_replica_closed, STALE_AFTER + 10, "nats-server never closed the hung replica")
                dropped.append(round(time.monotonic() - stops[-1], 2))
                await calm_for_at_least(load, stops[-1], SECONDS)
            else:
                # The hung replica stays in the queue group: the load never settles while it hangs.
                await load_runs_for(SECONDS, stops[-1])
            victim.cont()

            async def both_hosts_connected() -> bool:
                return len(await connections(server, HOST_CONNECTION)) == 2

            await until(both_hosts_connected, 20, "the continued replica did not rejoin")
    finally:
        await load.stop()
    ends = [*stops[1:], float("inf")]
    nats = f"nats-server closes stale clients after {STALE_AFTER} s" if nats_notices else "default nats-server pings"
    summary = Summary(
        f"replica hung ({SETUP.name}, {nats})",
        calls=len(load.outcomes),
        failed=failures_by_code(load.outcomes),
        # Without NATS noticing, the load recovers only when the replica is continued: no figure.
        recovery_s=[round(recovery_after(load.between(stop, end), stop), 2)
                    for stop, end in zip(stops, ends, strict=True)] if nats_notices else [],
        worst_latency_s=max(o.latency for o in load.outcomes),
        notes={"stops": len(stops), "in flight": CONCURRENCY, "keepalive timeout s": KEEPALIVE_TIMEOUT,
               **({"NATS closed the hung replica after s": dropped} if nats_notices else {}),
               "calls/s before": round(len(load.between(began, stops[0])) / (stops[0] - began), 1),
               "calls/s while hung": round(sum(len(load.between(stop, stop + SECONDS)) for stop in stops)
                                           / (SECONDS * len(stops)), 1)},
        details=failure_details(load.outcomes),
    )
    summary.publish()
    return summary


async def test_a_hung_replica_loses_no_call_when_nats_drops_it_before_the_keepalive_timeout(
        quick_stale_nats_server: NatsServer, processes: Processes, clients: Clients) -> None:
    # The condition under which retries all go elsewhere: NATS closes the hung replica's
    # connection before the first call it holds gives up (how long it took is in the summary).
    assert STALE_AFTER < KEEPALIVE_TIMEOUT
    summary = await hang_replicas_under_load(quick_stale_nats_server, processes, clients, nats_notices=True)
    assert summary.failed == {}, summary.details


async def test_with_default_nats_pings_a_hung_replica_keeps_taking_calls_and_each_waits_its_keepalive(
        private_nats_server: NatsServer, processes: Processes, clients: Clients) -> None:
    summary = await hang_replicas_under_load(private_nats_server, processes, clients, nats_notices=False)
    # The baseline: failures are reported, not forbidden; they are the silent kind only.
    assert set(summary.failed) <= {grpc.StatusCode.UNAVAILABLE.name, grpc.StatusCode.DEADLINE_EXCEEDED.name}, (
        summary.details)
    # Calls do land on the hung replica and wait out the keepalive timeout: a lower bound, which
    # a busy machine can only lengthen (the one timing this file asserts).
    assert summary.worst_latency_s >= KEEPALIVE_TIMEOUT, summary.line()
