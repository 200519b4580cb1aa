"""Waiting on a condition with a bound, instead of sleeping for a guessed time."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable


async def wait_for(predicate: Callable[[], bool | Awaitable[bool]], timeout: float = 5.0) -> None:
    """Return once ``predicate()`` is true; fail the test if it is still false after ``timeout`` s.

    ``predicate`` may be a plain function or a coroutine function. It is polled every few
    milliseconds, yielding to the event loop in between.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition {getattr(predicate, '__name__', predicate)!r} not met in {timeout}s")
        await asyncio.sleep(0.005)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """The blocking twin of :func:`wait_for`, for fixtures and helpers outside the event loop:
    return once ``predicate()`` is true, fail naming ``what`` after ``timeout`` seconds.
    ``predicate`` may raise to fail at once (a process it waits on has exited, say)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached in {timeout}s")
        time.sleep(0.02)  # the interval between two polls; the bound above is the wait
