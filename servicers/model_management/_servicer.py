"""ModelManagementService: model descriptions in one KV bucket, one value per model."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc
from gaming.model_management.v1 import model_management_pb2 as mm
from gaming.model_management.v1 import model_management_pb2_grpc
from google.protobuf import timestamp_pb2

from servicers import paging
from servicers.auth.call_identity import audit_actor
from servicers.errors import InvalidArgument, RpcError, aborted, already_exists, not_found, revision_conflict
from servicers.model_fields import check_duration, check_enum, check_name
from servicers.model_management import _ranking
from servicers.model_management._rules import checked_model, model_key, name_of_key
from servicers.named_store import NamedStore
from servicers.storage import Entry, KeyValue, RevisionConflict

_log = logging.getLogger(__name__)

# An unconditional Register is a read-modify-write (it keeps create_time): when other writers
# keep landing first, retry this often before giving up with ABORTED.
MAX_ATTEMPTS = 16
DEFAULT_CANDIDATES = 5
MAX_CANDIDATES = 20
MAX_PREFERRED = 10
MAX_EXCLUDED = 50


class ModelManagementServicer(model_management_pb2_grpc.ModelManagementServiceServicer):
    """The registry: Register/Get/List/Deregister over the bucket, Select ranks what is in it.

    Each model is one value (a serialized ``Model`` without its revision, which is the value's
    KV revision) under ``model_key(name)``, so every write is one compare-and-set.
    """

    def __init__(self, models: KeyValue, *, clock: Callable[[], float]) -> None:
        # A store outage is UNAVAILABLE, as model_management.proto promises, with a message naming the store.
        self._models = NamedStore(models, "the model registry store is unavailable")
        self._clock = clock

    def __repr__(self) -> str:
        return f"<ModelManagementServicer models={self._models!r}>"

    async def Register(
        self, request: mm.RegisterRequest, context: grpc.aio.ServicerContext[mm.RegisterRequest, mm.RegisterResponse]
    ) -> mm.RegisterResponse:
        """Create or replace a model, unconditionally or guarded by ``expected_revision``."""
        model = checked_model(request.model)
        key = model_key(model.name)
        # Who makes the change: the verified caller (Register is for operators), never metadata.
        model.audit.actor_id = audit_actor()
        model.audit.update_time.CopyFrom(self._now())
        if request.HasField("expected_revision") and request.expected_revision.value == 0:
            model.create_time.CopyFrom(model.audit.update_time)
            try:
                revision = await self._models.update(key, model.SerializeToString(), 0)
            except RevisionConflict:
                raise already_exists(f"model {model.name!r} is already registered", "MODEL_EXISTS") from None
            return _registered(model, revision, created=True)
        if request.HasField("expected_revision"):
            expected = request.expected_revision.value
            entry = await self._entry(model.name)
            if entry.revision != expected:
                raise revision_conflict(RevisionConflict(model.name, expected, entry.revision), "model")
            model.create_time.CopyFrom(mm.Model.FromString(entry.value).create_time)
            try:
                revision = await self._models.update(key, model.SerializeToString(), expected)
            except RevisionConflict as conflict:
                raise _lost(model.name, expected, conflict) from conflict
            return _registered(model, revision, created=False)
        for _ in range(MAX_ATTEMPTS):
            current = await self._models.get(key)
            created = current is None
            model.create_time.CopyFrom(
                model.audit.update_time if current is None else mm.Model.FromString(current.value).create_time
            )
            expected = 0 if current is None else current.revision
            try:
                revision = await self._models.update(key, model.SerializeToString(), expected)
            except RevisionConflict:
                continue  # someone else wrote in between: read again and re-apply
            return _registered(model, revision, created=created)
        raise aborted(f"model {model.name!r} is changing too fast, retry", "TOO_MUCH_CONTENTION")

    async def Get(
        self,
        request: mm.GetRequest,
        context: grpc.aio.ServicerContext[mm.GetRequest, mm.GetResponse],
    ) -> mm.GetResponse:
        """One model by name."""
        check_name("name", request.name)
        return mm.GetResponse(model=_model_of(await self._entry(request.name)))

    async def List(
        self,
        request: mm.ListRequest,
        context: grpc.aio.ServicerContext[mm.ListRequest, mm.ListResponse],
    ) -> mm.ListResponse:
        """A page of models ordered by name, optionally with one capability or availability."""
        size = paging.page_size(request.page)
        check_enum("capability", request.capability, list(mm.Capability.values()), allow_unspecified=True)
        check_enum("availability", request.availability, list(mm.Availability.values()), allow_unspecified=True)
        query = (str(request.capability), str(request.availability))
        after = paging.decode_token(request.page.page_token, *query, other_query="was issued for different filters")
        names = await self._names()
        found: list[mm.Model] = []
        for name in names:
            if after is not None and name <= after:
                continue
            entry = await self._models.get(model_key(name))
            if entry is None:
                continue  # deregistered since we listed the keys
            model = _model_of(entry)
            if request.capability and request.capability not in model.capabilities:
                continue
            if request.availability and model.availability != request.availability:
                continue
            found.append(model)
            if len(found) > size:
                break  # one more than a page: there is a next page
        page = found[:size]
        filtered = bool(request.capability or request.availability)
        response = mm.ListResponse(models=page)
        # Counting filtered models would mean reading every one; unfiltered, the keys suffice.
        response.page.total_size = -1 if filtered else len(names)
        if len(found) > size:
            response.page.next_page_token = paging.encode_token(page[-1].name, *query)
        return response

    async def Select(
        self,
        request: mm.SelectRequest,
        context: grpc.aio.ServicerContext[mm.SelectRequest, mm.SelectResponse],
    ) -> mm.SelectResponse:
        """The qualifying models, ranked as ``_ranking`` documents; empty when none qualifies."""
        criteria = _criteria(request)
        names = await self._names()
        entries = await asyncio.gather(*(self._models.get(model_key(name)) for name in names))
        models = [_model_of(entry) for entry in entries if entry is not None]
        return mm.SelectResponse(candidates=_ranking.rank(models, criteria))

    async def Deregister(
        self,
        request: mm.DeregisterRequest,
        context: grpc.aio.ServicerContext[mm.DeregisterRequest, mm.DeregisterResponse],
    ) -> mm.DeregisterResponse:
        """Remove a model; with ``expected_revision``, only from that revision."""
        check_name("name", request.name)
        guarded = request.HasField("expected_revision")
        for _ in range(MAX_ATTEMPTS):
            entry = await self._entry(request.name)
            if guarded and entry.revision != request.expected_revision.value:
                raise revision_conflict(
                    RevisionConflict(request.name, request.expected_revision.value, entry.revision), "model",
                )
            try:
                # Always guarded by the revision just read, so the revision we report is the one
                # that was removed, even if an unguarded delete races a write.
                await self._models.delete(model_key(request.name), revision=entry.revision)
            except RevisionConflict as conflict:
                if guarded or conflict.current == 0:
                    raise _lost(request.name, entry.revision, conflict) from conflict
                continue
            response = mm.DeregisterResponse(name=request.name)
            response.revision.value = entry.revision
            return response
        raise aborted(f"model {request.name!r} is changing too fast, retry", "TOO_MUCH_CONTENTION")

    # -- store access ----------------------------------------------------------------------------

    async def _entry(self, name: str) -> Entry:
        entry = await self._models.get(model_key(name))
        if entry is None:
            raise not_found(f"model {name!r} is not registered", "MODEL_NOT_FOUND")
        return entry

    async def _names(self) -> list[str]:
        names = []
        for key in await self._models.keys():
            try:
                names.append(name_of_key(key))
            except ValueError:
                _log.warning("model-management: skipping a key it did not write: %r", key)
        return sorted(names)

    def _now(self) -> timestamp_pb2.Timestamp:
        now = timestamp_pb2.Timestamp()
        now.FromNanoseconds(round(self._clock() * 1e9))
        return now


def _criteria(request: mm.SelectRequest) -> _ranking.Criteria:
    check_enum("required_capability", request.required_capability, list(mm.Capability.values()),
               allow_unspecified=False)
    budget = None
    if request.HasField("latency_budget"):
        check_duration("latency_budget", request.latency_budget)
        budget = request.latency_budget.ToNanoseconds()
    if request.min_context_tokens < 0:
        raise InvalidArgument("min_context_tokens", "must not be negative")
    if not 0 <= request.max_candidates <= MAX_CANDIDATES:
        raise InvalidArgument("max_candidates", f"must be 1 to {MAX_CANDIDATES} (0 means {DEFAULT_CANDIDATES})")
    if len(request.preferred_models) > MAX_PREFERRED:
        raise InvalidArgument("preferred_models", f"must name at most {MAX_PREFERRED} models")
    if len(request.excluded_models) > MAX_EXCLUDED:
        raise InvalidArgument("excluded_models", f"must name at most {MAX_EXCLUDED} models")
    for field, names in (("preferred_models", request.preferred_models), ("excluded_models", request.excluded_models)):
        for index, name in enumerate(names):
            check_name(f"{field}[{index}]", name)
    return _ranking.Criteria(
        capability=request.required_capability,
        latency_budget_ns=budget,
        min_context_tokens=request.min_context_tokens,
        max_candidates=request.max_candidates or DEFAULT_CANDIDATES,
        preferred=tuple(request.preferred_models),
        excluded=frozenset(request.excluded_models),
    )


def _lost(name: str, expected: int, conflict: RevisionConflict) -> RpcError:
    """What a lost compare-and-set on model ``name`` tells its caller: it is gone, or it changed."""
    if conflict.current == 0:
        return not_found(f"model {name!r} is not registered", "MODEL_NOT_FOUND")
    return revision_conflict(RevisionConflict(name, expected, conflict.current), "model")


def _model_of(entry: Entry) -> mm.Model:
    model = mm.Model.FromString(entry.value)
    model.revision.value = entry.revision
    return model


def _registered(model: mm.Model, revision: int, *, created: bool) -> mm.RegisterResponse:
    model.revision.value = revision
    return mm.RegisterResponse(model=model, created=created)

