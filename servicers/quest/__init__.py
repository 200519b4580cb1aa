"""quest-system: quests generated from templates with help from the mesh, and their progress
(``gaming.quest.v1.QuestService``).

GenerateQuest makes three calls side by side (``_sources``): world-state for the region,
world-state then npc-behavior for the giver NPC, story-teller for a narrative hook. Each takes a
share of the caller's remaining deadline (``servicers._downstream``: 80 % for required calls,
50 % for story-teller, at most 5 s and 2 s when the caller set none). world-state or
npc-behavior failing fails the call with UNAVAILABLE naming it (an unknown region is NOT_FOUND);
story-teller failing leaves the template's own description, and the response's trailing metadata
says ``degraded-sources: story-teller`` (the quest's ``story_id`` stays empty). A template
(``templates``) that fits the region and difficulty is filled in; the idempotency key maps to
the quest id before any work (remembered 7 days), so a retry, even a concurrent one, returns the
same quest (concurrent retries may each ask the mesh; only the first quest stored is kept).

Accept is a compare-and-set on the quest's own revision; UpdateProgress remembers the results
of its last 64 idempotency keys per quest, and the update that completes a quest first deposits
its gold with payment (idempotently: a retry never pays twice; if payment fails nothing is
applied and the call is UNAVAILABLE). Experience and items are recorded in the quest for the
game to grant. Open quests past their expire_time read as EXPIRED.

Not done (documented deviations): players are not checked against a registry (an unknown player
simply has no quests), DIFFICULTY_UNSPECIFIED means NORMAL (no player level is known), texts are
English whatever the locale (the locale is passed on to story-teller), and PERMISSION_DENIED on
GetQuest needs an authenticated caller, which servicers do not see yet.

Settings (``deps.settings``): ``bucket_max_bytes``, the quests bucket's limit (default 256 MiB);
the idempotency-key bucket gets a sixteenth of it.
"""

from __future__ import annotations

from gaming.quest.v1 import quest_pb2_grpc

from servicers.dependencies import Dependencies
from servicers.quest._records import KEY_TTL
from servicers.quest._servicer import QuestServicer
from servicers.quest._slots import MAX_OPEN
from servicers.service_settings import bucket_max_bytes

__all__ = ["MAX_OPEN", "SERVICE_NAMES", "TARGET", "QuestServicer", "add_to_server", "create"]

TARGET = "quest-system"
SERVICE_NAMES = ("gaming.quest.v1.QuestService",)

QUESTS_BUCKET = "quest_system"
KEYS_BUCKET = "quest_system_keys"
# A quest is a few KiB (its description at most 4,000 characters, 64 remembered progress keys);
# an idempotency record is under 200 bytes and expires after a week (KEY_TTL).
QUESTS_MAX_BYTES = 256 * 1024 * 1024


async def create(deps: Dependencies) -> QuestServicer:
    """Open (or create) the two buckets and return a ready servicer.

    Raises:
        ValueError: a size setting is not a positive integer.
    """
    limit = bucket_max_bytes(deps.settings, QUESTS_MAX_BYTES)
    # history=1: every change is a compare-and-set on the latest value; nothing reads older ones.
    quests = await deps.storage.key_value(QUESTS_BUCKET, history=1, max_bytes=limit)
    keys = await deps.storage.key_value(KEYS_BUCKET, history=1, ttl=KEY_TTL, max_bytes=max(limit // 16, 1 << 20))
    return QuestServicer(quests, keys, channel=deps.channel, clock=deps.clock)


add_to_server = quest_pb2_grpc.add_QuestServiceServicer_to_server
