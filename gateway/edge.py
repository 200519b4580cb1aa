"""The HTTP edge: a supervised Envoy plus the control plane that configures it, as one handle.

``mesh up`` calls :func:`start_edge` with the gRPC ingress's address, feeds it the services the
ingress discovers (:meth:`Edge.services_changed`), and calls :meth:`Edge.stop` on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from google.protobuf import descriptor_pb2
from google.protobuf.message import Message

from gateway.envoy import EnvoyError, EnvoyOptions, EnvoyProcess
from gateway.envoy_config import EdgeSpec, Resources, TlsPair, build
from gateway.http_rules import DESCRIPTOR_SET_PATH, load_descriptor_set
from gateway.xds import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, ConfigRejected, ControlPlane

__all__ = ["Edge", "ServiceDiscovery", "by_type", "start_edge"]

log = logging.getLogger("gateway.edge")


def by_type(resources: Resources) -> dict[str, tuple[Message, ...]]:
    """``resources`` keyed by xDS type URL, as :meth:`ControlPlane.apply` takes them."""
    return {
        CLUSTER_TYPE: resources.clusters,
        ENDPOINT_TYPE: resources.endpoints,
        LISTENER_TYPE: resources.listeners,
        ROUTE_TYPE: resources.routes,
    }


class ServiceDiscovery(Protocol):
    """What :meth:`Edge.follow` needs of a discovery (``gateway.discovery.Discovery`` has it)."""

    def add_listener(self, listener: Callable[[Mapping[str, Any]], None]) -> None: ...

    def services(self) -> list[str]: ...


class Edge:
    """A running edge. Build it with :func:`start_edge`."""

    def __init__(
        self, spec: EdgeSpec, descriptors: descriptor_pb2.FileDescriptorSet, plane: ControlPlane, envoy: EnvoyProcess
    ) -> None:
        self.spec = spec
        self.plane = plane
        self.envoy = envoy
        self._descriptors = descriptors
        self._pending: tuple[str, ...] | None = None
        self._follower: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        routed = "all" if self.spec.services is None else len(self.spec.services)
        return f"<gateway.Edge http_port={self.spec.http_port} admin_port={self.admin_port} services={routed}>"

    @property
    def http_port(self) -> int:
        """Where Envoy serves HTTP/JSON, gRPC-Web and gRPC."""
        return self.spec.http_port

    @property
    def admin_port(self) -> int:
        """Envoy's admin interface (loopback)."""
        return self.envoy.admin_port

    async def ready(self) -> bool:
        """Whether Envoy runs and says it is ready (for ``mesh up``'s readiness)."""
        return await self.envoy.ready()

    def resources(self) -> Resources:
        """The configuration the current spec asks for."""
        return build(self.spec, self._descriptors)

    async def apply(self, spec: EdgeSpec) -> None:
        """Make ``spec`` live without restarting Envoy (safe xDS order, waiting for ACKs).

        Raises:
            ConfigRejected: Envoy refused it; the previous configuration stays.
            TimeoutError: Envoy did not acknowledge in time.
        """
        async with self._lock:
            await self.plane.apply(by_type(build(spec, self._descriptors)))
            self.spec = spec

    async def set_services(self, services: Iterable[str]) -> None:
        """Route (and transcode, where they have HTTP rules) exactly ``services``."""
        await self.apply(replace(self.spec, services=tuple(sorted(set(services)))))

    async def set_upstream(self, host: str, port: int) -> None:
        """Send the traffic to another ingress address (an endpoint change only)."""
        await self.apply(replace(self.spec, upstream_host=host, upstream_port=port))

    def services_changed(self, services: Iterable[str]) -> None:
        """Discovery callback: follow ``services`` in the background. Bursts of changes are
        coalesced into one update of the latest set; failures are logged, the old routes stay."""
        self._pending = tuple(sorted(set(services)))
        if self._follower is None or self._follower.done():
            self._follower = asyncio.get_running_loop().create_task(self._follow())

    def follow(self, discovery: ServiceDiscovery) -> None:
        """Route every service ``discovery`` has ever seen live, from now on.

        Routes only grow: a service whose targets are all gone stays routed, so its callers get
        the ingress's UNAVAILABLE (HTTP 503, retry later) rather than a 404 that says it does
        not exist.
        """
        seen = set(self.spec.services or ())

        def on_change(_targets: Mapping[str, Any]) -> None:
            seen.update(discovery.services())
            self.services_changed(seen)

        discovery.add_listener(on_change)

    async def _follow(self) -> None:
        while self._pending is not None:
            services, self._pending = self._pending, None
            if services == self.spec.services:
                continue
            try:
                await self.set_services(services)
                log.info("edge routes updated", extra={"services": list(services)})
            except (ConfigRejected, TimeoutError) as exc:
                log.error("edge update failed; previous routes stay", extra={"error": str(exc)})

    async def stop(self) -> None:
        """Stop Envoy, then the control plane."""
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
        await self.envoy.stop()
        await self.plane.stop()


async def start_edge(
    upstream_host: str,
    upstream_port: int,
    http_port: int = 8000,
    *,
    http_host: str = "0.0.0.0",
    services: Iterable[str] | None = None,
    cors_origins: tuple[str, ...] = ("*",),
    descriptor_set: Path = DESCRIPTOR_SET_PATH,
    envoy_options: EnvoyOptions | None = None,
    tls: TlsPair | None = None,
    upstream_ca: Path | None = None,
) -> Edge:
    """Start the control plane and Envoy, push the first configuration, and return once Envoy
    is ready and its HTTP port accepts connections.

    Args:
        upstream_host, upstream_port: the gRPC ingress (HTTP/2).
        http_port, http_host: where Envoy listens.
        services: services to route now (None: every one with HTTP rules); change it later
            with :meth:`Edge.services_changed` or :meth:`Edge.set_services`.
        cors_origins: allowed browser origins (``"*"`` for any).
        descriptor_set: the ``FileDescriptorSet`` holding the HTTP rules.
        envoy_options: how Envoy is run (defaults: :class:`EnvoyOptions`).
        tls: serve HTTPS with this certificate and key.
        upstream_ca: the ingress serves TLS; verify it against this CA.

    Raises:
        EnvoyError: Envoy did not start or become ready.
        ConfigRejected: Envoy refused the first configuration.
    """
    spec = EdgeSpec(
        upstream_host=upstream_host, upstream_port=upstream_port, http_host=http_host, http_port=http_port,
        services=None if services is None else tuple(sorted(set(services))), cors_origins=cors_origins,
        tls=tls, upstream_ca=upstream_ca,
    )
    envoy_options = envoy_options or EnvoyOptions()
    descriptors = load_descriptor_set(descriptor_set)
    plane = ControlPlane()
    await plane.start()
    envoy = EnvoyProcess(xds_host="127.0.0.1", xds_port=plane.port, options=envoy_options)
    edge = Edge(spec, descriptors, plane, envoy)
    try:
        await envoy.start()
        await plane.apply(by_type(edge.resources()), ack_timeout=envoy_options.ready_timeout)
        await envoy.wait_ready()
        await _wait_listening(_dial_host(http_host), http_port, envoy_options.ready_timeout)
    except BaseException:
        await edge.stop()
        raise
    log.info("edge ready", extra={"http_port": http_port, "admin_port": envoy.admin_port})
    return edge


def _dial_host(listen_host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(listen_host, listen_host)


async def _wait_listening(host: str, port: int, within: float) -> None:
    # The listener binds after its routes arrive (it warms first); /ready can be a moment early.
    try:
        async with asyncio.timeout(within):
            while True:
                try:
                    _, writer = await asyncio.open_connection(host, port)
                except OSError:
                    await asyncio.sleep(0.02)
                    continue
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                return
    except TimeoutError as exc:
        raise EnvoyError(f"envoy is not listening on {host}:{port}") from exc
