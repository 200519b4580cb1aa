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
import hashlib
import re
from collections.abc import Callable, Sequence

import grpc
from gaming.capability_registry.v1 import capability_registry_pb2 as cr
from gaming.capability_registry.v1 import capability_registry_pb2_grpc
from gaming.common.v1 import common_pb2
from google.protobuf import timestamp_pb2

from servicers import paging
from servicers.auth.call_identity import recorded_actor
from servicers.dependencies import Dependencies
from servicers.errors import (
    InvalidArgument,
    RpcError,
    aborted,
    already_exists,
    invalid_argument,
    not_found,
    revision_conflict,
)
from servicers.named_store import NamedStore
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
# Attempts at an unconditional Register while other writers keep changing the feature first.
MAX_ATTEMPTS = 32

_SEGMENT = r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*"
_NAME = re.compile(rf"{_SEGMENT}(?:\.{_SEGMENT})*")


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
        raise InvalidArgument(field, "is required")
    if len(name) > MAX_NAME_LENGTH or not _NAME.fullmatch(name):
        raise InvalidArgument(
            field, f"must be 1 to {MAX_NAME_LENGTH} characters of lower_snake_case segments joined by dots",
        )


def _subject_list(field: str, subject_ids: Sequence[str]) -> list[str]:
    """The list without repeats (first occurrence kept), or InvalidArgument."""
    if len(subject_ids) > MAX_LIST_ENTRIES:
        raise InvalidArgument(field, f"must hold at most {MAX_LIST_ENTRIES} subject ids")
    for index, subject_id in enumerate(subject_ids):
        if not subject_id or len(subject_id) > MAX_SUBJECT_ID_LENGTH:
            raise InvalidArgument(f"{field}[{index}]", f"must be 1 to {MAX_SUBJECT_ID_LENGTH} characters")
    return list(dict.fromkeys(subject_ids))


def _definition(request: cr.RegisterRequest) -> cr.Feature:
    """The feature to store: checked, lists without repeats, output-only fields cleared."""
    if not request.HasField("feature"):
        raise InvalidArgument("feature", "is required")
    given = request.feature
    _check_name("feature.name", given.name)
    if len(given.description) > MAX_DESCRIPTION_LENGTH:
        raise InvalidArgument("feature.description", f"must be at most {MAX_DESCRIPTION_LENGTH} characters")
    if not 0 <= given.rollout_basis_points <= MAX_BASIS_POINTS:
        raise InvalidArgument("feature.rollout_basis_points", f"must be 0 to {MAX_BASIS_POINTS}")
    allow = _subject_list("feature.allow_subject_ids", given.allow_subject_ids)
    deny = _subject_list("feature.deny_subject_ids", given.deny_subject_ids)
    allowed = set(allow)
    for index, subject_id in enumerate(given.deny_subject_ids):
        if subject_id in allowed:
            raise InvalidArgument(f"feature.deny_subject_ids[{index}]", f"{subject_id!r} is also on the allow list")
    if len(request.actor_id) > MAX_SUBJECT_ID_LENGTH:
        raise InvalidArgument("actor_id", f"must be at most {MAX_SUBJECT_ID_LENGTH} characters")
    feature = cr.Feature(
        name=given.name,
        description=given.description,
        enabled=given.enabled,
        rollout_basis_points=given.rollout_basis_points,
        allow_subject_ids=allow,
        deny_subject_ids=deny,
    )
    if feature.ByteSize() > MAX_FEATURE_BYTES:
        raise InvalidArgument("feature", f"must encode to at most {MAX_FEATURE_BYTES} bytes, not {feature.ByteSize()}")
    return feature


def _key_pattern(name_prefix: str) -> str:
    """The narrowest KV wildcard that holds every name starting with ``name_prefix``."""
    head, dot, _ = name_prefix.rpartition(".")
    if dot and _NAME.fullmatch(head):
        return f"{head}.>"  # "npc.dia" -> every name under "npc."
    return ">"


class CapabilityRegistryServicer(capability_registry_pb2_grpc.CapabilityRegistryServiceServicer):
    """Registers features and evaluates them per subject; one KV value per feature."""

    def __init__(self, features: KeyValue, *, clock: Callable[[], float]) -> None:
        # A store outage is UNAVAILABLE, as capability_registry.proto promises, with a message naming the store.
        self._features = NamedStore(features, "the capability-registry store is unavailable")
        self._clock = clock

    def __repr__(self) -> str:
        return f"<CapabilityRegistryServicer features={self._features!r}>"

    async def Register(
        self,
        request: cr.RegisterRequest,
        context: grpc.aio.ServicerContext[cr.RegisterRequest, cr.RegisterResponse],
    ) -> cr.RegisterResponse:
        """Create or replace a feature: unconditionally, only if new (expected 0), or only if
        still at the expected revision."""
        feature = _definition(request)
        now = self._now()
        feature.audit.actor_id = recorded_actor(request.actor_id)
        feature.audit.update_time.CopyFrom(now)
        name = feature.name
        if not request.HasField("expected_revision"):
            return await self._register_unconditionally(feature, now)
        expected = request.expected_revision.value
        if expected == 0:
            feature.create_time.CopyFrom(now)
            try:
                revision = await self._features.update(name, feature.SerializeToString(), 0)
            except RevisionConflict:
                raise already_exists(f"feature {name!r} already exists", "FEATURE_EXISTS") from None
            return _registered(feature, revision, created=True)
        entry = await self._features.get(name)
        if entry is None:
            raise _not_found(name)
        if entry.revision != expected:
            raise revision_conflict(RevisionConflict(name, expected, entry.revision), "feature")
        feature.create_time.CopyFrom(cr.Feature.FromString(entry.value).create_time)
        try:
            revision = await self._features.update(name, feature.SerializeToString(), expected)
        except RevisionConflict as conflict:
            raise revision_conflict(conflict, "feature") from conflict
        return _registered(feature, revision, created=False)

    async def _register_unconditionally(
        self, feature: cr.Feature, now: timestamp_pb2.Timestamp
    ) -> cr.RegisterResponse:
        for _ in range(MAX_ATTEMPTS):
            entry = await self._features.get(feature.name)
            # The first registration's time survives replacements.
            feature.create_time.CopyFrom(now if entry is None else cr.Feature.FromString(entry.value).create_time)
            expected = 0 if entry is None else entry.revision
            try:
                revision = await self._features.update(feature.name, feature.SerializeToString(), expected)
            except RevisionConflict:
                continue  # another writer got there first: replace what it wrote
            return _registered(feature, revision, created=entry is None)
        raise aborted(
            f"feature {feature.name!r} changed under {MAX_ATTEMPTS} attempts in a row; retry", "FEATURE_CONTENDED",
        )

    async def Get(
        self,
        request: cr.GetRequest,
        context: grpc.aio.ServicerContext[cr.GetRequest, cr.GetResponse],
    ) -> cr.GetResponse:
        """One feature's definition, with its current revision."""
        _check_name("name", request.name)
        entry = await self._features.get(request.name)
        if entry is None:
            raise _not_found(request.name)
        return cr.GetResponse(feature=_stored_feature(entry))

    async def List(
        self,
        request: cr.ListRequest,
        context: grpc.aio.ServicerContext[cr.ListRequest, cr.ListResponse],
    ) -> cr.ListResponse:
        """One page of features, ordered by name, optionally only those starting with a prefix."""
        prefix = request.name_prefix
        size = paging.page_size(request.page)
        after = paging.decode_token(request.page.page_token, prefix)
        names = await self._features.keys(_key_pattern(prefix))
        matching = [name for name in names if name.startswith(prefix)]
        following = [name for name in matching if after is None or name > after]
        page = following[:size]
        entries = await asyncio.gather(*(self._features.get(name) for name in page))
        return cr.ListResponse(
            # A feature removed between listing and reading is left out, not an error.
            features=[_stored_feature(entry) for entry in entries if entry is not None],
            page=common_pb2.PageResponse(
                next_page_token=paging.encode_token(page[-1], prefix) if len(following) > size else "",
                total_size=len(matching),
            ),
        )

    async def IsEnabled(
        self,
        request: cr.IsEnabledRequest,
        context: grpc.aio.ServicerContext[cr.IsEnabledRequest, cr.IsEnabledResponse],
    ) -> cr.IsEnabledResponse:
        """Evaluate a feature for one subject; an unknown feature is off (fail closed), not an error."""
        if not request.feature_name:
            raise invalid_argument("feature_name", "is required")
        if not request.subject_id:
            raise invalid_argument("subject_id", "is required")
        not_found = cr.IsEnabledResponse(enabled=False, reason=cr.REASON_FEATURE_NOT_FOUND)
        if len(request.feature_name) > MAX_NAME_LENGTH or not _NAME.fullmatch(request.feature_name):
            return not_found  # no feature can have this name (and it is no KV key)
        entry = await self._features.get(request.feature_name)
        if entry is None:
            return not_found
        enabled, reason = evaluate(cr.Feature.FromString(entry.value), request.subject_id)
        return cr.IsEnabledResponse(
            enabled=enabled, reason=reason, feature_revision=common_pb2.Revision(value=entry.revision)
        )

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


def _not_found(name: str) -> RpcError:
    return not_found(f"feature {name!r} does not exist", "FEATURE_NOT_FOUND")


async def create(deps: Dependencies) -> CapabilityRegistryServicer:
    """Open the features bucket and return a ready servicer."""
    features = await deps.storage.key_value(BUCKET, history=BUCKET_HISTORY, max_bytes=BUCKET_MAX_BYTES)
    return CapabilityRegistryServicer(features, clock=deps.clock)
