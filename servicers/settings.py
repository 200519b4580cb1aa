"""Settings: versioned key/value settings of a scope (one player, or one service of the mesh).

Storage: the bucket ``settings`` holds one key per scope, ``player.<id>`` or ``service.<id>``
(the id in base64url), whose value is a ``SettingsRecord`` of
``protos/gaming/settings/storage/v1/settings_records.proto``: the settings (revision unset, the
store assigns it), the keys the write set and removed, and the revision it replaced (0 for none).

Keeping the delta in the record gives watchers the exact keys an update named, even a key set
to the value it had. ``previous_revision`` tells a watcher that it missed a write (possible
only while a Watch starts); it then derives the delta from the values it last sent.
"""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import grpc
from gaming.common.v1 import common_pb2
from gaming.settings.storage.v1 import settings_records_pb2
from gaming.settings.v1 import settings_pb2 as pb
from gaming.settings.v1 import settings_pb2_grpc
from google.protobuf import timestamp_pb2

from servicers.auth.call_identity import acts_for, acts_for_anyone, caller, recorded_actor
from servicers.dependencies import Dependencies
from servicers.errors import RpcError, invalid_argument, revision_conflict, rpc_error
from servicers.service_settings import bucket_max_bytes
from servicers.storage import Entry, KeyValue, RevisionConflict, key_token

TARGET = "settings"
SERVICE_NAMES = ("gaming.settings.v1.SettingsService",)

BUCKET = "settings"
# One value per scope, each under 1 MiB; typical scopes hold a few hundred bytes.
BUCKET_MAX_BYTES = 256 << 20
MAX_ID_CHARS = 128
MAX_ACTOR_CHARS = 128
MAX_KEY_CHARS = 128
MAX_KEYS = 256
MAX_STRING_BYTES = 4096
# A stored value must fit in one NATS message (max_payload, 1 MiB by default) with the headers
# JetStream adds; a larger publish makes nats-server close the whole connection.
MAX_RECORD_BYTES = (1 << 20) - 1024

# lower_snake_case segments separated by dots, e.g. "audio.music_volume".
_KEY = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*(?:\.[a-z][a-z0-9]*(?:_[a-z0-9]+)*)*")
_KIND_TOKENS = {pb.SCOPE_KIND_PLAYER: "player", pb.SCOPE_KIND_SERVICE: "service"}
# google.protobuf.Duration's documented range.
_MAX_DURATION_SECONDS = 315_576_000_000


def _encode(settings: pb.Settings, changed: list[str], removed: list[str], previous_revision: int) -> bytes:
    record = settings_records_pb2.SettingsRecord(
        settings=settings, changed_keys=changed, removed_keys=removed, previous_revision=previous_revision
    )
    return record.SerializeToString()


def _decode(entry: Entry) -> tuple[pb.Settings, list[str], list[str], int]:
    """(settings with the entry's revision, changed keys, removed keys, previous revision)."""
    record = settings_records_pb2.SettingsRecord.FromString(entry.value)
    settings = pb.Settings()
    settings.CopyFrom(record.settings)
    settings.revision.value = entry.revision
    return settings, list(record.changed_keys), list(record.removed_keys), record.previous_revision


def _empty(scope: pb.Scope) -> pb.Settings:
    """A scope never written: no values, revision 0, no audit."""
    return pb.Settings(scope=scope, revision=common_pb2.Revision(value=0))


def _delta(before: Mapping[str, pb.SettingValue], after: Mapping[str, pb.SettingValue]) -> tuple[list[str], list[str]]:
    """(keys set, keys removed) going from ``before`` to ``after``."""
    changed = sorted(key for key, value in after.items() if key not in before or before[key] != value)
    removed = sorted(key for key in before if key not in after)
    return changed, removed


def _value_problem(value: pb.SettingValue) -> str | None:
    """Why ``value`` cannot be stored, or None."""
    kind = value.WhichOneof("kind")
    if kind is None:
        return "has no value set (exactly one of its fields must be)"
    if kind == "string_value" and len(value.string_value.encode()) > MAX_STRING_BYTES:
        return f"must be at most {MAX_STRING_BYTES} bytes of UTF-8"
    if kind == "double_value" and not math.isfinite(value.double_value):
        return "must be a finite number"
    if kind == "duration_value":
        seconds, nanos = value.duration_value.seconds, value.duration_value.nanos
        if abs(seconds) > _MAX_DURATION_SECONDS or abs(nanos) > 999_999_999 or seconds * nanos < 0:
            return "is not a valid google.protobuf.Duration"
    return None


def _key_problem(key: str) -> str | None:
    if not key or len(key) > MAX_KEY_CHARS:
        return f"keys are 1 to {MAX_KEY_CHARS} characters"
    if not _KEY.fullmatch(key):
        return "keys are lower_snake_case segments separated by dots, e.g. audio.music_volume"
    return None


def _scope_key(request: pb.GetRequest | pb.UpdateRequest | pb.WatchRequest) -> str:
    """The KV key of the request's scope, after checking it."""
    if not request.HasField("scope"):
        raise invalid_argument("scope", "is required")
    scope = request.scope
    kind = _KIND_TOKENS.get(scope.kind)
    if kind is None:
        raise invalid_argument("scope.kind", "must be SCOPE_KIND_PLAYER or SCOPE_KIND_SERVICE")
    if not scope.id or len(scope.id) > MAX_ID_CHARS:
        raise invalid_argument("scope.id", f"must be 1 to {MAX_ID_CHARS} characters")
    # A player reads and writes only their own player scope (settings.proto); operators and
    # services any. No verified caller means no access policy ran (a bare test server).
    own = scope.kind == pb.SCOPE_KIND_PLAYER and acts_for(scope.id)
    if caller() is not None and not (own or acts_for_anyone()):
        raise rpc_error(grpc.StatusCode.PERMISSION_DENIED, "a player may use only their own player scope",
                        "NOT_SCOPE_OWNER")
    return f"{kind}.{key_token(scope.id)}"


def _check_update(request: pb.UpdateRequest) -> None:
    """Everything about an update that does not depend on what is stored."""
    if not request.HasField("expected_revision"):
        raise invalid_argument("expected_revision", "is required (0 for a scope never written)")
    if not request.set and not request.remove_keys:
        raise invalid_argument("set", "nothing to set or remove")
    for key in sorted(request.set):
        problem = _key_problem(key) or _value_problem(request.set[key])
        if problem is not None:
            raise invalid_argument(f'set["{key}"]', problem)
    for index, key in enumerate(request.remove_keys):
        problem = _key_problem(key)
        if problem is None and key in request.set:
            problem = "is also in set: a key is either set or removed"
        if problem is not None:
            raise invalid_argument(f"remove_keys[{index}]", problem)
    # Bounded so that a record's size depends on the values alone.
    if len(request.actor_id) > MAX_ACTOR_CHARS:
        raise invalid_argument("actor_id", f"must be at most {MAX_ACTOR_CHARS} characters")


def _conflict(scope: pb.Scope, expected: int, entry: Entry | None) -> RpcError:
    """ABORTED for an update at a stale revision, with settings.proto's own RevisionConflict."""
    current = entry.revision if entry is not None else 0
    detail = pb.RevisionConflict(scope=scope, current_revision=common_pb2.Revision(value=current))
    subject = f"{pb.ScopeKind.Name(scope.kind)}/{scope.id}"
    what = f"settings of {pb.ScopeKind.Name(scope.kind)} {scope.id!r}"
    return revision_conflict(RevisionConflict(subject, expected, current), what, detail)


class SettingsServicer(settings_pb2_grpc.SettingsServiceServicer):
    """Per-player and per-service settings with compare-and-set updates and a change feed."""

    def __init__(self, kv: KeyValue, *, clock: Callable[[], float]) -> None:
        self._kv = kv
        self._clock = clock

    def __repr__(self) -> str:
        return f"<SettingsServicer kv={self._kv!r}>"

    async def Get(self, request: pb.GetRequest, context: Any) -> pb.GetResponse:
        """All settings of the scope; a scope never written is empty at revision 0."""
        key = _scope_key(request)
        entry = await self._kv.get(key)
        settings = _decode(entry)[0] if entry is not None else _empty(request.scope)
        return pb.GetResponse(settings=settings)

    async def Update(self, request: pb.UpdateRequest, context: Any) -> pb.UpdateResponse:
        """Set and remove keys in one compare-and-set step; other keys stay as they are."""
        key = _scope_key(request)
        _check_update(request)
        expected = request.expected_revision.value
        entry = await self._kv.get(key)
        if (entry.revision if entry is not None else 0) != expected:
            raise _conflict(request.scope, expected, entry)
        settings = _decode(entry)[0] if entry is not None else _empty(request.scope)
        removed = sorted(name for name in set(request.remove_keys) if name in settings.values)
        for name in removed:
            del settings.values[name]
        for name, setting in request.set.items():
            settings.values[name].CopyFrom(setting)
        if len(settings.values) > MAX_KEYS:
            raise invalid_argument("set", f"a scope holds at most {MAX_KEYS} keys")
        now = timestamp_pb2.Timestamp()
        now.FromNanoseconds(round(self._clock() * 1e9))
        settings.scope.CopyFrom(request.scope)
        settings.audit.CopyFrom(common_pb2.AuditInfo(actor_id=recorded_actor(request.actor_id), update_time=now))
        settings.ClearField("revision")
        value = _encode(settings, sorted(request.set), removed, expected)
        if len(value) > MAX_RECORD_BYTES:
            size = f"{len(value)} > {MAX_RECORD_BYTES} bytes"
            raise invalid_argument("set", f"the scope's settings are too large to store ({size})")
        try:
            revision = await self._kv.update(key, value, expected)
        except RevisionConflict as lost:
            # Someone wrote between our read and our write: report what is there now.
            raise _conflict(request.scope, expected, await self._kv.get(key)) from lost
        settings.revision.value = revision
        return pb.UpdateResponse(settings=settings)

    async def Watch(self, request: pb.WatchRequest, context: Any) -> AsyncIterator[pb.WatchResponse]:
        """A snapshot of the scope's settings, then the settings after each update.

        For a scope that has settings, the snapshot is the watch's own first value, so a client
        holding it knows the watch is live. A scope never written has nothing to watch yet: its
        empty snapshot is sent at once, and the first write shows up as an update.
        """
        key = _scope_key(request)
        entry = await self._kv.get(key)
        snapshot_pending = entry is not None
        floor = entry.revision if entry is not None else 0
        last = _empty(request.scope)
        if not snapshot_pending:
            yield pb.WatchResponse(settings=last, initial=True)
        changes = self._kv.watch(key)
        changed: list[str]
        removed: list[str]
        try:
            async for change in changes:
                if change.value is None:
                    # Deleted in the store itself (not through this service): reads as empty.
                    settings, changed, removed, previous = _empty(request.scope), [], sorted(last.values), floor
                else:
                    settings, changed, removed, previous = _decode(Entry(change.key, change.value, change.revision))
                if snapshot_pending:
                    snapshot_pending = False
                    yield pb.WatchResponse(settings=settings, initial=True)
                elif change.revision <= floor:
                    continue
                else:
                    if previous != floor:
                        # A write slipped in while the watch started: derive what changed.
                        changed, removed = _delta(last.values, settings.values)
                    yield pb.WatchResponse(settings=settings, changed_keys=changed, removed_keys=removed)
                floor, last = change.revision, settings
        finally:
            await changes.aclose()


async def create(deps: Dependencies) -> SettingsServicer:
    """Open the settings bucket (latest value per scope only) and return a ready servicer.

    Settings: ``bucket_max_bytes``, the bucket's size limit (default 256 MiB).
    """
    max_bytes = bucket_max_bytes(deps.settings, BUCKET_MAX_BYTES)
    kv = await deps.storage.key_value(BUCKET, history=1, max_bytes=max_bytes)
    return SettingsServicer(kv, clock=deps.clock)


add_to_server = settings_pb2_grpc.add_SettingsServiceServicer_to_server
