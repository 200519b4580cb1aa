"""asyncio API: ``server(nc, target)`` and ``channel(nc, target)`` over a connected nats-py client."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from nats.aio.client import Client

from nats_transport._options import ChannelOptions, ServerOptions
from nats_transport._server import Server
from nats_transport._service_config import ServiceConfig
from nats_transport.aio._channel import Channel

__all__ = ["Channel", "Server", "channel", "server"]


def server(
    nc: Client,
    target: str,
    *,
    interceptors: Sequence[Any] | None = None,
    maximum_concurrent_rpcs: int | None = None,
    options: ServerOptions | None = None,
) -> Server:
    """A grpc.aio.Server taking calls for ``target`` from NATS (queue group = target).

    Args:
        nc: a connected ``nats.aio.client.Client``; the server does not close it.
        target: the logical server name its replicas share (like a DNS name in gRPC).
        interceptors: ``grpc.aio.ServerInterceptor`` or ``grpc.ServerInterceptor`` instances,
            run in order.
        maximum_concurrent_rpcs: calls handled at once; more get RESOURCE_EXHAUSTED.
        options: transport settings; ``maximum_concurrent_rpcs`` overrides its field.
    """
    opts = options or ServerOptions()
    if maximum_concurrent_rpcs is not None:
        opts = ServerOptions(**{**_fields(opts), "maximum_concurrent_rpcs": maximum_concurrent_rpcs})
    return Server(nc, target, interceptors=interceptors, options=opts)


def channel(
    nc: Client,
    target: str,
    *,
    interceptors: Sequence[Any] | None = None,
    options: ChannelOptions | None = None,
    service_config: str | Mapping[str, Any] | ServiceConfig | None = None,
) -> Channel:
    """A grpc.aio.Channel whose calls go to ``target`` over NATS.

    Args:
        nc: a connected ``nats.aio.client.Client``; the channel does not close it.
        target: the logical server to call.
        interceptors: ``grpc.aio.*ClientInterceptor`` instances, run in order for calls of
            their kind.
        options: transport settings.
        service_config: a gRPC service config (JSON text or its decoded object), as grpcio's
            ``grpc.service_config`` channel option takes: per-method ``timeout``,
            ``waitForReady``, ``retryPolicy`` or ``hedgingPolicy``, and ``retryThrottling``.

    Raises:
        ServiceConfigError: the service config is malformed or invalid (a ValueError).
    """
    return Channel(nc, target, interceptors=interceptors, options=options or ChannelOptions(),
                   service_config=service_config)


def _fields(options: ServerOptions) -> dict[str, Any]:
    return {name: getattr(options, name) for name in options.__dataclass_fields__}
