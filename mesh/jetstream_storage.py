"""``servicers.storage.Storage`` on NATS JetStream key/value buckets."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, TypeVar

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, KeyValueConfig
from nats.js.kv import KeyValue as NatsKeyValue

import nats_transport
from mesh.replication import VALID_REPLICAS, ensure_replicas, unplaceable
from mesh.storage_health import StorageHealth
from servicers.storage import Change, Entry, RevisionConflict, StorageUnavailable, ValueTooLarge

# JetStream's "wrong last sequence" API errors: a compare-and-set that lost.
_WRONG_LAST_SEQUENCE = (10071, 10164)
_DELETED = ("DEL", "PURGE")


# Time kept back from the caller's remaining time for the answer to reach it.
_DEADLINE_MARGIN = 0.1

# Room kept for the headers JetStream and KV add to a write (they count against max_payload).
_HEADER_ROOM = 1024


P = ParamSpec("P")
R = TypeVar("R")


def _storage_call(method: Callable[Concatenate[JetStreamKeyValue, P], Coroutine[Any, Any, R]]
                  ) -> Callable[Concatenate[JetStreamKeyValue, P], Coroutine[Any, Any, R]]:
    async def call(self: JetStreamKeyValue, /, *args: P.args, **kwargs: P.kwargs) -> R:
        what = f"{method.__name__} {args[0] if args else ''}"
        # keys() reads a whole bucket in batches: it gets several request timeouts, not one.
        budget, own_limit = self._budget(self.timeout * (5 if method.__name__ == "keys" else 1))
        try:
            async with _unavailable_on_failure(what):
                return await asyncio.wait_for(method(self, *args, **kwargs), budget)
        except StorageUnavailable as error:
            self._report(what, error, own_limit)
            raise

    return call


@contextlib.asynccontextmanager
async def _unavailable_on_failure(what: str) -> AsyncIterator[None]:
    # The one place NATS failures become the storage protocol's error: servicers never see nats.
    try:
        yield
    except (RevisionConflict, ValueTooLarge, StorageUnavailable):
        raise
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        raise StorageUnavailable(f"{what}: {exc or type(exc).__name__}") from exc


class JetStreamKeyValue:
    """One JetStream KV bucket behind the ``KeyValue`` protocol."""

    def __init__(self, kv: NatsKeyValue, max_payload: int, js: JetStreamContext, *, timeout: float = 2.0,
                 health: StorageHealth | None = None) -> None:
        self._kv = kv
        self._js = js
        self.max_value = max_payload - _HEADER_ROOM
        self.timeout = timeout
        self._health = health

    def _budget(self, limit: float) -> tuple[float, bool]:
        # A call's storage work ends before the caller's deadline, so an unanswered store gives
        # the caller UNAVAILABLE (retryable, says what happened) rather than DEADLINE_EXCEEDED.
        # The flag says whether the limit is our own (then a timeout says the store is down).
        remaining = nats_transport.time_remaining()
        if remaining is None:
            return limit, True
        budget = max(remaining - _DEADLINE_MARGIN, remaining * 0.8)
        return (limit, True) if budget >= limit else (budget, False)

    def _report(self, what: str, error: StorageUnavailable, own_limit: bool) -> None:
        if self._health is None:
            return
        if own_limit or not isinstance(error.__cause__, TimeoutError):
            self._health.failed(f"bucket {self._kv._name} {what}", error.__cause__ or error)
        else:
            self._health.suspect()

    def _check_size(self, key: str, value: bytes) -> None:
        # A write over max_payload would make nats-server drop the whole connection, cutting off
        # every service that shares it: refuse it here instead.
        if len(value) > self.max_value:
            raise ValueTooLarge(key, len(value), self.max_value)

    def __repr__(self) -> str:
        return f"<JetStreamKeyValue bucket={self._kv._name!r}>"

    @_storage_call
    async def get(self, key: str) -> Entry | None:
        try:
            entry = await self._kv.get(key)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        return Entry(key, entry.value or b"", entry.revision or 0)

    @_storage_call
    async def put(self, key: str, value: bytes) -> int:
        self._check_size(key, value)
        return int(await self._kv.put(key, value))

    @_storage_call
    async def update(self, key: str, value: bytes, revision: int) -> int:
        self._check_size(key, value)
        try:
            if revision == 0:
                return int(await self._kv.create(key, value))
            return int(await self._kv.update(key, value, last=revision))
        except nats.js.errors.KeyWrongLastSequenceError:
            raise await self._conflict(key, revision) from None

    @_storage_call
    async def delete(self, key: str, revision: int | None = None) -> None:
        try:
            await self._kv.delete(key, last=revision)
        except nats.js.errors.APIError as err:
            if err.err_code in _WRONG_LAST_SEQUENCE:
                raise await self._conflict(key, revision or 0) from None
            raise

    async def _conflict(self, key: str, expected: int) -> RevisionConflict:
        current = await self.get(key)
        return RevisionConflict(key, expected, current.revision if current else 0)

    @_storage_call
    async def keys(self, pattern: str = ">") -> list[str]:
        # Not nats-py's keys(): its filter matches substrings, and its watcher may announce "no
        # more" before entries already on their way arrive. A pull consumer delivers nothing
        # until asked, so the count it reports at creation is exactly what there is to read.
        prefix = self._kv._pre
        sub = await self._js.pull_subscribe(
            f"{prefix}{pattern}",
            stream=self._kv._stream,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.LAST_PER_SUBJECT, headers_only=True,
                ack_policy=AckPolicy.NONE, inactive_threshold=30.0,
            ),
        )
        found = []
        try:
            remaining = (await sub.consumer_info()).num_pending or 0
            while remaining > 0:
                for msg in await sub.fetch(min(remaining, 256), timeout=5):
                    remaining -= 1
                    if (msg.headers or {}).get("KV-Operation") not in _DELETED:
                        found.append(msg.subject[len(prefix):])
        finally:
            await sub.unsubscribe()
        return sorted(found)

    async def watch(self, pattern: str, *, include_current: bool = True) -> AsyncGenerator[Change, None]:
        try:
            async with _unavailable_on_failure(f"watch {pattern}"):
                async for change in self._watch(pattern, include_current):
                    yield change
        except StorageUnavailable as error:
            self._report(f"watch {pattern}", error, True)
            raise

    async def _watch(self, pattern: str, include_current: bool) -> AsyncGenerator[Change, None]:
        watcher = await self._kv.watch(pattern)
        initial = True  # until the watcher's None marker: the current values
        try:
            async for entry in watcher:
                if entry is None:
                    initial = False
                    continue
                deleted = entry.operation in _DELETED
                if initial and (deleted or not include_current):
                    continue
                yield Change(entry.key, None if deleted else (entry.value or b""), entry.revision or 0)
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]


class JetStreamStorage:
    """Opens (and creates) KV buckets with a fixed replica count: 1 locally, 3 on a cluster.

    ``prefix`` is prepended to bucket names, so tests or tenants can share one NATS. A bucket that
    exists with fewer replicas than asked is scaled up (``mesh.replication``). Each storage call
    gives up after ``timeout`` seconds, or sooner if the caller's deadline is nearer. With
    ``health``, the buckets opened are probed and failures reported there.
    """

    def __init__(self, nc: Client, *, replicas: int = 1, prefix: str = "", timeout: float = 2.0,
                 health: StorageHealth | None = None) -> None:
        if replicas not in VALID_REPLICAS:
            raise ValueError("replicas must be 1, 3 or 5")
        self._js = nc.jetstream(timeout=timeout)
        self._nc = nc
        self._replicas = replicas
        self._prefix = prefix
        self._timeout = timeout
        self._health = health

    async def key_value(
        self, name: str, *, history: int = 1, ttl: float | None = None, max_bytes: int = -1
    ) -> JetStreamKeyValue:
        bucket = f"{self._prefix}{name}"
        try:
            kv = await self._js.key_value(bucket)
            await ensure_replicas(self._js, await self._js.stream_info(f"KV_{bucket}"), self._replicas,
                                  kind="bucket")
        except nats.js.errors.BucketNotFoundError:
            try:
                kv = await self._js.create_key_value(
                    KeyValueConfig(
                        bucket=bucket, history=history, ttl=ttl, max_bytes=max_bytes, replicas=self._replicas
                    )
                )
            except nats.js.errors.APIError as err:
                reason = unplaceable(err, f"bucket {bucket}", self._replicas)
                if reason is None:
                    raise
                raise StorageUnavailable(reason) from err
        if self._health is not None:
            self._health.track(f"KV_{bucket}")
        return JetStreamKeyValue(kv, self._nc.max_payload, self._js, timeout=self._timeout, health=self._health)
