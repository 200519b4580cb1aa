"""The nats-server fixtures start real servers and clusters, with JetStream, and clean up after."""

from __future__ import annotations

import socket
import uuid
from typing import Any

import nats
import nats.js.errors
from nats.aio.client import Client

from nats_transport.testing import NatsCluster, NatsServer
from tests._waiting import wait_for


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def _refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


async def test_single_server_accepts_a_client_and_jetstream_key_value_works(nc: Client) -> None:
    js = nc.jetstream()
    bucket = _unique("fixture_kv")
    kv = await js.create_key_value(bucket=bucket)
    try:
        revision = await kv.put("answer", b"42")
        entry = await kv.get("answer")
        assert (entry.value, entry.revision) == (b"42", revision)
    finally:
        await js.delete_key_value(bucket)


async def test_cluster_replicates_a_stream_to_a_client_on_another_node(nats_cluster: NatsCluster) -> None:
    stream, subject = _unique("FIXTURE"), _unique("fixture.r3")
    writer = await nats.connect(nats_cluster.urls[0], max_reconnect_attempts=0)
    reader = await nats.connect(nats_cluster.urls[2], max_reconnect_attempts=0)
    try:
        created: list[Any] = []

        async def stream_created() -> bool:
            # A fresh cluster can answer 503 for a moment after its meta leader is elected,
            # while the peers catch up; creating an R3 stream is what waits on that.
            try:
                created.append(await writer.jetstream().add_stream(name=stream, subjects=[subject], num_replicas=3))
            except nats.js.errors.ServiceUnavailableError:
                return False
            return True

        await wait_for(stream_created, timeout=15)
        assert created[0].config.num_replicas == 3
        await writer.jetstream().publish(subject, b"replicated")

        consumer = await reader.jetstream().pull_subscribe(subject, stream=stream)
        [message] = await consumer.fetch(1, timeout=10)
        await message.ack()

        assert message.data == b"replicated"
        assert reader.connected_url is not None
        assert reader.connected_url.port == nats_cluster.servers[2].client_port
    finally:
        await writer.jetstream().delete_stream(stream)
        await reader.close()
        await writer.close()


def test_a_server_is_gone_after_its_context_exits() -> None:
    with NatsServer(name="short-lived") as server:
        process, port = server.process, server.client_port
        assert process is not None
        assert port is not None
        assert not _refuses_connections(port)

    assert process.poll() is not None
    assert _refuses_connections(port)


def test_every_cluster_node_is_gone_after_its_context_exits() -> None:
    with NatsCluster(size=3, name="short-lived") as cluster:
        nodes = [(server.process, server.client_port) for server in cluster.servers]
        assert len(set(cluster.urls)) == 3

    for process, port in nodes:
        assert process is not None
        assert port is not None
        assert process.poll() is not None
        assert _refuses_connections(port)


def test_two_servers_started_at_once_get_different_ports() -> None:
    with NatsServer(name="first") as first, NatsServer(name="second") as second:
        assert first.client_port != second.client_port
        assert first.monitor_port != second.monitor_port
