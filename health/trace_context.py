"""The trace id of the span active where a call is handled, for logs and exemplars.

Only the OpenTelemetry API (a context lookup): call logs and metrics ask for it only when the
process traces (``health.tracing``), so an untraced call never pays for it.
"""

from __future__ import annotations

from opentelemetry import trace


def current_trace_id() -> str:
    """The trace id (32 hex digits) of the span active in this context, or ''."""
    context = trace.get_current_span().get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else ""
