"""JetStream replicas: auto picks R3 on a cluster of three and R1 on one server; a bucket or
stream created with fewer replicas is scaled up when opened asking for more, never down."""

from __future__ import annotations

import uuid

import nats
import pytest
from nats.js.api import KeyValueConfig, StreamConfig

from mesh.jetstream_event_log import JetStreamEventLog
from mesh.jetstream_storage import JetStreamStorage
from mesh.replication import choose_replicas


async def test_auto_on_one_server_is_r1_and_says_why(nats_server):
    nc = await nats.connect(nats_server.url)
    try:
        choice = choose_replicas(nc, None)
        assert choice.replicas == 1
        assert "not part of a cluster" in choice.reason
    finally:
        await nc.close()


@pytest.mark.parametrize(("asked", "expected"), [(1, 1), (3, 3), (5, 5)])
async def test_an_explicit_count_wins_over_what_the_server_says(nats_server, asked, expected):
    nc = await nats.connect(nats_server.url)
    try:
        assert choose_replicas(nc, asked).replicas == expected
        with pytest.raises(ValueError, match="replicas"):
            choose_replicas(nc, 2)
    finally:
        await nc.close()


async def test_on_a_cluster_auto_is_r3_and_old_r1_buckets_and_streams_are_scaled_up_never_down(nats_cluster):
    nc = await nats.connect(nats_cluster.urls)
    js = nc.jetstream()
    name = f"b{uuid.uuid4().hex[:8]}"
    try:
        choice = choose_replicas(nc, None)
        assert choice.replicas == 3, choice.reason
        assert "3 servers" in choice.reason

        # A bucket left at R1 by an earlier version, holding data.
        old = await js.create_key_value(KeyValueConfig(bucket=name, replicas=1))
        await old.put("kept", b"value")
        bucket = await JetStreamStorage(nc, replicas=choice.replicas).key_value(name)
        assert (await js.stream_info(f"KV_{name}")).config.num_replicas == 3
        entry = await bucket.get("kept")
        assert entry is not None
        assert entry.value == b"value"

        # Opened again asking for R1: still R3 (scaling down is an operator's decision).
        await JetStreamStorage(nc, replicas=1).key_value(name)
        assert (await js.stream_info(f"KV_{name}")).config.num_replicas == 3

        stream = f"S{name}"
        await js.add_stream(StreamConfig(name=stream, subjects=[f"{name}.>"], num_replicas=1))
        log = JetStreamEventLog(nc, stream=stream, subject_prefix=name, replicas=3)
        appended = await log.append("topic", b"event")
        assert appended.sequence == 1
        assert (await js.stream_info(stream)).config.num_replicas == 3
    finally:
        await nc.close()
