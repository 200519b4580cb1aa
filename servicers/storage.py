"""What servicers need from persistent storage, as protocols: the mesh injects a JetStream one.

Servicers keep state in key/value buckets with revision-based compare-and-set. They see only
these protocols, never a NATS client, so business logic stays free of transport code (the
implementation lives in ``mesh.jetstream_storage``).
"""

from __future__ import annotations

import base64
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Entry:
    """A stored value and the revision that wrote it."""

    key: str
    value: bytes
    revision: int


@dataclass(frozen=True, slots=True)
class Change:
    """One change seen by a watch: ``value`` is None when the key was deleted."""

    key: str
    value: bytes | None
    revision: int


class RevisionConflict(Exception):
    """A compare-and-set lost: the key is not at the expected revision.

    ``current`` is the revision the key is at now (0 when it does not exist).
    """

    def __init__(self, key: str, expected: int, current: int) -> None:
        super().__init__(f"{key}: expected revision {expected}, found {current}")
        self.key = key
        self.expected = expected
        self.current = current


class StorageUnavailable(Exception):
    """The store could not carry out a call: the connection is down, JetStream did not answer,
    or it refused the request. Servicers let it propagate: the error boundary answers it with
    UNAVAILABLE (retryable)."""


class ValueTooLarge(ValueError):
    """A value too big for the store to take in one write (``limit`` bytes at most)."""

    def __init__(self, key: str, size: int, limit: int) -> None:
        super().__init__(f"{key}: value of {size} bytes exceeds the store's limit of {limit} bytes")
        self.key = key
        self.size = size
        self.limit = limit


def key_token(text: str) -> str:
    """``text`` as one KV key token: base64url of its UTF-8, without padding.

    Ids may hold any character, while keys allow only ``[A-Za-z0-9_=-]`` in dot-separated
    tokens; base64url stays inside that alphabet and never produces a dot or a wildcard.
    """
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


class KeyValue(Protocol):
    """One bucket. Keys are dot-separated tokens of ``[A-Za-z0-9_=-]`` (NATS KV rules)."""

    async def get(self, key: str) -> Entry | None:
        """The current entry, or None if the key does not exist (or was deleted)."""
        ...

    async def put(self, key: str, value: bytes) -> int:
        """Write unconditionally; return the new revision (ValueTooLarge if it cannot fit)."""
        ...

    async def update(self, key: str, value: bytes, revision: int) -> int:
        """Write only if the key is at ``revision`` (0: only if it does not exist).

        Raises:
            RevisionConflict: the key is at another revision.
        """
        ...

    async def delete(self, key: str, revision: int | None = None) -> None:
        """Delete; with ``revision``, only if the key is at it (RevisionConflict otherwise)."""
        ...

    async def keys(self, pattern: str = ">") -> list[str]:
        """Existing keys matching a NATS wildcard pattern, sorted."""
        ...

    def watch(self, pattern: str, *, include_current: bool = True) -> AsyncGenerator[Change, None]:
        """Changes to keys matching ``pattern``; first the current values if asked. Close the
        iterator (``aclose``) to stop watching."""
        ...


class Storage(Protocol):
    """Opens buckets, creating them with explicit limits if they do not exist."""

    async def key_value(
        self, name: str, *, history: int = 1, ttl: float | None = None, max_bytes: int = -1
    ) -> KeyValue:
        """The bucket ``name`` (created if missing, with the storage's replica count)."""
        ...
