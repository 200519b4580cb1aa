"""What ``guard_connection`` fixes in nats-py besides malformed messages (see test_poison.py)."""

from __future__ import annotations

import nats

from nats_transport._connection_guard import guard_connection
from nats_transport.testing import NatsServer


async def test_flush_returns_only_after_the_server_saw_what_was_written_before_it(nats_server: NatsServer):
    # nats-py writes PING straight to the socket while a SUB or PUB may still wait for its
    # flusher task: flush() could return before the server saw a subscription.
    nc = guard_connection(await nats.connect(nats_server.url))
    written: list[bytes] = []
    transport = nc._transport
    assert transport is not None
    write, writelines = transport.write, transport.writelines
    transport.write = lambda payload: (written.append(bytes(payload)), write(payload))[1]  # type: ignore[method-assign]
    transport.writelines = lambda payloads: (written.extend(bytes(p) for p in payloads), writelines(payloads))[1]  # type: ignore[method-assign]
    try:
        await nc.subscribe("probe.ordering")
        await nc.flush()
        stream = b"".join(written)
        assert stream.index(b"SUB probe.ordering") < stream.index(b"PING\r\n"), stream
    finally:
        await nc.close()
