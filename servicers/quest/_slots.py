"""The limit of 25 open quests per player, as 25 slot keys taken by compare-and-set.

A quest takes a free slot (``slot.<player>.<n>``, created only if absent) just before it is
stored, so two generations racing for the last slot cannot both win. A slot is given back when
its quest completes. A slot is also free again, for the next quest that finds none free, when
its quest is no longer open (expired, or completed without the release reaching the store), or
when its quest never got stored ``ORPHAN_GRACE`` seconds after the slot was taken (the
generation that took it failed).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from servicers.quest._records import OPEN, QuestRecord, effective_status, quest_key, slot_key, slot_pattern
from servicers.storage import Entry, KeyValue, RevisionConflict

MAX_OPEN = 25
ORPHAN_GRACE = 60.0


class NoFreeSlot(Exception):
    """The player already holds ``MAX_OPEN`` open quests."""


class Slots:
    """The open-quest slots of every player, in the quests bucket."""

    def __init__(self, kv: KeyValue, *, clock: Callable[[], float], limit: int = MAX_OPEN) -> None:
        self._kv = kv
        self._clock = clock
        self._limit = limit

    def __repr__(self) -> str:
        return f"<Slots limit={self._limit}>"

    async def check(self, player_id: str) -> None:
        """Fail early, before any work, when no slot could be taken now.

        Raises:
            NoFreeSlot: every slot holds an open quest.
            StorageUnavailable: the store failed.
        """
        held = await self._held(player_id)
        if len(held) < self._limit:
            return
        for entry in held.values():
            if await self._stale(entry):
                return
        raise NoFreeSlot()

    async def take(self, player_id: str, quest_id: str) -> int:
        """Take a slot for ``quest_id``; its number.

        Raises:
            NoFreeSlot: every slot holds an open quest.
            StorageUnavailable: the store failed.
        """
        value = f"{quest_id} {self._clock():.3f}".encode()
        for _ in range(3):
            held = await self._held(player_id)
            for slot in range(1, self._limit + 1):
                if slot in held:
                    continue
                with contextlib.suppress(RevisionConflict):
                    await self._kv.update(slot_key(player_id, slot), value, 0)
                    return slot
            for slot, entry in held.items():
                if await self._stale(entry):
                    with contextlib.suppress(RevisionConflict):
                        await self._kv.update(slot_key(player_id, slot), value, entry.revision)
                        return slot
        raise NoFreeSlot()

    async def release(self, player_id: str, slot: int, quest_id: str) -> None:
        """Give back ``slot`` if ``quest_id`` still holds it (a lost race leaves it to be found
        stale later).

        Raises:
            StorageUnavailable: the store failed.
        """
        if slot < 1:
            return
        key = slot_key(player_id, slot)
        entry = await self._kv.get(key)
        if entry is None or entry.value.split(b" ", 1)[0].decode() != quest_id:
            return
        with contextlib.suppress(RevisionConflict):
            await self._kv.delete(key, entry.revision)

    async def _held(self, player_id: str) -> dict[int, Entry]:
        held = {}
        for key in await self._kv.keys(slot_pattern(player_id)):
            entry = await self._kv.get(key)
            if entry is not None:
                held[int(key.rsplit(".", 1)[1])] = entry
        return held

    async def _stale(self, entry: Entry) -> bool:
        """Whether the slot may be taken over: its quest is closed, or was never stored."""
        quest_id, _, taken_at = entry.value.decode().partition(" ")
        stored = await self._kv.get(quest_key(quest_id))
        now = self._clock()
        if stored is None:
            return now - float(taken_at or 0) > ORPHAN_GRACE
        return effective_status(QuestRecord.decode(stored.value).quest, now) not in OPEN
