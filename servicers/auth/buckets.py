"""Buckets whose failures the auth service can report as UNAVAILABLE.

auth.proto promises UNAVAILABLE whenever the account or session store cannot be reached. The
storage protocol raises whatever its implementation raises (NATS errors, timeouts), and the
transport would turn that into a generic UNKNOWN; wrapping each bucket turns every failure but
a lost compare-and-set into one exception the servicer maps to UNAVAILABLE.
"""

from __future__ import annotations

from servicers.storage import Entry, KeyValue, RevisionConflict


class StoreUnavailable(Exception):
    """A bucket operation failed for another reason than a lost compare-and-set."""


class GuardedBucket:
    """A bucket whose failures (other than RevisionConflict) raise StoreUnavailable, so each RPC
    can answer UNAVAILABLE, as auth.proto promises, instead of a generic UNKNOWN."""

    def __init__(self, kv: KeyValue, name: str) -> None:
        self._kv = kv
        self._name = name

    def __repr__(self) -> str:
        return f"<GuardedBucket {self._name}>"

    async def get(self, key: str) -> Entry | None:
        """See KeyValue.get."""
        try:
            return await self._kv.get(key)
        except Exception as exc:
            raise StoreUnavailable(self._name) from exc

    async def update(self, key: str, value: bytes, revision: int) -> int:
        """See KeyValue.update."""
        try:
            return await self._kv.update(key, value, revision)
        except RevisionConflict:
            raise
        except Exception as exc:
            raise StoreUnavailable(self._name) from exc

    async def delete(self, key: str, revision: int | None = None) -> None:
        """See KeyValue.delete."""
        try:
            await self._kv.delete(key, revision)
        except RevisionConflict:
            raise
        except Exception as exc:
            raise StoreUnavailable(self._name) from exc

    async def put(self, key: str, value: bytes) -> int:
        """See KeyValue.put."""
        try:
            return await self._kv.put(key, value)
        except Exception as exc:
            raise StoreUnavailable(self._name) from exc

    async def keys(self, pattern: str = ">") -> list[str]:
        """See KeyValue.keys."""
        try:
            return await self._kv.keys(pattern)
        except Exception as exc:
            raise StoreUnavailable(self._name) from exc
