"""PNG plots (matplotlib, Agg backend): unary throughput and latency vs calls in flight; payload sizes."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from benchmarks.cases import TRANSPORTS
from benchmarks.payloads import Size
from benchmarks.report import Metric, Results, Spread, p50, p99, rate


def _pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend, or None when matplotlib is not installed."""
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        return None
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")


def _series(results: Results, key: str, metric: Metric) -> tuple[list[int], list[float], list[list[float]]]:
    """x (in flight), median y, and [below, above] error lengths (the range over runs)."""
    xs = sorted(n for k, n in results if k == key)
    spreads = [Spread.of([metric(m) for m in results[key, n]]) for n in xs]
    ys = [s.median for s in spreads]
    return xs, ys, [[s.median - s.low for s in spreads], [s.high - s.median for s in spreads]]


def unary(results: Results, path: Path) -> str | None:
    """Throughput and p50/p99 latency against calls in flight, one colour per transport."""
    plt = _pyplot()
    if plt is None:
        return None
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2))
    for i, transport in enumerate(t for t in TRANSPORTS if any(k == t.key for k, _ in results)):
        colour, style = f"C{i}", "--" if transport.threads else "-"
        xs, ys, err = _series(results, transport.key, rate)
        left.errorbar(xs, ys, yerr=err, color=colour, linestyle=style, marker="o", capsize=3, label=transport.label)
        for metric, marker, name in ((p50, "o", "p50"), (p99, "^", "p99")):
            xs, ys, err = _series(results, transport.key, metric)
            right.errorbar(
                xs, ys, yerr=err, color=colour, linestyle=style if name == "p50" else ":", marker=marker,
                capsize=3, alpha=1.0 if name == "p50" else 0.7, label=f"{transport.label} {name}",
            )
    left.set_title("unary GetQuest: throughput (req/s)")
    right.set_title("latency (ms): p50 (circles), p99 (triangles, dotted)")
    right.set_yscale("log")
    for axis in (left, right):
        axis.set_xscale("log", base=2)
        axis.set_xticks(sorted({n for _, n in results}), [str(n) for n in sorted({n for _, n in results})])
        axis.set_xlabel("calls in flight (asyncio tasks; dashed: threads with sync stubs)")
        axis.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)
    right.legend(fontsize=6, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path.name


def payloads(rows: list[Size], path: Path) -> str | None:
    """Protobuf and compact-JSON bytes of each sample message, with the ratio."""
    plt = _pyplot()
    if plt is None:
        return None
    figure, axis = plt.subplots(figsize=(11, 0.45 * len(rows) + 1.5))
    ys = list(range(len(rows)))
    axis.barh([y + 0.2 for y in ys], [r.json for r in rows], 0.4, label="JSON (compact MessageToJson)")
    axis.barh([y - 0.2 for y in ys], [r.protobuf for r in rows], 0.4, label="protobuf")
    for y, r in zip(ys, rows, strict=True):
        axis.text(r.json * 1.05, y, f"{r.ratio:.2f}", va="center", fontsize=8)
    axis.set_yticks(ys)
    axis.set_yticklabels([r.name for r in rows], fontsize=8)
    axis.invert_yaxis()
    axis.set_xscale("log")
    axis.set_xlabel("bytes (log scale); the number is protobuf / JSON (target <= 0.33)")
    axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path.name
