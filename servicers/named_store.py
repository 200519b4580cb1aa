"""``NamedStore``: a bucket whose outages carry the words its servicer promises callers.

Most servicers let ``StorageUnavailable`` reach ``ErrorBoundary``, which answers UNAVAILABLE
"storage is unavailable, retry later" (reason STORAGE_UNAVAILABLE). Some protos name the store
that failed ("the world-state store is unavailable", reason STORE_UNAVAILABLE); those servicers
wrap the bucket once, and its outages become ``WordedOutage`` (still a ``StorageUnavailable``,
so code that tolerates an outage catches it as one) that the boundary answers in those words.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Iterator

from servicers.storage import Change, Entry, KeyValue, StorageUnavailable, ValueTooLarge

STORE_REASON = "STORE_UNAVAILABLE"


class WordedOutage(StorageUnavailable):
    """A store outage, with the ``message`` and ErrorInfo ``reason`` callers are answered with."""

    def __init__(self, message: str, reason: str = STORE_REASON) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason


class NamedStore:
    """A ``KeyValue`` whose outages (and refused oversized writes, answered the same way since
    before the boundary existed) raise ``WordedOutage(message, reason)``; a lost compare-and-set
    stays ``RevisionConflict``."""

    def __init__(self, kv: KeyValue, message: str, reason: str = STORE_REASON) -> None:
        self._kv = kv
        self._message = message
        self._reason = reason

    def __repr__(self) -> str:
        return f"<NamedStore {self._kv!r} outage={self._message!r}>"

    def outage(self) -> WordedOutage:
        """A fresh outage error in this store's words, for failures noticed without the store
        raising (a watch that ended by itself)."""
        return WordedOutage(self._message, self._reason)

    @contextlib.contextmanager
    def _worded(self) -> Iterator[None]:
        try:
            yield
        except WordedOutage:
            raise
        except (StorageUnavailable, ValueTooLarge) as err:
            raise self.outage() from err

    async def get(self, key: str) -> Entry | None:
        """See ``KeyValue.get``."""
        with self._worded():
            return await self._kv.get(key)

    async def put(self, key: str, value: bytes) -> int:
        """See ``KeyValue.put``."""
        with self._worded():
            return await self._kv.put(key, value)

    async def update(self, key: str, value: bytes, revision: int) -> int:
        """See ``KeyValue.update``."""
        with self._worded():
            return await self._kv.update(key, value, revision)

    async def delete(self, key: str, revision: int | None = None) -> None:
        """See ``KeyValue.delete``."""
        with self._worded():
            await self._kv.delete(key, revision)

    async def keys(self, pattern: str = ">") -> list[str]:
        """See ``KeyValue.keys``."""
        with self._worded():
            return await self._kv.keys(pattern)

    async def watch(self, pattern: str, *, include_current: bool = True) -> AsyncGenerator[Change, None]:
        """See ``KeyValue.watch``; closing this iterator closes the store's."""
        changes = self._kv.watch(pattern, include_current=include_current)
        try:
            while True:
                with self._worded():
                    try:
                        change = await anext(changes)
                    except StopAsyncIteration:
                        return
                yield change
        finally:
            await changes.aclose()
