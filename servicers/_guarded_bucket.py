"""``GuardedKeyValue`` with the rest of the bucket API (put, delete, keys), guarded the same way.

``servicers._guarded_storage.GuardedKeyValue`` covers get, update and watch, which is what its
first users needed; quest-system and body-broker-integration also list keys, write without a
revision and delete. Rather than change the shared module, this adds those three with the same
rule: a lost compare-and-set stays ``RevisionConflict``, every other failure becomes
``StorageUnavailable`` (answered UNAVAILABLE by ``abort_unavailable``).
"""

from __future__ import annotations

from servicers._guarded_storage import GuardedKeyValue, StorageUnavailable
from servicers.storage import KeyValue, RevisionConflict


class GuardedBucket(GuardedKeyValue):
    """A ``KeyValue`` whose failures are ``RevisionConflict`` or ``StorageUnavailable`` only."""

    def __init__(self, kv: KeyValue) -> None:
        super().__init__(kv)
        self._bucket = kv

    def __repr__(self) -> str:
        return f"<GuardedBucket {self._bucket!r}>"

    async def put(self, key: str, value: bytes) -> int:
        """Unconditional write; returns the new revision."""
        try:
            return await self._bucket.put(key, value)
        except Exception as err:
            raise StorageUnavailable(f"put {key}: {err!r}") from err

    async def delete(self, key: str, revision: int | None = None) -> None:
        """Delete, only at ``revision`` when given."""
        try:
            await self._bucket.delete(key, revision)
        except RevisionConflict:
            raise
        except Exception as err:
            raise StorageUnavailable(f"delete {key}: {err!r}") from err

    async def keys(self, pattern: str = ">") -> list[str]:
        """Existing keys matching ``pattern``, sorted."""
        try:
            return await self._bucket.keys(pattern)
        except Exception as err:
            raise StorageUnavailable(f"keys {pattern}: {err!r}") from err
