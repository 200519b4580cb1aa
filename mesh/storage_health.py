"""Whether a target's JetStream storage answers, so an outage is told to callers at once.

A bucket whose stream has lost its leader (a node died, an election is running, or the only
replica is gone) does not fail requests: it leaves them unanswered until the request timeout.
Callers would see DEADLINE_EXCEEDED at their own deadline, and probes would still say ready. So:

- a storage failure seen by any call marks the target's storage down at once (``failed``);
- while down, the host answers the target's calls with UNAVAILABLE straight away (``refusal``),
  reports the target NOT_SERVING, and ``/readyz`` gives the reason;
- a probe asks JetStream for each of the target's streams (``STREAM.INFO``, answered only where
  the stream has a leader) every ``interval`` seconds, every ``down_interval`` while down, and
  marks the storage up again once every stream answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
from nats.aio.client import Client

log = logging.getLogger("mesh.storage_health")

# A peer the leader has not heard from for this long is taken as gone (leaders hear from peers
# at least every second, so this is several missed heartbeats).
_STALE_PEER_NS = 3_000_000_000

Listener = Callable[[str | None], Awaitable[None]]


class StorageHealth:
    """The storage state of one target: ``problem`` is None while every stream it uses answers,
    else why not (for humans: logs, ``/readyz``, the UNAVAILABLE message)."""

    def __init__(self, nc: Client, target: str, *, interval: float = 5.0, down_interval: float = 0.5,
                 timeout: float = 1.0) -> None:
        self._nc = nc
        self.target = target
        self.interval = interval
        self.down_interval = down_interval
        self.timeout = timeout
        self.problem: str | None = None
        self._since = 0.0
        self._streams: set[str] = set()
        self._wake = asyncio.Event()
        self._listeners: list[Listener] = []

    def __repr__(self) -> str:
        state = f"down ({self.problem})" if self.problem else "up"
        return f"<StorageHealth target={self.target!r} streams={sorted(self._streams)} {state}>"

    @property
    def streams(self) -> frozenset[str]:
        """The JetStream streams this target uses (KV buckets are streams ``KV_<bucket>``)."""
        return frozenset(self._streams)

    def track(self, stream: str) -> None:
        """Probe ``stream`` from now on."""
        self._streams.add(stream)

    def on_change(self, listener: Listener) -> None:
        """Call ``listener(problem)`` each time the state flips (None: up again)."""
        self._listeners.append(listener)

    def failed(self, what: str, error: BaseException | str) -> None:
        """A storage call failed for want of the store: down now, and probe at once (a one-off
        timeout on a healthy stream is cleared by that probe within milliseconds)."""
        if self.problem is None:
            self._record(f"{what}: {str(error) or type(error).__name__}")
        self._wake.set()

    def suspect(self) -> None:
        """Something looked slow (a call ran out of its caller's time): probe now, change nothing
        yet, since a short deadline says nothing about the store."""
        self._wake.set()

    async def run(self) -> None:
        """Probe and tell the listeners until cancelled. Listeners run from this one task, in
        order, so the last state they hear is the current one."""
        told_down = False
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.down_interval if self.problem else self.interval)
            self._wake.clear()
            if self._streams:
                problem = await self.probe()
                if problem is None and self.problem is not None:
                    log.info("storage available again",
                             extra={"target": self.target, "down_s": round(time.monotonic() - self._since, 3)})
                    self.problem = None
                elif problem is not None:
                    if self.problem is None:
                        self._record(problem)
                    self.problem = problem  # the latest reason, for /readyz
            if (self.problem is not None) != told_down:
                told_down = self.problem is not None
                for listener in self._listeners:
                    await listener(self.problem)

    async def probe(self) -> str | None:
        """None when every stream answers STREAM.INFO without error, else the first problem."""
        for stream in sorted(self._streams):
            try:
                reply = await self._nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=self.timeout)
            except nats.errors.NoRespondersError:
                return "JetStream does not answer (no JetStream server reachable)"
            except nats.errors.TimeoutError:
                return (f"stream {stream} did not answer within {self.timeout:g} s "
                        "(no leader: an election is running, or its servers are down)")
            except nats.errors.Error as failure:
                return f"stream {stream}: {failure or type(failure).__name__}"
            try:
                answer = json.loads(reply.data)
            except ValueError:
                return f"stream {stream}: unreadable answer from JetStream"
            refusal = answer.get("error")
            if refusal:
                return f"stream {stream}: {refusal.get('description', refusal)}"
            problem = _quorum_problem(answer.get("cluster") or {})
            if problem:
                return f"stream {stream}: {problem}"
        return None

    def _record(self, problem: str) -> None:
        self.problem, self._since = problem, time.monotonic()
        log.warning("storage unavailable", extra={"target": self.target, "reason": problem})


def _quorum_problem(cluster: dict[str, Any]) -> str | None:
    """Why a replicated stream cannot take writes, from the leader's view of its peers; None if
    it can. A leader cut off from its peers still answers STREAM.INFO (for a while it still
    believes it leads), but a write needs a majority, so count the peers it hears from."""
    replicas = cluster.get("replicas") or []
    if not replicas:
        return None  # R1, or a server that is not clustered: an answer is all there is to know
    if not cluster.get("leader"):
        return "no leader"
    size = len(replicas) + 1
    heard = 1 + sum(1 for peer in replicas
                    if peer.get("current") and not peer.get("offline") and peer.get("active", 0) < _STALE_PEER_NS)
    if heard <= size // 2:
        return f"only {heard} of {size} replicas reachable, no quorum for writes"
    return None
