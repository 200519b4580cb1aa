"""How documents are stored: KV keys, and a record message that can spread a body over parts.

One bucket holds every collection. Keys::

    doc.<collection>.<id>                    a StoredDocument (the document's revision = this key's)
    part.<collection>.<id>.<parts_id>.<n>    part n of a body too large for one NATS message

``<id>`` is the document id in base64url without padding: ids may contain ``.`` and ``:``, which
KV keys cannot. Collections are ``[a-z0-9_-]``, valid key tokens as they are.

A body may be 1 MiB, but a NATS message (a KV value) is at most 1 MiB *including* headers, so
bodies above ``INLINE_BODY_BYTES`` are cut into parts. The parts are written first, under a fresh
``parts_id``, and the document record last: the record is the commit point, so a reader that sees
a record finds its parts, and a replacement never overwrites parts a lagging reader still needs
(the old parts are deleted only after the new record is stored). The record is
``StoredDocument`` of ``protos/gaming/knowledge_base/storage/v1/knowledge_base_records.proto``
(the API has no message for it): the document (body empty when in parts, no revision), its
number of parts (0: the body is inline) and their ``parts_id``.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass

from gaming.knowledge_base.storage.v1 import knowledge_base_records_pb2
from gaming.knowledge_base.v1 import knowledge_base_pb2
from google.protobuf import wrappers_pb2

__all__ = [
    "INLINE_BODY_BYTES",
    "PART_BYTES",
    "StoredDocument",
    "decode_id",
    "document_key",
    "document_pattern",
    "encode_part",
    "join_parts",
    "new_parts_id",
    "parse_document_key",
    "part_key",
    "split_body",
]

# Well under the 1 MiB NATS message limit, leaving room for the title, attributes and headers.
INLINE_BODY_BYTES = 256 * 1024
PART_BYTES = 256 * 1024


@dataclass(slots=True)
class StoredDocument:
    """A document as stored: its body inline, or ``body_parts`` parts under ``parts_id``."""

    document: knowledge_base_pb2.Document
    body_parts: int = 0
    parts_id: str = ""

    @classmethod
    def decode(cls, value: bytes) -> StoredDocument:
        """Parse a stored value (raises ``google.protobuf.message.DecodeError`` if it is not one)."""
        message = knowledge_base_records_pb2.StoredDocument.FromString(value)
        document = knowledge_base_pb2.Document()
        document.CopyFrom(message.document)
        return cls(document, message.body_parts, message.parts_id)

    def encode(self) -> bytes:
        """The stored value."""
        message = knowledge_base_records_pb2.StoredDocument(
            document=self.document, body_parts=self.body_parts, parts_id=self.parts_id
        )
        return message.SerializeToString()


def _encode_id(document_id: str) -> str:
    return base64.urlsafe_b64encode(document_id.encode()).rstrip(b"=").decode()


def decode_id(token: str) -> str | None:
    """The document id a key token encodes, or None if it encodes none."""
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None


def document_key(collection: str, document_id: str) -> str:
    """The key of a document's record."""
    return f"doc.{collection}.{_encode_id(document_id)}"


def document_pattern(collection: str) -> str:
    """A wildcard matching every document record of a collection."""
    return f"doc.{collection}.*"


def parse_document_key(key: str) -> tuple[str, str] | None:
    """(collection, document id) of a record key; None for any other key (parts, sync keys)."""
    kind, _, rest = key.partition(".")
    collection, _, token = rest.partition(".")
    if kind != "doc" or not collection or not token or "." in token:
        return None
    document_id = decode_id(token)
    return None if document_id is None else (collection, document_id)


def part_key(collection: str, document_id: str, parts_id: str, number: int) -> str:
    """The key of one part of a body."""
    return f"part.{collection}.{_encode_id(document_id)}.{parts_id}.{number}"


def new_parts_id() -> str:
    """A fresh parts id: random, so two replicas replacing one document never share parts."""
    return uuid.uuid4().hex


def split_body(body: str) -> list[bytes]:
    """A body's UTF-8 bytes in parts of at most ``PART_BYTES`` (one part if it fits inline).

    Parts may cut a character in two; ``join_parts`` joins the bytes before decoding.
    """
    data = body.encode()
    if len(data) <= INLINE_BODY_BYTES:
        return [data]
    return [data[offset : offset + PART_BYTES] for offset in range(0, len(data), PART_BYTES)]


def encode_part(data: bytes) -> bytes:
    """A part's stored value (a ``google.protobuf.BytesValue``)."""
    return bytes(wrappers_pb2.BytesValue(value=data).SerializeToString())


def join_parts(values: list[bytes]) -> str:
    """The body whose parts' stored values are ``values``, in order."""
    return b"".join(wrappers_pb2.BytesValue.FromString(value).value for value in values).decode()
