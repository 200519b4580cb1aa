"""KnowledgeBaseService: documents in one KV bucket, searched through an in-memory BM25 index that
every replica keeps current by watching the bucket."""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
from gaming.common.v1 import common_pb2
from gaming.knowledge_base.v1 import knowledge_base_pb2 as kb
from gaming.knowledge_base.v1 import knowledge_base_pb2_grpc
from google.protobuf import message as protobuf_message

from servicers.errors import RpcError, aborted, invalid_argument, not_found, revision_conflict, rpc_error, unavailable
from servicers.knowledge_base import _record
from servicers.knowledge_base._checks import (
    Violation,
    check_collection,
    check_document,
    check_document_id,
    check_search,
)
from servicers.knowledge_base._index import CollectionIndex, IndexedDocument, snippet
from servicers.knowledge_base._record import StoredDocument
from servicers.kv_mirror import KvMirror
from servicers.named_store import NamedStore
from servicers.storage import Change, Entry, KeyValue, RevisionConflict, StorageUnavailable

_log = logging.getLogger(__name__)

DEFAULT_TOP_K = 10
DEFAULT_SNIPPET_LENGTH = 200
# Attempts at one write while other writers keep landing on the same document first.
MAX_ATTEMPTS = 8
# How long a write waits for this replica's index to show it before answering anyway.
CATCH_UP_SECONDS = 5.0


class KnowledgeBaseServicer(knowledge_base_pb2_grpc.KnowledgeBaseServiceServicer):
    """Documents stored in KV (the source of truth) and ranked by an in-memory BM25 index.

    The index is derived state: at start-up it is rebuilt from the bucket's contents, and a watch
    on the bucket applies every later change, whichever replica made it (see ``kv_mirror``). A
    write waits until this replica's index shows it, so a client reads its own writes through
    the same replica; other replicas follow within the watch's latency. Reads of one document go
    to KV, searches to the index. A collection exists while it holds a document.
    """

    def __init__(
        self, documents: KeyValue, *, clock: Callable[[], float], max_collection_documents: int
    ) -> None:
        # A store outage is UNAVAILABLE, as knowledge_base.proto promises, with a message naming the store.
        self._documents = NamedStore(documents, "knowledge-base: the document store cannot be reached")
        self._clock = clock
        self._max_documents = max_collection_documents
        self._collections: dict[str, CollectionIndex] = {}
        self._mirror = KvMirror(documents, self._apply, self._reset, name="knowledge-base")

    def __repr__(self) -> str:
        return f"<KnowledgeBaseServicer collections={len(self._collections)} index={self._mirror!r}>"

    async def start(self) -> None:
        """Build the index from the bucket and follow it (raises MirrorUnavailable on failure)."""
        await self._mirror.start()

    async def aclose(self) -> None:
        """Stop following the bucket."""
        await self._mirror.aclose()

    # The index, kept by the mirror.

    def _reset(self) -> None:
        self._collections = {}

    async def _apply(self, change: Change) -> None:
        parsed = _record.parse_document_key(change.key)
        if parsed is None:
            return  # a body part, or the mirror's sync key
        collection, document_id = parsed
        if change.value is None:
            index = self._collections.get(collection)
            if index is not None:
                index.remove(document_id)
                if not index:
                    del self._collections[collection]
            return
        stored = _decode(Entry(change.key, change.value, change.revision))
        if stored is None:
            return
        body = await self._body(collection, stored)  # a storage error here fails the watch: rebuilt
        if body is None:
            return  # replaced (or deleted) since: a later change of this key follows
        document = stored.document
        indexed = IndexedDocument.of(
            document_id, document.title, body, ((a.key, a.value) for a in document.attributes)
        )
        self._collections.setdefault(collection, CollectionIndex()).put(indexed)

    async def _body(self, collection: str, stored: StoredDocument) -> str | None:
        """The document's body, or None if one of its parts is gone (the record was superseded)."""
        if not stored.body_parts:
            return stored.document.body
        values = []
        for number in range(stored.body_parts):
            key = _record.part_key(collection, stored.document.id, stored.parts_id, number)
            entry = await self._documents.get(key)
            if entry is None:
                return None
            values.append(entry.value)
        return _record.join_parts(values)

    # The RPCs.

    async def AddDocuments(
        self,
        request_iterator: AsyncIterator[kb.AddDocumentsRequest],
        context: grpc.aio.ServicerContext[kb.AddDocumentsRequest, kb.AddDocumentsResponse],
    ) -> kb.AddDocumentsResponse:
        """Store each document as it arrives (so earlier ones stay stored if a later one fails),
        then wait for this replica's index to show them and answer with the counts."""
        collection = ""
        added = updated = 0
        newest = 0
        created: list[int] = []  # revisions of the documents this call created, ascending
        position = 0
        async for request in request_iterator:
            position += 1
            violation = check_document(request, collection)
            if violation:
                if newest:
                    # The documents before it stay stored: let the caller read them once it
                    # hears of the error, as it would after a success.
                    await self._catch_up(self._mirror.wait_applied(newest))
                raise _invalid(violation, f"document {position} of the stream")
            collection = request.document.collection
            existed, revision = await self._store(request.document, created)
            if existed:
                updated += 1
            else:
                added += 1
                created.append(revision)
            newest = max(newest, revision)
        if not collection:
            return kb.AddDocumentsResponse()
        await self._catch_up(self._mirror.wait_applied(newest))
        return kb.AddDocumentsResponse(
            collection=collection,
            added_count=added,
            updated_count=updated,
            collection_size=len(self._collections.get(collection, ())),
        )

    async def Search(
        self,
        request: kb.SearchRequest,
        context: grpc.aio.ServicerContext[kb.SearchRequest, kb.SearchResponse],
    ) -> kb.SearchResponse:
        """Rank the collection's documents with BM25; filters are exact attribute matches."""
        violation = check_search(request)
        if violation:
            raise _invalid(violation)
        if not self._mirror.ready:
            raise unavailable("knowledge-base: the index is being rebuilt", "INDEX_UNAVAILABLE")
        index = self._collections.get(request.collection)
        if index is None:
            raise not_found(f"collection {request.collection!r} does not exist", "COLLECTION_NOT_FOUND")
        hits = index.search(request.query, ((f.key, f.value) for f in request.filters))
        length = request.snippet_length or DEFAULT_SNIPPET_LENGTH
        return kb.SearchResponse(
            hits=[
                kb.SearchHit(
                    document_id=hit.document.document_id,
                    title=hit.document.title,
                    score=hit.score,
                    snippet=snippet(hit.document.body, request.query, length),
                    attributes=[common_pb2.Attribute(key=k, value=v) for k, v in hit.document.attributes],
                )
                for hit in hits[: request.top_k or DEFAULT_TOP_K]
            ],
            total_matches=len(hits),
        )

    async def GetDocument(
        self,
        request: kb.GetDocumentRequest,
        context: grpc.aio.ServicerContext[kb.GetDocumentRequest, kb.GetDocumentResponse],
    ) -> kb.GetDocumentResponse:
        """The stored document (from KV, not the index), with its revision."""
        _check_address(request.collection, request.document_id)
        for _ in range(MAX_ATTEMPTS):
            found = await self._read(request.collection, request.document_id)
            if found is None:
                raise self._not_found(request.collection, request.document_id)
            entry, stored = found
            body = await self._body(request.collection, stored)
            if body is None:
                continue  # replaced between the two reads, its old parts deleted: read it again
            document = stored.document
            document.body = body
            document.revision.value = entry.revision
            return kb.GetDocumentResponse(document=document)
        raise rpc_error(
            grpc.StatusCode.DATA_LOSS, f"document {request.document_id!r}: a part of its body is missing",
            "BODY_PART_MISSING",
        )

    async def DeleteDocument(
        self,
        request: kb.DeleteDocumentRequest,
        context: grpc.aio.ServicerContext[kb.DeleteDocumentRequest, kb.DeleteDocumentResponse],
    ) -> kb.DeleteDocumentResponse:
        """Delete by compare-and-set (at ``expected_revision`` if given), then the body's parts."""
        _check_address(request.collection, request.document_id)
        expected = request.expected_revision.value if request.HasField("expected_revision") else None
        for _ in range(MAX_ATTEMPTS):
            found = await self._read(request.collection, request.document_id)
            if found is None:
                raise self._not_found(request.collection, request.document_id)
            entry, stored = found
            if expected is not None and entry.revision != expected:
                conflict = RevisionConflict(request.document_id, expected, entry.revision)
                raise revision_conflict(conflict, "document")
            try:
                await self._documents.delete(entry.key, revision=entry.revision)
            except RevisionConflict as conflict:
                if expected is not None:
                    raise revision_conflict(
                        RevisionConflict(request.document_id, expected, conflict.current), "document",
                    ) from conflict
                continue  # replaced meanwhile: delete what is there now
            await self._delete_parts(request.collection, stored)
            await self._catch_up(self._mirror.sync())
            return kb.DeleteDocumentResponse(
                document_id=request.document_id,
                collection_size=len(self._collections.get(request.collection, ())),
            )
        raise _lost_races(request.document_id)

    # Storage.

    async def _store(self, document: kb.Document, created: list[int]) -> tuple[bool, int]:
        """Create or replace one document; (whether it existed, its new revision)."""
        key = _record.document_key(document.collection, document.id)
        for _ in range(MAX_ATTEMPTS):
            current = await self._documents.get(key)
            old = _decode(current)
            if old is None:
                self._check_room(document.collection, created)
            record = self._record(document, old)
            chunks = _record.split_body(document.body)
            if len(chunks) > 1:
                record.document.body = ""
                record.body_parts = len(chunks)
                record.parts_id = _record.new_parts_id()
                for number, chunk in enumerate(chunks):
                    part = _record.part_key(document.collection, document.id, record.parts_id, number)
                    await self._documents.put(part, _record.encode_part(chunk))
            try:
                revision = await self._documents.update(key, record.encode(), current.revision if current else 0)
            except RevisionConflict:
                await self._delete_parts(document.collection, record)
                continue
            if old is not None:
                await self._delete_parts(document.collection, old)
            return old is not None, revision
        raise _lost_races(document.id)

    def _record(self, document: kb.Document, old: StoredDocument | None) -> StoredDocument:
        stored = kb.Document()
        stored.CopyFrom(document)
        # Output-only fields are the server's: the revision is the KV key's, the times ours.
        stored.ClearField("revision")
        now = round(self._clock() * 1e9)
        if old is not None and old.document.HasField("create_time"):
            stored.create_time.CopyFrom(old.document.create_time)
        else:
            stored.create_time.FromNanoseconds(now)
        stored.update_time.FromNanoseconds(now)
        return StoredDocument(stored)

    def _check_room(self, collection: str, created: list[int]) -> None:
        """RESOURCE_EXHAUSTED if one more document would overfill the collection.

        The size is the index's plus the documents this call created that the index does not
        show yet (those above the revision it has applied). Writers on other replicas are seen
        only once indexed, so under concurrent writers the limit is approximate.
        """
        indexed = len(self._collections.get(collection, ()))
        pending = len(created) - bisect.bisect_right(created, self._mirror.applied_revision)
        if indexed + pending >= self._max_documents:
            raise rpc_error(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"collection {collection!r} would exceed {self._max_documents} documents", "COLLECTION_FULL",
            )

    async def _read(self, collection: str, document_id: str) -> tuple[Entry, StoredDocument] | None:
        entry = await self._documents.get(_record.document_key(collection, document_id))
        stored = _decode(entry)
        return None if entry is None or stored is None else (entry, stored)

    async def _delete_parts(self, collection: str, stored: StoredDocument) -> None:
        # Best effort: a part left behind wastes space but is never read (no record names it).
        for number in range(stored.body_parts):
            key = _record.part_key(collection, stored.document.id, stored.parts_id, number)
            try:
                await self._documents.delete(key)
            except StorageUnavailable:
                _log.warning("knowledge-base: could not delete body part %s", key, exc_info=True)

    async def _catch_up(self, waiting: Awaitable[None]) -> None:
        # The write itself succeeded: if the index lags, answer from it as it is rather than
        # fail a call whose effect is already stored (a retry would then see NOT_FOUND).
        try:
            async with asyncio.timeout(CATCH_UP_SECONDS):
                await waiting
        except (TimeoutError, StorageUnavailable):  # too slow, or the sync key could not be written
            _log.warning("knowledge-base: the index did not catch up with a write in time", exc_info=True)

    def _not_found(self, collection: str, document_id: str) -> RpcError:
        if self._mirror.ready and collection not in self._collections:
            return not_found(f"collection {collection!r} does not exist", "COLLECTION_NOT_FOUND")
        return not_found(f"document {document_id!r} does not exist in collection {collection!r}", "DOCUMENT_NOT_FOUND")


def _decode(entry: Entry | None) -> StoredDocument | None:
    if entry is None:
        return None
    try:
        return StoredDocument.decode(entry.value)
    except protobuf_message.DecodeError:
        _log.warning("knowledge-base: %s holds no document record; treated as absent", entry.key)
        return None


def _check_address(collection: str, document_id: str) -> None:
    violation = check_collection(collection) or check_document_id(document_id)
    if violation:
        raise _invalid(violation)


def _invalid(violation: Violation, where: str = "") -> RpcError:
    field, description = violation
    return invalid_argument(field, f"{description} ({where})" if where else description)


def _lost_races(document_id: str) -> RpcError:
    return aborted(f"document {document_id!r} kept changing under concurrent writers; retry", "TOO_MUCH_CONTENTION")
