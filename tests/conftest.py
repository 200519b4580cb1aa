"""Shared fixtures: real nats-servers on free ports, and connected clients."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import nats
import pytest
from nats.aio.client import Client

from mesh.jetstream_storage import JetStreamStorage
from nats_transport._connection_guard import guard_connection
from nats_transport.testing import NatsCluster, NatsServer
from tests._buckets import delete_buckets


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    """One nats-server with JetStream for the whole session (tests use their own subjects)."""
    with NatsServer(name="session") as server:
        yield server


@pytest.fixture
def private_nats_server() -> Iterator[NatsServer]:
    """A nats-server of the test's own, for tests that stop, kill or restart it."""
    with NatsServer(name="private") as server:
        yield server


@pytest.fixture
def nats_cluster() -> Iterator[NatsCluster]:
    """A 3-node JetStream cluster routed on loopback."""
    with NatsCluster(size=3) as cluster:
        yield cluster


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    """A connected NATS client, closed after the test. Guarded, as every nats_transport server
    and channel guards the connection it is given: a test that subscribes on it and flushes can
    count on the server having seen the SUB (plain nats-py's flush() may return before)."""
    client = guard_connection(await nats.connect(nats_server.url, max_reconnect_attempts=0))
    yield client
    await client.close()


@pytest.fixture
async def storage(nc: Client) -> AsyncIterator[JetStreamStorage]:
    """JetStream storage whose buckets are private to the test (a unique name prefix), deleted
    afterwards: JetStream reserves each bucket's max_bytes on the shared server."""
    prefix = f"t{uuid.uuid4().hex[:8]}_"
    yield JetStreamStorage(nc, prefix=prefix)
    if nc.is_connected:
        await delete_buckets(nc, prefix)
