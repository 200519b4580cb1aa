"""A circuit breaker per target: fail fast while a target swallows calls, probe it again later.

A target that *answers*, even with an error, costs its callers microseconds; one that does not
(every replica hung, a region cut off) costs each call its keepalive timeout or its deadline,
and callers pile up behind it. So the breaker counts only calls that heard nothing in time:
DEADLINE_EXCEEDED, and UNAVAILABLE because the server went silent. After ``failures`` of them
in a row (an answer in between resets the count) the circuit opens: calls fail at once with
UNAVAILABLE for ``cool_down`` seconds. Then it is half-open: one call goes through as a probe;
its answer closes the circuit, its silence opens it again.

What never counts, because it says nothing about the target as a whole:

- a silent call that started before the target's latest answer: one replica dying or hanging
  fails every call it held at once, while the others go on answering;
- a call whose own NATS connection broke or reconnected while it waited: the caller's link is
  at fault, not the target;
- "no server is serving this target": NATS says so at once, so breaking would save nothing.

States are kept per NATS connection and target, shared by the channels on that connection, and
exported by :func:`circuit_states` (the ``nats_transport_circuit_state`` metric).
"""

from __future__ import annotations

import enum
import logging
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from nats.aio.client import Client

from nats_transport import _status

log = logging.getLogger("nats_transport.circuit")


class CircuitState(enum.IntEnum):
    """A circuit's state; the values are what the metric reports."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitBreakerOptions:
    """When a target's circuit opens and for how long.

    Attributes:
        failures: calls in a row that heard nothing in time before the circuit opens.
        cool_down: seconds the circuit stays open before one probe call is let through.
    """

    failures: int = 5
    cool_down: float = 5.0

    def __post_init__(self) -> None:
        if self.failures < 1:
            raise ValueError("failures must be at least 1")
        if not self.cool_down > 0:
            raise ValueError("cool_down must be positive")


# When a call started: the answers counted by then, and how often its connection had reconnected.
Stamp = tuple[int, int]


_OK = grpc.StatusCode.OK


def is_silent_failure(code: grpc.StatusCode, details: str) -> bool:
    """Whether a call's outcome says its target did not answer in time."""
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return True
    return code is grpc.StatusCode.UNAVAILABLE and details == _status.SERVER_SILENT[1]


def _no_reconnects() -> int:
    return 0


class CircuitBreaker:
    """The circuit of one target on one connection."""

    def __init__(self, target: str, options: CircuitBreakerOptions, clock: Callable[[], float] = time.monotonic,
                 reconnects: Callable[[], int] = _no_reconnects):
        self.target = target
        self.options = options
        self._clock = clock
        self._reconnects = reconnects
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._answers = 0  # calls answered so far: a stamp's first half
        self._probing = False

    def __repr__(self) -> str:
        return f"<CircuitBreaker target={self.target!r} state={self.state.name} failures={self._failures}>"

    @property
    def state(self) -> CircuitState:
        """The state now (an open circuit whose cool-down has passed reads as half-open)."""
        if self._state is CircuitState.OPEN and self._clock() - self._opened_at >= self.options.cool_down:
            return CircuitState.HALF_OPEN
        return self._state

    def admit(self) -> str | None:
        """None if a call may go now, else why not (the details of its UNAVAILABLE)."""
        if self._state is CircuitState.CLOSED:
            return None
        if self.state is CircuitState.HALF_OPEN and not self._probing:
            if self._state is CircuitState.OPEN:
                self._transition(CircuitState.HALF_OPEN, "cool-down over, letting one call through")
            self._probing = True
            return None
        if self._state is CircuitState.HALF_OPEN:
            return f"circuit to {self.target!r} is half-open and its probe call is still running"
        wait = self.options.cool_down - (self._clock() - self._opened_at)
        return (f"circuit to {self.target!r} is open after {self.options.failures} calls in a row heard nothing "
                f"in time; next try in {max(wait, 0):.1f} s")

    def stamp(self) -> Stamp:
        """When a call starts: pass it to :meth:`record` when the call ends."""
        return self._answers, self._reconnects()

    def record(self, code: grpc.StatusCode, details: str, started: Stamp) -> None:
        """Count a finished call that :meth:`admit` let through."""
        self._probing = False  # whatever this call was, the next one may probe
        if code is _OK:  # nearly every call: an answer, and nothing else to decide
            self._answered()
            return
        if is_silent_failure(code, details):
            if started[0] != self._answers or started[1] != self._reconnects():
                return  # the target answered since this call began, or the caller's link broke meanwhile
            self._failures += 1
            if self._state is CircuitState.HALF_OPEN or (
                self._state is CircuitState.CLOSED and self._failures >= self.options.failures
            ):
                self._open()
            return
        if code is grpc.StatusCode.CANCELLED or (code is grpc.StatusCode.UNAVAILABLE and not _answered(details)):
            return  # no verdict (a probe given up, a broken link): the next call probes instead
        self._answered()

    def _answered(self) -> None:
        self._answers += 1
        self._failures = 0
        if self._state is not CircuitState.CLOSED:
            self._transition(CircuitState.CLOSED, "a call was answered")

    def _open(self) -> None:
        self._opened_at = self._clock()
        if self._state is not CircuitState.OPEN:
            self._transition(
                CircuitState.OPEN,
                f"{self._failures} calls in a row heard nothing in time; failing fast for {self.options.cool_down:g} s",
            )

    def _transition(self, state: CircuitState, why: str) -> None:
        self._state = state
        level = logging.WARNING if state is CircuitState.OPEN else logging.INFO
        log.log(level, "circuit to %s is %s: %s", self.target, state.name.lower().replace("_", "-"), why,
                extra={"target": self.target, "circuit_state": state.name})


def _answered(details: str) -> bool:
    # UNAVAILABLE the caller's side decided (its link broke, NATS reconnecting) is no answer.
    return details not in _LOCAL_UNAVAILABLE


# The caller's own NATS failures (the transport's failure table) and a link lost mid-call; "no
# server is serving this target" is NATS answering for the target, so it stays an answer.
_LOCAL_UNAVAILABLE = frozenset(
    {message for _, code, message in _status.FAILURE_TABLE if code is grpc.StatusCode.UNAVAILABLE}
    - {_status.NO_SERVER[1]}
    | {_status.CONNECTION_LOST_DURING_CALL[1]}
)

_breakers: weakref.WeakKeyDictionary[Client, dict[str, CircuitBreaker]] = weakref.WeakKeyDictionary()


def breaker_for(nc: Client, target: str, options: CircuitBreakerOptions) -> CircuitBreaker:
    """The connection's breaker for ``target`` (created with ``options`` on first use; channels
    to one target on one connection share it, and the first one's options win)."""
    per_target = _breakers.get(nc)
    if per_target is None:
        per_target = _breakers[nc] = {}
    breaker = per_target.get(target)
    if breaker is None:
        connection = weakref.ref(nc)  # the registry is keyed weakly by nc: hold it weakly here too

        def reconnects() -> int:
            client = connection()
            return -1 if client is None else int(client.stats.get("reconnects", 0))

        breaker = per_target[target] = CircuitBreaker(target, options, reconnects=reconnects)
    return breaker


def circuit_states(nc: Client) -> dict[str, CircuitState]:
    """The circuit state of every target called over ``nc`` so far."""
    return {target: breaker.state for target, breaker in _breakers.get(nc, {}).items()}
