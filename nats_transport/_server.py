"""A grpc.aio.Server that takes its calls from NATS instead of an HTTP/2 port.

The server subscribes to its target's call subjects (a queue group its replicas share), to its
per-call stream subjects and to cancel messages. Here it admits each call (or refuses it, when
stopping or at its concurrency limit) and hands it to the unary fast path
(``_unary_serving``) or to stream mode (``_stream_serving``); ``_call_routing`` finds the handler
and ``_invocation`` runs it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import grpc
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from nats_transport import _status
from nats_transport._call_routing import CallRouter
from nats_transport._connection_guard import guard_connection, subscribe_direct
from nats_transport._discovery import EndpointStats, ServiceEndpointInfo, ServicesApi
from nats_transport._invocation import HandlerRunner
from nats_transport._metadata import STREAM_HEADER
from nats_transport._options import ServerOptions
from nats_transport._replies import status_reply
from nats_transport._server_stats import TransportStats
from nats_transport._stream import StreamEndpoint, StreamFailure, publish_quietly
from nats_transport._stream_serving import StreamServing
from nats_transport._subjects import cancel_subject, check_token, server_wildcard, stream_prefix_of
from nats_transport._thread_pool import ThreadPool
from nats_transport._unary_serving import UnaryServing

log = logging.getLogger("nats_transport.server")


class Server(grpc.aio.Server):
    """Serves gRPC handlers for one target; its replicas share calls through a queue group."""

    def __init__(
        self,
        nc: Client,
        target: str,
        *,
        interceptors: Sequence[Any] | None = None,
        options: ServerOptions,
    ) -> None:
        self._nc = guard_connection(nc)
        self._target = check_token(target, "target")
        self._options = options
        self._interceptors = tuple(interceptors or ())
        self._router = CallRouter(prefix_len=len(options.subject_prefix) + len(target) + 2)
        self._call_sub: Subscription | None = None
        self._stream_sub: Subscription | None = None
        self._cancel_sub: Subscription | None = None
        self._stream_prefix = ""
        self._streams: dict[str, StreamEndpoint] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._pool = ThreadPool(options.thread_pool_size, f"grpc-nats-{target}")
        self._started = False
        self._stopping = False
        self._refusing = False  # set once the call subscription is drained
        self._terminated = asyncio.Event()
        self._services_api: ServicesApi | None = None
        self.endpoint_stats: dict[str, EndpointStats] = {}
        self.stats = TransportStats()
        runner = HandlerRunner(self._pool)
        self._unary = UnaryServing(
            self._nc,
            options,
            router=self._router,
            runner=runner,
            stats=self.stats,
            endpoints=self.endpoint_stats,
            tasks=self._tasks,
        )
        self._stream_calls = StreamServing(
            self._nc,
            options,
            router=self._router,
            runner=runner,
            stats=self.stats,
            endpoints=self.endpoint_stats,
            streams=self._streams,
        )

    def __repr__(self) -> str:
        state = "stopping" if self._stopping else "serving" if self._started else "new"
        return f"<nats_transport.aio.Server target={self._target!r} {state} in_flight={len(self._tasks)}>"

    @property
    def target(self) -> str:
        """The logical server name replicas share."""
        return self._target

    @property
    def in_flight(self) -> int:
        """Calls being handled now."""
        return len(self._tasks)

    # -- grpc.aio.Server API --------------------------------------------------------------

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        """Add handlers that pick methods themselves (as grpc.aio.Server)."""
        self._router.add_generic(generic_rpc_handlers)

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        """Add a service's method handlers by name (as generated ``add_*_to_server`` does)."""
        self._router.add_registered(service_name, method_handlers)

    def add_insecure_port(self, address: str) -> int:
        """Not applicable: a NATS server listens on subjects, not ports."""
        raise RuntimeError(
            f"nats_transport servers take calls from NATS subject {self._call_wildcard()!r}; "
            "they open no port"
        )

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        """Not applicable: secure the NATS connection instead (TLS options of nats.connect)."""
        raise RuntimeError("nats_transport servers open no port; configure TLS on the NATS connection")

    async def start(self) -> None:
        """Subscribe to this target's calls (queue group = target) and to the per-call inbox."""
        if self._started:
            return
        self._started = True
        self._router.intercept_with(self._interceptors)
        self._stream_prefix = self._stream_calls.prefix = stream_prefix_of(self._nc.new_inbox())
        self._stream_sub = await subscribe_direct(self._nc, f"{self._stream_prefix}.*", self._on_stream_message)
        # Before the calls: a call must never arrive here while its cancel could not.
        self._cancel_sub = await self._nc.subscribe(
            cancel_subject(self._options.subject_prefix, self._target), cb=self._on_cancel
        )
        self._call_sub = await subscribe_direct(self._nc, self._call_wildcard(), self._on_call, queue=self._target)
        self._services_api = ServicesApi(
            self._nc,
            name=self._target,
            version=self._options.version,
            endpoints=self._endpoint_infos,
            stats=lambda: self.endpoint_stats,
        )
        await self._services_api.start()
        await self._nc.flush()

    async def stop(self, grace: float | None) -> None:
        """Refuse new calls at once (queue-group peers take them), finish in-flight ones
        within ``grace`` seconds, then cancel what is left."""
        if self._stopping:
            await self._terminated.wait()
            return
        self._stopping = True
        if self._call_sub is not None:
            # Drain, not unsubscribe: calls the server already routed to us before it saw the
            # UNSUB are still served (within the grace period) instead of silently dropped.
            await _quiet_drain(self._call_sub)
        self._refusing = True
        if self._services_api is not None:
            await self._services_api.stop()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace or 0)
            # Streams still open get a status (UNAVAILABLE, so clients retry elsewhere) rather
            # than silence until their keepalive timeout.
            for endpoint in list(self._streams.values()):
                endpoint.fail(StreamFailure(*_status.SHUTTING_DOWN))
            await self._unary.calls.abandon_all(_status.SHUTTING_DOWN)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
            self._tasks = {task for task in self._tasks if not task.done()}
        for endpoint in list(self._streams.values()):
            endpoint.close()
        if self._stream_sub is not None:
            await _quiet_unsubscribe(self._stream_sub)
        if self._cancel_sub is not None:
            await _quiet_unsubscribe(self._cancel_sub)
        self._unary.calls.close()
        self._pool.shutdown()
        self._terminated.set()

    async def wait_for_termination(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109 - grpc.aio's signature
        """Wait until stopped; return False if ``timeout`` passed first (as grpc.aio)."""
        try:
            await asyncio.wait_for(self._terminated.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # -- discovery ------------------------------------------------------------------------

    def _call_wildcard(self) -> str:
        return server_wildcard(self._options.subject_prefix, self._target)

    def _endpoint_infos(self) -> list[ServiceEndpointInfo]:
        infos = []
        for service, methods in sorted(self._router.services.items()):
            for method in methods:
                infos.append(
                    ServiceEndpointInfo(
                        name=f"{service}.{method}",
                        subject=f"{self._options.subject_prefix}.{self._target}.{service}.{method}",
                        queue_group=self._target,
                        service=service,
                    )
                )
        return infos

    # -- admission and dispatch -----------------------------------------------------------

    def _admit(self, msg: Msg) -> bool:
        limit = self._options.maximum_concurrent_rpcs
        if self._refusing:
            self._spawn(self._refuse(msg, *_status.SHUTTING_DOWN))
            return False
        if limit is not None and len(self._tasks) >= limit:
            self.stats.rejected += 1
            self._spawn(self._refuse(msg, *_status.OVERLOADED))
            return False
        return True

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _on_call(self, msg: Msg) -> None:
        # Called from the connection's reader (subscribe_direct): each call gets its own task.
        if not msg.reply:
            return  # nobody to answer; a publish without reply is not a call
        self.stats.bytes_received += len(msg.data)
        if not self._admit(msg):
            return
        headers = msg.headers
        if headers and headers.get(STREAM_HEADER):
            self._spawn(self._stream_calls.serve(msg))
        else:
            # The unary fast path removes itself from _tasks when it ends (a done callback would
            # cost a trip through the event loop per call); stop() sweeps any it cancelled
            # before they began.
            self._tasks.add(asyncio.get_running_loop().create_task(self._unary.serve(msg)))

    def _on_stream_message(self, msg: Msg) -> None:
        endpoint = self._streams.get(msg.subject[len(self._stream_prefix) + 1 :])
        self.stats.bytes_received += len(msg.data)
        if endpoint is not None:
            endpoint.receive(msg.data, msg.headers)

    async def _on_cancel(self, msg: Msg) -> None:
        """A client gave up a unary call (wire spec §5): cancel its handler if it runs here."""
        try:
            if self._unary.on_cancel(msg):
                return
        except Exception as exc:  # whoever may publish here can send anything
            log.debug("malformed cancel message ignored: %r", exc)
        self.stats.cancels_ignored += 1

    async def _refuse(self, msg: Msg, code: grpc.StatusCode, details: str) -> None:
        # A stream's client waits for stream messages: answer it in that form.
        stream = bool(msg.headers and msg.headers.get(STREAM_HEADER))
        await publish_quietly(self._nc, msg.reply, status_reply(code, details, 0 if stream else None))


async def _quiet_drain(sub: Subscription) -> None:
    try:
        await sub.drain()  # type: ignore[no-untyped-call]
    except Exception as exc:  # connection already closed or draining
        log.debug("subscription drain failed: %s", exc)


async def _quiet_unsubscribe(sub: Subscription) -> None:
    try:
        await sub.unsubscribe()
    except Exception as exc:  # connection already closed
        log.debug("unsubscribe failed: %s", exc)
