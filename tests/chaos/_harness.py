"""What the replica scenarios share: the target and method under load, the client's channel
(keepalives, retry policy, circuit breaker), starting replicas, and waiting out a fault.

The load calls ``LanguageService/Detect`` of ``language-system``: public (no token), answered
from memory (no storage call) and idempotent, so any failure the load sees is the fault's doing
and any call may safely be retried; its text of a few thousand characters makes each call a
couple of milliseconds of real work in the replica, not a round trip through an idle one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from gaming.language.v1 import language_pb2, language_pb2_grpc
from nats.aio.client import Client

import nats_transport.aio
from nats_transport import ChannelOptions
from tests._waiting import wait_for
from tests.chaos._load import Load, unary
from tests.chaos._processes import Processes, Replica

TARGET = "language-system"
SERVICE = "gaming.language.v1.LanguageService"
# Calls in flight at every moment.
CONCURRENCY = 8
# Each call's deadline: room for a keepalive timeout, a backoff and a second attempt.
DEADLINE = 5.0
# The client gives up on a call whose server has been silent this long (UNAVAILABLE, "the
# server stopped answering"), instead of waiting out its deadline: a replica that died or hung
# with the call costs the caller this much.
KEEPALIVE_TIMEOUT = 2.0
# The PING interval the client asks of servers for its slow calls (wire protocol 1.1, so a live
# call is never silent for the timeout), and how often it looks for silent calls: a call fails
# at most this long after its timeout.
KEEPALIVE_INTERVAL = 0.25
RETRY_POLICY: dict[str, Any] = {
    "maxAttempts": 4,
    "initialBackoff": "0.05s",
    "maxBackoff": "0.5s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
SERVICE_CONFIG = {"methodConfig": [{"name": [{"service": SERVICE}], "retryPolicy": RETRY_POLICY}]}
MAX_BACKOFF = 0.5  # the retry policy's maxBackoff: the longest wait before a retry
# Slack for scheduling on a busy two-core machine, added to bounds derived from the settings.
MARGIN = 1.0
READY_TIMEOUT = 30.0
# Bound on waiting for the load to be calm again after a fault.
RECOVERY_TIMEOUT = 30.0


@dataclass(frozen=True)
class ClientSetup:
    """How the load's channel is configured."""

    name: str
    retry: bool  # the service config's retryPolicy on UNAVAILABLE
    breaker: bool  # the channel's default circuit breaker; off: circuit_breaker=None


def chaos_channel(nc: Client, setup: ClientSetup, target: str = TARGET) -> grpc.aio.Channel:
    """The load's channel: short keepalives so a call on a dead replica fails UNAVAILABLE fast."""
    options: dict[str, Any] = {"keepalive_interval": KEEPALIVE_INTERVAL, "keepalive_timeout": KEEPALIVE_TIMEOUT}
    if not setup.breaker:
        options["circuit_breaker"] = None
    channel_options = ChannelOptions(**options)
    if not setup.retry:
        return nats_transport.aio.channel(nc, target, options=channel_options)
    return nats_transport.aio.channel(nc, target, options=channel_options, service_config=SERVICE_CONFIG)


# About 3000 characters: a couple of milliseconds of n-gram scoring per call.
TEXT = " ".join(["Where is the library, please? I would like to borrow a book about the old kingdom,"
                 " its roads, its rivers and the people who lived by them."] * 22)


def detect_load(channel: grpc.aio.Channel, concurrency: int = CONCURRENCY) -> Load:
    stub = language_pb2_grpc.LanguageServiceStub(channel)
    request = language_pb2.DetectRequest(text=TEXT)

    def call() -> Awaitable[tuple[grpc.StatusCode, str]]:
        return unary(stub.Detect(request, timeout=DEADLINE))

    return Load(call, concurrency)


async def start_replicas(processes: Processes, nats_url: str, count: int, *targets: str,
                         first: int = 0) -> list[Replica]:
    """Start ``count`` replicas of ``targets`` at once and wait until each is ready."""
    replicas = [processes.replica(f"replica-{first + i}", nats_url, *(targets or (TARGET,))) for i in range(count)]
    for replica in replicas:
        await wait_for(replica.ready, timeout=READY_TIMEOUT)
    return replicas


async def until(condition: Callable[[], bool | Awaitable[bool]], timeout: float, what: str) -> None:
    """``wait_for`` that names what was waited for when it fails."""
    try:
        await wait_for(condition, timeout=timeout)
    except AssertionError as error:
        raise AssertionError(f"{what}: not within {timeout:.0f} s") from error


async def calm_for_at_least(load: Load, since: float, seconds: float) -> None:
    """Wait until ``seconds`` have passed since ``since`` and the load is calm again."""
    await until(lambda: time.monotonic() - since >= seconds and load.calm(since),
                seconds + RECOVERY_TIMEOUT, "the load did not settle after the fault")


async def load_runs_for(seconds: float, since: float) -> None:
    """Let the load run until ``seconds`` after ``since``: a fault's length, where nothing can
    end it sooner (not a wait for a condition)."""
    await asyncio.sleep(max(since + seconds - time.monotonic(), 0.0))
