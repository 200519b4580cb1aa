"""Request validation: the API's limits, as pure functions that name the offending field.

Each check returns None when the value is fine, or ``(field, description)`` for the
INVALID_ARGUMENT's BadRequest. Limits the API leaves open are fixed here: an attribute key is
lower_snake_case of at most 64 characters and its value at most 1024 characters.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from gaming.common.v1 import common_pb2
from gaming.knowledge_base.v1 import knowledge_base_pb2

__all__ = [
    "MAX_ATTRIBUTES",
    "MAX_BODY_BYTES",
    "MAX_FILTERS",
    "MAX_QUERY_CHARS",
    "MAX_SNIPPET_LENGTH",
    "MAX_TITLE_CHARS",
    "MAX_TOP_K",
    "Violation",
    "check_collection",
    "check_document",
    "check_document_id",
    "check_search",
]

Violation = tuple[str, str]

MAX_TITLE_CHARS = 512
MAX_BODY_BYTES = 1024 * 1024
MAX_ATTRIBUTES = 32
MAX_ATTRIBUTE_VALUE_CHARS = 1024
MAX_QUERY_CHARS = 1024
MAX_TOP_K = 100
MAX_SNIPPET_LENGTH = 1000
MAX_FILTERS = 16

_COLLECTION = re.compile(r"[a-z0-9_-]{1,64}")
_DOCUMENT_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_ATTRIBUTE_KEY = re.compile(r"[a-z][a-z0-9_]{0,63}")


def check_collection(collection: str, field: str = "collection") -> Violation | None:
    """A collection name: 1 to 64 characters of [a-z0-9_-]."""
    if _COLLECTION.fullmatch(collection) is None:
        return field, "must be 1 to 64 characters of [a-z0-9_-]"
    return None


def check_document_id(document_id: str, field: str = "document_id") -> Violation | None:
    """A document id: 1 to 128 characters of [A-Za-z0-9_.:-]."""
    if _DOCUMENT_ID.fullmatch(document_id) is None:
        return field, "must be 1 to 128 characters of [A-Za-z0-9_.:-]"
    return None


def _check_attributes(attributes: Iterable[common_pb2.Attribute], field: str, limit: int) -> Violation | None:
    seen: set[str] = set()
    for number, attribute in enumerate(attributes):
        if number == limit:
            return field, f"at most {limit} allowed"
        if _ATTRIBUTE_KEY.fullmatch(attribute.key) is None:
            return f"{field}[{number}].key", "must be lower_snake_case, 1 to 64 characters"
        if len(attribute.value) > MAX_ATTRIBUTE_VALUE_CHARS:
            return f"{field}[{number}].value", f"must be at most {MAX_ATTRIBUTE_VALUE_CHARS} characters"
        if attribute.key in seen:
            return f"{field}[{number}].key", f"duplicate key {attribute.key!r}"
        seen.add(attribute.key)
    return None


def check_document(request: knowledge_base_pb2.AddDocumentsRequest, collection: str) -> Violation | None:
    """One document of an AddDocuments stream; ``collection`` is the stream's (empty for the
    first document)."""
    if not request.HasField("document"):
        return "document", "is required"
    document = request.document
    if not document.id:
        return "document.id", "is required"
    if not document.collection:
        return "document.collection", "is required"
    violation = check_document_id(document.id, "document.id") or check_collection(
        document.collection, "document.collection"
    )
    if violation:
        return violation
    if collection and document.collection != collection:
        return "document.collection", f"must be {collection!r}, the collection of the stream's first document"
    if len(document.title) > MAX_TITLE_CHARS:
        return "document.title", f"must be at most {MAX_TITLE_CHARS} characters"
    if not document.body:
        return "document.body", "is required"
    if len(document.body.encode()) > MAX_BODY_BYTES:
        return "document.body", "must be at most 1 MiB of UTF-8"
    return _check_attributes(document.attributes, "document.attributes", MAX_ATTRIBUTES)


def check_search(request: knowledge_base_pb2.SearchRequest) -> Violation | None:
    """A search request (0 for ``top_k`` and ``snippet_length`` means the default)."""
    violation = check_collection(request.collection)
    if violation:
        return violation
    if not request.query.strip():
        return "query", "is required"
    if len(request.query) > MAX_QUERY_CHARS:
        return "query", f"must be at most {MAX_QUERY_CHARS} characters"
    if not 0 <= request.top_k <= MAX_TOP_K:
        return "top_k", f"must be 1 to {MAX_TOP_K} (0 means 10)"
    if not 0 <= request.snippet_length <= MAX_SNIPPET_LENGTH:
        return "snippet_length", f"must be 0 to {MAX_SNIPPET_LENGTH} (0 means 200)"
    return _check_attributes(request.filters, "filters", MAX_FILTERS)
