"""How quests are stored: keys, the stored record, quest ids, and the status a quest has now.

Bucket ``quest_system`` (latest value only)::

    quest.<quest_id>                 QuestRecord (below), compare-and-set on every change
    player.<player>.<quest_id>       empty: the player's quest index, for List
    slot.<player>.<n>                "<quest_id> <reserved at>": one of the player's 25 open slots

Bucket ``quest_system_keys`` (entries expire after ``KEY_TTL``)::

    generate.<player>.<key hash>     the quest_id an idempotency key of GenerateQuest stands for

``<player>`` is the player id in base64url (ids may hold any character). Quest ids are
``<13 digits><12 hex>``: the digits are 9999999999999 minus the creation time in milliseconds,
so the player index sorts newest first by key. The record is ``QuestRecord`` of
``protos/gaming/quest/storage/v1/quest_records.proto`` (the API has no message for a quest plus
its bookkeeping: the generation's missing dependencies, recent progress results, the slot).

A quest's revision is its own counter (1 when generated, one more per change), not the KV
revision, which the whole bucket shares: a stored progress result can then give back exactly the
revision its update produced.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass, field

from gaming.common.v1 import common_pb2
from gaming.quest.storage.v1 import quest_records_pb2
from gaming.quest.v1 import quest_pb2

from servicers.storage import key_token

OPEN = frozenset({quest_pb2.QUEST_STATUS_AVAILABLE, quest_pb2.QUEST_STATUS_ACTIVE})
KEY_TTL = 7 * 24 * 3600.0
# Progress keys remembered per quest: enough for every increment of a typical quest; an older
# key replayed after these is no longer recognised.
MAX_PROGRESS_RESULTS = 64
_QUEST_ID = re.compile(r"[0-9]{13}[0-9a-f]{12}")
_TIME_BASE = 10**13 - 1


@dataclass(frozen=True, slots=True)
class ProgressResult:
    """What one UpdateProgress key did, enough to give its response back on a replay."""

    key: str
    revision: int
    status: int
    counts: tuple[int, ...]
    audit: common_pb2.AuditInfo
    completed: bool


@dataclass(slots=True)
class QuestRecord:
    """A stored quest, decoded for one read-modify-write."""

    quest: quest_pb2.Quest
    degraded: list[str] = field(default_factory=list)
    progress: list[ProgressResult] = field(default_factory=list)
    slot: int = 0

    def result_of(self, key: str) -> ProgressResult | None:
        """The remembered result of progress key ``key``, if any."""
        for result in self.progress:
            if result.key == key:
                return result
        return None

    def remember(self, result: ProgressResult) -> None:
        """Keep ``result``, forgetting the oldest beyond ``MAX_PROGRESS_RESULTS``."""
        self.progress.append(result)
        del self.progress[:-MAX_PROGRESS_RESULTS]

    def encode(self) -> bytes:
        """The stored form."""
        message = quest_records_pb2.QuestRecord(degraded=self.degraded, slot=self.slot)
        message.quest.CopyFrom(self.quest)
        for result in self.progress:
            message.progress.add(key=result.key, revision=result.revision,
                                 status=quest_pb2.QuestStatus.ValueType(result.status),
                                 counts=result.counts, audit=result.audit, completed=result.completed)
        return message.SerializeToString()

    @classmethod
    def decode(cls, data: bytes) -> QuestRecord:
        """Parse a stored value."""
        message = quest_records_pb2.QuestRecord.FromString(data)
        quest = quest_pb2.Quest()
        quest.CopyFrom(message.quest)
        progress = []
        for item in message.progress:
            audit = common_pb2.AuditInfo()
            audit.CopyFrom(item.audit)
            progress.append(ProgressResult(item.key, item.revision, int(item.status), tuple(item.counts),
                                           audit, item.completed))
        return cls(quest, list(message.degraded), progress, message.slot)


def new_quest_id(now: float) -> str:
    """A fresh quest id that sorts before every id made earlier."""
    return f"{_TIME_BASE - int(now * 1000):013d}{uuid.uuid4().hex[:12]}"


def is_quest_id(text: str) -> bool:
    """Whether ``text`` has the shape of an id this service hands out."""
    return _QUEST_ID.fullmatch(text) is not None


def quest_key(quest_id: str) -> str:
    """The key of a quest's record."""
    return f"quest.{quest_id}"


def index_key(player_id: str, quest_id: str) -> str:
    """The key of a quest in its player's index."""
    return f"player.{key_token(player_id)}.{quest_id}"


def index_pattern(player_id: str) -> str:
    """The pattern of a player's index keys."""
    return f"player.{key_token(player_id)}.*"


def slot_key(player_id: str, slot: int) -> str:
    """The key of a player's open slot ``slot``."""
    return f"slot.{key_token(player_id)}.{slot}"


def slot_pattern(player_id: str) -> str:
    """The pattern of a player's slot keys."""
    return f"slot.{key_token(player_id)}.*"


def generate_key(player_id: str, idempotency_key: str) -> str:
    """The key recording which quest an idempotency key of GenerateQuest made (the key is hashed:
    it may be 128 characters of anything)."""
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:40]
    return f"generate.{key_token(player_id)}.{digest}"


def effective_status(quest: quest_pb2.Quest, now: float) -> int:
    """The quest's status at ``now``: an open quest past its expire_time is EXPIRED (expiry is not
    written back; every read applies it)."""
    if quest.status in OPEN and quest.HasField("expire_time") and now >= quest.expire_time.ToNanoseconds() / 1e9:
        return quest_pb2.QUEST_STATUS_EXPIRED
    return int(quest.status)


def as_seen(quest: quest_pb2.Quest, now: float) -> quest_pb2.Quest:
    """A copy of ``quest`` with its effective status, as callers are shown it."""
    shown = quest_pb2.Quest()
    shown.CopyFrom(quest)
    shown.status = effective_status(quest, now)  # type: ignore[assignment]  # an int of the enum
    return shown
