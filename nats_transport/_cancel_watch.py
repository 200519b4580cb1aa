"""Cancelling the task that serves a call, and seeing that the cancellation took.

A handler can lose the CancelledError its call's cancellation raised in it: it may catch it and
carry on, and on Python 3.11 ``asyncio.wait_for`` (which nats-py's ``request`` and ``next_msg``
use) drops a cancellation that arrives together with the result it was waiting for. A streaming
handler that lost it keeps working for a caller that has gone, or whose deadline has passed,
until the process ends. So a cancelled call's task is looked at again :data:`GRACE` seconds
later: if it still runs, that is logged (once per call) and the task is cancelled again, every
:data:`GRACE` seconds until it ends. A handler's own cleanup thus gets :data:`GRACE` seconds
before a further cancellation interrupts it.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

log = logging.getLogger("nats_transport.server")

GRACE = 5.0  # seconds a cancelled handler has to end before it is cancelled again

_watched: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()


def cancel_call_task(task: asyncio.Task[Any], method: str) -> None:
    """Cancel ``task``, which serves a call of ``method``, and cancel it again while it runs on."""
    task.cancel()
    if task.done() or task in _watched:
        return
    _watched.add(task)
    timer: list[asyncio.TimerHandle] = []  # the one pending look, replaced at each look
    timer.append(task.get_loop().call_later(GRACE, _look_again, task, method, timer, True))
    # A task that ends meanwhile (the usual case) is let go at once, not held by the timer.
    task.add_done_callback(lambda _: timer[0].cancel())


def _look_again(task: asyncio.Task[Any], method: str, timer: list[asyncio.TimerHandle], first: bool) -> None:
    if task.done():
        return
    if first:
        log.warning(
            "the handler of %s is still running %g s after its call was cancelled (it caught or "
            "lost the CancelledError); cancelling it again every %g s until it ends",
            method,
            GRACE,
            GRACE,
            extra={"method": method},
        )
    task.cancel()
    timer[0] = task.get_loop().call_later(GRACE, _look_again, task, method, timer, False)
