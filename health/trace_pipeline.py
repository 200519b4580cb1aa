"""The span pipeline of a traced process: tracer providers, the stock gRPC interceptors, the two
small interceptors of ours that run inside their spans, and the exporters. Imported only when
tracing is on (``health.tracing``), so an untraced process loads none of the SDK.

Ours add the NATS facts (``messaging.system``, the subject, the target called) and, on server
spans, the status the call really ended with: the stock aio server interceptor sees ``abort``
and ``set_code`` but not ``abort_with_status`` (how the servicers fail calls, with rich details)
nor a handler's exception, so without this their spans would read OK.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import entry_points
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import (
    aio_client_interceptors,
    aio_server_interceptor,
    filters,
)
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Status, StatusCode

from health.metrics import SKIPPED_SERVICES
from health.observe import observe_handler, split_method
from health.tracing import (
    DEFAULT_SUBJECT_PREFIX,
    MESSAGING_DESTINATION,
    MESSAGING_SYSTEM,
    OTLP_PROTOCOL,
    PEER_SERVICE,
    RPC_GRPC_STATUS_CODE,
    TRACES_EXPORTER,
    TracingConfigError,
    subject_of,
)

_EXPORTER_GROUP = "opentelemetry_traces_exporter"


class Tracing:
    """The span pipeline of one process and the interceptors that feed it.

    Each target gets a tracer provider of its own, so spans name the target that made them
    (``service.name``) even when one process hosts several; all of them share the exporters.
    """

    def __init__(self, exporters: Sequence[SpanExporter], *, subject_prefix: str = DEFAULT_SUBJECT_PREFIX,
                 skip_methods: Sequence[str] = (), environ: Mapping[str, str] = os.environ) -> None:
        self._processors = [BatchSpanProcessor(e) for e in exporters]
        # Probes and tooling make no spans, as they make no call-log lines or metrics; nor do
        # ``skip_methods`` (full names: a process's own background polls, say).
        self._filter = filters.negate(filters.any_of(
            *(filters.service_name(s) for s in sorted(SKIPPED_SERVICES)),
            *(filters.full_method_name(m) for m in skip_methods),
        ))
        self._prefix = subject_prefix
        self._environ = environ
        self._providers: dict[str, TracerProvider] = {}

    def provider(self, target: str) -> TracerProvider:
        """The tracer provider of ``target`` (created once)."""
        provider = self._providers.get(target)
        if provider is None:
            provider = TracerProvider(resource=_resource(target, self._environ), shutdown_on_exit=False)
            for processor in self._processors:
                provider.add_span_processor(processor)
            self._providers[target] = provider
        return provider

    def server_interceptors(self, target: str, *, over_nats: bool = True) -> list[Any]:
        """The stock grpc.aio server interceptor for ``target``'s server (put it first: its span
        must be current while the interceptors after it run, so logs and metrics see it).

        ``over_nats=False`` is for a server that takes its calls over HTTP/2 (the ingress): its
        spans get the outcome but no NATS subject, since none carried the call to it.
        """
        stock = aio_server_interceptor(tracer_provider=self.provider(target), filter_=self._filter)  # type: ignore[no-untyped-call]
        return [stock, ServerSpanFacts(target, self._prefix if over_nats else None)]

    def client_interceptors(self, caller: str, target: str) -> list[Any]:
        """The stock grpc.aio client interceptors for calls from ``caller`` to ``target``, and
        ours inside them that names the NATS subject on their span."""
        stock: list[Any] = aio_client_interceptors(  # type: ignore[no-untyped-call]
            tracer_provider=self.provider(caller), filter_=self._filter)
        return [*stock, ClientSubject(target, self._prefix)]

    def flush(self) -> None:
        """Export the spans ended so far now, rather than at the next batch (blocks)."""
        for provider in self._providers.values():
            provider.force_flush()

    def shutdown(self) -> None:
        """Export what is still queued, then stop the exporters."""
        self.flush()
        for processor in self._processors:
            processor.shutdown()  # type: ignore[no-untyped-call]


# The codes that make a server span an error (OpenTelemetry's gRPC conventions: the others are
# the caller's doing, so the server span stays unset, as the stock interceptor does for abort()).
SERVER_ERRORS = frozenset({grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNIMPLEMENTED,
                           grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS})


class ServerSpanFacts(grpc.aio.ServerInterceptor):
    """Runs inside the stock server interceptor's span (install it right after): adds the NATS
    facts when a call begins and the status code it ended with."""

    def __init__(self, target: str, prefix: str | None = DEFAULT_SUBJECT_PREFIX) -> None:
        self._target = target
        self._prefix = prefix  # None: the calls do not come over NATS (no subject to name)

    async def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = await continuation(details)
        if handler is None or split_method(details.method)[0] in SKIPPED_SERVICES:
            return handler
        subject = None if self._prefix is None else subject_of(self._prefix, self._target, details.method)
        return observe_handler(handler, lambda: _SpanOutcome(subject))


class _SpanOutcome:
    """The observer of one call: tells its span where the call travelled and how it ended."""

    __slots__ = ("_span",)

    def __init__(self, subject: str | None) -> None:
        self._span = trace.get_current_span()
        if subject is not None and self._span.is_recording():
            self._span.set_attributes({MESSAGING_SYSTEM: "nats", MESSAGING_DESTINATION: subject})

    def received(self) -> None:
        pass

    def sent(self) -> None:
        pass

    def finish(self, code: grpc.StatusCode) -> None:
        if code is grpc.StatusCode.OK or not self._span.is_recording():
            return
        self._span.set_attribute(RPC_GRPC_STATUS_CODE, code.value[0])
        if code in SERVER_ERRORS:
            self._span.set_status(Status(StatusCode.ERROR, code.name))


class ClientSubject(
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
    grpc.aio.StreamUnaryClientInterceptor,
    grpc.aio.StreamStreamClientInterceptor,
):
    """Runs inside the stock client interceptor's span and adds the messaging attributes and the
    target called (``peer.service``) to it; the call itself passes through untouched."""

    def __init__(self, target: str, prefix: str = DEFAULT_SUBJECT_PREFIX) -> None:
        self._target = target
        self._prefix = prefix

    def _tag(self, details: Any) -> None:
        span = trace.get_current_span()
        if span.is_recording():
            method = details.method.decode() if isinstance(details.method, bytes) else details.method
            span.set_attributes({
                MESSAGING_SYSTEM: "nats",
                MESSAGING_DESTINATION: subject_of(self._prefix, self._target, method),
                PEER_SERVICE: self._target,
            })

    async def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        self._tag(details)
        return await continuation(details, request)

    async def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        self._tag(details)
        return await continuation(details, request)

    async def intercept_stream_unary(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        self._tag(details)
        return await continuation(details, requests)

    async def intercept_stream_stream(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        self._tag(details)
        return await continuation(details, requests)


def exporters_from(environ: Mapping[str, str]) -> list[SpanExporter]:
    """The exporters ``OTEL_TRACES_EXPORTER`` names (none when unset or ``none``).

    ``otlp`` is OTLP over HTTP/protobuf, the one OTLP protocol installed here: gRPC OTLP would
    need a second grpcio constraint. The rest come from the exporters the SDK registers.
    """
    names = [n.strip() for n in environ.get(TRACES_EXPORTER, "").split(",") if n.strip()]
    exporters: list[SpanExporter] = []
    for name in names:
        if name.lower() == "none":
            continue
        if name == "otlp":
            # The signal's own variable wins over the general one, as in the SDK.
            variable = next((v for v in OTLP_PROTOCOL if environ.get(v, "").strip()), None)
            protocol = environ[variable].strip() if variable else "http/protobuf"
            if protocol != "http/protobuf":
                raise TracingConfigError(f"{variable}: {protocol!r}: only http/protobuf is supported")
            name = "otlp_proto_http"
        found = entry_points(group=_EXPORTER_GROUP, name=name)
        if not found:
            known = sorted({"none", "otlp", *(e.name for e in entry_points(group=_EXPORTER_GROUP))})
            raise TracingConfigError(f"{TRACES_EXPORTER}: unknown exporter {name!r}; known: {', '.join(known)}")
        try:
            exporters.append(next(iter(found)).load()())
        except ImportError as error:
            # xds-protos ships an old copy of opentelemetry-proto's modules; installed after it,
            # it leaves the OTLP exporter unable to import (docs/operations.md, "Tracing").
            raise TracingConfigError(
                f"{TRACES_EXPORTER}: {name}: {error}; reinstall opentelemetry-proto after the rest: "
                "pip install --no-deps --force-reinstall opentelemetry-proto") from None
        except Exception as error:  # an exporter's own settings (OTEL_EXPORTER_*) it refuses
            raise TracingConfigError(f"{TRACES_EXPORTER}: {name}: {error}") from None
    return exporters


def _resource(target: str, environ: Mapping[str, str]) -> Resource:
    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES from os.environ; the
    # target is the default only when neither names the service.
    named = environ.get("OTEL_SERVICE_NAME") or "service.name=" in environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    return Resource.create() if named else Resource.create({SERVICE_NAME: target})
