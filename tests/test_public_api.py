"""The public surface of nats_transport stays what the docs promise: a change here is deliberate."""

from __future__ import annotations

import nats_transport
import nats_transport.aio


def test_nats_transport_exports_exactly_its_documented_names():
    assert set(nats_transport.__all__) == {
        "Channel", "ChannelOptions", "CircuitBreakerOptions", "CircuitState", "RpcError", "ServerOptions",
        "ServiceConfig", "ServiceConfigError", "TransportOptions", "WATCHDOG_CONNECT_OPTIONS", "aio", "channel",
        "circuit_states", "connection_problem", "detached", "dropped_messages", "guard_connection", "time_remaining",
    }
    for name in nats_transport.__all__:
        assert getattr(nats_transport, name) is not None


def test_every_exported_aio_name_exists():
    for name in nats_transport.aio.__all__:
        assert hasattr(nats_transport.aio, name), name
