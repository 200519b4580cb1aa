"""A host process: serves chosen targets over one NATS connection, with health, metrics, logs,
the admin HTTP server and a graceful drain. ``mesh serve`` runs one; ``mesh up`` runs several."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from nats.aio.client import Client
from prometheus_client import REGISTRY, CollectorRegistry

import nats_transport.aio
from health.admin import AdminServer
from health.call_log import CallLog
from health.metrics import (
    Reporter,
    ServerMetrics,
    client_interceptors,
    client_reporter,
    exposition,
    initialize,
    server_reporter,
)
from health.tracing import TracingConfigError, from_environment
from health.transport_metrics import TransportMetrics
from mesh import catalogue
from mesh.call_credentials import forwarding_interceptors
from mesh.config import ConfigError
from mesh.connection import NatsAccess, connect
from mesh.jetstream_event_log import JetStreamEventLog
from mesh.jetstream_storage import JetStreamStorage
from mesh.replication import ReplicaChoice, choose_replicas
from mesh.storage_gate import StorageGate
from mesh.storage_health import StorageHealth
from nats_transport import ServerOptions, ServiceConfig, connection_problem
from servicers.auth import AccessPolicy, LocalVerifier, ServiceTokenSource
from servicers.dependencies import Dependencies
from servicers.error_boundary import ErrorBoundary

if TYPE_CHECKING:
    from gateway.health import HealthClient  # a type only: the host does not load the gateway
    from health.trace_pipeline import Tracing

log = logging.getLogger("mesh.host")

# Seconds between two warnings about the same NATS connection failing.
_WARN_EVERY = 30.0

# The host's own background polls of auth (servicers.auth.LocalVerifier): traced, they would be a
# trace every few seconds that no caller made, burying the ones that matter (as probes would).
_UNTRACED_POLLS = ("/gaming.auth.v1.AuthService/ListRevocations", "/gaming.auth.v1.AuthService/GetVerificationKeys")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass(frozen=True, slots=True, kw_only=True)
class HostConfig:
    """What a host serves and how it reaches NATS.

    Attributes:
        targets: catalogue targets to host.
        nats: where NATS is and the host's credentials there (see mesh.connection).
        secrets_dir: a folder of identity folders (``mesh security init``): when set, each target
            connects as ``secrets_dir/<target>``, its own NATS user with its own permissions,
            even when one process hosts several targets.
        admin_host, admin_port: where /livez /readyz /metrics listen; port None disables,
            0 picks a free port.
        grace: seconds in-flight calls get to finish on SIGTERM.
        drain_pause: seconds between NOT_SERVING and refusing calls, so probes notice first.
        replicas: JetStream replica count for buckets and streams; None (auto): 3 when NATS runs
            a cluster, else 1 (``mesh.replication``).
        max_concurrent_rpcs: per target; more calls get RESOURCE_EXHAUSTED.
        settings: per-target settings handed to servicers (``MESH_<TARGET>_<NAME>``).
        service_config: the gRPC service config of calls from hosted targets to others
            (retries, hedging, timeouts); None: none.
    """

    targets: tuple[str, ...]
    nats: NatsAccess = field(default_factory=NatsAccess)
    secrets_dir: Path | None = None
    admin_host: str = "0.0.0.0"
    admin_port: int | None = 8080
    grace: float = 10.0
    drain_pause: float = 1.0
    replicas: int | None = None
    max_concurrent_rpcs: int | None = None
    settings: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    service_config: ServiceConfig | None = None

    def access_of(self, target: str) -> NatsAccess:
        """How ``target`` connects: as its own identity when ``secrets_dir`` is set."""
        if self.secrets_dir is None:
            return self.nats
        return self.nats.as_identity(self.secrets_dir / target)

    def connection_key(self, target: str) -> str:
        """Targets with the same key share one connection ("" = the host's shared connection)."""
        return target if self.secrets_dir is not None else ""


@dataclass(slots=True)
class _Hosted:
    target: str
    server: Any
    health: Any
    services: tuple[str, ...]
    storage: StorageHealth
    serving: bool = False
    error: str = "starting"
    servicer: Any = None


class Host:
    """Runs targets until :meth:`drain`.

    ``tracing``: the span pipeline of the host's calls; None reads it from the environment at
    start (``health.tracing``: ``OTEL_TRACES_EXPORTER``, ``MESH_TRACE_DIR``), which by default
    asks for none, and then no tracing interceptor is installed at all.
    """

    def __init__(self, config: HostConfig, registry: CollectorRegistry = REGISTRY,
                 tracing: Tracing | None = None) -> None:
        self.config = config
        self._tracing = tracing
        self._owns_tracing = False
        self._connections: dict[str, Client] = {}
        self._hosted: list[_Hosted] = []
        self._registry = registry
        self._transport_metrics = TransportMetrics(registry)
        self._admin: AdminServer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._bring_ups: list[asyncio.Task[None]] = []
        self._channels: dict[tuple[str, str], Any] = {}
        self._event_logs: dict[str, JetStreamEventLog] = {}
        self._verifier: LocalVerifier | None = None
        self._service_tokens: dict[str, ServiceTokenSource] = {}
        self.replicas = ReplicaChoice(1, "not connected yet")
        self._connect_problem = ""
        self.draining = False
        self._started = time.monotonic()

    def __repr__(self) -> str:
        return f"<mesh.Host targets={list(self.config.targets)} draining={self.draining}>"

    @property
    def nc(self) -> Client | None:
        """The first connection (the only one unless targets connect as their own identities)."""
        return next(iter(self._connections.values()), None)

    @property
    def admin_port(self) -> int | None:
        """Where the admin server listens (after start), if it runs."""
        return self._admin.port if self._admin else None

    # -- start ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, start every target's server with health NOT_SERVING, then make each one
        SERVING once its servicer (and so its storage) is ready."""
        modules = {}
        for target in self.config.targets:
            module = catalogue.load(target)
            if module is None:
                raise catalogue.UnknownTarget(f"target {target!r} has no servicer yet")
            modules[target] = module
        if self._tracing is None:
            try:
                self._tracing = from_environment(f"host-{self.config.targets[0]}", skip_methods=_UNTRACED_POLLS)
            except TracingConfigError as error:
                variable, _, message = str(error).partition(": ")
                raise ConfigError(variable, message) from None
            self._owns_tracing = self._tracing is not None
        _initialize_client_metrics(client_reporter(self._registry), self.config.targets)
        # Probes first: while NATS is away the process is alive and says why it is not ready.
        if self.config.admin_port is not None:
            self._admin = AdminServer(self.readiness, self.metrics_text, host=self.config.admin_host,
                                      port=self.config.admin_port, liveness=self.liveness)
            try:
                await self._admin.start()
            except OSError as error:
                self._admin = None
                where = f"{self.config.admin_host}:{self.config.admin_port}"
                reason = os.strerror(error.errno).lower() if error.errno else str(error)
                raise ConfigError("--admin-port", f"cannot listen on {where}: {reason}") from None
        for target in modules:
            key = self.config.connection_key(target)
            if key not in self._connections:
                self._connections[key] = await self._connect(key, self.config.access_of(target))
            self._service_tokens[target] = ServiceTokenSource(
                self._auth_channel(target), target, self._seed_of(target))
        self.replicas = choose_replicas(next(iter(self._connections.values())), self.config.replicas)
        log.info("JetStream replicas", extra={"replicas": self.replicas.replicas, "reason": self.replicas.reason})
        # Started in the background: auth may be hosted here, or start later elsewhere; until
        # the keys arrive, scoped calls get UNAVAILABLE (and the verifier keeps asking).
        self._verifier = LocalVerifier(self._auth_channel(next(iter(modules))))
        self._tasks.append(asyncio.get_running_loop().create_task(self._verifier.start()))
        for target, module in modules.items():
            self._hosted.append(await self._start_target(target, module))
        self._tasks.append(asyncio.get_running_loop().create_task(self._refresh_metrics()))

    async def _connect(self, key: str, access: NatsAccess) -> Client:
        name = key or "shared"
        last_warning = 0.0

        async def on_error(exc: Exception) -> None:
            # nats-py reports each failed attempt (every 0.5 s while NATS is away): say it once
            # in a while, and keep the latest for /readyz.
            nonlocal last_warning
            self._connect_problem = f"{', '.join(access.urls)}: {exc or type(exc).__name__}"
            if time.monotonic() - last_warning >= _WARN_EVERY:
                last_warning = time.monotonic()
                log.warning("NATS error", extra={"connection": name, "error": str(exc) or type(exc).__name__})

        async def on_disconnected() -> None:
            if not self.draining:
                log.warning("NATS disconnected; reconnecting", extra={"connection": name})

        async def on_reconnected() -> None:
            nc = self._connections.get(key)
            url = nc.connected_url.netloc if nc and nc.connected_url else "?"
            log.info("NATS reconnected", extra={"connection": name, "server": url})

        return await connect(
            access,
            name=f"mesh:{name}",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=5,
            error_cb=on_error,
            disconnected_cb=on_disconnected,
            reconnected_cb=on_reconnected,
        )

    def _auth_channel(self, caller: str) -> Any:
        # A plain channel: the verifier's and the token source's own calls to auth need no
        # token, and must not ask the token source for one (it would wait on itself).
        return nats_transport.aio.channel(self.connection_of(caller), "auth")

    def _seed_of(self, target: str) -> Path | None:
        # The nkey that proves to auth which target asks for a service token (secure mode).
        if self.config.secrets_dir is None:
            return None
        seed = self.config.secrets_dir / target / "nkey.seed"
        return seed if seed.is_file() else None

    def connection_of(self, target: str) -> Client:
        """The connection ``target`` serves and calls on."""
        return self._connections[self.config.connection_key(target)]

    async def _start_target(self, target: str, module: Any) -> _Hosted:
        storage = StorageHealth(self.connection_of(target), target)
        reporter = server_reporter(self._registry)
        initialize(reporter, module.SERVICE_NAMES)  # every series at zero before the first call
        # Tracing first, so its span is current while the rest run (logs and exemplars read its
        # trace id); metrics and logs see refusals too; the storage check comes before the access
        # policy so an outage answers at once, even before a token is verified.
        traced = self._tracing is not None
        interceptors: list[Any] = [
            *(self._tracing.server_interceptors(target) if self._tracing is not None else ()),
            ServerMetrics(reporter, exemplars=traced), CallLog(target, traced=traced), StorageGate(storage),
        ]
        # Who may call each method is declared in the protos (gaming.common.v1.access); tokens
        # are verified locally with auth's public keys (one verifier per host). Auth's own
        # methods are all public and carry their own proof, so auth does not verify tokens on
        # them (it would ask itself for its keys).
        assert self._verifier is not None
        interceptors.append(AccessPolicy.for_services(module.SERVICE_NAMES, self._verifier,
                                                      verify_public=target != "auth"))
        # Innermost: turns the RpcError or storage outage a servicer raises into its status.
        interceptors.append(ErrorBoundary())
        server = nats_transport.aio.server(
            self.connection_of(target), target,
            interceptors=interceptors,
            options=ServerOptions(maximum_concurrent_rpcs=self.config.max_concurrent_rpcs),
        )
        health = health_aio.HealthServicer()
        services = tuple(module.SERVICE_NAMES)
        for name in ("", *services):
            await health.set(name, NOT_SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        reflection.enable_server_reflection((*services, reflection.SERVICE_NAME, "grpc.health.v1.Health"), server)
        # Not started here: the server joins its queue group in _bring_up, once the servicer is
        # attached, so no call reaches a replica that would answer UNIMPLEMENTED.
        hosted = _Hosted(target, server, health, services, storage)
        storage.on_change(lambda problem: self._storage_changed(hosted, problem))
        loop = asyncio.get_running_loop()
        self._bring_ups.append(loop.create_task(self._bring_up(hosted, module)))
        self._tasks.append(loop.create_task(storage.run()))
        return hosted

    async def _bring_up(self, hosted: _Hosted, module: Any) -> None:
        # Servicers open their buckets in create(); until that works (JetStream may still be
        # electing a leader, or NATS may be away) the target stays NOT_SERVING and we retry.
        delay = 0.1
        while not self.draining:
            try:
                servicer = await module.create(self._dependencies(hosted))
                break
            except Exception as exc:
                hosted.error = f"{hosted.target}: {exc}"
                log.warning("target not ready, retrying", extra={"target": hosted.target, "error": str(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        else:
            return
        hosted.servicer = servicer
        module.add_to_server(servicer, hosted.server)
        if hosted.storage.problem is None:
            await self._set_health(hosted, SERVING)
        if self.draining:
            return
        await hosted.server.start()  # joins the queue group: calls may arrive from now on
        hosted.serving, hosted.error = True, ""
        log.info("target serving", extra={"target": hosted.target})

    async def _storage_changed(self, hosted: _Hosted, problem: str | None) -> None:
        # Calls are refused by StorageGate the moment the problem is known; health follows here.
        if hosted.servicer is not None and not self.draining:
            await self._set_health(hosted, NOT_SERVING if problem else SERVING)

    @staticmethod
    async def _set_health(hosted: _Hosted, status: int) -> None:
        for name in ("", *hosted.services):
            await hosted.health.set(name, status)

    def _dependencies(self, hosted: _Hosted) -> Dependencies:
        # Storage, the event log and channels all ride on the target's own connection, so its
        # NATS permissions (its buckets, the targets it may call) are what bound them; storage
        # reports to the target's own health, so one target's outage does not stop another.
        target = hosted.target
        nc = self.connection_of(target)
        replicas = self.replicas.replicas
        if target not in self._event_logs:
            self._event_logs[target] = JetStreamEventLog(nc, replicas=replicas, health=hosted.storage)
        return Dependencies(
            storage=JetStreamStorage(nc, replicas=replicas, health=hosted.storage),
            channel=lambda other: self.channel(other, caller=target),
            settings=dict(self.config.settings.get(target, {})),
            replicas=replicas,
            event_log=self._event_logs[target],
            detached=nats_transport.detached,
        )

    def channel(self, target: str, *, caller: str) -> Any:
        """A channel from ``caller`` to ``target`` over ``caller``'s connection, with client
        metrics on, carrying the current caller's token or else ``caller``'s service token."""
        channel = self._channels.get((caller, target))
        if channel is None:
            source = self._service_tokens.get(caller)
            tracing = self._tracing
            # Tracing outermost: its client span is current while the metrics read its trace id.
            interceptors = [*(tracing.client_interceptors(caller, target) if tracing is not None else ()),
                            *client_interceptors(self._registry, exemplars=tracing is not None),
                            *forwarding_interceptors(source.token if source is not None else None)]
            channel = self._channels[(caller, target)] = nats_transport.aio.channel(
                self.connection_of(caller), target, interceptors=interceptors,
                service_config=self.config.service_config)
        return channel

    # -- probes and metrics ---------------------------------------------------------------

    def liveness(self) -> tuple[bool, str]:
        """Alive while the process runs its loop and no connection is stuck: one that claims to
        be connected but has stopped reading (a restart fixes that; a NATS outage does not, so
        it is readiness, not liveness)."""
        for key, nc in self._connections.items():
            problem = connection_problem(nc)
            if problem is not None:
                return False, f"connection {key or 'shared'}: {problem}"
        return True, f"alive for {time.monotonic() - self._started:.0f}s"

    async def readiness(self) -> tuple[bool, str]:
        """Ready when NATS is connected and every hosted target is SERVING."""
        if self.draining:
            return False, "draining"
        down = [key or "shared" for key, nc in self._connections.items() if not nc.is_connected]
        if not self._connections or len(self._connections) < len(
                {self.config.connection_key(t) for t in self.config.targets}):
            return False, "connecting to NATS" + (f": {self._connect_problem}" if self._connect_problem else "")
        if down:
            return False, "NATS not connected: " + ", ".join(down)
        waiting = [h.error or h.target for h in self._hosted if not h.serving]
        if waiting or len(self._hosted) < len(self.config.targets):
            return False, "not serving: " + "; ".join(waiting or ["starting"])
        outages = [f"{h.target}: {h.storage.problem}" for h in self._hosted if h.storage.problem]
        if outages:
            return False, "storage unavailable: " + "; ".join(outages)
        return True, "ready: " + ", ".join(h.target for h in self._hosted)

    def metrics_text(self, accept: str = "") -> tuple[bytes, str]:
        """Prometheus exposition of this process: the text format, or OpenMetrics (the only one
        that shows exemplars) when ``accept``, a scraper's Accept header, asks for it."""
        self._refresh_now()
        return exposition(self._registry, accept)

    def _refresh_now(self) -> None:
        if self._connections:
            self._transport_metrics.refresh((h.server for h in self._hosted), self._connections.values())

    async def _refresh_metrics(self) -> None:
        # Also on a timer, so multiprocess scrapes (mesh up) see fresh transport counters.
        while True:
            self._refresh_now()
            await asyncio.sleep(2.0)

    # -- drain ----------------------------------------------------------------------------

    async def drain(self) -> None:
        """SIGTERM: NOT_SERVING and readiness 503 first, then refuse new calls (queue-group peers
        take them), let in-flight calls finish within the grace period, then drain NATS."""
        if self.draining:
            return
        self.draining = True
        log.info("draining", extra={"grace_s": self.config.grace})
        for task in self._bring_ups:
            task.cancel()  # a target still coming up never joins its queue group now
        for hosted in self._hosted:
            await hosted.health.enter_graceful_shutdown()
        if self.config.drain_pause > 0:
            await asyncio.sleep(self.config.drain_pause)  # a pause by design: probes must see 503
        await asyncio.gather(*(h.server.stop(self.config.grace) for h in self._hosted))
        for task in self._tasks:
            task.cancel()
        if self._verifier is not None:
            await self._verifier.aclose()
        for hosted in self._hosted:
            await _close_servicer(hosted.servicer)
        for nc in self._connections.values():
            if not nc.is_closed:
                with contextlib.suppress(Exception):
                    await nc.drain()
        if self._admin is not None:
            await self._admin.stop()
        if self._owns_tracing and self._tracing is not None:
            await asyncio.to_thread(self._tracing.shutdown)  # exports the spans still queued
        log.info("drained")


def _initialize_client_metrics(reporter: Reporter, targets: tuple[str, ...]) -> None:
    """The client series of every method the hosted targets may call, at zero."""
    called = dict.fromkeys(other for target in targets for other in catalogue.CALLS.get(target, ()))
    for other in called:
        module = catalogue.load(other)
        if module is not None:
            initialize(reporter, module.SERVICE_NAMES)


async def _close_servicer(servicer: Any) -> None:
    # Servicers that watch buckets or run background work expose aclose() or close().
    for name in ("aclose", "close"):
        closer = getattr(servicer, name, None)
        if callable(closer):
            try:
                result = closer()
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                log.exception("closing a servicer failed")
            return


async def check_health(nc: Client, target: str, service: str = "", deadline: float = 1.0) -> int:
    """The grpc.health.v1 status of ``service`` on ``target`` over NATS (UNKNOWN if unreachable)."""
    stub = cast("HealthClient", health_pb2_grpc.HealthStub(nats_transport.aio.channel(nc, target)))
    try:
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=deadline)
    except grpc.aio.AioRpcError:
        return int(health_pb2.HealthCheckResponse.UNKNOWN)
    return int(reply.status)
