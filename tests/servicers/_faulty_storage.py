"""A storage that fails on demand: real JetStream buckets behind a switch, for outage tests.

While ``down``, every bucket operation raises ``StorageUnavailable`` and live watches fail with
it, as the real storage does when it cannot be reached; ``restore()`` makes them work again. Nothing is
mocked: every operation that runs goes to the real bucket.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

from servicers.storage import Change, Entry, KeyValue, Storage, StorageUnavailable


class FaultyStorage:
    """Wraps a Storage; ``fail()`` takes every bucket it opened down, ``restore()`` brings them back."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._down = asyncio.Event()

    @property
    def down(self) -> bool:
        return self._down.is_set()

    def fail(self) -> None:
        self._down.set()

    def restore(self) -> None:
        self._down.clear()

    async def key_value(self, name: str, **limits: Any) -> FaultyKeyValue:
        return FaultyKeyValue(await self._storage.key_value(name, **limits), self)

    def _check(self) -> None:
        if self.down:
            raise StorageUnavailable("storage is down (test outage)")

    async def _outage(self) -> None:
        await self._down.wait()


class FaultyKeyValue:
    """One bucket behind the switch."""

    def __init__(self, kv: KeyValue, switch: FaultyStorage) -> None:
        self._kv = kv
        self._switch = switch

    async def get(self, key: str) -> Entry | None:
        self._switch._check()
        return await self._kv.get(key)

    async def put(self, key: str, value: bytes) -> int:
        self._switch._check()
        return await self._kv.put(key, value)

    async def update(self, key: str, value: bytes, revision: int) -> int:
        self._switch._check()
        return await self._kv.update(key, value, revision)

    async def delete(self, key: str, revision: int | None = None) -> None:
        self._switch._check()
        await self._kv.delete(key, revision)

    async def keys(self, pattern: str = ">") -> list[str]:
        self._switch._check()
        return await self._kv.keys(pattern)

    async def watch(self, pattern: str, *, include_current: bool = True) -> AsyncGenerator[Change, None]:
        self._switch._check()
        changes = self._kv.watch(pattern, include_current=include_current)
        outage = asyncio.ensure_future(self._switch._outage())
        try:
            while True:
                step = asyncio.ensure_future(anext(changes))
                await asyncio.wait({step, outage}, return_when=asyncio.FIRST_COMPLETED)
                if not step.done():
                    step.cancel()
                    await asyncio.gather(step, return_exceptions=True)
                    raise StorageUnavailable("storage is down (test outage)")
                try:
                    change = step.result()
                except StopAsyncIteration:
                    return
                yield change
        finally:
            outage.cancel()
            await changes.aclose()
