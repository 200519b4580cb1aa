"""Structured JSON logs: one line per event; one line per call with target, method, code,
duration and trace id (a ``grpc.aio.ServerInterceptor``).

The trace id is the one of the caller's ``traceparent``; when the process traces
(``health.tracing``), it is the trace id of the call's server span, so logs and traces agree even
for a call that arrived without one.
"""

from __future__ import annotations

import datetime
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc

from health.metrics import SKIPPED_SERVICES
from health.observe import grpc_type, observe_handler, split_method
from health.trace_context import current_trace_id

log = logging.getLogger("mesh.calls")


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object per line; ``extra=`` fields are kept."""

    _STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in self._STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_json_logging(level: str = "INFO") -> None:
    """Send every log record to stderr as one JSON line."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def trace_id(metadata: Any) -> str:
    """The W3C trace id of ``traceparent`` in the call's metadata, or ''."""
    for key, value in metadata or ():
        if key.lower() == "traceparent" and isinstance(value, str):
            parts = value.split("-")
            return parts[1] if len(parts) == 4 else ""
    return ""


# Code -> log level, kept as data (a table, not branches): client mistakes are not server errors.
LEVEL_BY_CODE = {
    grpc.StatusCode.OK: logging.INFO,
    grpc.StatusCode.CANCELLED: logging.INFO,
    grpc.StatusCode.INVALID_ARGUMENT: logging.INFO,
    grpc.StatusCode.NOT_FOUND: logging.INFO,
    grpc.StatusCode.ALREADY_EXISTS: logging.INFO,
    grpc.StatusCode.ABORTED: logging.INFO,
    grpc.StatusCode.FAILED_PRECONDITION: logging.INFO,
    grpc.StatusCode.OUT_OF_RANGE: logging.INFO,
    grpc.StatusCode.UNAUTHENTICATED: logging.INFO,
    grpc.StatusCode.PERMISSION_DENIED: logging.WARNING,
    grpc.StatusCode.RESOURCE_EXHAUSTED: logging.WARNING,
    grpc.StatusCode.DEADLINE_EXCEEDED: logging.WARNING,
    grpc.StatusCode.UNAVAILABLE: logging.WARNING,
}


class CallLog(grpc.aio.ServerInterceptor):
    """Logs every finished call of a target (health and reflection skipped).

    With ``traced``, the trace id is read from the span active in the handler: install it after
    the tracing interceptor, whose span is current by the time the call begins.
    """

    def __init__(self, target: str, *, traced: bool = False) -> None:
        self._target = target
        self._traced = traced

    async def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = await continuation(details)
        if handler is None or split_method(details.method)[0] in SKIPPED_SERVICES:
            return handler
        fields = {
            "target": self._target,
            "method": details.method,
            "type": grpc_type(handler.request_streaming, handler.response_streaming),
            "trace_id": trace_id(details.invocation_metadata),
        }
        if self._traced:
            return observe_handler(handler, lambda: _LoggedCall(_with_span_trace_id(fields)))
        return observe_handler(handler, lambda: _LoggedCall(fields))


def _with_span_trace_id(fields: dict[str, str]) -> dict[str, str]:
    # The server span continues the caller's trace, or starts one when the call carried none.
    active = current_trace_id()
    return {**fields, "trace_id": active} if active else fields


class _LoggedCall:
    """Writes the call's log line when it finishes."""

    __slots__ = ("_fields", "_started")

    def __init__(self, fields: dict[str, str]) -> None:
        self._fields = fields
        self._started = time.perf_counter()

    def received(self) -> None:
        pass

    def sent(self) -> None:
        pass

    def finish(self, code: grpc.StatusCode) -> None:
        duration_ms = round((time.perf_counter() - self._started) * 1000, 3)
        log.log(LEVEL_BY_CODE.get(code, logging.ERROR), "call finished",
                extra={**self._fields, "code": code.name, "duration_ms": duration_ms})
