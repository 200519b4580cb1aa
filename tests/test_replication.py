"""JetStream replicas: auto picks R3 on a cluster (even one still forming) and R1 on one server;
a bucket or stream created with fewer replicas is scaled up when opened asking for more, never
down."""

from __future__ import annotations

import uuid

import nats
import nats.js.errors
import pytest
from nats.js.api import KeyValueConfig, StreamConfig

from mesh.jetstream_event_log import JetStreamEventLog
from mesh.jetstream_storage import JetStreamStorage
from mesh.replication import choose_replicas
from nats_transport.testing import NatsServer, free_port
from servicers.storage import StorageUnavailable
from tests._waiting import wait_for


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
        assert "part of cluster" in choice.reason

        # A bucket left at R1 by an earlier version, holding data.
        old = await js.create_key_value(KeyValueConfig(bucket=name, replicas=1))

        async def kept() -> bool:
            # Right after creation the stream's interest may not have reached the server this
            # client talks to (its one replica is on another node): NATS answers no responders.
            try:
                await old.put("kept", b"value")
            except nats.js.errors.NoStreamResponseError:
                return False
            return True

        await wait_for(kept, timeout=10)
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


async def test_auto_on_a_cluster_still_forming_is_r3_and_storage_opens_once_the_third_server_is_up():
    # The first deploy of a StatefulSet: two of three servers up when a host connects. Counting
    # the servers advertised then would pick R1 for good; auto must still pick R3, and storage
    # must wait (JetStream refuses an R3 bucket on two servers) rather than fall back to R1.
    ports = [free_port() for _ in range(3)]
    routes = [f"nats-route://127.0.0.1:{p}" for p in ports]
    nodes = [NatsServer(name=f"forming-{i}", cluster_name="forming", cluster_listen_port=port,
                        routes=[r for r in routes if not r.endswith(f":{port}")]) for i, port in enumerate(ports)]
    try:
        for node in nodes[:2]:
            node.start()
        nc = await nats.connect([n.url for n in nodes[:2]])
        try:
            choice = choose_replicas(nc, None)
            assert choice.replicas == 3, choice.reason
            storage = JetStreamStorage(nc, replicas=choice.replicas)
            name = f"b{uuid.uuid4().hex[:8]}"
            refusals: list[str] = []

            async def refused_for_want_of_servers() -> bool:
                try:
                    await storage.key_value(name)
                except (nats.errors.Error, StorageUnavailable) as error:  # a timeout while a meta leader is elected
                    refusals.append(str(error))
                    return isinstance(error, StorageUnavailable) and "MESH_REPLICAS=1" in str(error)
                raise AssertionError("an R3 bucket was created on two servers")

            try:
                await wait_for(refused_for_want_of_servers, timeout=30)
            except AssertionError:
                raise AssertionError(f"refusals: {sorted(set(refusals))}") from None
            nodes[2].start()

            async def opened() -> bool:
                try:
                    await storage.key_value(name)
                except (nats.errors.Error, StorageUnavailable):
                    return False
                return True

            await wait_for(opened, timeout=30)
            assert (await nc.jetstream().stream_info(f"KV_{name}")).config.num_replicas == 3
        finally:
            await nc.close()
    finally:
        for node in nodes:
            node.close()
