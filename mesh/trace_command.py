"""mesh trace [TRACE_ID | --last]: print a trace that ``mesh up --trace`` kept, as a waterfall.

Each row is one span: when it started (ms after the trace's first span), a bar on the trace's
timeline, how long it took, its gRPC status, who made it (a server span names its target, a
client span the caller and the target it called), the method and the NATS subject. Children are
indented under their parent. The last line says whether any hop failed and, if so, where the
failure began: the first failed span none of whose children failed.

A spans file or folder that is missing or garbled, a malformed trace id or one not found is one
line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TextIO

import grpc

from health.span_file import SpanLine, SpansUnreadable, read_spans, span_files

EXIT_OK = 0
EXIT_USAGE = 2
_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_BAR = 24


class TraceNotShown(ValueError):
    """What was asked for cannot be shown; the message is one line."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``mesh trace``."""
    parser.add_argument("trace_id", nargs="?", metavar="TRACE_ID",
                        help="the trace to show: 32 hex digits, as in the JSON call logs (default: --last)")
    parser.add_argument("--last", action="store_true", help="the trace that started last")
    parser.add_argument("--data-dir", type=Path, default=Path(".mesh-data"), metavar="DIR",
                        help="the data dir of 'mesh up --trace'; its spans are in DIR/traces (./.mesh-data)")
    parser.add_argument("--spans", type=Path, default=None, metavar="PATH",
                        help="read this spans file or folder instead of DIR/traces")


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """The ``mesh trace`` command: 0 after printing the trace, 2 when it cannot be shown."""
    out = out or sys.stdout
    try:
        trace_id = _wanted_id(args.trace_id, args.last)
        where = args.spans if args.spans is not None else args.data_dir / "traces"
        if args.spans is None and not where.exists():
            raise TraceNotShown(f"{where}: no such folder: run the mesh with 'mesh up --trace' "
                                "(and give both the same --data-dir)")
        spans = list(read_spans(span_files(where)))
        out.write(waterfall(select(spans, trace_id, where)))
    except (SpansUnreadable, TraceNotShown) as error:
        print(f"mesh trace: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def _wanted_id(given: str | None, last: bool) -> str | None:
    if given is not None and last:
        raise TraceNotShown("give a TRACE_ID or --last, not both")
    if given is None:
        return None
    trace_id = given.strip().lower()
    if not _TRACE_ID.fullmatch(trace_id):
        raise TraceNotShown(f"{given!r} is not a trace id (32 hex digits)")
    return trace_id


def select(spans: Sequence[SpanLine], trace_id: str | None, where: Path) -> list[SpanLine]:
    """The spans of ``trace_id``, or of the trace that started last when it is None.

    Raises:
        TraceNotShown: there are no spans, or none of that trace.
    """
    if not spans:
        raise TraceNotShown(f"{where}: no spans yet (make a call to a 'mesh up --trace')")
    if trace_id is None:
        starts: dict[str, int] = {}
        for span in spans:
            starts[span.trace_id] = min(starts.get(span.trace_id, span.start_ns), span.start_ns)
        trace_id = max(starts, key=lambda t: starts[t])
    chosen = [s for s in spans if s.trace_id == trace_id]
    if not chosen:
        raise TraceNotShown(f"no trace {trace_id} in {where}")
    return chosen


def waterfall(spans: Sequence[SpanLine]) -> str:
    """The waterfall of one trace's spans, ending with one line on its errors."""
    begin = min(s.start_ns for s in spans)
    total = max(max(s.end_ns for s in spans) - begin, 1)
    services = {s.service for s in spans}
    failed = [s for _, s in _walk(spans) if _failed(s)]
    lines = [f"trace {spans[0].trace_id}: {len(spans)} spans, {len(services)} services, {_ms(total)}",
             f"{'at (ms)':>9}  {'':{_BAR + 2}}  {'took':>10}  {'status':<19} span"]
    for depth, span in _walk(spans):
        offset = span.start_ns - begin
        lines.append(f"{offset / 1e6:>9.3f}  {_bar(offset, span.duration_ns, total)}  {_ms(span.duration_ns):>10}  "
                     f"{_status(span):<19} {'  ' * depth}{_who(span)}  {_method(span)}  {_subject(span)}".rstrip())
    if failed:
        origin = _origin(failed)
        description = _description(origin, failed)
        why = f": {description}" if description else ""
        lines.append(f"{len(failed)} of {len(spans)} spans failed; it began at {_who(origin)} "
                     f"{_method(origin)} with {_status(origin)}{why}")
    else:
        lines.append(f"no errors in {len(spans)} spans")
    return "\n".join(lines) + "\n"


def _walk(spans: Sequence[SpanLine]) -> Iterable[tuple[int, SpanLine]]:
    """Depth-first, children by start time; a span whose parent is not here is a root (its
    parent may be a caller that does not trace, or a span not kept any more)."""
    ids = {s.span_id for s in spans}
    children: dict[str | None, list[SpanLine]] = defaultdict(list)
    for span in spans:
        children[span.parent_id if span.parent_id in ids else None].append(span)
    for siblings in children.values():
        siblings.sort(key=lambda s: (s.start_ns, s.kind != "client"))
    stack = [(0, span) for span in reversed(children[None])]
    while stack:
        depth, span = stack.pop()
        yield depth, span
        stack.extend((depth + 1, child) for child in reversed(children.get(span.span_id, [])))


def _origin(failed: Sequence[SpanLine]) -> SpanLine:
    """The first failed span (in tree order) that no failed child explains: where it began."""
    parents = {span.parent_id for span in failed}
    return next((span for span in failed if span.span_id not in parents), failed[0])


def _description(origin: SpanLine, failed: Sequence[SpanLine]) -> str:
    """The origin's status description or, as a server span of a code that is the caller's
    fault has none, the nearest one up its failed ancestors (its caller's client span)."""
    by_id = {span.span_id: span for span in failed}
    span: SpanLine | None = origin
    while span is not None:
        if span.description:
            return span.description
        span = by_id.get(span.parent_id or "")
    return ""


def _bar(offset: int, duration: int, total: int) -> str:
    start = min(int(offset * _BAR / total), _BAR - 1)
    width = max(1, round(duration * _BAR / total))
    width = min(width, _BAR - start)
    return "|" + " " * start + "█" * width + " " * (_BAR - start - width) + "|"


def _ms(nanoseconds: int) -> str:
    return f"{nanoseconds / 1e6:.3f} ms"


def _code(span: SpanLine) -> grpc.StatusCode | None:
    number = span.attributes.get("rpc.grpc.status_code")
    return next((c for c in grpc.StatusCode if c.value[0] == number), None)


def _failed(span: SpanLine) -> bool:
    code = _code(span)
    return span.status == "ERROR" or (code is not None and code != grpc.StatusCode.OK)


def _status(span: SpanLine) -> str:
    code = _code(span)
    if code is not None:
        return str(code.name)
    return "ERROR" if span.status == "ERROR" else "OK"


def _who(span: SpanLine) -> str:
    called = span.attributes.get("peer.service")
    if span.kind == "client" and called:
        return f"{span.service} -> {called}"
    return span.service if span.kind in ("server", "client") else f"{span.service} ({span.kind})"


def _method(span: SpanLine) -> str:
    service, method = span.attributes.get("rpc.service"), span.attributes.get("rpc.method")
    return f"{service}/{method}" if service and method else str(span.name)


def _subject(span: SpanLine) -> str:
    subject = span.attributes.get("messaging.destination.name")
    return f"[{subject}]" if subject else ""
