"""capability-registry: named features with a master switch, allow/deny lists and a percentage
rollout, evaluated per subject.

Each feature is one KV value (the ``Feature`` message without its revision, which is the KV
entry's), under its name as the key: names are lower_snake_case segments joined by dots, which
are valid KV keys as they are. Register is a compare-and-set on that value.

Rollout buckets are reproducible in any language (see ``rollout_bucket``), so a game client or
another service can predict an answer, and a subject keeps its answer while a rollout grows.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import NoReturn, TypeVar

import grpc
from gaming.capability_registry.v1 import capability_registry_pb2 as cr
from gaming.capability_registry.v1 import capability_registry_pb2_grpc
from gaming.common.v1 import common_pb2
from google.protobuf import timestamp_pb2

from servicers.auth.call_identity import recorded_actor
from servicers.dependencies import Dependencies
from servicers.errors import abort, abort_conflict, abort_invalid
from servicers.storage import Entry, KeyValue, RevisionConflict

__all__ = [
    "SERVICE_NAMES", "TARGET", "CapabilityRegistryServicer", "add_to_server", "create", "evaluate", "rollout_bucket",
]

TARGET = "capability-registry"
SERVICE_NAMES = ("gaming.capability_registry.v1.CapabilityRegistryService",)
add_to_server = capability_registry_pb2_grpc.add_CapabilityRegistryServiceServicer_to_server

BUCKET = "capability_registry_features"
# Only the current definition is read; earlier ones are not kept.
BUCKET_HISTORY = 1
BUCKET_MAX_BYTES = 256 * 1024 * 1024
# A definition must fit one NATS message (1 MiB max_payload by default, headers included).
MAX_FEATURE_BYTES = 1_000_000
MAX_NAME_LENGTH = 128
MAX_DESCRIPTION_LENGTH = 1024
MAX_LIST_ENTRIES = 10_000
MAX_SUBJECT_ID_LENGTH = 128
MAX_BASIS_POINTS = 10_000
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
# Attempts at an unconditional Register while other writers keep changing the feature first.
MAX_ATTEMPTS = 32

_SEGMENT = r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*"
_NAME = re.compile(rf"{_SEGMENT}(?:\.{_SEGMENT})*")
_log = logging.getLogger(__name__)
_T = TypeVar("_T")


class _Invalid(Exception):
    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description


def rollout_bucket(feature_name: str, subject_id: str) -> int:
    """The subject's stable bucket for a feature, 0 to 9999.

    It is the first 8 bytes of SHA-256 over ``<feature name> NUL <subject id>`` (UTF-8), read as
    a big-endian unsigned integer, modulo 10000. The feature name is part of the hash so that
    the same subjects are not always the first to get every feature; NUL cannot occur in a
    feature name, so no two (name, subject) pairs hash the same input.
    """
    digest = hashlib.sha256(feature_name.encode() + b"\x00" + subject_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % MAX_BASIS_POINTS


def evaluate(feature: cr.Feature, subject_id: str) -> tuple[bool, cr.Reason.ValueType]:
    """Whether ``feature`` is on for ``subject_id``, and why, in the service's documented order:
    master switch, deny list, allow list, rollout."""
    if not feature.enabled:
        return False, cr.REASON_FEATURE_DISABLED
    if subject_id in feature.deny_subject_ids:
        return False, cr.REASON_DENY_LISTED
    if subject_id in feature.allow_subject_ids:
        return True, cr.REASON_ALLOW_LISTED
    if rollout_bucket(feature.name, subject_id) < feature.rollout_basis_points:
        return True, cr.REASON_IN_ROLLOUT
    return False, cr.REASON_OUTSIDE_ROLLOUT


def _check_name(field: str, name: str) -> None:
    if not name:
        raise _Invalid(field, "is required")
    if len(name) > MAX_NAME_LENGTH or not _NAME.fullmatch(name):
        raise _Invalid(field, f"must be 1 to {MAX_NAME_LENGTH} characters of lower_snake_case segments joined by dots")


def _subject_list(field: str, subject_ids: Sequence[str]) -> list[str]:
    """The list without repeats (first occurrence kept), or _Invalid."""
    if len(subject_ids) > MAX_LIST_ENTRIES:
        raise _Invalid(field, f"must hold at most {MAX_LIST_ENTRIES} subject ids")
    for index, subject_id in enumerate(subject_ids):
        if not subject_id or len(subject_id) > MAX_SUBJECT_ID_LENGTH:
            raise _Invalid(f"{field}[{index}]", f"must be 1 to {MAX_SUBJECT_ID_LENGTH} characters")
    return list(dict.fromkeys(subject_ids))


def _definition(request: cr.RegisterRequest) -> cr.Feature:
    """The feature to store: checked, lists without repeats, output-only fields cleared."""
    if not request.HasField("feature"):
        raise _Invalid("feature", "is required")
    given = request.feature
    _check_name("feature.name", given.name)
    if len(given.description) > MAX_DESCRIPTION_LENGTH:
        raise _Invalid("feature.description", f"must be at most {MAX_DESCRIPTION_LENGTH} characters")
    if not 0 <= given.rollout_basis_points <= MAX_BASIS_POINTS:
        raise _Invalid("feature.rollout_basis_points", f"must be 0 to {MAX_BASIS_POINTS}")
    allow = _subject_list("feature.allow_subject_ids", given.allow_subject_ids)
    deny = _subject_list("feature.deny_subject_ids", given.deny_subject_ids)
    allowed = set(allow)
    for index, subject_id in enumerate(given.deny_subject_ids):
        if subject_id in allowed:
            raise _Invalid(f"feature.deny_subject_ids[{index}]", f"{subject_id!r} is also on the allow list")
    if len(request.actor_id) > MAX_SUBJECT_ID_LENGTH:
        raise _Invalid("actor_id", f"must be at most {MAX_SUBJECT_ID_LENGTH} characters")
    feature = cr.Feature(
        name=given.name,
        description=given.description,
        enabled=given.enabled,
        rollout_basis_points=given.rollout_basis_points,
        allow_subject_ids=allow,
        deny_subject_ids=deny,
    )
    if feature.ByteSize() > MAX_FEATURE_BYTES:
        raise _Invalid("feature", f"must encode to at most {MAX_FEATURE_BYTES} bytes, not {feature.ByteSize()}")
    return feature


def _page_size(page: common_pb2.PageRequest) -> int:
    if page.page_size < 0:
        raise _Invalid("page.page_size", "must not be negative")
    return min(page.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _query_fingerprint(name_prefix: str) -> str:
    return hashlib.sha256(name_prefix.encode()).hexdigest()[:16]


def _page_token(after: str, name_prefix: str) -> str:
    # Keyset pagination: the next page starts after the last name, whatever was added or removed.
    body = json.dumps({"q": _query_fingerprint(name_prefix), "after": after}, separators=(",", ":"))
    return base64.urlsafe_b64encode(body.encode()).rstrip(b"=").decode()


def _after(token: str, name_prefix: str) -> str | None:
    if not token:
        return None
    try:
        body = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError) as err:
        raise _Invalid("page.page_token", "is not a token this server issued") from err
    if not isinstance(body, dict) or not isinstance(body.get("after"), str) or not isinstance(body.get("q"), str):
        raise _Invalid("page.page_token", "is not a token this server issued")
    if body["q"] != _query_fingerprint(name_prefix):
        raise _Invalid("page.page_token", "was issued for another query")
    after: str = body["after"]
    return after


def _key_pattern(name_prefix: str) -> str:
    """The narrowest KV wildcard that holds every name starting with ``name_prefix``."""
    head, dot, _ = name_prefix.rpartition(".")
    if dot and _NAME.fullmatch(head):
        return f"{head}.>"  # "npc.dia" -> every name under "npc."
    return ">"


class CapabilityRegistryServicer(capability_registry_pb2_grpc.CapabilityRegistryServiceServicer):
    """Registers features and evaluates them per subject; one KV value per feature."""

    def __init__(self, features: KeyValue, *, clock: Callable[[], float]) -> None:
        self._features = features
        self._clock = clock

    def __repr__(self) -> str:
        return f"<CapabilityRegistryServicer features={self._features!r}>"

    async def Register(self, request: cr.RegisterRequest, context: grpc.aio.ServicerContext) -> cr.RegisterResponse:
        """Create or replace a feature: unconditionally, only if new (expected 0), or only if
        still at the expected revision."""
        try:
            feature = _definition(request)
        except _Invalid as invalid:
            await abort_invalid(context, invalid.field, invalid.description)
        now = self._now()
        feature.audit.actor_id = recorded_actor(request.actor_id)
        feature.audit.update_time.CopyFrom(now)
        name = feature.name
        if not request.HasField("expected_revision"):
            return await self._register_unconditionally(context, feature, now)
        expected = request.expected_revision.value
        if expected == 0:
            feature.create_time.CopyFrom(now)
            try:
                revision = await self._stored(context, self._features.update(name, feature.SerializeToString(), 0))
            except RevisionConflict:
                await abort(context, grpc.StatusCode.ALREADY_EXISTS, f"feature {name!r} already exists",
                            "FEATURE_EXISTS")
            return _registered(feature, revision, created=True)
        entry = await self._stored(context, self._features.get(name))
        if entry is None:
            await _abort_not_found(context, name)
        if entry.revision != expected:
            await abort_conflict(context, RevisionConflict(name, expected, entry.revision), "feature")
        feature.create_time.CopyFrom(cr.Feature.FromString(entry.value).create_time)
        try:
            revision = await self._stored(context, self._features.update(name, feature.SerializeToString(), expected))
        except RevisionConflict as conflict:
            await abort_conflict(context, conflict, "feature")
        return _registered(feature, revision, created=False)

    async def _register_unconditionally(
        self, context: grpc.aio.ServicerContext, feature: cr.Feature, now: timestamp_pb2.Timestamp
    ) -> cr.RegisterResponse:
        for _ in range(MAX_ATTEMPTS):
            entry = await self._stored(context, self._features.get(feature.name))
            # The first registration's time survives replacements.
            feature.create_time.CopyFrom(now if entry is None else cr.Feature.FromString(entry.value).create_time)
            expected = 0 if entry is None else entry.revision
            try:
                revision = await self._stored(
                    context, self._features.update(feature.name, feature.SerializeToString(), expected)
                )
            except RevisionConflict:
                continue  # another writer got there first: replace what it wrote
            return _registered(feature, revision, created=entry is None)
        await abort(
            context,
            grpc.StatusCode.ABORTED,
            f"feature {feature.name!r} changed under {MAX_ATTEMPTS} attempts in a row; retry",
            "FEATURE_CONTENDED",
        )

    async def Get(self, request: cr.GetRequest, context: grpc.aio.ServicerContext) -> cr.GetResponse:
        """One feature's definition, with its current revision."""
        try:
            _check_name("name", request.name)
        except _Invalid as invalid:
            await abort_invalid(context, invalid.field, invalid.description)
        entry = await self._stored(context, self._features.get(request.name))
        if entry is None:
            await _abort_not_found(context, request.name)
        return cr.GetResponse(feature=_stored_feature(entry))

    async def List(self, request: cr.ListRequest, context: grpc.aio.ServicerContext) -> cr.ListResponse:
        """One page of features, ordered by name, optionally only those starting with a prefix."""
        prefix = request.name_prefix
        try:
            size = _page_size(request.page)
            after = _after(request.page.page_token, prefix)
        except _Invalid as invalid:
            await abort_invalid(context, invalid.field, invalid.description)
        names = await self._stored(context, self._features.keys(_key_pattern(prefix)))
        matching = [name for name in names if name.startswith(prefix)]
        following = [name for name in matching if after is None or name > after]
        page = following[:size]
        entries = await self._stored(context, asyncio.gather(*(self._features.get(name) for name in page)))
        return cr.ListResponse(
            # A feature removed between listing and reading is left out, not an error.
            features=[_stored_feature(entry) for entry in entries if entry is not None],
            page=common_pb2.PageResponse(
                next_page_token=_page_token(page[-1], prefix) if len(following) > size else "",
                total_size=len(matching),
            ),
        )

    async def IsEnabled(self, request: cr.IsEnabledRequest, context: grpc.aio.ServicerContext) -> cr.IsEnabledResponse:
        """Evaluate a feature for one subject; an unknown feature is off (fail closed), not an error."""
        if not request.feature_name:
            await abort_invalid(context, "feature_name", "is required")
        if not request.subject_id:
            await abort_invalid(context, "subject_id", "is required")
        not_found = cr.IsEnabledResponse(enabled=False, reason=cr.REASON_FEATURE_NOT_FOUND)
        if len(request.feature_name) > MAX_NAME_LENGTH or not _NAME.fullmatch(request.feature_name):
            return not_found  # no feature can have this name (and it is no KV key)
        entry = await self._stored(context, self._features.get(request.feature_name))
        if entry is None:
            return not_found
        enabled, reason = evaluate(cr.Feature.FromString(entry.value), request.subject_id)
        return cr.IsEnabledResponse(
            enabled=enabled, reason=reason, feature_revision=common_pb2.Revision(value=entry.revision)
        )

    async def _stored(self, context: grpc.aio.ServicerContext, operation: Awaitable[_T]) -> _T:
        """``operation``'s result; a store failure (anything but a lost compare-and-set, since
        the storage protocol has no error type of its own) becomes UNAVAILABLE."""
        try:
            return await operation
        except RevisionConflict:
            raise
        except Exception:
            _log.warning("capability-registry store call failed", exc_info=True)
            await abort(context, grpc.StatusCode.UNAVAILABLE, "the capability-registry store is unavailable",
                        "STORE_UNAVAILABLE")

    def _now(self) -> timestamp_pb2.Timestamp:
        now = timestamp_pb2.Timestamp()
        now.FromNanoseconds(round(self._clock() * 1e9))
        return now


def _stored_feature(entry: Entry) -> cr.Feature:
    feature = cr.Feature.FromString(entry.value)
    feature.revision.value = entry.revision
    return feature


def _registered(feature: cr.Feature, revision: int, *, created: bool) -> cr.RegisterResponse:
    feature.revision.value = revision
    return cr.RegisterResponse(feature=feature, created=created)


async def _abort_not_found(context: grpc.aio.ServicerContext, name: str) -> NoReturn:
    await abort(context, grpc.StatusCode.NOT_FOUND, f"feature {name!r} does not exist", "FEATURE_NOT_FOUND")


async def create(deps: Dependencies) -> CapabilityRegistryServicer:
    """Open the features bucket and return a ready servicer."""
    features = await deps.storage.key_value(BUCKET, history=BUCKET_HISTORY, max_bytes=BUCKET_MAX_BYTES)
    return CapabilityRegistryServicer(features, clock=deps.clock)
