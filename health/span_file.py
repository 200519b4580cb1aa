"""Recent spans as JSON lines in a file of bounded size, and reading them back.

``mesh up --trace`` gives each host process a :class:`SpanFile` in ``<data-dir>/traces/`` so a
trace can be looked at (``mesh trace``) without a tracing backend. One file per process: no two
processes ever append to or rotate the same file. A file that reaches its bound is renamed to
``<name>.1`` (replacing the previous one) and a new one started, so a process keeps between one
and two bounds' worth of its most recent spans.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

SUFFIX = ".jsonl"
ROTATED = ".1"
DEFAULT_MAX_BYTES = 4 * 1024 * 1024


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """One span as the JSON object of a line: ids in W3C hex, times in ns since the epoch."""
    context = span.context
    parent = span.parent
    assert context is not None  # every span the SDK ends has one
    return {
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "parent_id": f"{parent.span_id:016x}" if parent is not None else None,
        "name": span.name,
        "kind": span.kind.name.lower(),
        "service": span.resource.attributes.get("service.name", ""),
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": span.status.status_code.name,
        "description": span.status.description or "",
        "attributes": dict(span.attributes or {}),
    }


class SpanFile(SpanExporter):
    """Appends finished spans to ``path``, one JSON object per line, rotating at ``max_bytes``."""

    def __init__(self, path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = path
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        data = "".join(json.dumps(span_record(s), default=str) + "\n" for s in spans).encode()
        try:
            with self._lock:
                self._rotate_if_full(len(data))
                # One write of whole lines: a reader never sees half a batch from a live writer.
                with open(self.path, "ab") as file:
                    file.write(data)
        except OSError:
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def _rotate_if_full(self, adding: int) -> None:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size and size + adding > self._max_bytes:
            os.replace(self.path, self.path.with_name(self.path.name + ROTATED))

    def shutdown(self) -> None:
        """Nothing is held open between batches."""

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Every batch is written when exported."""
        return True


class SpansUnreadable(ValueError):
    """A spans file or folder that cannot be read; the message is one line naming it."""


@dataclass(frozen=True, slots=True)
class SpanLine:
    """A span read back from a file (the fields :func:`span_record` writes)."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: str
    service: str
    start_ns: int
    end_ns: int
    status: str
    description: str
    attributes: dict[str, Any]

    @property
    def duration_ns(self) -> int:
        """How long the span lasted."""
        return max(self.end_ns - self.start_ns, 0)


def span_files(where: Path) -> list[Path]:
    """The spans files in a folder (rotated ones included), or the one file named.

    Raises:
        SpansUnreadable: ``where`` does not exist, or is a folder without spans files.
    """
    if where.is_file():
        return [where]
    if not where.is_dir():
        raise SpansUnreadable(f"{where}: no such file or folder")
    files = sorted(p for p in where.iterdir() if p.name.endswith((SUFFIX, SUFFIX + ROTATED)) and p.is_file())
    if not files:
        raise SpansUnreadable(f"{where}: no spans files (*{SUFFIX})")
    return files


def read_spans(files: Iterable[Path]) -> Iterator[SpanLine]:
    """Every span in ``files``, in file order.

    Raises:
        SpansUnreadable: a file cannot be read, or a line is not a span record (naming it).
    """
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise SpansUnreadable(f"{path}: cannot read: {getattr(error, 'strerror', None) or error}") from None
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                yield _parse(line, path, number)


def _parse(line: str, path: Path, number: int) -> SpanLine:
    try:
        record = json.loads(line)
        return SpanLine(
            trace_id=str(record["trace_id"]), span_id=str(record["span_id"]),
            parent_id=None if record["parent_id"] is None else str(record["parent_id"]),
            name=str(record["name"]), kind=str(record["kind"]), service=str(record["service"]),
            start_ns=int(record["start_ns"]), end_ns=int(record["end_ns"]),
            status=str(record["status"]), description=str(record.get("description") or ""),
            attributes=dict(record.get("attributes") or {}),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        reason = error.msg if isinstance(error, json.JSONDecodeError) else f"not a span record ({error!r})"
        raise SpansUnreadable(f"{path}:{number}: {reason}") from None
