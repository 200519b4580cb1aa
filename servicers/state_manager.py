"""State manager: one JSON-like state document per player, written with compare-and-set.

Storage: the bucket ``state_manager`` holds one key per player (the id in base64url) whose
value is a ``StateRecord`` of ``protos/gaming/state_manager/storage/v1/state_manager_records.proto``:
the state (revision unset, the store assigns it), whether it is a tombstone (then the state holds
the player id and audit only), and the revision the write replaced (0 for none).

A delete writes a tombstone instead of deleting the key, so that the delete has a revision of
its own (``DeleteResponse.revision``, seen by watchers, as the proto promises) and records who
deleted and when. ``previous_revision`` lets Watch tell whether a client resuming after a
revision missed a change the bucket no longer holds (it keeps only the latest value of a key):
then it answers OUT_OF_RANGE instead of silently skipping it.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from gaming.common.v1 import common_pb2
from gaming.state_manager.storage.v1 import state_manager_records_pb2
from gaming.state_manager.v1 import state_manager_pb2 as pb
from gaming.state_manager.v1 import state_manager_pb2_grpc
from google.protobuf import struct_pb2, timestamp_pb2

from servicers.auth.call_identity import recorded_actor
from servicers.dependencies import Dependencies
from servicers.errors import RpcError, invalid_argument, not_found, revision_conflict, rpc_error
from servicers.service_settings import bucket_max_bytes
from servicers.storage import Change, Entry, KeyValue, RevisionConflict, key_token

TARGET = "state-manager"
SERVICE_NAMES = ("gaming.state_manager.v1.StateManagerService",)

BUCKET = "state_manager"
# One value per player, each at most MAX_RECORD_BYTES: room for about a thousand full-size
# documents, or millions of typical ones.
BUCKET_MAX_BYTES = 1 << 30
MAX_ID_CHARS = 128
MAX_ACTOR_CHARS = 128
MAX_DOCUMENT_BYTES = 1 << 20
# A stored value must fit in one NATS message (max_payload, 1 MiB by default) with the headers
# JetStream adds; a larger publish makes nats-server close the whole connection.
MAX_RECORD_BYTES = (1 << 20) - 1024


def _encode(state: pb.PlayerState, *, deleted: bool, previous_revision: int) -> bytes:
    record = state_manager_records_pb2.StateRecord(state=state, deleted=deleted, previous_revision=previous_revision)
    return record.SerializeToString()


def _decode(value: bytes) -> tuple[pb.PlayerState, bool, int]:
    """(state without its revision, deleted, previous revision) of a stored value."""
    record = state_manager_records_pb2.StateRecord.FromString(value)
    state = pb.PlayerState()
    state.CopyFrom(record.state)
    return state, record.deleted, record.previous_revision


def _live_state(entry: Entry | None) -> pb.PlayerState | None:
    """The stored state with its revision, or None when the player has none (never, or deleted)."""
    if entry is None:
        return None
    state, deleted, _ = _decode(entry.value)
    if deleted:
        return None
    state.revision.value = entry.revision
    return state


def _document_problem(document: struct_pb2.Struct) -> str | None:
    """Why ``document`` is not a JSON object, or None. Protobuf can hold what JSON cannot (a
    value of no kind, NaN), and the gateway must be able to show every document as JSON."""
    pending = list(document.fields.values())
    while pending:
        value = pending.pop()
        kind = value.WhichOneof("kind")
        if kind is None:
            return "holds a value with no kind set (use null_value for null)"
        if kind == "number_value" and not math.isfinite(value.number_value):
            return "holds a number that is not finite"
        if kind == "struct_value":
            pending.extend(value.struct_value.fields.values())
        elif kind == "list_value":
            pending.extend(value.list_value.values)
    return None


def _masked(base: struct_pb2.Struct, update: struct_pb2.Struct, paths: list[str]) -> struct_pb2.Struct:
    """``base`` with the top-level keys in ``paths`` taken from ``update`` (removed if absent)."""
    document = struct_pb2.Struct()
    document.CopyFrom(base)
    for path in paths:
        if path in update.fields:
            document.fields[path].CopyFrom(update.fields[path])
        elif path in document.fields:
            del document.fields[path]
    return document


def _player_key(player_id: str) -> str:
    if not player_id:
        raise invalid_argument("player_id", "is required")
    if len(player_id) > MAX_ID_CHARS:
        raise invalid_argument("player_id", f"must be at most {MAX_ID_CHARS} characters")
    return key_token(player_id)


def _check_actor(actor_id: str) -> None:
    # Bounded so that a record's size depends on the document alone.
    if len(actor_id) > MAX_ACTOR_CHARS:
        raise invalid_argument("actor_id", f"must be at most {MAX_ACTOR_CHARS} characters")


def _not_found(player_id: str) -> RpcError:
    return not_found(f"player {player_id!r} has no state", "STATE_NOT_FOUND")


def _conflict(player_id: str, expected: int, entry: Entry | None) -> RpcError:
    """ABORTED: the state is at another revision; the proto's own RevisionConflict follows the
    ErrorInfo in the details."""
    exists = _live_state(entry) is not None
    current = entry.revision if entry is not None else 0
    detail = pb.RevisionConflict(
        player_id=player_id, current_revision=common_pb2.Revision(value=current), exists=exists
    )
    return revision_conflict(RevisionConflict(player_id, expected, current), f"state of player {player_id!r}", detail)


def _change_response(player_id: str, change: Change) -> tuple[pb.WatchResponse, int]:
    """The WatchResponse for one stored change, and the revision that change replaced."""
    response = pb.WatchResponse(player_id=player_id, revision=common_pb2.Revision(value=change.revision))
    if change.value is None:
        # Deleted in the store itself (an operator, a purge), not through this service: no
        # audit, and nothing to say about what it replaced.
        response.operation = pb.OPERATION_DELETE
        return response, 0
    state, deleted, previous = _decode(change.value)
    response.audit.CopyFrom(state.audit)
    if deleted:
        response.operation = pb.OPERATION_DELETE
    else:
        response.operation = pb.OPERATION_PUT
        response.document.CopyFrom(state.document)
    return response, previous


class StateManagerServicer(state_manager_pb2_grpc.StateManagerServiceServicer):
    """Player state documents with compare-and-set revisions and a per-player change feed."""

    def __init__(self, kv: KeyValue, *, clock: Callable[[], float]) -> None:
        self._kv = kv
        self._clock = clock

    def __repr__(self) -> str:
        return f"<StateManagerServicer kv={self._kv!r}>"

    def _now(self) -> timestamp_pb2.Timestamp:
        now = timestamp_pb2.Timestamp()
        now.FromNanoseconds(round(self._clock() * 1e9))
        return now

    async def Get(self, request: pb.GetRequest, context: Any) -> pb.GetResponse:
        """The player's current state; NOT_FOUND when there is none."""
        key = _player_key(request.player_id)
        entry = await self._kv.get(key)
        state = _live_state(entry)
        if state is None:
            raise _not_found(request.player_id)
        return pb.GetResponse(state=state)

    async def Update(self, request: pb.UpdateRequest, context: Any) -> pb.UpdateResponse:
        """Replace the document (or the masked top-level keys) if the revision still matches."""
        key = _player_key(request.player_id)
        if not request.HasField("document"):
            raise invalid_argument("document", "is required")
        if not request.HasField("expected_revision"):
            raise invalid_argument("expected_revision", "is required (0 to create)")
        if request.document.ByteSize() > MAX_DOCUMENT_BYTES:
            raise invalid_argument("document", "must be at most 1 MiB serialized")
        problem = _document_problem(request.document)
        if problem is not None:
            raise invalid_argument("document", problem)
        paths = list(request.update_mask.paths)
        for index, path in enumerate(paths):
            if not path or "." in path:
                raise invalid_argument(f"update_mask.paths[{index}]", "must name a top-level document key")
        _check_actor(request.actor_id)
        expected = request.expected_revision.value
        entry = await self._kv.get(key)
        current = _live_state(entry)
        # 0 means "no state yet", which a tombstone also is; any other revision must be the
        # stored one exactly (a tombstone's included: that is what a conflict reports).
        matches = current is None if expected == 0 else entry is not None and entry.revision == expected
        if not matches:
            raise _conflict(request.player_id, expected, entry)
        now = self._now()
        state = pb.PlayerState(
            player_id=request.player_id,
            create_time=current.create_time if current is not None else now,
            audit=common_pb2.AuditInfo(actor_id=recorded_actor(request.actor_id), update_time=now),
        )
        if paths:
            base = current.document if current is not None else struct_pb2.Struct()
            state.document.CopyFrom(_masked(base, request.document, paths))
            if state.document.ByteSize() > MAX_DOCUMENT_BYTES:
                raise invalid_argument("document", "the merged document must be at most 1 MiB serialized")
        else:
            state.document.CopyFrom(request.document)
        previous = entry.revision if entry is not None else 0
        value = _encode(state, deleted=False, previous_revision=previous)
        if len(value) > MAX_RECORD_BYTES:
            size = f"{len(value)} > {MAX_RECORD_BYTES} bytes"
            raise invalid_argument("document", f"too large to store with its metadata ({size})")
        try:
            revision = await self._kv.update(key, value, previous)
        except RevisionConflict:
            # Someone wrote between our read and our write: report what is there now.
            raise _conflict(request.player_id, expected, await self._kv.get(key)) from None
        state.revision.value = revision
        return pb.UpdateResponse(state=state)

    async def Delete(self, request: pb.DeleteRequest, context: Any) -> pb.DeleteResponse:
        """Delete the player's state (a tombstone) if the revision still matches."""
        key = _player_key(request.player_id)
        if not request.HasField("expected_revision"):
            raise invalid_argument("expected_revision", "is required")
        _check_actor(request.actor_id)
        expected = request.expected_revision.value
        entry = await self._kv.get(key)
        if entry is None or _live_state(entry) is None:
            raise _not_found(request.player_id)
        if entry.revision != expected:
            raise _conflict(request.player_id, expected, entry)
        now = self._now()
        tombstone = pb.PlayerState(
            player_id=request.player_id,
            audit=common_pb2.AuditInfo(actor_id=recorded_actor(request.actor_id), update_time=now),
        )
        try:
            value = _encode(tombstone, deleted=True, previous_revision=expected)
            revision = await self._kv.update(key, value, expected)
        except RevisionConflict:
            entry = await self._kv.get(key)
            if _live_state(entry) is None:
                raise _not_found(request.player_id) from None
            raise _conflict(request.player_id, expected, entry) from None
        return pb.DeleteResponse(revision=common_pb2.Revision(value=revision), delete_time=now)

    async def Watch(self, request: pb.WatchRequest, context: Any) -> AsyncIterator[pb.WatchResponse]:
        """Changes to one player's state in revision order, until the client cancels.

        With ``after_revision``: every change after it, or OUT_OF_RANGE when one of them is no
        longer retained. Without: changes from now on, first the current state if
        ``send_initial``. The current state is taken from the watch itself (its first value),
        so a client that has it knows the watch is live and misses nothing written after.
        """
        key = _player_key(request.player_id)
        if request.HasField("after_revision"):
            floor, resuming, send_current = request.after_revision.value, True, False
        else:
            entry = await self._kv.get(key)
            floor, resuming, send_current = (entry.revision if entry else 0), False, request.send_initial
        changes = self._kv.watch(key)
        try:
            async for change in changes:
                response, previous = _change_response(request.player_id, change)
                if change.revision < floor:
                    continue
                if change.revision == floor:
                    # The value current when the call started: sent only as the initial state.
                    if not (send_current and response.operation == pb.OPERATION_PUT):
                        continue
                elif resuming and previous > floor:
                    raise rpc_error(
                        grpc.StatusCode.OUT_OF_RANGE,
                        f"changes after revision {floor} are no longer retained (the latest is"
                        f" {change.revision}); read with Get and watch after its revision",
                        "REVISION_NOT_RETAINED",
                    )
                # From the first message on, each change must follow the one sent before it.
                send_current, resuming, floor = False, True, change.revision
                yield response
        finally:
            await changes.aclose()


async def create(deps: Dependencies) -> StateManagerServicer:
    """Open the state bucket (latest value per player only) and return a ready servicer.

    Settings: ``bucket_max_bytes``, the bucket's size limit (default 1 GiB).
    """
    max_bytes = bucket_max_bytes(deps.settings, BUCKET_MAX_BYTES)
    kv = await deps.storage.key_value(BUCKET, history=1, max_bytes=max_bytes)
    return StateManagerServicer(kv, clock=deps.clock)


add_to_server = state_manager_pb2_grpc.add_StateManagerServiceServicer_to_server
