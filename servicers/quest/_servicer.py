"""QuestService: generation from templates and three other services, then progress by compare-and-set."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

import grpc
from gaming.common.v1 import common_pb2
from gaming.payment.v1 import payment_pb2, payment_pb2_grpc
from gaming.quest.v1 import quest_pb2, quest_pb2_grpc
from google.protobuf import timestamp_pb2

from servicers import paging
from servicers._downstream import (
    REQUIRED,
    DependencyError,
    budget,
    flag_degraded,
    time_left,
)
from servicers.errors import (
    RpcError,
    aborted,
    failed_precondition,
    invalid_argument,
    not_found,
    revision_conflict,
    rpc_error,
)
from servicers.quest import templates
from servicers.quest._records import (
    ProgressResult,
    QuestRecord,
    as_seen,
    effective_status,
    generate_key,
    index_key,
    index_pattern,
    is_quest_id,
    new_quest_id,
    quest_key,
)
from servicers.quest._slots import MAX_OPEN, NoFreeSlot, Slots
from servicers.quest._sources import STORY_TELLER, Gathered, Sources
from servicers.storage import Entry, KeyValue, RevisionConflict, StorageUnavailable

PAYMENT = "payment"
ACTOR = "quest-system"
MAX_ID_CHARS = 128
MAX_INCREMENT = 1000
MAX_DESCRIPTION_CHARS = 4000
# Re-reads of one quest when concurrent writers keep winning its compare-and-set.
MAX_ATTEMPTS = 16
_PRINTABLE_KEY = re.compile(r"[\x20-\x7e]{1,128}")
# Quests read at once while a List page is filled.
_LIST_BATCH = 16


class QuestServicer(quest_pb2_grpc.QuestServiceServicer):
    """Quests generated from ``templates`` with help from the mesh, and their progress.

    Every quest is one KV value changed by compare-and-set (``_records``); the open-quest limit
    is kept by ``_slots``; GenerateQuest's downstream calls are made by ``_sources``.
    """

    def __init__(
        self,
        quests: KeyValue,
        keys: KeyValue,
        *,
        channel: Callable[[str], Any],
        clock: Callable[[], float],
        catalogue: tuple[templates.QuestTemplate, ...] = templates.TEMPLATES,
    ) -> None:
        self._quests = quests
        self._keys = keys
        self._channel = channel
        self._clock = clock
        self._sources = Sources(channel)
        self._slots = Slots(self._quests, clock=clock)
        self._catalogue = catalogue

    def __repr__(self) -> str:
        return f"<QuestServicer quests={self._quests!r} templates={len(self._catalogue)}>"

    # -- GenerateQuest -------------------------------------------------------------------------

    async def GenerateQuest(
        self,
        request: quest_pb2.GenerateQuestRequest,
        context: grpc.aio.ServicerContext[quest_pb2.GenerateQuestRequest, quest_pb2.GenerateQuestResponse],
    ) -> quest_pb2.GenerateQuestResponse:
        """A new AVAILABLE quest, or the one an earlier call with the same key generated."""
        _check_id("player_id", request.player_id)
        _check_id("region_id", request.region_id)
        _check_key("idempotency_key.key", request.idempotency_key.key)
        known = templates.DIFFICULTY_SCALE
        if request.difficulty != quest_pb2.DIFFICULTY_UNSPECIFIED and request.difficulty not in known:
            raise invalid_argument("difficulty", f"{request.difficulty} is not a Difficulty")
        # No player level is known here, so "the server picks" means NORMAL.
        difficulty = request.difficulty or quest_pb2.DIFFICULTY_NORMAL
        remaining = time_left(context)
        try:
            quest_id = await self._claim(request)
            existing = await self._quests.get(quest_key(quest_id))
            if existing is not None:
                return await self._replayed(context, QuestRecord.decode(existing.value))
            await self._slots.check(request.player_id)
            found = await self._sources.gather(request, difficulty, remaining)
            candidates = templates.fitting(difficulty, found.region, self._catalogue)
            if not candidates:
                raise failed_precondition(
                    f"no quest template fits region {request.region_id!r} at "
                    f"{quest_pb2.Difficulty.Name(difficulty)}",
                    "NO_TEMPLATE_FITS",
                )
            template = templates.pick(candidates, request.player_id, request.region_id, request.idempotency_key.key)
            record = self._build(request, quest_id, difficulty, template, found)
            record.slot = await self._slots.take(request.player_id, quest_id)
            try:
                await self._quests.update(quest_key(quest_id), record.encode(), 0)
            except RevisionConflict:
                # A concurrent call with the same key stored this quest first: theirs stands.
                await self._slots.release(request.player_id, record.slot, quest_id)
                winner = await self._quests.get(quest_key(quest_id))
                assert winner is not None  # quests are never deleted
                return await self._replayed(context, QuestRecord.decode(winner.value))
            await self._quests.put(index_key(request.player_id, quest_id), b"")
        except NoFreeSlot:
            raise failed_precondition(
                f"player {request.player_id!r} already holds {MAX_OPEN} open quests", "TOO_MANY_OPEN_QUESTS",
            ) from None
        flag_degraded(context, record.degraded)
        return quest_pb2.GenerateQuestResponse(quest=as_seen(record.quest, self._clock()))

    async def _claim(self, request: quest_pb2.GenerateQuestRequest) -> str:
        """The quest id the request's idempotency key stands for, recorded now if it is new."""
        key = generate_key(request.player_id, request.idempotency_key.key)
        entry = await self._keys.get(key)
        if entry is not None:
            return entry.value.decode()
        quest_id = new_quest_id(self._clock())
        try:
            await self._keys.update(key, quest_id.encode(), 0)
        except RevisionConflict:
            entry = await self._keys.get(key)
            if entry is None:
                raise StorageUnavailable(f"claim {key} conflicted, then vanished") from None
            return entry.value.decode()
        return quest_id

    async def _replayed(
        self, context: grpc.aio.ServicerContext[Any, Any], record: QuestRecord
    ) -> quest_pb2.GenerateQuestResponse:
        # The first call may have died between storing the quest and indexing it: index it again
        # (the same empty value; harmless when it is there).
        await self._quests.put(index_key(record.quest.player_id, record.quest.quest_id), b"")
        flag_degraded(context, record.degraded)
        return quest_pb2.GenerateQuestResponse(quest=as_seen(record.quest, self._clock()))

    def _build(
        self,
        request: quest_pb2.GenerateQuestRequest,
        quest_id: str,
        difficulty: int,
        template: templates.QuestTemplate,
        found: Gathered,
    ) -> QuestRecord:
        region = found.region.display_name or found.region.region_id
        giver = found.giver.name
        description = template.summary_for(region=region, giver=giver)
        degraded = []
        story_id = ""
        if found.narrative is None:
            degraded.append(STORY_TELLER)
        else:
            story_id = found.narrative.story_id
            if found.narrative.text:
                description = f"{description}\n\n{found.narrative.text}"
        if len(description) > MAX_DESCRIPTION_CHARS:
            description = description[: MAX_DESCRIPTION_CHARS - 1] + "…"
        now = self._clock()
        quest = quest_pb2.Quest(
            quest_id=quest_id,
            player_id=request.player_id,
            region_id=request.region_id,
            title=template.title_for(region=region, giver=giver),
            description=description,
            objectives=template.objectives_for(difficulty, region=region, giver=giver),
            giver_npc_id=found.giver.npc_id,
            rewards=template.rewards_for(difficulty),
            status=quest_pb2.QUEST_STATUS_AVAILABLE,
            difficulty=difficulty,  # type: ignore[arg-type]  # an int of the enum
            template_id=template.template_id,
            story_id=story_id,
            revision=common_pb2.Revision(value=1),
            create_time=_timestamp(now),
            expire_time=_timestamp(now + template.lifetime_days * 86400.0),
            audit=common_pb2.AuditInfo(actor_id=ACTOR, update_time=_timestamp(now)),
        )
        return QuestRecord(quest, degraded)

    # -- reads ---------------------------------------------------------------------------------

    async def GetQuest(
        self,
        request: quest_pb2.GetQuestRequest,
        context: grpc.aio.ServicerContext[quest_pb2.GetQuestRequest, quest_pb2.GetQuestResponse],
    ) -> quest_pb2.GetQuestResponse:
        """One quest, with its status as of now."""
        _check_id("quest_id", request.quest_id)
        _, record = await self._read(request.quest_id)
        return quest_pb2.GetQuestResponse(quest=as_seen(record.quest, self._clock()))

    async def List(
        self,
        request: quest_pb2.ListRequest,
        context: grpc.aio.ServicerContext[quest_pb2.ListRequest, quest_pb2.ListResponse],
    ) -> quest_pb2.ListResponse:
        """A page of the player's quests, newest first, of one status if asked."""
        _check_id("player_id", request.player_id)
        wanted = request.status_filter
        if wanted != quest_pb2.QUEST_STATUS_UNSPECIFIED and wanted not in quest_pb2.QuestStatus.values():
            raise invalid_argument("status_filter", f"{wanted} is not a QuestStatus")
        query = (request.player_id, str(int(wanted)))
        size = paging.page_size(request.page)
        after = paging.decode_token(request.page.page_token, *query)
        now = self._clock()
        ids = [key.rsplit(".", 1)[1] for key in await self._quests.keys(index_pattern(request.player_id))]
        following = [quest_id for quest_id in ids if after is None or quest_id > after]
        page: list[quest_pb2.Quest] = []
        scanned = 0
        while scanned < len(following) and len(page) < size:
            batch = following[scanned : scanned + _LIST_BATCH]
            entries = await asyncio.gather(*(self._quests.get(quest_key(quest_id)) for quest_id in batch))
            for entry in entries:
                scanned += 1
                if entry is None:
                    continue  # indexed, but its generation never stored it
                quest = as_seen(QuestRecord.decode(entry.value).quest, now)
                if wanted in (quest_pb2.QUEST_STATUS_UNSPECIFIED, quest.status):
                    page.append(quest)
                    if len(page) == size:
                        break
        more = scanned < len(following)
        return quest_pb2.ListResponse(
            quests=page,
            page=common_pb2.PageResponse(
                next_page_token=paging.encode_token(following[scanned - 1], *query) if more else "",
                # Counting one status would mean reading every quest: only the total is cheap.
                total_size=len(ids) if wanted == quest_pb2.QUEST_STATUS_UNSPECIFIED else -1,
            ),
        )

    # -- Accept and UpdateProgress ---------------------------------------------------------------

    async def Accept(
        self,
        request: quest_pb2.AcceptRequest,
        context: grpc.aio.ServicerContext[quest_pb2.AcceptRequest, quest_pb2.AcceptResponse],
    ) -> quest_pb2.AcceptResponse:
        """AVAILABLE -> ACTIVE, if the quest is still at the revision the player saw."""
        _check_id("quest_id", request.quest_id)
        _check_id("player_id", request.player_id)
        if not request.HasField("expected_revision"):
            raise invalid_argument("expected_revision", "is required")
        for _ in range(MAX_ATTEMPTS):
            entry, record = await self._read(request.quest_id)
            quest = record.quest
            if quest.player_id != request.player_id:
                raise rpc_error(
                    grpc.StatusCode.PERMISSION_DENIED, f"quest {request.quest_id!r} was generated for another player",
                    "NOT_QUEST_OWNER",
                )
            expected, current = request.expected_revision.value, quest.revision.value
            if expected != current:
                raise revision_conflict(RevisionConflict(request.quest_id, expected, current), "quest")
            now = self._clock()
            status = effective_status(quest, now)
            if status != quest_pb2.QUEST_STATUS_AVAILABLE:
                raise _wrong_status(request.quest_id, status, "accepted")
            quest.status = quest_pb2.QUEST_STATUS_ACTIVE
            _touch(quest, request.player_id, now)
            try:
                await self._quests.update(entry.key, record.encode(), entry.revision)
            except RevisionConflict:
                continue  # changed since our read: re-read, and the checks above decide
            return quest_pb2.AcceptResponse(quest=quest)
        raise _contended(request.quest_id)

    async def UpdateProgress(
        self,
        request: quest_pb2.UpdateProgressRequest,
        context: grpc.aio.ServicerContext[quest_pb2.UpdateProgressRequest, quest_pb2.UpdateProgressResponse],
    ) -> quest_pb2.UpdateProgressResponse:
        """Advance one objective of an ACTIVE quest; the last one completes it and pays its gold."""
        _check_id("quest_id", request.quest_id)
        _check_id("objective_id", request.objective_id)
        if not 1 <= request.increment <= MAX_INCREMENT:
            raise invalid_argument("increment", f"must be 1 to {MAX_INCREMENT}")
        _check_key("idempotency_key.key", request.idempotency_key.key)
        key = request.idempotency_key.key
        remaining = time_left(context)
        for _ in range(MAX_ATTEMPTS):
            entry, record = await self._read(request.quest_id)
            quest = record.quest
            done = record.result_of(key)
            if done is not None:
                return _replay_progress(quest, done)
            objective = next((o for o in quest.objectives if o.objective_id == request.objective_id), None)
            if objective is None:
                raise not_found(
                    f"quest {request.quest_id!r} has no objective {request.objective_id!r}", "OBJECTIVE_NOT_FOUND",
                )
            now = self._clock()
            status = effective_status(quest, now)
            if status != quest_pb2.QUEST_STATUS_ACTIVE:
                raise _wrong_status(request.quest_id, status, "advanced")
            objective.current_count = min(objective.current_count + request.increment, objective.required_count)
            completed = all(o.current_count >= o.required_count for o in quest.objectives)
            if completed:
                # Before the write: if the grant fails, nothing is applied. The deposit's own
                # idempotency key makes a retry (ours or the caller's) pay once.
                await self._grant(context, quest, remaining)
                quest.status = quest_pb2.QUEST_STATUS_COMPLETED
            _touch(quest, ACTOR, now)
            counts = tuple(o.current_count for o in quest.objectives)
            record.remember(ProgressResult(key, quest.revision.value, int(quest.status), counts, quest.audit,
                                           completed))
            try:
                await self._quests.update(entry.key, record.encode(), entry.revision)
            except RevisionConflict:
                continue
            if completed:
                await self._slots.release(quest.player_id, record.slot, quest.quest_id)
            return quest_pb2.UpdateProgressResponse(quest=quest, completed=completed)
        raise _contended(request.quest_id)

    async def _grant(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        quest: quest_pb2.Quest,
        remaining: float | None,
    ) -> None:
        """Pay the quest's money rewards (experience and items are the game's to grant from the
        completed quest: no service of the mesh keeps them)."""
        stub = payment_pb2_grpc.PaymentServiceStub(self._channel(PAYMENT))
        for index, reward in enumerate(quest.rewards):
            if reward.WhichOneof("kind") != "money":
                continue
            deposit = payment_pb2.DepositRequest(
                account_id=quest.player_id,
                amount=reward.money,
                idempotency_key=common_pb2.IdempotencyKey(key=f"quest-reward:{quest.quest_id}:{index}"),
                description=f"reward for quest {quest.quest_id}",
                actor_id=ACTOR,
            )
            try:
                await stub.Deposit(deposit, timeout=budget(remaining, REQUIRED))
            except grpc.aio.AioRpcError as err:
                raise DependencyError.down(PAYMENT, err) from err

    # -- store access ----------------------------------------------------------------------------

    async def _read(self, quest_id: str) -> tuple[Entry, QuestRecord]:
        entry = await self._quests.get(quest_key(quest_id)) if is_quest_id(quest_id) else None
        if entry is None:
            raise not_found(f"quest {quest_id!r} does not exist", "QUEST_NOT_FOUND")
        return entry, QuestRecord.decode(entry.value)


def _replay_progress(quest: quest_pb2.Quest, done: ProgressResult) -> quest_pb2.UpdateProgressResponse:
    """The response the first call with this key got: the quest as that update left it."""
    first = quest_pb2.Quest()
    first.CopyFrom(quest)
    for objective, count in zip(first.objectives, done.counts, strict=False):
        objective.current_count = count
    first.status = done.status  # type: ignore[assignment]  # an int of the enum
    first.revision.value = done.revision
    first.audit.CopyFrom(done.audit)
    return quest_pb2.UpdateProgressResponse(quest=first, completed=done.completed)


def _touch(quest: quest_pb2.Quest, actor: str, now: float) -> None:
    quest.revision.value += 1
    quest.audit.CopyFrom(common_pb2.AuditInfo(actor_id=actor, update_time=_timestamp(now)))


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(round(seconds * 1e9))
    return stamp


def _check_id(field: str, value: str) -> None:
    if not value:
        raise invalid_argument(field, "is required")
    if len(value) > MAX_ID_CHARS:
        raise invalid_argument(field, f"must be at most {MAX_ID_CHARS} characters")


def _check_key(field: str, value: str) -> None:
    if not value:
        raise invalid_argument(field, "is required")
    if not _PRINTABLE_KEY.fullmatch(value):
        raise invalid_argument(field, "must be 1 to 128 printable ASCII characters")


def _wrong_status(quest_id: str, status: int, verb: str) -> RpcError:
    name = quest_pb2.QuestStatus.Name(status)  # type: ignore[arg-type]
    return failed_precondition(f"quest {quest_id!r} is {name}: it cannot be {verb}", "QUEST_STATUS")


def _contended(quest_id: str) -> RpcError:
    return aborted(f"quest {quest_id!r} changed under {MAX_ATTEMPTS} attempts in a row; retry", "QUEST_CONTENDED")


