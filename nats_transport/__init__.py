"""gRPC over NATS: generated stubs, health, reflection and interceptors, carried by NATS.

Public API::

    nats_transport.aio.server(nc, target, ...)   # a grpc.aio.Server
    nats_transport.aio.channel(nc, target, ...)  # a grpc.aio.Channel
    nats_transport.channel(servers, target, ...) # a grpc.Channel for synchronous code

Errors raised to callers are ``grpc.RpcError`` (``grpc.aio.AioRpcError`` on the asyncio side);
the sync side's :class:`RpcError` is also a ``grpc.Call`` and a ``grpc.Future``::

    grpc.RpcError
    ├── grpc.aio.AioRpcError          (asyncio channel)
    └── nats_transport.RpcError       (sync channel; also grpc.Call, grpc.Future)

    ValueError
    └── nats_transport.ServiceConfigError  (a service config grpcio would refuse too)

The wire format is specified in ``docs/wire-protocol.md``.
"""

from __future__ import annotations

from nats_transport import aio
from nats_transport._circuit import CircuitBreakerOptions, CircuitState, circuit_states
from nats_transport._connection_guard import (
    WATCHDOG_CONNECT_OPTIONS,
    connection_problem,
    dropped_messages,
    guard_connection,
)
from nats_transport._context import detached, time_remaining
from nats_transport._options import ChannelOptions, ServerOptions, TransportOptions
from nats_transport._service_config import ServiceConfig, ServiceConfigError
from nats_transport._sync_channel import Channel, RpcError, channel

__all__ = [
    "Channel",
    "ChannelOptions",
    "CircuitBreakerOptions",
    "CircuitState",
    "RpcError",
    "ServerOptions",
    "ServiceConfig",
    "ServiceConfigError",
    "TransportOptions",
    "WATCHDOG_CONNECT_OPTIONS",
    "WIRE_PROTOCOL_VERSION",
    "aio",
    "channel",
    "circuit_states",
    "connection_problem",
    "detached",
    "dropped_messages",
    "guard_connection",
    "time_remaining",
]

WIRE_PROTOCOL_VERSION = "1.1"
"""The version of docs/wire-protocol.md this package speaks (never sent on the wire)."""
