"""mesh.jetstream_storage against a real nats-server: reads and writes, compare-and-set, deletes,
key patterns, watches, and buckets that keep their data when opened again."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from mesh.jetstream_storage import JetStreamKeyValue, JetStreamStorage
from nats_transport.testing import NatsServer
from servicers.storage import Change, Entry, RevisionConflict
from tests._buckets import delete_buckets
from tests._waiting import wait_for


@pytest.fixture
async def prefix(nc: Client) -> AsyncIterator[str]:
    """A bucket prefix private to the test; its buckets are deleted after it."""
    name = f"t{uuid.uuid4().hex[:8]}_"
    yield name
    await delete_buckets(nc, name)


@pytest.fixture
def storage(nc: Client, prefix: str) -> JetStreamStorage:
    return JetStreamStorage(nc, prefix=prefix)


@pytest.fixture
async def kv(storage: JetStreamStorage) -> JetStreamKeyValue:
    return await storage.key_value("things", history=1, max_bytes=1 << 20)


@contextlib.asynccontextmanager
async def watching(kv: JetStreamKeyValue, pattern: str, *, include_current: bool = True) -> AsyncIterator[list[Change]]:
    """Collect what a watch yields into a list, in the background, until the block ends."""
    seen: list[Change] = []
    changes: Any = kv.watch(pattern, include_current=include_current)

    async def collect() -> None:
        async for change in changes:
            seen.append(change)

    task = asyncio.create_task(collect())
    try:
        yield seen
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await changes.aclose()


async def until_live(kv: JetStreamKeyValue, seen: list[Change], sync_key: str) -> None:
    """Return once the watch sees writes as they happen: write ``sync_key`` until one shows up.

    A watch reports nothing when it has started, and writes made before that count as current
    values (skipped with include_current=False), so a test cannot otherwise know.
    """

    async def seen_a_sync_write() -> bool:
        if any(change.key == sync_key for change in seen):
            return True
        await kv.put(sync_key, b"sync")
        return False

    await wait_for(seen_a_sync_write)


def without(key: str, seen: list[Change]) -> list[Change]:
    return [change for change in seen if change.key != key]


# -- get / put ----------------------------------------------------------------------------------


async def test_get_of_a_key_never_written_is_none(kv: JetStreamKeyValue) -> None:
    assert await kv.get("nobody") is None


async def test_put_then_get_returns_the_value_and_its_revision(kv: JetStreamKeyValue) -> None:
    revision = await kv.put("player.one", b"\x00binary\xff")
    assert revision > 0
    assert await kv.get("player.one") == Entry("player.one", b"\x00binary\xff", revision)


async def test_every_put_gets_a_higher_revision_and_get_sees_the_latest(kv: JetStreamKeyValue) -> None:
    first = await kv.put("k", b"1")
    second = await kv.put("k", b"2")
    assert second > first
    assert await kv.get("k") == Entry("k", b"2", second)


async def test_an_empty_value_is_stored_as_empty_bytes(kv: JetStreamKeyValue) -> None:
    revision = await kv.put("empty", b"")
    assert await kv.get("empty") == Entry("empty", b"", revision)


# -- update (compare-and-set) ---------------------------------------------------------------


async def test_update_with_revision_zero_creates_a_missing_key(kv: JetStreamKeyValue) -> None:
    revision = await kv.update("new", b"v", 0)
    assert await kv.get("new") == Entry("new", b"v", revision)


async def test_update_with_revision_zero_conflicts_when_the_key_exists(kv: JetStreamKeyValue) -> None:
    existing = await kv.put("taken", b"first")
    with pytest.raises(RevisionConflict) as caught:
        await kv.update("taken", b"second", 0)
    assert (caught.value.key, caught.value.expected, caught.value.current) == ("taken", 0, existing)
    assert (await kv.get("taken")) == Entry("taken", b"first", existing)


async def test_update_at_the_current_revision_writes(kv: JetStreamKeyValue) -> None:
    first = await kv.update("k", b"1", 0)
    second = await kv.update("k", b"2", first)
    assert second > first
    assert await kv.get("k") == Entry("k", b"2", second)


async def test_a_stale_revision_conflicts_and_carries_the_current_one(kv: JetStreamKeyValue) -> None:
    first = await kv.put("k", b"1")
    current = await kv.update("k", b"2", first)
    with pytest.raises(RevisionConflict) as caught:
        await kv.update("k", b"3", first)
    assert (caught.value.expected, caught.value.current) == (first, current)
    assert str(first) in str(caught.value)
    assert str(current) in str(caught.value)
    assert await kv.get("k") == Entry("k", b"2", current)


async def test_update_of_a_missing_key_at_a_nonzero_revision_conflicts_with_current_zero(kv: JetStreamKeyValue) -> None:
    with pytest.raises(RevisionConflict) as caught:
        await kv.update("ghost", b"v", 7)
    assert (caught.value.expected, caught.value.current) == (7, 0)


async def test_only_one_of_many_concurrent_updates_at_one_revision_wins(kv: JetStreamKeyValue) -> None:
    base = await kv.put("counter", b"0")
    results = await asyncio.gather(
        *(kv.update("counter", str(n).encode(), base) for n in range(8)), return_exceptions=True
    )
    winners = [result for result in results if isinstance(result, int)]
    losers = [result for result in results if isinstance(result, RevisionConflict)]
    assert len(winners) == 1
    assert len(losers) == 7
    assert all(loser.current == winners[0] for loser in losers)


async def test_update_with_revision_zero_recreates_a_deleted_key(kv: JetStreamKeyValue) -> None:
    await kv.put("k", b"old")
    await kv.delete("k")
    revision = await kv.update("k", b"new", 0)
    assert await kv.get("k") == Entry("k", b"new", revision)


# -- delete ---------------------------------------------------------------------------------


async def test_delete_without_a_revision_removes_the_key(kv: JetStreamKeyValue) -> None:
    await kv.put("k", b"v")
    await kv.delete("k")
    assert await kv.get("k") is None


async def test_delete_of_a_missing_key_without_a_revision_is_not_an_error(kv: JetStreamKeyValue) -> None:
    await kv.delete("never")
    assert await kv.get("never") is None


async def test_delete_at_the_current_revision_removes_the_key(kv: JetStreamKeyValue) -> None:
    revision = await kv.put("k", b"v")
    await kv.delete("k", revision)
    assert await kv.get("k") is None


async def test_delete_at_a_stale_revision_conflicts_and_keeps_the_value(kv: JetStreamKeyValue) -> None:
    first = await kv.put("k", b"1")
    current = await kv.put("k", b"2")
    with pytest.raises(RevisionConflict) as caught:
        await kv.delete("k", first)
    assert (caught.value.key, caught.value.expected, caught.value.current) == ("k", first, current)
    assert await kv.get("k") == Entry("k", b"2", current)


async def test_delete_of_a_missing_key_at_a_revision_conflicts_with_current_zero(kv: JetStreamKeyValue) -> None:
    with pytest.raises(RevisionConflict) as caught:
        await kv.delete("never", 3)
    assert (caught.value.expected, caught.value.current) == (3, 0)


# -- keys -----------------------------------------------------------------------------------


async def test_keys_of_an_empty_bucket_is_an_empty_list(kv: JetStreamKeyValue) -> None:
    assert await kv.keys() == []


async def test_keys_lists_existing_keys_sorted_and_leaves_out_deleted_ones(kv: JetStreamKeyValue) -> None:
    for key in ("b", "a.x", "c", "a.y"):
        await kv.put(key, b"v")
    await kv.delete("c")
    assert await kv.keys() == ["a.x", "a.y", "b"]
    assert await kv.keys(">") == ["a.x", "a.y", "b"]


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("room.*", ["room.1", "room.2"]),
        ("room.>", ["room.1", "room.1.door", "room.2"]),
        ("room.*.door", ["room.1.door"]),
        ("*.1", ["hall.1", "room.1"]),
        ("room.1", ["room.1"]),
        ("cellar.*", []),
    ],
)
async def test_keys_matches_nats_wildcard_patterns(kv: JetStreamKeyValue, pattern: str, expected: list[str]) -> None:
    for key in ("room.1", "room.2", "room.1.door", "hall.1", "hall.2"):
        await kv.put(key, b"v")
    assert await kv.keys(pattern) == expected


# -- watch ----------------------------------------------------------------------------------


async def test_a_watch_yields_current_values_first_then_live_changes(kv: JetStreamKeyValue) -> None:
    first = await kv.put("room.1", b"a")
    second = await kv.put("room.2", b"b")
    await kv.put("hall.1", b"not watched")
    async with watching(kv, "room.*") as seen:
        await wait_for(lambda: len(seen) == 2)
        assert sorted(seen, key=lambda change: change.key) == [
            Change("room.1", b"a", first),
            Change("room.2", b"b", second),
        ]
        third = await kv.put("room.3", b"c")
        await kv.put("hall.1", b"still not watched")
        await wait_for(lambda: len(seen) == 3)
        assert seen[2] == Change("room.3", b"c", third)


async def test_a_watch_yields_only_the_latest_current_value_of_a_key(kv: JetStreamKeyValue) -> None:
    await kv.put("k", b"old")
    latest = await kv.put("k", b"new")
    async with watching(kv, "k") as seen:
        await wait_for(lambda: len(seen) == 1)
        assert seen == [Change("k", b"new", latest)]


async def test_a_watch_without_current_values_yields_only_later_changes(kv: JetStreamKeyValue) -> None:
    await kv.put("room.1", b"before")
    async with watching(kv, "room.*", include_current=False) as seen:
        await until_live(kv, seen, "room.sync")
        assert all(change.key == "room.sync" for change in seen)
        revision = await kv.put("room.1", b"after")
        await wait_for(lambda: len(without("room.sync", seen)) == 1)
        assert without("room.sync", seen) == [Change("room.1", b"after", revision)]


async def test_a_watch_reports_a_live_delete_as_a_change_without_a_value(kv: JetStreamKeyValue) -> None:
    revision = await kv.put("k", b"v")
    async with watching(kv, "k") as seen:
        await wait_for(lambda: len(seen) == 1)
        await kv.delete("k", revision)
        await wait_for(lambda: len(seen) == 2)
        deleted = seen[1]
        assert (deleted.key, deleted.value) == ("k", None)
        assert deleted.revision > revision


async def test_a_watch_without_current_values_reports_live_deletes(kv: JetStreamKeyValue) -> None:
    await kv.put("room.1", b"v")
    async with watching(kv, "room.*", include_current=False) as seen:
        await until_live(kv, seen, "room.sync")
        await kv.delete("room.1")
        await wait_for(lambda: len(without("room.sync", seen)) == 1)
        assert [(change.key, change.value) for change in without("room.sync", seen)] == [("room.1", None)]


async def test_a_watch_leaves_out_keys_already_deleted_when_it_starts(kv: JetStreamKeyValue) -> None:
    await kv.put("room.gone", b"v")
    await kv.delete("room.gone")
    kept = await kv.put("room.kept", b"v")
    async with watching(kv, "room.*") as seen:
        await until_live(kv, seen, "room.sync")
        assert without("room.sync", seen) == [Change("room.kept", b"v", kept)]


async def test_a_watch_of_an_empty_bucket_yields_the_first_write(kv: JetStreamKeyValue) -> None:
    async with watching(kv, ">") as seen:
        await until_live(kv, seen, "sync")
        revision = await kv.put("first", b"v")
        await wait_for(lambda: len(without("sync", seen)) == 1)
        assert without("sync", seen) == [Change("first", b"v", revision)]


async def test_closing_a_watch_stops_it_and_the_bucket_stays_usable(kv: JetStreamKeyValue) -> None:
    await kv.put("k", b"v")
    changes: Any = kv.watch("k")
    assert (await anext(changes)).value == b"v"
    await changes.aclose()
    with pytest.raises(StopAsyncIteration):
        await anext(changes)
    assert (await kv.get("k")) is not None


# -- buckets --------------------------------------------------------------------------------


async def test_a_bucket_opened_again_keeps_its_data_over_a_new_connection(nats_server: NatsServer, prefix: str) -> None:
    first_nc = await nats.connect(nats_server.url)
    try:
        kv = await JetStreamStorage(first_nc, prefix=prefix).key_value("kept", history=1, max_bytes=1 << 20)
        revision = await kv.put("k", b"durable")
    finally:
        await first_nc.close()
    second_nc = await nats.connect(nats_server.url)
    try:
        # Other limits on re-open do not recreate (and so do not empty) the bucket.
        again = await JetStreamStorage(second_nc, prefix=prefix).key_value("kept", history=5, max_bytes=2 << 20)
        assert await again.get("k") == Entry("k", b"durable", revision)
        assert await again.keys() == ["k"]
    finally:
        await second_nc.close()


async def test_buckets_of_different_prefixes_do_not_share_keys(nc: Client, prefix: str) -> None:
    one = await JetStreamStorage(nc, prefix=f"{prefix}one_").key_value("b")
    two = await JetStreamStorage(nc, prefix=f"{prefix}two_").key_value("b")
    await one.put("k", b"one")
    assert await two.get("k") is None


async def test_a_bucket_survives_a_nats_server_restart(private_nats_server: NatsServer) -> None:
    client = await nats.connect(private_nats_server.url)
    try:
        kv = await JetStreamStorage(client, prefix="restart_").key_value("b", max_bytes=1 << 20)
        revision = await kv.put("k", b"on disk")
    finally:
        await client.close()
    private_nats_server.restart()
    client = await nats.connect(private_nats_server.url)
    try:
        kv = await JetStreamStorage(client, prefix="restart_").key_value("b", max_bytes=1 << 20)
        assert await kv.get("k") == Entry("k", b"on disk", revision)
    finally:
        await client.close()


def test_replica_counts_other_than_one_three_or_five_are_refused() -> None:
    with pytest.raises(ValueError, match="replicas"):
        JetStreamStorage(object(), replicas=2)  # type: ignore[arg-type]


async def test_a_key_value_repr_names_its_bucket(storage: JetStreamStorage) -> None:
    kv = await storage.key_value("named")
    assert "named" in repr(kv)


async def test_every_operation_on_a_closed_connection_raises_storage_unavailable(nats_server):
    from servicers.storage import StorageUnavailable

    own = await nats.connect(nats_server.url)
    kv = await JetStreamStorage(own, prefix=f"gone{uuid.uuid4().hex[:6]}_").key_value("b", max_bytes=1 << 20)
    await kv.put("k", b"v")
    await delete_buckets(own, "gone")
    await own.close()
    for operation in (kv.get("k"), kv.put("k", b"v"), kv.update("k", b"v", 1), kv.delete("k"), kv.keys()):
        with pytest.raises(StorageUnavailable):
            await operation
    with pytest.raises(StorageUnavailable):
        await anext(kv.watch(">"))
