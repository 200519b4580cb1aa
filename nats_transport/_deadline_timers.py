"""Deadline timers that cost little to set and cancel, for the many calls that end in time.

Every call with a deadline needs a timer on each side, and nearly every such timer is cancelled:
the call ends long before its deadline. asyncio's ``call_at`` pushes each one onto the loop's
heap and ``cancel`` leaves it there for the loop to sweep out later, about 1.6 us a call on the
machines we measure (an eighth of the server's whole CPU per call).

Here deadlines falling into the same slot of ``SLOT`` seconds share one ``call_at``, set for
the slot's start: setting a deadline is a set insertion, cancelling it a removal. When a slot's
start comes, each deadline still in it gets a ``call_at`` of its own for its exact time, so a
deadline fires when it would have with ``call_at`` alone; only the calls then within one slot of
their deadline pay for a loop timer. A deadline less than one slot away gets its own at once.
A slot that cancels empty gives up its timer if it lies far ahead (a long deadline), so calls
with long deadlines that end early leave nothing behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

SLOT = 0.05  # seconds: one shared loop timer per slot that holds a deadline
KEEP_EMPTY = 10.0  # seconds: a slot emptied by cancels keeps its timer if it opens sooner than this


class _Slot:
    """The deadlines of one slot, and the loop timer that opens it."""

    __slots__ = ("deadlines", "handle", "index", "owner")

    def __init__(self, index: int, owner: DeadlineTimers, handle: asyncio.TimerHandle) -> None:
        self.index = index
        self.owner = owner
        self.deadlines: set[Deadline] = set()
        self.handle = handle


class Deadline:
    """One deadline: ``cancel()`` it when the call ends first."""

    __slots__ = ("_args", "_callback", "_handle", "_slot", "when")

    def __init__(self, when: float, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        self.when = when  # in the loop's time
        self._callback = callback
        self._args = args
        self._handle: asyncio.TimerHandle | None = None
        self._slot: _Slot | None = None

    def cancel(self) -> None:
        """Make sure the callback does not run (a no-op once it has run or been cancelled)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        elif self._slot is not None:
            slot, self._slot = self._slot, None
            slot.deadlines.discard(self)
            if not slot.deadlines:
                slot.owner._emptied(slot)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        self._slot = None
        self._handle = loop.call_at(self.when, self._callback, *self._args)


class DeadlineTimers:
    """The deadline timers of one event loop (see the module's docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._slots: dict[int, _Slot] = {}

    def call_at(self, when: float, callback: Callable[..., object], *args: Any) -> Deadline:
        """Run ``callback(*args)`` at ``when`` (the loop's time), unless cancelled first."""
        deadline = Deadline(when, callback, args)
        loop = self.loop
        if when - loop.time() < SLOT:
            deadline._arm(loop)
            return deadline
        index = int(when / SLOT)
        slot = self._slots.get(index)
        if slot is None:
            slot = self._slots[index] = _Slot(index, self, loop.call_at(index * SLOT, self._open, index))
        slot.deadlines.add(deadline)
        deadline._slot = slot
        return deadline

    def pending(self) -> int:
        """Deadlines waiting in slots (not those already given a loop timer of their own)."""
        return sum(len(slot.deadlines) for slot in self._slots.values())

    def slots(self) -> int:
        """Slots waiting to open, each with a loop timer."""
        return len(self._slots)

    def _emptied(self, slot: _Slot) -> None:
        # A slot far ahead (a long deadline) would otherwise keep its timer and its place in
        # the table until its time comes, long after its calls have ended. Nearer ones stay (at
        # most KEEP_EMPTY / SLOT of them): a slot that one call at a time empties and fills
        # again would cost a timer per call.
        if slot.handle.when() - self.loop.time() > KEEP_EMPTY:
            slot.handle.cancel()
            del self._slots[slot.index]

    def _open(self, index: int) -> None:
        slot = self._slots.pop(index)
        loop = self.loop
        for deadline in slot.deadlines:
            deadline._arm(loop)


def timers_on(timers: DeadlineTimers | None, loop: asyncio.AbstractEventLoop) -> DeadlineTimers:
    """``timers`` if they are ``loop``'s, else new ones for it: an owner keeps one set per loop."""
    return timers if timers is not None and timers.loop is loop else DeadlineTimers(loop)
