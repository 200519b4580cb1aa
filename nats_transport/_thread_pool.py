"""The threads that run plain-function (``def``) handlers for an asyncio server.

``loop.run_in_executor`` over a ``ThreadPoolExecutor`` pays, per call, for a
``concurrent.futures.Future`` (a Condition and its locks), a second asyncio future chained to it
with callbacks both ways, the executor's idle semaphore (another Condition) and one
``call_soon_threadsafe`` per completion, each a write to the loop's self-pipe that wakes it. On a
busy server that made a plain handler's call cost the server about twice the CPU of an
``async def`` one. This pool keeps only what a handler call needs: a plain asyncio future the
loop made, a ``SimpleQueue`` the workers block on, and a deque of outcomes that the loop takes in
batches, woken once per batch rather than once per call.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import itertools
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

# What a worker hands back: the future, whether the call returned, and its result or exception.
_Outcome = tuple["asyncio.Future[Any]", bool, Any]
# What a worker takes: the future, the context to run in (None: the worker's own), the callable
# and its arguments; None tells a worker to exit.
_Work = tuple["asyncio.Future[Any]", "contextvars.Context | None", Callable[..., Any], tuple[Any, ...]]


class ThreadPool:
    """Runs blocking callables on at most ``max_threads`` threads, for one event loop.

    Threads start only as work needs them. ``run`` and ``shutdown`` belong to the loop's
    thread: the futures they make and cancel are the loop's, and the loop alone counts the work
    in progress, so the count needs no lock.
    """

    def __init__(self, max_threads: int, name: str) -> None:
        if max_threads <= 0:
            raise ValueError("max_threads must be positive")
        self._max_threads = max_threads
        self._name = name
        self._names = itertools.count()
        self._threads: list[threading.Thread] = []
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._outcomes: collections.deque[_Outcome] = collections.deque()
        # Set by a worker that asked the loop to take the outcomes, cleared by the loop before it
        # takes them: a worker that sees it set knows its outcome will be taken, so it does not
        # wake the loop again. Two workers may both see it clear; one extra wakeup is harmless.
        self._wakeup_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unfinished = 0  # calls handed to the threads whose outcome the loop has not taken
        self._closed = False

    @property
    def threads(self) -> int:
        """Threads started so far (never more than ``max_threads``)."""
        return len(self._threads)

    def run(
        self, function: Callable[..., T], /, *args: Any, context: contextvars.Context | None = None
    ) -> asyncio.Future[T]:
        """Call ``function(*args)`` on a pool thread, inside ``context`` if given; the future
        resolves on the loop with its result or exception. Cancelling the future does not stop
        a call that has started: it runs to its end and its thread then takes the next.
        """
        if self._closed:
            raise RuntimeError("cannot run new calls after shutdown")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            raise RuntimeError("a ThreadPool serves the event loop it first ran on")
        future: asyncio.Future[T] = loop.create_future()
        self._unfinished += 1
        # A thread more only while there is more work than threads: a server that never sees
        # more than a few calls at once never pays for the rest.
        if self._unfinished > len(self._threads) and len(self._threads) < self._max_threads:
            self._start_thread()
        self._work.put((future, context, function, args))
        return future

    def shutdown(self) -> None:
        """Take no more work; cancel the calls that have not started. Calls running go on to
        their end (their futures still resolve while the loop runs); then their threads exit."""
        if self._closed:
            return
        self._closed = True
        while True:
            try:
                work = self._work.get_nowait()
            except queue.Empty:
                break
            if work is not None:
                self._unfinished -= 1
                work[0].cancel()
        for _ in self._threads:
            self._work.put(None)

    def _start_thread(self) -> None:
        thread = threading.Thread(
            target=self._serve,
            name=f"{self._name}_{next(self._names)}",
            # Daemon: an idle pool of a server never stopped must not keep the process alive at
            # exit; a server's stop(grace) is what lets running handlers finish.
            daemon=True,
        )
        thread.start()
        self._threads.append(thread)

    def _serve(self) -> None:
        """A worker: run calls until told to exit."""
        work_queue = self._work
        outcomes = self._outcomes
        while True:
            work = work_queue.get()
            if work is None:
                return
            future, context, function, args = work
            del work
            outcome: _Outcome
            if future.cancelled():
                # Its call gave up before a thread was free (a deadline, a cancel): a handler
                # nobody waits for does not run. The loop still counts it off.
                outcome = (future, True, None)
            else:
                try:
                    outcome = (future, True, function(*args) if context is None else context.run(function, *args))
                except StopIteration as exc:
                    # An asyncio future refuses StopIteration (it would end the awaiting
                    # coroutine as if it had returned): hand it over as the error it is.
                    error = RuntimeError(f"{getattr(function, '__qualname__', function)!s} raised StopIteration")
                    error.__cause__ = exc
                    outcome = (future, False, error)
                except BaseException as exc:  # the awaiting call decides what it means
                    outcome = (future, False, exc)
            # Drop references now, not at the next call: a large request or result should not
            # outlive its call while this thread waits for work.
            del future, context, function, args
            outcomes.append(outcome)
            del outcome
            if not self._wakeup_pending:
                self._wakeup_pending = True
                self._wake_loop()

    def _wake_loop(self) -> None:
        loop = self._loop
        assert loop is not None  # set by the run that queued the work
        try:
            loop.call_soon_threadsafe(self._settle)
        except RuntimeError:  # the loop is closed: nobody awaits these futures any more
            self._outcomes.clear()

    def _settle(self) -> None:
        """On the loop: resolve the futures of every outcome handed over so far."""
        self._wakeup_pending = False  # before taking them: an outcome added later wakes us again
        outcomes = self._outcomes
        # Only those here now: outcomes added meanwhile have asked for the next round, so busy
        # threads cannot keep the loop from its sockets.
        for _ in range(len(outcomes)):
            future, returned, value = outcomes.popleft()
            self._unfinished -= 1
            if future.done():  # cancelled: its call gave up waiting
                continue
            if returned:
                future.set_result(value)
            else:
                future.set_exception(value)
