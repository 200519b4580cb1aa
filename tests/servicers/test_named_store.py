"""NamedStore: a bucket's outages carry the words its servicer promises, still as a
StorageUnavailable; everything else it passes through unchanged."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import pytest

from servicers.named_store import NamedStore, WordedOutage
from servicers.storage import Change, Entry, RevisionConflict, StorageUnavailable, ValueTooLarge


class Broken:
    """A bucket whose every operation raises ``error``; its watch yields one change first."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.closed = False

    async def get(self, key: str) -> Entry | None:
        raise self.error

    async def put(self, key: str, value: bytes) -> int:
        raise self.error

    async def update(self, key: str, value: bytes, revision: int) -> int:
        raise self.error

    async def delete(self, key: str, revision: int | None = None) -> None:
        raise self.error

    async def keys(self, pattern: str = ">") -> list[str]:
        raise self.error

    async def watch(self, pattern: str, *, include_current: bool = True) -> AsyncGenerator[Change, None]:
        try:
            yield Change("k", b"v", 1)
            raise self.error
        finally:
            self.closed = True


CALLS = {
    "get": lambda store: store.get("k"),
    "put": lambda store: store.put("k", b"v"),
    "update": lambda store: store.update("k", b"v", 3),
    "delete": lambda store: store.delete("k", 3),
    "keys": lambda store: store.keys(),
}


@pytest.mark.parametrize("operation", sorted(CALLS))
@pytest.mark.parametrize("error", [StorageUnavailable("connection closed"), ValueTooLarge("k", 2, 1)])
async def test_an_outage_is_worded_and_keeps_its_cause(operation: str, error: Exception) -> None:
    store = NamedStore(Broken(error), "the clock store is unavailable")
    with pytest.raises(WordedOutage) as caught:
        await CALLS[operation](store)
    assert isinstance(caught.value, StorageUnavailable)
    assert (caught.value.message, caught.value.reason) == ("the clock store is unavailable", "STORE_UNAVAILABLE")
    assert caught.value.__cause__ is error


@pytest.mark.parametrize("operation", sorted(CALLS))
async def test_a_lost_compare_and_set_and_other_errors_pass_unchanged(operation: str) -> None:
    for error in (RevisionConflict("k", 3, 4), RuntimeError("a bug")):
        with pytest.raises(type(error)) as caught:
            await CALLS[operation](NamedStore(Broken(error), "the clock store is unavailable"))
        assert caught.value is error


async def test_a_watch_that_fails_is_worded_and_closes_the_stores_watch() -> None:
    broken = Broken(StorageUnavailable("watch lost"))
    changes = NamedStore(broken, "the clock store is unavailable", "CLOCK_STORE").watch("k")
    assert await anext(changes) == Change("k", b"v", 1)
    with pytest.raises(WordedOutage) as caught:
        await anext(changes)
    assert caught.value.reason == "CLOCK_STORE"
    assert broken.closed


async def test_closing_the_watch_closes_the_stores() -> None:
    broken = Broken(StorageUnavailable("never raised"))
    changes = NamedStore(broken, "the clock store is unavailable").watch("k")
    await anext(changes)
    await changes.aclose()
    assert broken.closed


def test_outage_is_a_fresh_error_each_time() -> None:
    store: Any = NamedStore(Broken(RuntimeError()), "the clock store is unavailable")
    first, second = store.outage(), store.outage()
    assert first is not second
    assert str(first) == "the clock store is unavailable"
