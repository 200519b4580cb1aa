"""How workflows are stored: ids, KV keys, the idempotency record and list page tokens.

Two buckets, both keeping entries for 7 days (what GetWorkflow promises):

- workflows: key = the workflow id, value = the ``gaming.orchestration.v1.Workflow`` message,
  rewritten at every step transition by the one task that runs the workflow;
- idempotency: key = SHA-256 (hex) of the idempotency key, value = ``IdempotencyRecord``,
  created by compare-and-set (revision 0), so of two concurrent RunWorkflow calls with one key
  exactly one starts a workflow::

      message IdempotencyRecord {
        string workflow_id = 1;  // the workflow the key started
        bytes fingerprint = 2;   // SHA-256 of its definition, without the key
      }

Workflow ids are ``<13-digit milliseconds>-<12 hex digits>``: valid KV keys, and in creation
order when sorted, so the newest come first in reverse key order (ids made in the same
millisecond order by their random part).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

WORKFLOW_TTL = 7 * 24 * 3600.0
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000

_ID = re.compile(r"^[0-9]{13}-[0-9a-f]{12}\Z")
_FIELD = descriptor_pb2.FieldDescriptorProto


def _declare_record() -> Any:
    source = descriptor_pb2.FileDescriptorProto(
        name="servicers/orchestration/idempotency_record.proto", package="servicers.orchestration", syntax="proto3"
    )
    message = source.message_type.add(name="IdempotencyRecord")
    message.field.add(name="workflow_id", number=1, label=_FIELD.LABEL_OPTIONAL, type=_FIELD.TYPE_STRING)
    message.field.add(name="fingerprint", number=2, label=_FIELD.LABEL_OPTIONAL, type=_FIELD.TYPE_BYTES)
    pool = descriptor_pool.Default()
    pool.AddSerializedFile(source.SerializeToString())
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("servicers.orchestration.IdempotencyRecord"))


# A dynamically built class: typed Any, touched only by IdempotencyRecord below.
_IdempotencyRecordMessage: Any = _declare_record()


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """Which workflow an idempotency key started, and the fingerprint of its definition."""

    workflow_id: str
    fingerprint: bytes

    def encode(self) -> bytes:
        """The stored form."""
        data: bytes = _IdempotencyRecordMessage(
            workflow_id=self.workflow_id, fingerprint=self.fingerprint
        ).SerializeToString()
        return data

    @classmethod
    def decode(cls, data: bytes) -> IdempotencyRecord:
        """Parse a stored value."""
        message = _IdempotencyRecordMessage.FromString(data)
        return cls(str(message.workflow_id), bytes(message.fingerprint))


def idempotency_key(key: str) -> str:
    """The KV key of a client's idempotency key (any printable ASCII, so hashed)."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_workflow_id(now: float) -> str:
    """A fresh id that sorts after the ids made before it."""
    return f"{int(now * 1000):013d}-{secrets.token_hex(6)}"


def is_workflow_id(text: str) -> bool:
    """Whether ``text`` has the shape of an id this service makes (others cannot exist)."""
    return _ID.match(text) is not None


class BadPageToken(ValueError):
    """A page token this server did not issue, or issued for another query."""


def page_size(requested: int) -> int:
    """0 means the default; above the cap means the cap. Negative sizes are the caller's error."""
    if requested < 0:
        raise ValueError("must not be negative")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _query(name: str, state: int) -> str:
    return hashlib.sha256(f"{name}\x00{state}".encode()).hexdigest()[:16]


def encode_page_token(after: str, name: str, state: int) -> str:
    """A token for the page after workflow ``after`` of the query (``name``, ``state``)."""
    body = json.dumps({"q": _query(name, state), "after": after}, separators=(",", ":"))
    return base64.urlsafe_b64encode(body.encode()).rstrip(b"=").decode()


def decode_page_token(token: str, name: str, state: int) -> str | None:
    """The id the page starts after (None for the first page).

    Raises:
        BadPageToken: the token is malformed or belongs to another query.
    """
    if not token:
        return None
    try:
        body = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError) as err:
        raise BadPageToken("is not a token this server issued") from err
    if not isinstance(body, dict) or not isinstance(body.get("q"), str) or not isinstance(body.get("after"), str):
        raise BadPageToken("is not a token this server issued")
    if body["q"] != _query(name, state):
        raise BadPageToken("was issued for another query")
    after: str = body["after"]
    if not is_workflow_id(after):
        raise BadPageToken("is not a token this server issued")
    return after
