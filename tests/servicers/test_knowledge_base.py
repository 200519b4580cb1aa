"""knowledge-base over NATS: documents streamed in, ranked by BM25 with snippets, read, deleted by
compare-and-set, bodies larger than one NATS message, replicas that follow each other through the
bucket, and a corpus that outlives the servicer."""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
import nats
import pytest
from gaming.common.v1 import common_pb2
from gaming.knowledge_base.v1 import knowledge_base_pb2 as kb
from gaming.knowledge_base.v1 import knowledge_base_pb2_grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nats.aio.client import Client

from mesh.jetstream_storage import JetStreamStorage
from nats_transport.testing import NatsServer
from servicers import knowledge_base
from servicers.dependencies import Dependencies
from servicers.knowledge_base import _record
from servicers.knowledge_base._index import CollectionIndex, IndexedDocument, snippet, tokens
from tests._buckets import delete_buckets
from tests._serving import served
from tests._waiting import wait_for
from tests.servicers._faulty_storage import FaultyStorage

NOW = 1_700_000_000.5


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def no_channel(target: str) -> Any:
    raise AssertionError(f"knowledge-base calls no other service (asked for {target!r})")


@contextlib.asynccontextmanager
async def knowledge(nc: Client, storage: Any, clock: Clock | None = None, **settings: str) -> AsyncIterator[Any]:
    """A stub to a freshly created knowledge-base servicer, stopped (and unsubscribed) after."""
    deps = Dependencies(storage=storage, channel=no_channel, settings=settings, clock=clock or Clock())
    servicer = await knowledge_base.create(deps)
    try:
        async with served(nc, knowledge_base.add_to_server, servicer) as channel:
            yield knowledge_base_pb2_grpc.KnowledgeBaseServiceStub(channel)
    finally:
        await servicer.aclose()


@pytest.fixture
async def stub(nc: Client, storage: JetStreamStorage) -> AsyncIterator[Any]:
    async with knowledge(nc, storage) as stub:
        yield stub


def doc(document_id: str, body: str, title: str = "", collection: str = "lore", **attributes: str) -> kb.Document:
    return kb.Document(
        id=document_id, collection=collection, title=title, body=body,
        attributes=[common_pb2.Attribute(key=k, value=v) for k, v in attributes.items()],
    )


async def stream(documents: Iterable[kb.Document]) -> AsyncIterator[kb.AddDocumentsRequest]:
    for document in documents:
        yield kb.AddDocumentsRequest(document=document)


async def add(stub: Any, *documents: kb.Document) -> kb.AddDocumentsResponse:
    reply: kb.AddDocumentsResponse = await stub.AddDocuments(stream(documents), timeout=10)
    return reply


async def search(stub: Any, query: str, collection: str = "lore", **fields: Any) -> kb.SearchResponse:
    request = kb.SearchRequest(collection=collection, query=query, **fields)
    reply: kb.SearchResponse = await stub.Search(request, timeout=5)
    return reply


def ids(response: kb.SearchResponse) -> list[str]:
    return [hit.document_id for hit in response.hits]


async def failure(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def bad_field(err: grpc.aio.AioRpcError) -> str:
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    status = rpc_status.from_call(err)
    assert status is not None
    request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(request)
    return str(request.field_violations[0].field)


def error_info(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(err)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info


LORE = [
    doc("dragons", "The red dragon sleeps under the mountain and guards the gold of the old kings.",
        title="The Red Dragon", region="north", kind="lore"),
    doc("wolves", "Wolves hunt in the dark forest. A dragon was once seen above the trees.",
        title="Forest Wolves", region="south", kind="lore"),
    doc("inn", "The innkeeper sells bread, cheese and healing potions to travellers.",
        title="The Inn", region="north", kind="place"),
]


# -- the index, as pure code ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Dragon, the GOLD!", ["dragon", "gold"]),
        ("naïve café Straße", ["naïve", "café", "straße"]),
        ("Ærøskøbing's 3 keys_2", ["ærøskøbing", "s", "3", "keys_2"]),
        ("дракон спит под горой", ["дракон", "спит", "под", "горой"]),
        ("a an the of to in is", []),
        ("well-known e-mail", ["well", "known", "e", "mail"]),
    ],
)
def test_the_tokenizer_lowercases_splits_on_unicode_word_characters_and_drops_stop_words(
    text: str, expected: list[str]
) -> None:
    assert tokens(text) == expected


def test_bm25_scores_follow_the_documented_formula() -> None:
    index = CollectionIndex()
    index.put(IndexedDocument.of("one", "", "dragon fire", ()))
    index.put(IndexedDocument.of("two", "", "dragon dragon cave", ()))
    index.put(IndexedDocument.of("three", "", "wolf forest", ()))
    k1, b, average = 1.2, 0.75, 7 / 3
    idf = math.log(1 + (3 - 2 + 0.5) / (2 + 0.5))

    def bm25(tf: int, length: int) -> float:
        return idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * length / average))

    hits = index.search("dragon")
    assert [hit.document.document_id for hit in hits] == ["two", "one"]
    assert hits[0].score == pytest.approx(bm25(2, 3))
    assert hits[1].score == pytest.approx(bm25(1, 2))


def test_the_title_counts_twice_in_term_frequency_and_length() -> None:
    indexed = IndexedDocument.of("d", "Dragon Lair", "the dragon", ())
    assert indexed.term_counts == {"dragon": 3, "lair": 2}
    assert indexed.length == 2 * 2 + 1


def test_removing_a_document_removes_its_postings_and_length() -> None:
    index = CollectionIndex()
    index.put(IndexedDocument.of("a", "", "dragon", ()))
    index.put(IndexedDocument.of("b", "", "wolf pack", ()))
    index.remove("a")
    assert (len(index), index.total_length, set(index.postings)) == (1, 2, {"wolf", "pack"})
    assert index.search("dragon") == []


LONG = (
    "The valley is quiet in spring. Farmers plant barley and the river runs high. "
    "Far to the east the dragon wakes, and the dragon hunts cattle near the old tower. "
    "Merchants avoid the road until autumn, when the snow closes the passes again."
)


@pytest.mark.parametrize(
    ("body", "query", "limit", "expected"),
    [
        ("Short body.", "body", 200, "Short body."),
        ("Lines\n\n  with   gaps", "gaps", 200, "Lines with gaps"),
        # Both terms beat two occurrences of one.
        (LONG, "dragon tower", 60, "...and the dragon hunts cattle near the old tower...."),
        (LONG, "dragon", 60, "...the east the dragon wakes, and the dragon hunts cattle..."),
        # No term in the body: its beginning. At either end of the body, only one ellipsis.
        (LONG, "unicorn", 60, "The valley is quiet in spring. Farmers plant barley and..."),
        (LONG, "passes", 40, "...the snow closes the passes again."),
        (LONG, "snow", 5, "snow "),
    ],
)
def test_snippets_cut_around_the_densest_cluster_of_query_terms(
    body: str, query: str, limit: int, expected: str
) -> None:
    excerpt = snippet(body, query, limit)
    assert excerpt == expected
    assert len(excerpt) <= limit


def words(text: str) -> list[str]:
    return text.replace(".", " ").replace(",", " ").split()


@pytest.mark.parametrize("limit", [7, 10, 20, 33, 80, 150, 199, 220])
@pytest.mark.parametrize("query", ["dragon cattle tower", "valley", "again", "unicorn"])
def test_snippets_never_exceed_their_length(limit: int, query: str) -> None:
    assert len(snippet(LONG, query, limit)) <= limit


@pytest.mark.parametrize("limit", [20, 33, 80, 150, 199])
@pytest.mark.parametrize("query", ["dragon cattle tower", "valley", "again", "unicorn"])
def test_snippets_with_room_for_a_word_do_not_cut_words(limit: int, query: str) -> None:
    excerpt = snippet(LONG, query, limit)
    assert set(words(excerpt)) <= set(words(LONG))


# -- adding and searching ---------------------------------------------------------------------------


async def test_added_documents_are_counted_and_ranked_by_bm25(stub: Any) -> None:
    reply = await add(stub, *LORE)
    assert (reply.collection, reply.added_count, reply.updated_count, reply.collection_size) == ("lore", 3, 0, 3)
    found = await search(stub, "dragon")
    # "dragons" has the term in its title (double weight) and its body; "wolves" once in its body.
    assert ids(found) == ["dragons", "wolves"]
    assert found.total_matches == 2
    assert found.hits[0].score > found.hits[1].score > 0
    assert found.hits[0].title == "The Red Dragon"
    assert {(a.key, a.value) for a in found.hits[0].attributes} == {("region", "north"), ("kind", "lore")}
    assert "dragon" in found.hits[0].snippet


async def test_ties_are_broken_by_document_id_and_top_k_truncates_but_total_counts_all(stub: Any) -> None:
    await add(stub, *(doc(f"copy-{n}", "identical ember text") for n in (3, 1, 2)))
    found = await search(stub, "ember", top_k=2)
    assert ids(found) == ["copy-1", "copy-2"]
    assert found.hits[0].score == found.hits[1].score
    assert found.total_matches == 3
    assert len((await search(stub, "ember")).hits) == 3  # top_k 0 means 10


async def test_filters_require_every_attribute(stub: Any) -> None:
    await add(stub, *LORE)

    def only(**attributes: str) -> list[common_pb2.Attribute]:
        return [common_pb2.Attribute(key=k, value=v) for k, v in attributes.items()]

    # "bread" is rarer than "dragon", so the inn's one "bread" outweighs the dragon's three "dragon".
    assert ids(await search(stub, "dragon bread", filters=only(region="north"))) == ["inn", "dragons"]
    assert ids(await search(stub, "dragon bread", filters=only(region="north", kind="place"))) == ["inn"]
    nothing = await search(stub, "dragon", filters=only(region="west"))
    assert (ids(nothing), nothing.total_matches) == ([], 0)


async def test_a_query_of_stop_words_or_unknown_terms_matches_nothing(stub: Any) -> None:
    await add(stub, *LORE)
    for query in ("the of and", "unicorn", "!!!"):
        found = await search(stub, query)
        assert (ids(found), found.total_matches) == ([], 0)


async def test_snippets_respect_the_requested_length_and_mark_cuts(stub: Any) -> None:
    await add(stub, doc("valley", LONG))
    hit = (await search(stub, "dragon tower", snippet_length=60)).hits[0]
    assert hit.snippet == "...and the dragon hunts cattle near the old tower...."
    default = (await search(stub, "dragon")).hits[0]
    assert len(default.snippet) <= 200
    assert default.snippet.endswith("...")


async def test_replacing_a_document_bumps_its_revision_and_keeps_its_create_time(
    nc: Client, storage: JetStreamStorage
) -> None:
    clock = Clock()
    async with knowledge(nc, storage, clock) as stub:
        await add(stub, doc("dragons", "A dragon.", title="Old"))
        first = (await stub.GetDocument(kb.GetDocumentRequest(collection="lore", document_id="dragons"))).document
        clock.now += 60
        reply = await add(stub, doc("dragons", "A wyrm, not a dragon.", title="New"), doc("wolves", "Wolves."))
        assert (reply.added_count, reply.updated_count, reply.collection_size) == (1, 1, 2)
        second = (await stub.GetDocument(kb.GetDocumentRequest(collection="lore", document_id="dragons"))).document
        assert (second.title, second.body) == ("New", "A wyrm, not a dragon.")
        assert second.revision.value > first.revision.value > 0
        assert second.create_time == first.create_time
        assert first.create_time.ToNanoseconds() == round(NOW * 1e9)
        assert second.update_time.ToNanoseconds() == round((NOW + 60) * 1e9)
        assert ids(await search(stub, "wyrm")) == ["dragons"]


async def test_output_only_fields_sent_by_the_client_are_ignored(stub: Any) -> None:
    sent = doc("dragons", "A dragon.")
    sent.revision.value = 999
    sent.create_time.FromSeconds(5)
    await add(stub, sent)
    stored = (await stub.GetDocument(kb.GetDocumentRequest(collection="lore", document_id="dragons"))).document
    assert stored.revision.value != 999
    assert stored.create_time.ToNanoseconds() == round(NOW * 1e9)


async def test_concurrent_replacements_of_one_document_all_succeed(stub: Any) -> None:
    await add(stub, doc("contested", "version zero"))
    replies = await asyncio.gather(*(add(stub, doc("contested", f"version {n}")) for n in range(1, 6)))
    assert all(reply.updated_count == 1 for reply in replies)
    stored = (await stub.GetDocument(kb.GetDocumentRequest(collection="lore", document_id="contested"))).document
    assert stored.body in {f"version {n}" for n in range(1, 6)}
    assert (await search(stub, "version")).total_matches == 1


async def test_an_empty_stream_adds_nothing(stub: Any) -> None:
    reply = await add(stub)
    assert reply == kb.AddDocumentsResponse()


async def test_collections_are_separate(stub: Any) -> None:
    await add(stub, *LORE)
    await add(stub, doc("dragons", "A dragon recipe: do not.", collection="cookbook"))
    assert (await search(stub, "dragon", collection="cookbook")).total_matches == 1
    assert (await search(stub, "dragon")).total_matches == 2


# -- bodies larger than one NATS message ------------------------------------------------------------


async def test_a_body_too_large_for_one_message_is_stored_in_parts_and_read_back_whole(
    stub: Any, storage: JetStreamStorage
) -> None:
    body = "é" * 300_000 + " lorem " * 40_000 + "unicorn"  # ~880 KiB of UTF-8; a part cuts an "é"
    assert len(body.encode()) <= 1024 * 1024
    await add(stub, doc("tome", body, title="The Tome"))
    stored = (await stub.GetDocument(kb.GetDocumentRequest(collection="lore", document_id="tome"))).document
    assert stored.body == body
    found = await search(stub, "unicorn")
    assert ids(found) == ["tome"]
    assert found.hits[0].snippet.endswith("lorem unicorn")
    bucket = await storage.key_value(knowledge_base.BUCKET)
    first_parts = await bucket.keys("part.>")
    assert len(first_parts) == math.ceil(len(body.encode()) / _record.PART_BYTES)

    await add(stub, doc("tome", body.replace("unicorn", "griffin")))
    second_parts = await bucket.keys("part.>")
    assert len(second_parts) == len(first_parts)
    assert not set(second_parts) & set(first_parts)
    assert ids(await search(stub, "griffin")) == ["tome"]
    assert ids(await search(stub, "unicorn")) == []

    await stub.DeleteDocument(kb.DeleteDocumentRequest(collection="lore", document_id="tome"))
    assert await bucket.keys("part.>") == []


# -- reading and deleting ---------------------------------------------------------------------------


async def test_get_document_returns_the_stored_document(stub: Any) -> None:
    await add(stub, doc("a.b:c-d_e", "Body with an odd id.", title="Odd", kind="test"))
    stored = (await stub.GetDocument(kb.GetDocumentRequest(collection="lore", document_id="a.b:c-d_e"))).document
    assert (stored.id, stored.collection, stored.title) == ("a.b:c-d_e", "lore", "Odd")
    assert stored.body == "Body with an odd id."
    assert [(a.key, a.value) for a in stored.attributes] == [("kind", "test")]
    assert stored.revision.value > 0


async def test_deleting_a_document_removes_it_from_search_and_reports_the_size_left(stub: Any) -> None:
    await add(stub, *LORE)
    reply = await stub.DeleteDocument(kb.DeleteDocumentRequest(collection="lore", document_id="dragons"))
    assert (reply.document_id, reply.collection_size) == ("dragons", 2)
    assert ids(await search(stub, "dragon")) == ["wolves"]
    err = await failure(stub.GetDocument(kb.GetDocumentRequest(collection="lore", document_id="dragons")))
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_deleting_the_last_document_removes_the_collection(stub: Any) -> None:
    await add(stub, doc("only", "The only one."))
    reply = await stub.DeleteDocument(kb.DeleteDocumentRequest(collection="lore", document_id="only"))
    assert reply.collection_size == 0
    err = await failure(search(stub, "only"))
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_a_delete_at_a_stale_revision_is_aborted_with_the_current_one(stub: Any) -> None:
    await add(stub, doc("dragons", "A dragon."))
    first = (await stub.GetDocument(kb.GetDocumentRequest(collection="lore", document_id="dragons"))).document
    await add(stub, doc("dragons", "A bigger dragon."))
    current = (await stub.GetDocument(kb.GetDocumentRequest(collection="lore", document_id="dragons"))).document
    request = kb.DeleteDocumentRequest(collection="lore", document_id="dragons", expected_revision=first.revision)
    err = await failure(stub.DeleteDocument(request))
    assert err.code() == grpc.StatusCode.ABORTED
    info = error_info(err)
    assert info.reason == "REVISION_CONFLICT"
    assert info.metadata["current_revision"] == str(current.revision.value)
    assert info.metadata["expected_revision"] == str(first.revision.value)
    assert ids(await search(stub, "dragon")) == ["dragons"]

    request.expected_revision.CopyFrom(current.revision)
    reply = await stub.DeleteDocument(request)
    assert reply.collection_size == 0


async def test_missing_collections_and_documents_are_not_found(stub: Any) -> None:
    await add(stub, *LORE)
    for call, reason in [
        (stub.GetDocument(kb.GetDocumentRequest(collection="lore", document_id="nope")), "DOCUMENT_NOT_FOUND"),
        (stub.GetDocument(kb.GetDocumentRequest(collection="atlas", document_id="x")), "COLLECTION_NOT_FOUND"),
        (stub.DeleteDocument(kb.DeleteDocumentRequest(collection="lore", document_id="nope")), "DOCUMENT_NOT_FOUND"),
        (stub.DeleteDocument(kb.DeleteDocumentRequest(collection="atlas", document_id="x")), "COLLECTION_NOT_FOUND"),
        (search(stub, "dragon", collection="atlas"), "COLLECTION_NOT_FOUND"),
    ]:
        err = await failure(call)
        assert err.code() == grpc.StatusCode.NOT_FOUND
        assert error_info(err).reason == reason


# -- invalid requests -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "field"),
    [
        (kb.Document(collection="lore", body="x"), "document.id"),
        (kb.Document(id="a", body="x"), "document.collection"),
        (kb.Document(id="a", collection="lore"), "document.body"),
        (kb.Document(id="a b", collection="lore", body="x"), "document.id"),
        (kb.Document(id="a" * 129, collection="lore", body="x"), "document.id"),
        (kb.Document(id="a", collection="Lore", body="x"), "document.collection"),
        (kb.Document(id="a", collection="l" * 65, body="x"), "document.collection"),
        (kb.Document(id="a", collection="lore", body="x", title="t" * 513), "document.title"),
        (kb.Document(id="a", collection="lore", body="é" * (512 * 1024 + 1)), "document.body"),
        (doc("a", "x", Region="north"), "document.attributes[0].key"),
        (doc("a", "x", region="n" * 1025), "document.attributes[0].value"),
        (kb.Document(id="a", collection="lore", body="x", attributes=[
            common_pb2.Attribute(key="k", value="1"), common_pb2.Attribute(key="k", value="2")]),
         "document.attributes[1].key"),
        (doc("a", "x", **{f"k{n}": "v" for n in range(33)}), "document.attributes"),
    ],
)
async def test_invalid_documents_are_rejected_naming_the_field(stub: Any, document: kb.Document, field: str) -> None:
    assert bad_field(await failure(add(stub, document))) == field


async def test_a_document_without_a_document_is_rejected(stub: Any) -> None:
    async def empty() -> AsyncIterator[kb.AddDocumentsRequest]:
        yield kb.AddDocumentsRequest()

    assert bad_field(await failure(stub.AddDocuments(empty(), timeout=5))) == "document"


async def test_documents_before_an_invalid_one_stay_stored(stub: Any) -> None:
    err = await failure(add(stub, LORE[0], LORE[1], doc("stray", "Elsewhere.", collection="atlas")))
    assert bad_field(err) == "document.collection"
    assert "document 3 of the stream" in (err.details() or "")
    assert ids(await search(stub, "dragon")) == ["dragons", "wolves"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"collection": "Lore", "query": "dragon"}, "collection"),
        ({"collection": "lore", "query": ""}, "query"),
        ({"collection": "lore", "query": "   "}, "query"),
        ({"collection": "lore", "query": "q" * 1025}, "query"),
        ({"collection": "lore", "query": "dragon", "top_k": 101}, "top_k"),
        ({"collection": "lore", "query": "dragon", "top_k": -1}, "top_k"),
        ({"collection": "lore", "query": "dragon", "snippet_length": 1001}, "snippet_length"),
        ({"collection": "lore", "query": "dragon", "snippet_length": -1}, "snippet_length"),
        ({"collection": "lore", "query": "dragon",
          "filters": [common_pb2.Attribute(key=f"k{n}", value="v") for n in range(17)]}, "filters"),
    ],
)
async def test_invalid_searches_are_rejected_naming_the_field(stub: Any, fields: dict[str, Any], field: str) -> None:
    assert bad_field(await failure(stub.Search(kb.SearchRequest(**fields), timeout=5))) == field


@pytest.mark.parametrize(
    ("collection", "document_id", "field"),
    [("lore", "", "document_id"), ("lore", "with space", "document_id"), ("", "a", "collection"),
     ("LORE", "a", "collection")],
)
async def test_malformed_addresses_are_rejected(stub: Any, collection: str, document_id: str, field: str) -> None:
    get = stub.GetDocument(kb.GetDocumentRequest(collection=collection, document_id=document_id), timeout=5)
    assert bad_field(await failure(get)) == field
    delete = stub.DeleteDocument(kb.DeleteDocumentRequest(collection=collection, document_id=document_id), timeout=5)
    assert bad_field(await failure(delete)) == field


async def test_a_full_collection_refuses_new_documents_but_accepts_replacements(
    nc: Client, storage: JetStreamStorage
) -> None:
    async with knowledge(nc, storage, max_collection_documents="2") as stub:
        err = await failure(add(stub, *LORE))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # The two documents received before the limit stay stored.
        reply = await add(stub, doc("dragons", "Replaced."))
        assert (reply.added_count, reply.updated_count, reply.collection_size) == (0, 1, 2)
        assert (await add(stub, doc("inn", "Fits elsewhere.", collection="places"))).added_count == 1


# -- replicas, restarts and failures ----------------------------------------------------------------


async def test_a_second_replica_on_the_same_bucket_follows_additions_and_deletions(
    nc: Client, storage: JetStreamStorage
) -> None:
    async with knowledge(nc, storage) as first, knowledge(nc, storage) as second:
        await add(first, *LORE)

        async def second_sees(expected: list[str]) -> bool:
            try:
                return ids(await search(second, "dragon")) == expected
            except grpc.aio.AioRpcError:
                return False  # the collection does not exist there yet

        await wait_for(lambda: second_sees(["dragons", "wolves"]))
        await first.DeleteDocument(kb.DeleteDocumentRequest(collection="lore", document_id="dragons"))
        await wait_for(lambda: second_sees(["wolves"]))


async def test_a_restart_keeps_the_corpus(nats_server: NatsServer) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}_"
    body = "ember " * 60_000 + "phoenix"  # stored in parts
    connection = await nats.connect(nats_server.url)
    try:
        async with knowledge(connection, JetStreamStorage(connection, prefix=prefix)) as stub:
            await add(stub, *LORE, doc("phoenix", body))
            await stub.DeleteDocument(kb.DeleteDocumentRequest(collection="lore", document_id="inn"))
    finally:
        await connection.close()

    connection = await nats.connect(nats_server.url)
    try:
        async with knowledge(connection, JetStreamStorage(connection, prefix=prefix)) as stub:
            assert ids(await search(stub, "dragon")) == ["dragons", "wolves"]
            assert ids(await search(stub, "bread")) == []
            assert ids(await search(stub, "phoenix")) == ["phoenix"]
            stored = await stub.GetDocument(kb.GetDocumentRequest(collection="lore", document_id="phoenix"))
            assert stored.document.body == body
            reply = await add(stub, doc("inn", "Rebuilt."))
            assert (reply.added_count, reply.collection_size) == (1, 4)
    finally:
        await delete_buckets(connection, prefix)  # give the reserved space back
        await connection.close()


async def test_an_unreachable_document_store_is_unavailable(nc: Client, nats_server: NatsServer) -> None:
    store_connection = await nats.connect(nats_server.url)
    prefix = f"t{uuid.uuid4().hex[:8]}_"
    storage = JetStreamStorage(store_connection, prefix=prefix)
    async with knowledge(nc, storage) as stub:
        await add(stub, *LORE)
        await store_connection.close()
        for call in (
            add(stub, doc("new", "New.")),
            stub.GetDocument(kb.GetDocumentRequest(collection="lore", document_id="dragons"), timeout=5),
            stub.DeleteDocument(kb.DeleteDocumentRequest(collection="lore", document_id="dragons"), timeout=5),
        ):
            err = await failure(call)
            assert err.code() == grpc.StatusCode.UNAVAILABLE
            assert "knowledge-base" in (err.details() or "")
        # Search answers from the index this replica already holds.
        assert ids(await search(stub, "dragon")) == ["dragons", "wolves"]
    await delete_buckets(nc, prefix)


async def test_after_an_outage_the_index_is_rebuilt_with_what_changed_meanwhile(
    nc: Client, storage: JetStreamStorage
) -> None:
    faulty = FaultyStorage(storage)
    async with knowledge(nc, faulty) as cut_off, knowledge(nc, storage) as writer:
        await add(writer, *LORE)

        async def cut_off_finds(expected: set[str]) -> bool:
            try:
                return set(ids(await search(cut_off, "dragon"))) == expected
            except grpc.aio.AioRpcError:
                return False

        await wait_for(lambda: cut_off_finds({"dragons", "wolves"}))
        faulty.fail()

        async def index_unavailable() -> bool:
            try:
                await search(cut_off, "dragon")
            except grpc.aio.AioRpcError as err:
                return bool(err.code() == grpc.StatusCode.UNAVAILABLE)
            return False

        await wait_for(index_unavailable)  # rather than answer from an index that may be stale
        assert (await failure(add(cut_off, doc("new", "New.")))).code() == grpc.StatusCode.UNAVAILABLE
        # Meanwhile another replica changes the corpus: a rebuild must see a delete it missed.
        await writer.DeleteDocument(kb.DeleteDocumentRequest(collection="lore", document_id="dragons"))
        await add(writer, doc("griffin", "A griffin nests where the dragon slept."))
        faulty.restore()
        await wait_for(lambda: cut_off_finds({"griffin", "wolves"}))


async def test_a_value_that_is_no_document_record_is_ignored_and_can_be_overwritten(
    stub: Any, storage: JetStreamStorage
) -> None:
    bucket = await storage.key_value(knowledge_base.BUCKET)
    await add(stub, LORE[0])
    await bucket.put(_record.document_key("lore", "junk"), b"\xff\xff not a record")
    await add(stub, LORE[1])  # the index has seen the junk by now (it applies in order)
    assert ids(await search(stub, "dragon")) == ["dragons", "wolves"]
    err = await failure(stub.GetDocument(kb.GetDocumentRequest(collection="lore", document_id="junk")))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    reply = await add(stub, doc("junk", "A real document now, about a dragon."))
    assert (reply.added_count, reply.collection_size) == (1, 3)
