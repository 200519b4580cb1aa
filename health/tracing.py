"""OpenTelemetry traces of the calls a process serves and makes, configured the standard way.

The spans are the stock ``opentelemetry-instrumentation-grpc`` interceptors' (they set
``rpc.system``, ``rpc.service``, ``rpc.method`` and ``rpc.grpc.status_code`` and carry
``traceparent`` in the call metadata, which the NATS transport delivers); this module adds only
``messaging.system=nats`` and the NATS subject of the call, and the exporters.

Settings are the SDK's own variables: ``OTEL_TRACES_EXPORTER`` (``otlp``, ``console``, any
exporter registered under ``opentelemetry_traces_exporter``, comma-separated; ``none`` or unset
is off), ``OTEL_EXPORTER_OTLP_ENDPOINT`` and the other ``OTEL_EXPORTER_OTLP_*`` variables (read
by the exporter), ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` (read by the resource;
the default name is the target), ``OTEL_TRACES_SAMPLER`` and ``_ARG`` (read by the tracer
provider), ``OTEL_BSP_*`` (read by the batch processor). ``MESH_TRACE_DIR``, set by
``mesh up --trace``, also keeps the spans in a file there (``health.span_file``).

Off (no exporter, no trace folder) means :func:`from_environment` returns None and nothing is
installed: calls run without any tracing code in their path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from health.trace_pipeline import Tracing

TRACES_EXPORTER = "OTEL_TRACES_EXPORTER"
OTLP_PROTOCOL = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
TRACE_DIR = "MESH_TRACE_DIR"
DEFAULT_SUBJECT_PREFIX = "grpc"

# Span attributes of ours (OpenTelemetry messaging conventions): which system carried the call
# and on which subject; on client spans, which target was called.
MESSAGING_SYSTEM = "messaging.system"
MESSAGING_DESTINATION = "messaging.destination.name"
PEER_SERVICE = "peer.service"
RPC_GRPC_STATUS_CODE = "rpc.grpc.status_code"  # set by the stock interceptors; corrected by ours


class TracingConfigError(ValueError):
    """An OTEL_* or MESH_TRACE_DIR value that cannot be used; the message names the variable."""


def subject_of(prefix: str, target: str, method: str) -> str:
    """The NATS call subject of ``/pkg.Service/Method`` on ``target`` (docs/wire-protocol.md)."""
    service, _, name = method.lstrip("/").partition("/")
    return f"{prefix}.{target}.{service}.{name}"


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment asks for traces: an exporter other than ``none``, or a folder."""
    names = {n.strip().lower() for n in environ.get(TRACES_EXPORTER, "").split(",")} - {"", "none"}
    return bool(names) or bool(environ.get(TRACE_DIR, "").strip())


def from_environment(process: str, environ: Mapping[str, str] = os.environ, *,
                     skip_methods: Sequence[str] = ()) -> Tracing | None:
    """The tracing the environment asks for, or None when it asks for none (the default).

    ``process`` names this process's spans file in ``MESH_TRACE_DIR``; calls of
    ``skip_methods`` (full names) make no spans.

    Raises:
        TracingConfigError: an exporter that does not exist or cannot start, naming the variable.
    """
    if not wanted(environ):
        return None
    # Here, not at the top: a process that does not trace never loads the SDK.
    from health.span_file import SUFFIX, SpanFile
    from health.trace_pipeline import Tracing, exporters_from

    exporters = exporters_from(environ)
    folder = environ.get(TRACE_DIR, "").strip()
    if folder:
        exporters.append(SpanFile(Path(folder) / f"{process}{SUFFIX}"))
    return Tracing(exporters, skip_methods=skip_methods, environ=environ) if exporters else None
