"""Every target starts and uses its own buckets and streams under its own identity only.

A missing JetStream grant shows up as a timeout, not an error, so each target runs its real
``create()`` and then reads and writes each of its buckets, with short bounds."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

import nats_transport.aio
from mesh import catalogue
from mesh.jetstream_event_log import JetStreamEventLog
from mesh.jetstream_storage import JetStreamStorage
from servicers.dependencies import Dependencies
from servicers.event_log import ConsumerSpec, Settlement, StartPosition
from tests.security._identities import Errors, connect

# Settings that keep create() fast (auth's scrypt cost) or valid.
SETTINGS = {"auth": {"scrypt_log2_n": "10"}}
WITH_STORAGE = [t for t, names in catalogue.STORAGE.items() if names]


@pytest.mark.parametrize("target", WITH_STORAGE)
async def test_a_target_starts_and_uses_each_of_its_buckets_under_its_own_identity(secured, data_dir: Path, target):
    errors = Errors()
    nc = await connect(secured.url, data_dir / "secrets", target, errors)
    try:
        storage = JetStreamStorage(nc)
        deps = Dependencies(
            storage=storage, channel=lambda name: nats_transport.aio.channel(nc, name),
            settings=SETTINGS.get(target, {}), event_log=JetStreamEventLog(nc, max_bytes=1 << 20, timeout=2),
        )
        module = catalogue.load(target)
        assert module is not None
        servicer = await asyncio.wait_for(module.create(deps), 15)
        with contextlib.suppress(AttributeError):
            await servicer.aclose()
        for name in catalogue.STORAGE[target]:
            if name in catalogue.STREAM_SUBJECTS:
                continue
            kv = await storage.key_value(name)
            async with asyncio.timeout(10):
                revision = await kv.put("probe.one", b"1")
                await kv.update("probe.one", b"2", revision)
                assert (await kv.get("probe.one")).value == b"2"  # type: ignore[union-attr]
                assert "probe.one" in await kv.keys("probe.>")
                changes = kv.watch("probe.>")
                assert (await anext(changes)).key == "probe.one"
                await changes.aclose()
                await kv.delete("probe.one")
        assert errors.violations() == []
    finally:
        await nc.close()


async def test_the_event_bus_appends_consumes_and_settles_on_its_stream(secured, data_dir: Path):
    errors = Errors()
    nc = await connect(secured.url, data_dir / "secrets", "event-bus", errors)
    try:
        log = JetStreamEventLog(nc, max_bytes=1 << 20, timeout=2, pull_expires=1.0)
        spec = ConsumerSpec(name="probe", topic_filter="probe.>", start=StartPosition.ALL, ack_wait=30,
                            max_ack_pending=10)
        async with asyncio.timeout(15):
            await log.append("probe.a", b"1")
            await log.append("probe.a", b"2")
            events = log.consume(spec)
            first = await anext(events)
            await log.settle("probe", first.sequence, Settlement.ACK)
            second = await anext(events)
            await events.aclose()
            # No reader now: the event is settled through the consumer's state.
            await log.settle("probe", second.sequence, Settlement.ACK)
        assert errors.violations() == []
    finally:
        await nc.close()
