"""Tracing on vs off: the span pipeline a host builds under ``mesh up --trace``, and a check of
what it wrote.

``mesh up --trace`` sets ``MESH_TRACE_DIR`` for its hosts and nothing else, so a host's
:func:`health.tracing.from_environment` gives it the project's own pipeline (the stock
OpenTelemetry gRPC interceptors, ours inside them, a batch span processor) exporting to a
:class:`health.span_file.SpanFile` there. The traced server and client build theirs the same way,
from an environment holding only that variable, so an ``OTEL_TRACES_EXPORTER`` in the shell that
starts the benchmark neither adds an exporter nor changes what is measured. Without a folder the
same call returns None and nothing is installed: the untraced cases go through it too, so "off"
is, by construction, the code every other nats_transport case runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from health.tracing import TRACE_DIR, from_environment

if TYPE_CHECKING:
    from health.trace_pipeline import Tracing

# The span files' names (a host's is host-<its first target>); the client's spans name the caller.
SERVER_PROCESS = "host-bench-server"
CLIENT_PROCESS = "host-bench-client"
CALLER = "benchclient"


def tracing(process: str, trace_dir: str | None) -> Tracing | None:
    """The pipeline of ``process`` writing spans into ``trace_dir``, or None (off) without one."""
    return from_environment(process, {TRACE_DIR: trace_dir} if trace_dir else {})


@dataclass(frozen=True, slots=True)
class Kept:
    """The spans still in the span files after a run (each file rotates at its bound, so these are
    the most recent ones, not every call)."""

    server: int
    client: int
    continued: int  # server spans whose trace a kept client span began

    def problem(self) -> str | None:
        """Why these spans show the traced case did not trace end to end, or None."""
        if not self.server or not self.client:
            return f"the span files hold {self.server} server and {self.client} client spans"
        if not self.continued:
            return "no server span continues a trace a client span began (traceparent lost)"
        return None


def kept(trace_dir: Path) -> Kept:
    """Count the spans of the traced server and client in ``trace_dir``."""
    # Here, not at the top: only the orchestrator reads spans back.
    from health.span_file import SpansUnreadable, read_spans, span_files

    def spans(process: str) -> list[tuple[str, str | None]]:
        try:
            files = [p for p in span_files(trace_dir) if p.name.startswith(process)]
        except SpansUnreadable:  # no folder, or no spans files in it: counted as none
            files = []
        return [(s.trace_id, s.parent_id) for s in read_spans(files)]

    server, client = spans(SERVER_PROCESS), spans(CLIENT_PROCESS)
    began = {trace_id for trace_id, _ in client}
    continued = sum(1 for trace_id, parent in server if parent is not None and trace_id in began)
    return Kept(len(server), len(client), continued)
