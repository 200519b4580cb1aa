"""knowledge-base: documents in named collections, ranked against free-text queries with BM25.

Documents live in one JetStream KV bucket (see ``_record`` for the keys, and how bodies too large
for one NATS message are stored in parts). Search answers from an in-memory inverted index (see
``_index`` for the tokenizer and the exact BM25 formula) that ``create()`` rebuilds from the
bucket, and that a watch on the bucket keeps current on every replica, so a restart or a new
replica finds every document stored before.

Settings (``deps.settings``):
    max_collection_documents: documents a collection may hold (default 100000, as the API says;
        lower it to bound memory, since every replica indexes every document).
    max_bytes: size limit of the bucket in bytes (default 256 MiB).
"""

from __future__ import annotations

from gaming.knowledge_base.v1 import knowledge_base_pb2_grpc

from servicers.dependencies import Dependencies
from servicers.knowledge_base._servicer import KnowledgeBaseServicer
from servicers.service_settings import positive_int

__all__ = ["BUCKET", "SERVICE_NAMES", "TARGET", "KnowledgeBaseServicer", "add_to_server", "create"]

TARGET = "knowledge-base"
SERVICE_NAMES = ("gaming.knowledge_base.v1.KnowledgeBaseService",)
add_to_server = knowledge_base_pb2_grpc.add_KnowledgeBaseServiceServicer_to_server

BUCKET = "knowledge_base_documents"
# Only a document's latest version is ever read; the index is rebuilt from current values.
BUCKET_HISTORY = 1
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_COLLECTION_DOCUMENTS = 100_000


def _setting(deps: Dependencies, name: str, default: int) -> int:
    return positive_int(deps.settings, name, default, service=TARGET)


async def create(deps: Dependencies) -> KnowledgeBaseServicer:
    """Open the documents bucket, build the index from its contents, and return a ready servicer
    (call its ``aclose()`` to stop following the bucket).

    Raises:
        ValueError: a setting is malformed.
        servicers.kv_mirror.MirrorUnavailable: the index could not be built (storage unreachable).
    """
    max_documents = _setting(deps, "max_collection_documents", DEFAULT_MAX_COLLECTION_DOCUMENTS)
    max_bytes = _setting(deps, "max_bytes", DEFAULT_MAX_BYTES)
    bucket = await deps.storage.key_value(BUCKET, history=BUCKET_HISTORY, max_bytes=max_bytes)
    servicer = KnowledgeBaseServicer(bucket, clock=deps.clock, max_collection_documents=max_documents)
    await servicer.start()
    return servicer
