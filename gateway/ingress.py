"""The gRPC ingress: a grpc.aio server (HTTP/2) in front of the mesh.

It serves grpc.health.v1 and server reflection itself, for the whole mesh, and forwards every
other method as raw bytes to the target serving it over NATS (``gateway.forwarding``), learned
from ``$SRV`` discovery (``gateway.discovery``) and each target's reflection
(``gateway.schemas``)::

    ingress = await run_ingress(nc, "127.0.0.1", 50051)
    ...                      # grpcurl -plaintext 127.0.0.1:50051 list
    await ingress.stop()

Interceptors come from the caller (``IngressOptions``), so whoever runs the ingress decides
whether it traces: the gateway itself knows no tracing.

One process is one grpc.aio server, which spends most of its CPU in grpc itself; to use more
cores, ``IngressOptions(workers=N)`` with :func:`gateway.workers.run_workers` runs N of these,
each in a process of its own sharing the port.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2_grpc
from nats.aio.client import Client

from gateway import health, reflection
from gateway.discovery import Discovery
from gateway.forwarding import ChannelInterceptors, Forwarder
from gateway.schemas import Schemas
from nats_transport import ChannelOptions

log = logging.getLogger("gateway.ingress")

OWN_SERVICES = (health.SERVICE_NAME, reflection.V1ALPHA_SERVICE, reflection.V1_SERVICE)


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsFiles:
    """PEM files for serving TLS.

    Attributes:
        cert: the server's certificate chain.
        key: its private key.
        client_ca: when set, clients must present a certificate signed by it (mTLS).
    """

    cert: Path
    key: Path
    client_ca: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        """grpc server credentials from the files."""
        pair = (self.key.read_bytes(), self.cert.read_bytes())
        root = self.client_ca.read_bytes() if self.client_ca else None
        return grpc.ssl_server_credentials([pair], root_certificates=root, require_client_auth=root is not None)


@dataclass(frozen=True, slots=True, kw_only=True)
class IngressOptions:
    """How the ingress discovers, forwards and stops.

    Attributes:
        poll_interval: seconds between ``$SRV.INFO`` polls.
        poll_window: seconds each poll gathers answers for.
        poll_misses: polls an instance may miss before it is dropped.
        reflection_timeout: seconds a reflection exchange with one target may take.
        grace: seconds in-flight calls get to finish on stop.
        max_message_size: largest message either way, in bytes (the NATS transport's default).
        channel: NATS transport settings of forwarded calls.
        tls: serve TLS with these files instead of plaintext.
        server_interceptors: ``grpc.aio.ServerInterceptor`` instances of the HTTP/2 server, in
            order; they see the ingress's own health and reflection calls too (a tracing filter
            should skip them). They must not expect decoded messages: forwarded calls carry the
            client's bytes.
        channel_interceptors: target -> the ``grpc.aio`` client interceptors of the NATS channel
            forwarded calls to that target take (asked once per target; the ingress's health
            checks of that target use the channel too); None: none.
        workers: processes serving the port (``gateway.workers``); 1, the default, is this
            process alone (:func:`run_ingress`).
        worker_restarts: with workers, how many exits in a row (each within a minute of its
            start) a worker is restarted after before the pool gives up on it.
    """

    poll_interval: float = 1.5
    poll_window: float = 0.25
    poll_misses: int = 2
    reflection_timeout: float = 5.0
    grace: float = 5.0
    max_message_size: int = 4 * 1024 * 1024
    channel: ChannelOptions = field(default_factory=ChannelOptions)
    tls: TlsFiles | None = None
    server_interceptors: Sequence[Any] = ()
    channel_interceptors: ChannelInterceptors | None = None
    workers: int = 1
    worker_restarts: int = 5

    def __post_init__(self) -> None:
        if self.poll_interval <= 0 or self.poll_window <= 0 or self.poll_misses < 1:
            raise ValueError("poll_interval and poll_window must be positive, poll_misses at least 1")
        if self.reflection_timeout <= 0 or self.grace < 0 or self.max_message_size <= 0:
            raise ValueError("reflection_timeout and max_message_size must be positive, grace not negative")
        # bool is an int: workers=True would read as one worker by accident.
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise ValueError(f"workers must be a whole number of at least 1, got {self.workers!r}")
        if self.worker_restarts < 0:
            raise ValueError("worker_restarts must not be negative")


class Ingress:
    """The ingress server. ``start()`` binds and serves; ``port`` is the bound port after it.

    Args:
        nc: a connected NATS client; the ingress does not close it.
        host: the address to listen on (``0.0.0.0`` for every interface).
        port: the port; 0 picks a free one.
        options: see :class:`IngressOptions`.
        shared_port: bind with SO_REUSEPORT, so that other processes of the same user can serve
            the port too. Only the worker processes of ``gateway.workers`` do, after their
            parent has checked the port was free: a single ingress must fail on a taken port.
    """

    def __init__(self, nc: Client, host: str = "0.0.0.0", port: int = 50051,
                 options: IngressOptions | None = None, *, shared_port: bool = False) -> None:
        self._nc = nc
        self._shared_port = shared_port
        self.host = host
        self._requested_port = port
        self.options = options or IngressOptions()
        self.port: int | None = None
        self.discovery = Discovery(
            nc, interval=self.options.poll_interval, window=self.options.poll_window,
            misses=self.options.poll_misses, ignore=OWN_SERVICES,
        )
        self.schemas = Schemas(nc, timeout=self.options.reflection_timeout, options=self.options.channel)
        self.forwarder = Forwarder(nc, self.discovery, self.schemas, self.options.channel,
                                   interceptors=self.options.channel_interceptors)
        self.health = health.MeshHealth(self.discovery, self.forwarder.channel, OWN_SERVICES, self._connected)
        self.reflection = reflection.MeshReflection(self.discovery, self.schemas, OWN_SERVICES)
        self._server: Any = None
        self._running = False

    def __repr__(self) -> str:
        where = f"{self.host}:{self.port}" if self.port is not None else "not started"
        return f"<gateway.Ingress {where} running={self._running} services={len(self.discovery.services())}>"

    @property
    def address(self) -> str:
        """``host:port`` as clients dial it (after start)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"{host}:{self.port}"

    def _connected(self) -> bool:
        return self._running and self.discovery.connected

    @property
    def listening(self) -> bool:
        """Whether it serves the port now (started, not stopped)."""
        return self._running

    @property
    def problem(self) -> str | None:
        """Why it cannot serve without a restart of the process; None: nothing (a single
        ingress has no part that can die on its own)."""
        return None

    async def start(self) -> None:
        """Bind, discover the mesh once, then serve.

        Raises:
            RuntimeError: the address could not be bound.
        """
        size = self.options.max_message_size
        # None rather than an empty list: a server without interceptors runs none of their code.
        server = grpc.aio.server(interceptors=list(self.options.server_interceptors) or None, options=[
            ("grpc.max_receive_message_length", size),
            ("grpc.max_send_message_length", size),
            # grpc sets SO_REUSEPORT by default: a second process would share a taken port and
            # get half the calls, where a clear "cannot listen" is what an operator needs. Workers
            # share it on purpose; their parent checked the port was free and holds it.
            ("grpc.so_reuseport", int(self._shared_port)),
        ])
        # Own services before the forwarder: grpc tries handlers in the order they were added.
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.add_to_server(self.reflection, server)
        server.add_generic_rpc_handlers((self.forwarder,))
        address = f"{self.host}:{self._requested_port}"
        if self.options.tls is not None:
            port = server.add_secure_port(address, self.options.tls.credentials())
        else:
            port = server.add_insecure_port(address)
        if not port:  # older grpcio reports a failed bind as port 0 instead of raising
            raise RuntimeError(f"cannot listen on {address}")
        # Listener first: the first poll's targets get their descriptors fetched right away.
        self.discovery.add_listener(self.schemas.update)
        await self.discovery.start()
        await server.start()
        self._server, self.port, self._running = server, int(port), True
        log.info("gRPC ingress listening", extra={"address": address, "tls": self.options.tls is not None})

    async def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, refuse new calls, give in-flight ones ``grace`` seconds (the
        options' by default), then stop discovery. The NATS connection stays open."""
        if self._server is None:
            return
        # Health watchers send NOT_SERVING now, within the grace period their streams still have.
        self.health.enter_graceful_shutdown()
        await self._server.stop(self.options.grace if grace is None else grace)
        self._server, self._running = None, False
        await self.discovery.stop()
        await self.schemas.close()
        log.info("gRPC ingress stopped")


async def run_ingress(
    nc: Client, host: str = "0.0.0.0", port: int = 50051, *, options: IngressOptions | None = None
) -> Ingress:
    """Start an ingress on ``host:port`` forwarding to the mesh on ``nc``; ``stop()`` it later.

    Raises:
        RuntimeError: the address could not be bound.
        ValueError: ``options.workers`` is above 1: worker processes connect to NATS on their
            own, so they are started by :func:`gateway.workers.run_workers`, told how.
    """
    if options is not None and options.workers > 1:
        raise ValueError("workers > 1: start them with gateway.workers.run_workers (each worker connects to NATS)")
    ingress = Ingress(nc, host, port, options)
    await ingress.start()
    return ingress
