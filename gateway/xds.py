"""An xDS control plane: the Aggregated Discovery Service, state of the world, on grpc.aio.

Envoy opens one ADS stream and asks for each resource type; we answer with every resource of
that type (the names it asked for, for endpoints and routes) at the current version, and send
again whenever :meth:`ControlPlane.apply` publishes a new one. Envoy answers every response
with an ACK (``response_nonce`` and the new ``version_info``) or a NACK (``error_detail``, and
the version it kept).

:meth:`ControlPlane.apply` changes the configuration in Envoy's safe order (clusters and their
endpoints, then listeners, then routes), waiting for each step's ACK before the next, so nothing
is referenced before it exists. A NACK stops the change, is logged, and puts the previous
resources back, so the control plane never again serves what Envoy refused (a reconnecting
Envoy would refuse it too).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

__all__ = [
    "CLUSTER_TYPE",
    "ENDPOINT_TYPE",
    "LISTENER_TYPE",
    "ROUTE_TYPE",
    "PUSH_ORDER",
    "ConfigRejected",
    "ControlPlane",
    "resource_name",
]

log = logging.getLogger("gateway.xds")

_PREFIX = "type.googleapis.com/"
CLUSTER_TYPE = _PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT_TYPE = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER_TYPE = _PREFIX + "envoy.config.listener.v3.Listener"
ROUTE_TYPE = _PREFIX + "envoy.config.route.v3.RouteConfiguration"

# Envoy's documented order for changes ("eventual consistency considerations" in the xDS
# protocol): each step only refers to what the steps before it put in place.
PUSH_ORDER: tuple[tuple[str, ...], ...] = ((CLUSTER_TYPE, ENDPOINT_TYPE), (LISTENER_TYPE,), (ROUTE_TYPE,))
_TYPES = tuple(type_url for step in PUSH_ORDER for type_url in step)
# Clusters and listeners are asked for as a wildcard (every one there is); endpoints and routes by
# name, as the clusters and listeners that use them come up.
_WILDCARD_TYPES = frozenset({CLUSTER_TYPE, LISTENER_TYPE})


class ConfigRejected(RuntimeError):
    """Envoy refused (NACKed) a configuration; it keeps, and we serve again, the previous one."""

    def __init__(self, type_url: str, version: str, message: str) -> None:
        super().__init__(f"Envoy rejected {type_url.removeprefix(_PREFIX)} version {version}: {message}")
        self.type_url = type_url
        self.version = version
        self.message = message


def resource_name(resource: Message) -> str:
    """The name xDS knows a resource by (a load assignment is named after its cluster)."""
    name = getattr(resource, "cluster_name", "") or getattr(resource, "name", "")
    if not name:
        raise ValueError(f"{type(resource).__name__} has no name")
    return str(name)


@dataclass(frozen=True, slots=True)
class _Published:
    version: str
    resources: Mapping[str, Message]

    def same(self, resources: Mapping[str, Message]) -> bool:
        return self.resources.keys() == resources.keys() and all(
            self.resources[name].SerializeToString(deterministic=True) == resource.SerializeToString(deterministic=True)
            for name, resource in resources.items()
        )


@dataclass(frozen=True, slots=True)
class _Sent:
    version: str
    nonce: str
    requested: frozenset[str] | None
    names: frozenset[str]


@dataclass(slots=True)
class _Stream:
    """One Envoy's ADS stream: what it asked for, what we sent, what it accepted or refused."""

    id: int
    node: str = ""
    requested: dict[str, frozenset[str] | None] = field(default_factory=dict)
    sent: dict[str, _Sent] = field(default_factory=dict)
    acked: dict[str, _Sent] = field(default_factory=dict)
    rejected: dict[str, tuple[str, str]] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False


class ControlPlane:
    """Serves ADS to Envoy and applies configurations in the safe order."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._address = f"{host}:{port}"
        self._server: Any = None
        self.port = 0
        self._published: dict[str, _Published] = {}
        self._streams: dict[int, _Stream] = {}
        self._stream_ids = itertools.count(1)
        self._nonces = itertools.count(1)
        self._versions = itertools.count(1)
        self._apply_lock = asyncio.Lock()
        self._change = asyncio.Event()

    def __repr__(self) -> str:
        versions = {t.removeprefix(_PREFIX).rsplit(".", 1)[-1]: p.version for t, p in self._published.items()}
        return f"<gateway.ControlPlane port={self.port} streams={len(self._streams)} versions={versions}>"

    async def start(self) -> int:
        """Listen for Envoy; return the port."""
        self._server = grpc.aio.server()
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(_Ads(self), self._server)
        self.port = self._server.add_insecure_port(self._address)
        await self._server.start()
        return self.port

    async def stop(self) -> None:
        """Close the streams and stop listening."""
        if self._server is not None:
            await self._server.stop(0)
            self._server = None

    @property
    def connected(self) -> int:
        """How many Envoy streams are open."""
        return sum(1 for stream in self._streams.values() if not stream.closed)

    def version(self, type_url: str) -> str | None:
        """The version now published for ``type_url`` (None before the first)."""
        published = self._published.get(type_url)
        return published.version if published else None

    def acked_versions(self, type_url: str) -> list[str]:
        """The version of ``type_url`` each open stream last accepted ("" for none yet)."""
        open_streams = [stream for stream in self._streams.values() if not stream.closed]
        return [stream.acked[type_url].version if type_url in stream.acked else "" for stream in open_streams]

    async def apply(self, resources: Mapping[str, Sequence[Message]], ack_timeout: float = 15.0) -> None:
        """Make ``resources`` (by type URL; a missing type means none) Envoy's configuration.

        Steps follow :data:`PUSH_ORDER`; unchanged types are not sent again. Each step waits
        until every connected Envoy (at least one) has accepted it.

        Raises:
            ConfigRejected: Envoy refused a step; everything this call changed is put back.
            TimeoutError: no ACK in ``ack_timeout`` s (no Envoy connected?). The new configuration
                stays published, whole, for an Envoy that connects later.
        """
        wanted = {t: {resource_name(r): r for r in resources.get(t, ())} for t in _TYPES}
        unknown = set(resources) - set(_TYPES)
        if unknown:
            raise ValueError(f"unsupported resource types: {sorted(unknown)}")
        async with self._apply_lock:
            previous = dict(self._published)
            steps = [[t for t in step if not self._unchanged(t, wanted[t])] for step in PUSH_ORDER]
            for index, step in enumerate(s for s in steps if s):
                version = self._publish({t: wanted[t] for t in step})
                try:
                    await self._await_accepted(step, version, ack_timeout)
                except ConfigRejected:
                    await self._restore(previous, ack_timeout)
                    raise
                except TimeoutError:
                    for rest in [s for s in steps if s][index + 1:]:
                        self._publish({t: wanted[t] for t in rest})
                    raise

    # -- publishing -------------------------------------------------------------------------

    def _unchanged(self, type_url: str, resources: Mapping[str, Message]) -> bool:
        published = self._published.get(type_url)
        return published is not None and published.same(resources)

    def _publish(self, by_type: Mapping[str, Mapping[str, Message]]) -> str:
        version = str(next(self._versions))
        for type_url, resources in by_type.items():
            self._published[type_url] = _Published(version, dict(resources))
        for stream in self._streams.values():
            stream.wake.set()
        return version

    async def _restore(self, previous: Mapping[str, _Published], ack_timeout: float) -> None:
        changed = [t for t in _TYPES if self._published.get(t) is not previous.get(t)]
        restore = {t: previous[t].resources if t in previous else {} for t in changed}
        # A fresh version for the old resources: Envoy still runs them, so it ACKs at once and
        # every stream's bookkeeping agrees with what is published again.
        version = self._publish(restore)
        try:
            await self._await_accepted(changed, version, ack_timeout)
        except (ConfigRejected, TimeoutError) as exc:
            log.error("restoring the previous xDS configuration failed", extra={"error": str(exc)})

    def _responses(self, stream: _Stream) -> list[discovery_pb2.DiscoveryResponse]:
        responses = []
        for type_url in _TYPES:
            published = self._published.get(type_url)
            if published is None or type_url not in stream.requested:
                continue  # nothing to say yet, or not asked: Envoy waits for its first answer
            requested = stream.requested[type_url]
            sent = stream.sent.get(type_url)
            if sent is not None and sent.version == published.version and sent.requested == requested:
                continue
            names = frozenset(published.resources if requested is None else requested & published.resources.keys())
            nonce = str(next(self._nonces))
            stream.sent[type_url] = _Sent(published.version, nonce, requested, names)
            responses.append(discovery_pb2.DiscoveryResponse(
                version_info=published.version,
                type_url=type_url,
                nonce=nonce,
                resources=[_packed(published.resources[name]) for name in sorted(names)],
            ))
        return responses

    # -- Envoy's side ----------------------------------------------------------------------

    async def _serve(
        self, requests: AsyncIterator[discovery_pb2.DiscoveryRequest]
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        stream = _Stream(next(self._stream_ids))
        self._streams[stream.id] = stream
        reader = asyncio.get_running_loop().create_task(self._read(requests, stream))
        log.info("envoy connected", extra={"stream": stream.id})
        try:
            while not stream.closed:
                await stream.wake.wait()
                stream.wake.clear()
                for response in self._responses(stream):
                    yield response
        finally:
            reader.cancel()
            del self._streams[stream.id]
            log.info("envoy disconnected", extra={"stream": stream.id, "node": stream.node})
            self._changed()

    async def _read(self, requests: AsyncIterator[discovery_pb2.DiscoveryRequest], stream: _Stream) -> None:
        try:
            async for request in requests:
                self._on_request(stream, request)
        except grpc.aio.AioRpcError:
            pass  # the stream ended under us; _serve cleans up
        finally:
            stream.closed = True
            stream.wake.set()

    def _on_request(self, stream: _Stream, request: discovery_pb2.DiscoveryRequest) -> None:
        type_url = request.type_url
        stream.node = request.node.id or stream.node
        names = frozenset(request.resource_names)
        wildcard = type_url in _WILDCARD_TYPES and (not names or "*" in names)
        if request.response_nonce:
            sent = stream.sent.get(type_url)
            if sent is None or sent.nonce != request.response_nonce:
                return  # answers a response we have since replaced: the protocol says ignore it
            if request.HasField("error_detail"):
                stream.rejected[type_url] = (sent.version, request.error_detail.message)
                log.warning("envoy rejected configuration", extra={
                    "type_url": type_url, "version": sent.version, "kept_version": request.version_info,
                    "node": stream.node, "error": request.error_detail.message,
                })
            else:
                stream.acked[type_url] = sent
        stream.requested[type_url] = None if wildcard else names
        stream.wake.set()
        self._changed()

    # -- waiting for Envoy -----------------------------------------------------------------

    def _changed(self) -> None:
        self._change.set()
        self._change = asyncio.Event()

    def _accepted(self, types: Iterable[str], version: str) -> bool:
        streams = [stream for stream in self._streams.values() if not stream.closed]
        for stream in streams:
            for type_url in types:
                rejected = stream.rejected.get(type_url)
                if rejected is not None and rejected[0] == version:
                    raise ConfigRejected(type_url, version, rejected[1])
        return bool(streams) and all(self._stream_accepted(stream, t, version) for stream in streams for t in types)

    def _stream_accepted(self, stream: _Stream, type_url: str, version: str) -> bool:
        expected = frozenset(self._published[type_url].resources)
        if not expected and type_url not in _WILDCARD_TYPES:
            return True  # nothing of this type to deliver, and Envoy asks for none
        acked = stream.acked.get(type_url)
        # Endpoints and routes are asked for by name once the clusters and listeners using
        # them are in: accepted means a response holding all of them was ACKed.
        return acked is not None and acked.version == version and expected <= acked.names

    async def _await_accepted(self, types: Sequence[str], version: str, ack_timeout: float) -> None:
        async with asyncio.timeout(ack_timeout):
            while not self._accepted(types, version):
                await self._change.wait()


class _Ads(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]  # untyped generated base
    def __init__(self, plane: ControlPlane) -> None:
        self._plane = plane

    async def StreamAggregatedResources(  # the generated servicer's method name
        self, request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest], context: Any
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        async for response in self._plane._serve(request_iterator):
            yield response


def _packed(resource: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(resource)
    return packed
