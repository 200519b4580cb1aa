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
