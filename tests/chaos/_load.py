"""A closed-loop load of unary calls: a fixed number of calls always in flight, each outcome
recorded (when it started and ended, its status code), so a test can say what a fault cost.

Each worker starts its next call as soon as the last one ends, so exactly ``concurrency`` calls
are in flight whatever the server does. A call that failed is followed by a short pause, so a
target that fails calls at once (no responders, NATS away) is not spun on at full speed.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc

OK = grpc.StatusCode.OK
# A worker's pause after a failed call: pacing, so an instant failure does not become a busy loop.
FAILURE_PAUSE = 0.05
# A call slower than this counts as disturbed by the fault: an undisturbed call of the methods the
# chaos tests use takes milliseconds, and every fault under test costs a call a second or more.
DISTURBED_AFTER = 0.5


@dataclass(frozen=True, slots=True)
class Outcome:
    """One call: when it started and ended (monotonic seconds), its code and details."""

    started: float
    ended: float
    code: grpc.StatusCode
    detail: str = ""

    @property
    def latency(self) -> float:
        return self.ended - self.started

    @property
    def failed(self) -> bool:
        return self.code is not OK

    @property
    def disturbed(self) -> bool:
        return self.failed or self.latency > DISTURBED_AFTER


@dataclass
class Load:
    """``concurrency`` workers calling ``call`` in a loop until stopped.

    ``call`` makes one call and returns its status code and details; it raises nothing for a
    failed call (see :func:`unary`).
    """

    call: Callable[[], Awaitable[tuple[grpc.StatusCode, str]]]
    concurrency: int = 8
    outcomes: list[Outcome] = field(default_factory=list)
    _running: dict[int, float] = field(default_factory=dict)  # call id -> when it started
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work()) for _ in range(self.concurrency)]

    async def stop(self) -> None:
        """Let every worker finish the call it is on (each is bounded by its deadline), then stop."""
        self._stopping.set()
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        assert not errors, f"a load worker stopped with {errors[0]!r}"

    async def _work(self) -> None:
        while not self._stopping.is_set():
            call_id = next(self._ids)
            started = self._running[call_id] = time.monotonic()
            try:
                code, detail = await self.call()
            finally:
                del self._running[call_id]
            self.outcomes.append(Outcome(started, time.monotonic(), code, detail))
            if code != OK:
                await asyncio.sleep(FAILURE_PAUSE)

    def held(self, longer_than: float = DISTURBED_AFTER / 5) -> int:
        """Calls in flight for longer than an undisturbed call takes: held by a server that is
        not answering."""
        now = time.monotonic()
        return sum(1 for started in self._running.values() if now - started > longer_than)

    def calm(self, since: float, calls: int = 50) -> bool:
        """True once no call is stuck and the last ``calls`` calls, all ended after ``since``, were
        prompt successes: the fault's effect on this load is over."""
        now = time.monotonic()
        if any(now - started > DISTURBED_AFTER for started in self._running.values()):
            return False
        recent = self.outcomes[-calls:]
        return len(recent) == calls and recent[0].ended >= since and not any(o.disturbed for o in recent)

    def between(self, start: float, end: float = float("inf")) -> list[Outcome]:
        """The calls that ended in [start, end)."""
        return [o for o in self.outcomes if start <= o.ended < end]


def failures_by_code(outcomes: list[Outcome]) -> dict[str, int]:
    counts = collections.Counter(o.code.name for o in outcomes if o.failed)
    return dict(sorted(counts.items()))


def failure_details(outcomes: list[Outcome], limit: int = 6) -> list[str]:
    """The distinct failures seen, ``CODE: details``, the most frequent first."""
    # Numbers in details (a cool-down's seconds left, say) would split one kind of failure into many.
    counts = collections.Counter(f"{o.code.name}: {re.sub(r'[0-9.]+[0-9]', '#', o.detail[:120])}"
                                 for o in outcomes if o.failed)
    return [f"{text} (x{n})" for text, n in counts.most_common(limit)]


def recovery_after(outcomes: list[Outcome], fault: float) -> float:
    """Seconds from ``fault`` until the last disturbed call (failed, or slower than
    DISTURBED_AFTER) that ended after it; 0 when none was disturbed."""
    disturbed = [o.ended for o in outcomes if o.ended >= fault and o.disturbed]
    return max(disturbed) - fault if disturbed else 0.0


async def unary(call: Awaitable[object]) -> tuple[grpc.StatusCode, str]:
    """Await a unary call; its status code and details (OK and "" on success)."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""
    return OK, ""
