"""How workflows are stored: ids, KV keys, the idempotency record and list page tokens.

Two buckets, both keeping entries for 7 days (what GetWorkflow promises):

- workflows: key = the workflow id, value = the ``gaming.orchestration.v1.Workflow`` message,
  rewritten at every step transition by the one task that runs the workflow;
- idempotency: key = SHA-256 (hex) of the idempotency key, value = ``IdempotencyRecord`` of
  ``protos/gaming/orchestration/storage/v1/orchestration_records.proto`` (the workflow the key
  started, and the SHA-256 of its definition without the key), created by compare-and-set
  (revision 0), so of two concurrent RunWorkflow calls with one key exactly one starts a workflow.

Workflow ids are ``<13-digit milliseconds>-<12 hex digits>``: valid KV keys, and in creation
order when sorted, so the newest come first in reverse key order (ids made in the same
millisecond order by their random part).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from gaming.orchestration.storage.v1 import orchestration_records_pb2

from servicers import paging
from servicers.errors import InvalidArgument

WORKFLOW_TTL = 7 * 24 * 3600.0

_ID = re.compile(r"^[0-9]{13}-[0-9a-f]{12}\Z")


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """Which workflow an idempotency key started, and the fingerprint of its definition."""

    workflow_id: str
    fingerprint: bytes

    def encode(self) -> bytes:
        """The stored form."""
        message = orchestration_records_pb2.IdempotencyRecord(
            workflow_id=self.workflow_id, fingerprint=self.fingerprint
        )
        return message.SerializeToString()

    @classmethod
    def decode(cls, data: bytes) -> IdempotencyRecord:
        """Parse a stored value."""
        message = orchestration_records_pb2.IdempotencyRecord.FromString(data)
        return cls(message.workflow_id, message.fingerprint)


def idempotency_key(key: str) -> str:
    """The KV key of a client's idempotency key (any printable ASCII, so hashed)."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_workflow_id(now: float) -> str:
    """A fresh id that sorts after the ids made before it."""
    return f"{int(now * 1000):013d}-{secrets.token_hex(6)}"


def is_workflow_id(text: str) -> bool:
    """Whether ``text`` has the shape of an id this service makes (others cannot exist)."""
    return _ID.match(text) is not None


def encode_page_token(after: str, name: str, state: int) -> str:
    """A token for the page after workflow ``after`` of the query (``name``, ``state``)."""
    return paging.encode_token(after, name, str(state))


def decode_page_token(token: str, name: str, state: int) -> str | None:
    """The id the page starts after (None for the first page).

    Raises:
        InvalidArgument: (``page.page_token``) the token is malformed, names no workflow id, or
            belongs to another query.
    """
    after = paging.decode_token(token, name, str(state))
    if after is not None and not is_workflow_id(after):
        raise InvalidArgument("page.page_token", paging.NOT_OURS)
    return after
