"""How the synchronous channel's calling threads hand work to its event-loop thread, and how a
calling thread waits for what comes back.

asyncio's own tools cost more per call than a call over NATS does on a busy channel:
``call_soon_threadsafe`` writes to the loop's self-pipe (a syscall, and a wake-up of the loop)
for every call, and a ``concurrent.futures.Future`` makes every wait and every result a round
of a ``threading.Condition`` (an RLock, a fresh waiter lock and a deque). With 16 threads
calling, that handoff was a quarter of the client's time. Here the calls handed over before the
loop gets round to them share one wake-up, and the end of a call is one lock release.
"""

from __future__ import annotations

import _thread
import asyncio
import concurrent.futures
import contextlib
import contextvars
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_Item = tuple[contextvars.Context, Callable[[Any], object], Any]


class LoopInbox:
    """Callbacks handed to an event loop from any thread, run on it in the order handed, each
    in the context its caller gave.

    Once the loop has stopped for good, :meth:`close` runs what it left on the closing thread,
    and later callbacks run at once on the thread that hands them over: each must look whether
    its channel is closed before it touches the loop.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: deque[_Item] = deque()
        self._drain_pending = False
        self._closed = False
        # The drain's own handle runs in this context rather than in a copy of whichever
        # caller's context happened to schedule it: each callback has its caller's already.
        self._drain_context = contextvars.Context()

    def submit(self, fn: Callable[[T], object], arg: T, context: contextvars.Context) -> None:
        """Run ``fn(arg)`` in ``context`` on the loop thread, soon."""
        # deque.append and popleft are atomic, so no lock: an item appended before the flag is
        # read is seen by the drain that cleared the flag, or by the one scheduled here.
        self._items.append((context, fn, arg))
        if self._closed:
            self._run_leftovers()  # the loop is gone: nobody else would run it
            return
        if not self._drain_pending:
            self._drain_pending = True
            # RuntimeError: the loop was closed meanwhile; close() runs what is left, this item too.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._drain, context=self._drain_context)

    def _drain(self) -> None:
        self._drain_pending = False
        items = self._items
        # Only what is here now: callbacks handed over meanwhile wait for the next round (they
        # scheduled it), so a stream of calls cannot keep the loop from its sockets.
        for _ in range(len(items)):
            try:
                context, fn, arg = items.popleft()
            except IndexError:  # a close() that gave up waiting for the loop took them
                return
            try:
                context.run(fn, arg)
            except (SystemExit, KeyboardInterrupt):
                self._reschedule()
                raise
            except BaseException as exc:  # as a Handle would: report it and go on with the rest
                self._loop.call_exception_handler(
                    {"message": f"Exception in callback {fn!r} handed to the channel's loop", "exception": exc}
                )

    def _reschedule(self) -> None:
        if self._items and not self._drain_pending:
            self._drain_pending = True
            self._loop.call_soon(self._drain, context=self._drain_context)

    def close(self) -> None:
        """Run, here and now, what the stopped loop left, and whatever is handed over later."""
        self._closed = True
        self._run_leftovers()

    def _run_leftovers(self) -> None:
        items = self._items
        while True:
            try:
                context, fn, arg = items.popleft()
            except IndexError:
                return
            context.run(fn, arg)


class Latch:
    """A gate that opens once: threads wait on it until it has.

    One lock, taken at birth and released by :meth:`open`: a wait is one acquire of it (and a
    release, to let the next waiter through).
    """

    __slots__ = ("_lock", "is_open")

    def __init__(self) -> None:
        self._lock = _thread.allocate_lock()
        self._lock.acquire()
        self.is_open = False

    def open(self) -> None:
        """Let every waiter through, now and later. Call it once."""
        self.is_open = True
        self._lock.release()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the latch is open (True) or ``timeout`` seconds have passed (False).

        A signal's exception (KeyboardInterrupt) interrupts the wait, as it does any lock's.
        """
        if self.is_open:
            return True
        if timeout is None:
            passed = self._lock.acquire()
        elif timeout > 0:
            passed = self._lock.acquire(timeout=timeout)
        else:
            passed = self._lock.acquire(False)
        if passed:
            self._lock.release()
        return passed


class Claim:
    """Who decides how something ends: the first to :meth:`take` it, once.

    A non-blocking acquire of a lock nobody releases is an atomic test-and-set, across the
    calling thread (cancel) and the loop thread (the end of the call).
    """

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = _thread.allocate_lock()

    def take(self) -> bool:
        """True for the first taker only."""
        return self._lock.acquire(False)

    @property
    def taken(self) -> bool:
        """Whether someone has taken it."""
        return self._lock.locked()


class Awaited(Generic[T]):
    """A coroutine run as a task on the loop, and its outcome for the thread that waits for it:
    what ``asyncio.run_coroutine_threadsafe`` gives, without a ``concurrent.futures.Future``.

    As there, the wait raises ``concurrent.futures.CancelledError`` when the task was cancelled,
    and ``TimeoutError`` when it outlasts the wait (the task runs on).
    """

    __slots__ = ("_claim", "_coro", "_error", "_latch", "_result")

    def __init__(self, coro: Coroutine[Any, Any, T]) -> None:
        self._coro: Coroutine[Any, Any, T] | None = coro
        self._claim = Claim()
        self._latch = Latch()
        self._result: T | None = None
        self._error: BaseException | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> asyncio.Task[T]:
        """Run the coroutine as a task of ``loop`` (on its thread)."""
        coro, self._coro = self._coro, None
        assert coro is not None
        task = loop.create_task(coro)
        task.add_done_callback(self._on_done)
        return task

    def refuse(self, error: BaseException) -> None:
        """End it with ``error`` unless it has ended: the loop that would end it is gone."""
        coro, self._coro = self._coro, None
        if coro is not None:
            coro.close()
        if self._claim.take():
            self._error = error
            self._latch.open()

    def _on_done(self, task: asyncio.Task[T]) -> None:
        if not self._claim.take():
            return
        if task.cancelled():
            self._error = concurrent.futures.CancelledError()
        elif (error := task.exception()) is not None:
            self._error = error
        else:
            self._result = task.result()
        self._latch.open()

    def result(self, timeout: float | None = None) -> T:
        """The coroutine's result, or its exception raised, once it has ended."""
        if not self._latch.wait(timeout):
            raise TimeoutError()
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]
