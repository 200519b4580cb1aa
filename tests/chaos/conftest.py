"""Fixtures of the chaos suite: child processes cleaned up whatever the test did, NATS clients
that reconnect, and a nats-server that notices a hung client within a second or two."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import nats
import pytest
from nats.aio.client import Client

from nats_transport.testing import NatsServer
from tests.chaos._processes import Processes

# nats-server's check on its clients: every interval, a client that sent nothing within the
# interval gets a PING, and one with more than PING_MAX of them unanswered is closed as stale,
# its subscriptions (its place in every queue group) with it. The defaults are 2 minutes and 2:
# a hung replica keeps its share of calls for minutes. These close it within (PING_MAX + 2)
# intervals of its last message (the first check may still find it recent), 1.5 s. A client
# that sent something within the interval is not pinged; an idle one has an interval to answer.
PING_INTERVAL = 0.5
PING_MAX = 1
STALE_AFTER = PING_INTERVAL * (PING_MAX + 2)


@pytest.fixture
def processes() -> Iterator[Processes]:
    """Children started by the test; continued (if stopped) and killed afterwards."""
    started = Processes()
    try:
        yield started
    finally:
        started.close_all()


@pytest.fixture
def quick_stale_nats_server() -> Iterator[NatsServer]:
    """A nats-server of the test's own that closes a client silent for STALE_AFTER seconds."""
    config = f'ping_interval: "{int(PING_INTERVAL * 1000)}ms"\nping_max: {PING_MAX}\n'
    with NatsServer(name="quick-stale", extra_config=config) as server:
        yield server


class Clients:
    """NATS clients a test connects, as an application holds them: reconnecting for ever, quickly."""

    def __init__(self) -> None:
        self.connected: list[Client] = []
        self.errors: list[str] = []

    async def connect(self, url: str) -> Client:
        async def remember(error: Exception) -> None:
            # Refused reconnects while NATS is down are the fault under test, not news: kept
            # here instead of nats-py's default of logging each with a traceback.
            self.errors.append(repr(error))

        nc = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.2, connect_timeout=2,
                                error_cb=remember)
        self.connected.append(nc)
        return nc

    async def close_all(self) -> None:
        for nc in self.connected:
            if not nc.is_closed:
                await nc.close()


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    """Connect NATS clients through this; they are closed after the test."""
    opened = Clients()
    try:
        yield opened
    finally:
        await opened.close_all()
