"""Prometheus metrics for gRPC calls, with the grpc-ecosystem names.

``ServerMetrics`` is a ``grpc.aio.ServerInterceptor``; ``client_interceptors()`` returns the four
``grpc.aio`` client interceptor kinds. Both report through one :class:`Reporter` (the "call
details + outcome" core, as go-grpc-middleware's reporter), so server and client stay twins.

:func:`initialize` creates every series of a service's methods at zero before the first call (as
go-grpc-prometheus's InitializeMetrics), so rates, ratios and alerts have data from the start.
When the process traces, the handled counter and the histogram carry the call's trace id as an
exemplar (shown in the OpenMetrics exposition only; prometheus-client keeps none in
multiprocess mode).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import REGISTRY

from health.observe import grpc_type, observe_handler, split_method
from health.trace_context import current_trace_id

# Services not worth counting by default: probes and tooling (a selector over service names).
SKIPPED_SERVICES = frozenset({"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                              "grpc.reflection.v1.ServerReflection"})
_PENDING: set[asyncio.Future[None]] = set()  # outcome readers in flight (kept from the GC)
# Seconds. A unary call over NATS on one machine takes a few hundred microseconds: the buckets
# start at 100 us so p50 and p99 of fast calls fall between bounds rather than all in the first.
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Reporter:
    """The counters and histogram of one side (``server`` or ``client``)."""

    def __init__(self, side: str, registry: CollectorRegistry = REGISTRY) -> None:
        labels = ("grpc_type", "grpc_service", "grpc_method")
        prefix = f"grpc_{side}"
        self.started = Counter(f"{prefix}_started_total", f"RPCs started on the {side}.", labels,
                               registry=registry)
        self.handled = Counter(f"{prefix}_handled_total", f"RPCs completed on the {side}, by code.",
                               (*labels, "grpc_code"), registry=registry)
        self.received = Counter(f"{prefix}_msg_received_total", f"Stream messages received by the {side}.",
                                labels, registry=registry)
        self.sent = Counter(f"{prefix}_msg_sent_total", f"Stream messages sent by the {side}.", labels,
                            registry=registry)
        self.seconds = Histogram(f"{prefix}_handling_seconds",
                                 f"Time from start to completion of RPCs on the {side}.", labels,
                                 buckets=BUCKETS, registry=registry)

    def begin(self, kind: str, method: str, trace_id: str = "") -> Call:
        """Count a call as started; the returned object counts its messages and outcome (with
        ``trace_id`` as the exemplar of its outcome, when given)."""
        service, name = split_method(method)
        labels = (kind, service, name)
        self.started.labels(*labels).inc()
        return Call(self, labels, trace_id)

    def initialize(self, kind: str, method: str) -> None:
        """Create the series of ``method`` at zero: started, messages, the histogram, and the
        handled counter for every status code."""
        service, name = split_method(method)
        labels = (kind, service, name)
        for metric in (self.started, self.received, self.sent, self.seconds):
            metric.labels(*labels)
        for code in grpc.StatusCode:
            self.handled.labels(*labels, code.name)


class Call:
    """One call being measured."""

    __slots__ = ("_done", "_labels", "_reporter", "_started", "_trace_id")

    def __init__(self, reporter: Reporter, labels: tuple[str, str, str], trace_id: str = "") -> None:
        self._reporter = reporter
        self._labels = labels
        self._trace_id = trace_id
        self._started = time.perf_counter()
        self._done = False

    def received(self) -> None:
        self._reporter.received.labels(*self._labels).inc()

    def sent(self) -> None:
        self._reporter.sent.labels(*self._labels).inc()

    def finish(self, code: grpc.StatusCode) -> None:
        """Record the outcome once."""
        if self._done:
            return
        self._done = True
        seconds = time.perf_counter() - self._started
        if self._trace_id:
            exemplar = {"trace_id": self._trace_id}
            self._reporter.handled.labels(*self._labels, code.name).inc(exemplar=exemplar)
            self._reporter.seconds.labels(*self._labels).observe(seconds, exemplar=exemplar)
            return
        self._reporter.handled.labels(*self._labels, code.name).inc()
        self._reporter.seconds.labels(*self._labels).observe(seconds)


class ServerMetrics(grpc.aio.ServerInterceptor):
    """Counts every call of the server it is installed on (health and reflection skipped).

    With ``exemplars``, each outcome carries the trace id of the span active in the handler:
    install it after the tracing interceptor, so that span exists when the call begins.
    """

    def __init__(self, reporter: Reporter | None = None, skip: Iterable[str] = SKIPPED_SERVICES,
                 *, exemplars: bool = False) -> None:
        self._reporter = reporter or server_reporter()
        self._skip = frozenset(skip)
        self._exemplars = exemplars

    async def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = await continuation(details)
        if handler is None or split_method(details.method)[0] in self._skip:
            return handler
        kind = grpc_type(handler.request_streaming, handler.response_streaming)
        reporter, method = self._reporter, details.method
        if self._exemplars:
            return observe_handler(handler, lambda: reporter.begin(kind, method, current_trace_id()))
        return observe_handler(handler, lambda: reporter.begin(kind, method))


class _ClientMetrics:
    """Shared by the four client interceptor kinds."""

    def __init__(self, reporter: Reporter, kind: str, exemplars: bool = False) -> None:
        self._reporter = reporter
        self._kind = kind
        self._exemplars = exemplars

    def _begin(self, details: Any) -> Call:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        return self._reporter.begin(self._kind, method, current_trace_id() if self._exemplars else "")

    @staticmethod
    def _on_done(call: Call, rpc: Any) -> None:
        def done(finished: Any) -> None:
            # The status is known once the call is done, but code() is a coroutine on grpc.aio
            # calls: read it in a task (it returns at once).
            async def record() -> None:
                call.finish(await finished.code())

            task = asyncio.ensure_future(record())
            _PENDING.add(task)
            task.add_done_callback(_PENDING.discard)

        rpc.add_done_callback(done)


class ClientUnaryUnaryMetrics(_ClientMetrics, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        call = self._begin(details)
        call.sent()
        rpc = await continuation(details, request)
        self._on_done(call, rpc)
        return rpc


class ClientUnaryStreamMetrics(_ClientMetrics, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        call = self._begin(details)
        call.sent()
        rpc = await continuation(details, request)
        self._on_done(call, rpc)
        return rpc


class ClientStreamUnaryMetrics(_ClientMetrics, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        call = self._begin(details)
        rpc = await continuation(details, request_iterator)
        self._on_done(call, rpc)
        return rpc


class ClientStreamStreamMetrics(_ClientMetrics, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        call = self._begin(details)
        rpc = await continuation(details, request_iterator)
        self._on_done(call, rpc)
        return rpc


_REPORTERS: dict[tuple[str, int], Reporter] = {}


def server_reporter(registry: CollectorRegistry = REGISTRY) -> Reporter:
    """The server-side metrics of ``registry`` (created once per registry)."""
    return _reporter("server", registry)


def client_reporter(registry: CollectorRegistry = REGISTRY) -> Reporter:
    """The client-side metrics of ``registry`` (created once per registry)."""
    return _reporter("client", registry)


def _reporter(side: str, registry: CollectorRegistry) -> Reporter:
    key = (side, id(registry))
    if key not in _REPORTERS:
        _REPORTERS[key] = Reporter(side, registry)
    return _REPORTERS[key]


def client_interceptors(registry: CollectorRegistry = REGISTRY, *, exemplars: bool = False) -> list[Any]:
    """The four grpc.aio client interceptors reporting to ``registry`` (with trace-id exemplars
    when ``exemplars``: install them inside the tracing interceptors, whose span they read)."""
    reporter = client_reporter(registry)
    return [
        ClientUnaryUnaryMetrics(reporter, "unary", exemplars),
        ClientUnaryStreamMetrics(reporter, "server_stream", exemplars),
        ClientStreamUnaryMetrics(reporter, "client_stream", exemplars),
        ClientStreamStreamMetrics(reporter, "bidi_stream", exemplars),
    ]


def initialize(reporter: Reporter, services: Iterable[str],
               pool: descriptor_pool.DescriptorPool | None = None) -> None:
    """Create every series of every method of ``services`` at zero (health and reflection
    skipped). Services are looked up by full name in the protobuf descriptor pool, which the
    generated modules fill when they are imported.

    Raises:
        KeyError: a service the pool does not know.
    """
    pool = pool or descriptor_pool.Default()
    for name in services:
        if name in SKIPPED_SERVICES:
            continue
        for method in pool.FindServiceByName(name).methods:
            kind = grpc_type(method.client_streaming, method.server_streaming)
            reporter.initialize(kind, f"/{name}/{method.name}")


def exposition(registry: CollectorRegistry, accept: str = "") -> tuple[bytes, str]:
    """``registry`` as (body, content type) for a scraper whose Accept header is ``accept``:
    OpenMetrics (the only format that carries exemplars) when it asks for it, as Prometheus does,
    else the classic text format."""
    if "application/openmetrics-text" in accept:
        return openmetrics.generate_latest(registry), openmetrics.CONTENT_TYPE_LATEST  # type: ignore[no-untyped-call]
    return generate_latest(registry), CONTENT_TYPE_LATEST
