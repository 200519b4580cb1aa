"""Retries, hedging and retry throttling of unary calls, with gRFC A6's semantics.

- An attempt is *committed* once the server sent initial metadata: it is never retried after
  that. A trailers-only error (no initial metadata) is not committed.
- Every attempt after the first carries ``grpc-previous-rpc-attempts``; the call's deadline
  covers all attempts and the waits between them.
- A server may answer ``grpc-retry-pushback-ms`` in its trailing metadata: wait that long before
  the next attempt (then backoff starts over), or, if negative or malformed, do not retry.
- ``retryThrottling`` is a token bucket per target: a failure with a retryable (or non-fatal)
  code takes a token, a success gives back ``tokenRatio``; at or below half the bucket no retry
  or hedge is sent.
- Hedging sends the next copy after ``hedgingDelay`` or at once when one fails non-fatally; the
  first OK wins, the others are cancelled (which cancels their handlers, wire protocol 1.1).

Also here: ``waitForReady``, which keeps re-sending while no server serves the target (or the
NATS connection is reconnecting) until the deadline, without counting attempts; and the circuit
breaker's admission of each attempt. The unary path stays one function call when none apply.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import grpc

from nats_transport import _status
from nats_transport._circuit import CircuitBreaker
from nats_transport._client import Outcome, failed
from nats_transport._framing import Trailers
from nats_transport._service_config import HedgingPolicy, MethodConfig, RetryPolicy, RetryThrottling

PREVIOUS_ATTEMPTS_HEADER = "grpc-previous-rpc-attempts"
PUSHBACK_KEY = "grpc-retry-pushback-ms"

# waitForReady: how often to look again for a server, starting fast (a replica restarting).
_READY_FIRST_WAIT = 0.02
_READY_MAX_WAIT = 0.5
_NOT_READY = frozenset({_status.NO_SERVER[1], "NATS reconnecting", "NATS connection closed"})

# One attempt, given how many went before it (0 for the first).
Attempt = Callable[[int], Coroutine[Any, Any, Outcome]]


class RetryThrottle:
    """gRFC A6's token bucket of one target."""

    def __init__(self, policy: RetryThrottling) -> None:
        self.policy = policy
        self.tokens = policy.max_tokens

    def __repr__(self) -> str:
        return f"<RetryThrottle tokens={self.tokens:g}/{self.policy.max_tokens:g}>"

    def allows_retry(self) -> bool:
        return self.tokens > self.policy.max_tokens / 2

    def failed(self) -> None:
        self.tokens = max(self.tokens - 1, 0.0)

    def succeeded(self) -> None:
        self.tokens = min(self.tokens + self.policy.token_ratio, self.policy.max_tokens)


_throttles: dict[tuple[str, RetryThrottling], RetryThrottle] = {}


def throttle_for(target: str, policy: RetryThrottling | None) -> RetryThrottle | None:
    """The process-wide bucket of ``target`` under ``policy`` (grpcio keys it by server name)."""
    if policy is None:
        return None
    key = (target, policy)
    throttle = _throttles.get(key)
    if throttle is None:
        throttle = _throttles[key] = RetryThrottle(policy)
    return throttle


@dataclass(frozen=True, slots=True)
class CallPolicy:
    """Everything that decides how one method's calls are attempted."""

    config: MethodConfig
    throttle: RetryThrottle | None = None
    breaker: CircuitBreaker | None = None
    rng: random.Random = field(default_factory=random.Random, compare=False)


async def run_unary(attempt: Attempt, policy: CallPolicy, deadline: float | None,
                    wait_for_ready: bool | None = None) -> Outcome:
    """Run a unary call's attempts under ``policy``; the outcome of the one that decided it."""
    ready = policy.config.wait_for_ready if wait_for_ready is None else wait_for_ready
    once = _admitted(attempt, policy.breaker)
    if ready:
        once = _waiting_for_ready(once, deadline)
    if policy.config.hedging is not None:
        return await _hedged(once, policy.config.hedging, policy.throttle, deadline)
    if policy.config.retry is not None:
        return await _retried(once, policy.config.retry, policy.throttle, deadline, policy.rng)
    outcome = await once(0)
    if policy.throttle is not None and outcome.trailers.code == 0:
        policy.throttle.succeeded()
    return outcome


def committed(outcome: Outcome) -> bool:
    """Whether the server sent initial metadata before failing (A6: no retry after that)."""
    return bool(outcome.initial_metadata)


def pushback(trailers: Trailers) -> float | None:
    """The server's pushback in seconds; a negative number means "do not retry"; None if absent."""
    for key, value in trailers.metadata:
        if key == PUSHBACK_KEY:
            text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
            try:
                millis = int(text.strip())
            except ValueError:
                return -1.0
            return -1.0 if millis < 0 else millis / 1000
    return None


def _code(outcome: Outcome) -> grpc.StatusCode:
    return _status.code_from_number(outcome.trailers.code)


def _admitted(attempt: Attempt, breaker: CircuitBreaker | None) -> Attempt:
    if breaker is None:
        return attempt

    async def once(previous: int) -> Outcome:
        refusal = breaker.admit()
        if refusal is not None:
            return failed(grpc.StatusCode.UNAVAILABLE, refusal)
        started = breaker.stamp()
        try:
            outcome = await attempt(previous)
        except asyncio.CancelledError:
            breaker.record(grpc.StatusCode.CANCELLED, "", started)
            raise
        breaker.record(_code(outcome), outcome.trailers.message, started)
        return outcome

    return once


def _waiting_for_ready(attempt: Attempt, deadline: float | None) -> Attempt:
    async def once(previous: int) -> Outcome:
        wait = _READY_FIRST_WAIT
        while True:
            outcome = await attempt(previous)
            if _code(outcome) is not grpc.StatusCode.UNAVAILABLE or outcome.trailers.message not in _NOT_READY:
                return outcome
            if deadline is not None and time.monotonic() + wait >= deadline:
                await asyncio.sleep(max(deadline - time.monotonic(), 0))
                return failed(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
            await asyncio.sleep(wait)
            wait = min(wait * 2, _READY_MAX_WAIT)

    return once


@dataclass(slots=True)
class RetryState:
    """Where a call stands in its retry policy: attempts made, and the next backoff step."""

    policy: RetryPolicy
    throttle: RetryThrottle | None
    rng: random.Random
    attempts: int = 0
    backoff_step: int = 1

    def next_wait(self, code: grpc.StatusCode, trailers: Trailers, committed: bool) -> float | None:
        """After an attempt ended with ``code``: seconds to wait before the next attempt, or
        None for "this outcome is the call's". Keeps the throttle's count."""
        self.attempts += 1
        if code is grpc.StatusCode.OK:
            if self.throttle is not None:
                self.throttle.succeeded()
            return None
        server_pushback = pushback(trailers)
        refused = server_pushback is not None and server_pushback < 0
        retryable = code in self.policy.retryable_codes
        if self.throttle is not None and (retryable or refused):
            self.throttle.failed()
        if (not retryable or refused or committed or self.attempts >= self.policy.max_attempts
                or (self.throttle is not None and not self.throttle.allows_retry())):
            return None
        if server_pushback is not None:
            self.backoff_step = 1  # A6: after a pushback, backoff starts over
            return server_pushback
        wait = self.rng.uniform(0, self.policy.backoff_ceiling(self.backoff_step))
        self.backoff_step += 1
        return wait


async def _retried(attempt: Attempt, policy: RetryPolicy, throttle: RetryThrottle | None,
                   deadline: float | None, rng: random.Random) -> Outcome:
    state = RetryState(policy, throttle, rng)
    while True:
        outcome = await attempt(state.attempts)
        wait = state.next_wait(_code(outcome), outcome.trailers, committed(outcome))
        if wait is None:
            return outcome
        if not await wait_within(wait, deadline):
            # A6: the deadline covers the waits too; grpcio ends such a call at its deadline.
            return failed(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")


async def wait_within(seconds: float, deadline: float | None) -> bool:
    """Wait ``seconds`` if the deadline allows; else wait until the deadline and return False."""
    if deadline is not None and time.monotonic() + seconds >= deadline:
        await asyncio.sleep(max(deadline - time.monotonic(), 0))
        return False
    await asyncio.sleep(seconds)
    return True


async def _hedged(attempt: Attempt, policy: HedgingPolicy, throttle: RetryThrottle | None,
                  deadline: float | None) -> Outcome:
    loop = asyncio.get_running_loop()
    running: set[asyncio.Task[Outcome]] = set()
    sent = 0
    next_at: float | None = loop.time()  # when the next copy goes; None: no more copies
    last: Outcome | None = None

    def send() -> None:
        nonlocal sent
        running.add(loop.create_task(attempt(sent)))
        sent += 1

    try:
        while True:
            now = loop.time()
            if next_at is not None and now >= next_at:
                if sent == 0 or throttle is None or throttle.allows_retry():
                    send()
                    next_at = now + policy.delay if sent < policy.max_attempts else None
                else:
                    next_at = None
            if not running:
                if last is None:  # the throttle forbade every copy after a first that never ran
                    return failed(grpc.StatusCode.UNAVAILABLE, "hedged call sent no attempt")
                return last
            timeout = None if next_at is None else max(next_at - loop.time(), 0)
            done, _ = await asyncio.wait(running, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                running.discard(task)
                outcome = task.result()
                last = outcome
                code = _code(outcome)
                if code is grpc.StatusCode.OK:
                    if throttle is not None:
                        throttle.succeeded()
                    return outcome
                server_pushback = pushback(outcome.trailers)
                if code not in policy.non_fatal_codes or committed(outcome):
                    return outcome
                if throttle is not None:
                    throttle.failed()
                if server_pushback is not None and server_pushback < 0:
                    next_at = None
                elif sent < policy.max_attempts and next_at is not None:
                    next_at = loop.time() + (server_pushback or 0.0)
            if deadline is not None and time.monotonic() >= deadline and not running:
                return last or failed(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    finally:
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)

