"""A live in-memory copy of a KV bucket, kept current by a watch: for state a service must scan.

Some services answer reads from memory because the storage cannot answer them: an inverted index
for ranked search, a translation memory scanned for the closest fuzzy match. Each replica follows
the bucket with a watch and applies every change, so a write made through any replica reaches all
of them, and a new replica (or a restart) rebuilds its state from the bucket's contents.

Readiness is a barrier. The mirror writes a sync key and waits until its own watch has delivered
that revision. A bucket's revisions are its stream's sequence numbers and a watch delivers in
sequence order, so once revision ``r`` is applied, so is every write acknowledged before the sync
key was written. The first barrier after (re)starting a watch only proves the watch exists (its
initial values may still be arriving); the second, written after that, covers them all: only
then is the mirror ready.

If the watch fails, the mirror resets its owner's state (through ``reset``), watches again from
the current contents, and is not ready until the barriers pass again; readers should answer
UNAVAILABLE meanwhile rather than from a half-built state. A watch does not fail when NATS
reconnects: the ordered consumer under it resumes (nats-py resets it after two missed idle
heartbeats, ~10 s), and until then the mirror lags, still ready, without losing a change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from servicers.storage import Change, KeyValue

__all__ = ["SYNC_KEY", "KvMirror", "MirrorUnavailable"]

_log = logging.getLogger(__name__)

# The key the barrier writes; owners keep their own keys apart from it (it is filtered out
# before ``apply`` sees a change).
SYNC_KEY = "mirror-sync"
# How long one attempt to become ready may take before it is retried.
_SYNC_SECONDS = 5.0


class MirrorUnavailable(Exception):
    """The mirror could not catch up with the bucket in time (the storage is unreachable)."""


class KvMirror:
    """Follows one bucket and hands every change to ``apply``, in revision order.

    Args:
        kv: the bucket.
        apply: applies one change (a put, or a delete when ``change.value`` is None) to the
            owner's state. It should skip values it cannot decode (one bad value must not stop
            the mirror); any exception it raises counts as a failed watch: the state is rebuilt.
        reset: empties the owner's state before a (re)build from the bucket's contents.
        name: for logs and repr.
        start_timeout: seconds ``start()`` waits for the mirror to be ready.
        retry_delay: seconds between attempts to watch again after the watch failed.
    """

    def __init__(
        self,
        kv: KeyValue,
        apply: Callable[[Change], Awaitable[None]],
        reset: Callable[[], None],
        *,
        name: str,
        start_timeout: float = 10.0,
        retry_delay: float = 1.0,
    ) -> None:
        self._kv = kv
        self._apply = apply
        self._reset = reset
        self._name = name
        self._start_timeout = start_timeout
        self._retry_delay = retry_delay
        self._applied = 0
        self._ready = asyncio.Event()
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._follower: asyncio.Task[None] | None = None
        self._closing = False
        self._readiness: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<KvMirror {self._name!r} ready={self.ready} applied={self._applied}>"

    @property
    def ready(self) -> bool:
        """True once the mirror holds everything the bucket held when it (re)started watching."""
        return self._ready.is_set()

    @property
    def applied_revision(self) -> int:
        """The highest revision applied by the current watch."""
        return self._applied

    async def start(self) -> None:
        """Start following the bucket; return once ready.

        Raises:
            MirrorUnavailable: not ready within ``start_timeout`` seconds (the mirror is stopped).
        """
        if self._follower is None:
            self._follower = asyncio.create_task(self._follow(), name=f"kv-mirror-{self._name}")
        try:
            async with asyncio.timeout(self._start_timeout):
                await self._ready.wait()
        except TimeoutError:
            await self.aclose()
            raise MirrorUnavailable(f"{self._name}: not in sync with its bucket after {self._start_timeout}s") from None

    async def wait_applied(self, revision: int) -> None:
        """Return once the watch has applied ``revision`` (a write's own revision: read-your-writes).

        It waits without bound: callers bound it (``asyncio.timeout``).
        """
        if self._applied >= revision:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((revision, waiter))
        try:
            await waiter
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove((revision, waiter))

    async def sync(self) -> None:
        """A barrier: return once every write acknowledged before this call is applied.

        Used after a delete, whose revision the storage does not report. Unbounded, like
        ``wait_applied``; raises the storage's own error if the sync key cannot be written.
        """
        revision = await self._kv.put(SYNC_KEY, b"")
        await self.wait_applied(revision)

    async def aclose(self) -> None:
        """Stop following the bucket (idempotent)."""
        self._closing = True
        for task in (self._readiness, self._follower):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._readiness = self._follower = None
        self._ready.clear()

    def _stopping(self) -> bool:
        task = asyncio.current_task()
        return self._closing or (task is not None and task.cancelling() > 0)

    async def _follow(self) -> None:
        while True:
            self._ready.clear()
            self._applied = 0
            self._reset()
            self._readiness = asyncio.create_task(self._become_ready(), name=f"kv-mirror-{self._name}-sync")
            changes = self._kv.watch(">", include_current=True)
            try:
                async for change in changes:
                    await self._take(change)
                _log.warning("%s: the watch ended; watching again", self._name)
            except Exception:
                # Closing the watch on a closed connection turns our cancellation into the
                # connection's error: the flag, or the task's pending cancellation, tells that
                # this is the end and not a failure (watching again would never let it end).
                if self._stopping():
                    return
                _log.warning("%s: the watch failed; watching again", self._name, exc_info=True)
            finally:
                self._ready.clear()  # from now until rebuilt, readers must not trust the state
                self._readiness.cancel()
                with contextlib.suppress(Exception):
                    await changes.aclose()
            await asyncio.sleep(self._retry_delay)

    async def _take(self, change: Change) -> None:
        if change.key != SYNC_KEY:
            await self._apply(change)
        self._applied = max(self._applied, change.revision)
        still_waiting = []
        for revision, waiter in self._waiters:
            if revision <= self._applied:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                still_waiting.append((revision, waiter))
        self._waiters = still_waiting

    async def _become_ready(self) -> None:
        # Two barriers: the first proves the watch is subscribed, the second covers its initial
        # values (see the module docstring). A failing storage keeps the mirror not ready; the
        # follower starts a new attempt when the watch itself fails.
        while True:
            try:
                async with asyncio.timeout(_SYNC_SECONDS):
                    await self.sync()
                    await self.sync()
            except Exception:
                if self._stopping():
                    return
                _log.warning("%s: could not reach the bucket to sync; retrying", self._name, exc_info=True)
                await asyncio.sleep(self._retry_delay)
                continue
            self._ready.set()
            return
