"""Key/value access for servicers that must answer UNAVAILABLE when the store fails.

The storage protocol names one failure, ``RevisionConflict``; whatever else a store raises
(connection closed, timeouts, JetStream API errors) means it could not do the call. Servicers may
not import ``nats`` to catch those by type, so ``GuardedKeyValue`` turns every other exception
into ``StorageUnavailable``, which a servicer answers with UNAVAILABLE (retryable), as the protos
promise. The real error stays chained (``raise ... from``) and is logged where it is answered.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncGenerator, Mapping
from typing import Any, NoReturn

import grpc

from servicers.errors import abort
from servicers.storage import Change, Entry, KeyValue, RevisionConflict
from servicers.storage import StorageUnavailable as StorageUnavailable  # re-exported: defined by the protocol

_log = logging.getLogger(__name__)



def key_token(text: str) -> str:
    """``text`` as one KV key token: base64url of its UTF-8, without padding.

    Ids may hold any character, while KV keys allow only ``[A-Za-z0-9_=-]`` in dot-separated
    tokens; base64url stays inside that alphabet and never produces a dot or a wildcard.
    """
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


class GuardedKeyValue:
    """A ``KeyValue`` whose failures are ``RevisionConflict`` or ``StorageUnavailable`` only."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    def __repr__(self) -> str:
        return f"<GuardedKeyValue {self._kv!r}>"

    async def get(self, key: str) -> Entry | None:
        """The current entry, or None."""
        try:
            return await self._kv.get(key)
        except Exception as err:
            raise StorageUnavailable(f"get {key}: {err!r}") from err

    async def update(self, key: str, value: bytes, revision: int) -> int:
        """Compare-and-set write (revision 0: create); returns the new revision."""
        try:
            return await self._kv.update(key, value, revision)
        except RevisionConflict:
            raise
        except Exception as err:
            raise StorageUnavailable(f"update {key}: {err!r}") from err

    async def watch(self, pattern: str, *, include_current: bool = True) -> AsyncGenerator[Change, None]:
        """The store's watch; closes the underlying iterator when this one is closed."""
        changes = self._kv.watch(pattern, include_current=include_current)
        try:
            while True:
                try:
                    change = await anext(changes)
                except StopAsyncIteration:
                    return
                except Exception as err:
                    raise StorageUnavailable(f"watch {pattern}: {err!r}") from err
                yield change
        finally:
            # The protocol promises an iterator with aclose (an async generator in practice);
            # closing it is what stops the store's consumer.
            close = getattr(changes, "aclose", None)
            if close is not None:
                await close()


async def abort_unavailable(context: Any, err: StorageUnavailable) -> NoReturn:
    """UNAVAILABLE for a store failure; the cause is logged here, never sent to the caller."""
    _log.warning("storage unavailable: %s", err, exc_info=err.__cause__ or err)
    await abort(
        context, grpc.StatusCode.UNAVAILABLE, "storage is unavailable, retry later", reason="STORAGE_UNAVAILABLE"
    )


def bucket_max_bytes(settings: Mapping[str, str], default: int) -> int:
    """The ``bucket_max_bytes`` setting (``MESH_<SERVICE>_BUCKET_MAX_BYTES`` in the host), or
    ``default``. JetStream reserves a bucket's max_bytes up front, so tests and small hosts
    that open many buckets need a smaller figure than production."""
    text = settings.get("bucket_max_bytes")
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"bucket_max_bytes={text!r} is not an integer") from None
    if value < 1:
        raise ValueError(f"bucket_max_bytes={text!r} must be positive")
    return value
