"""Summaries, DESIGN.md ratios, the Markdown results table and the plot."""

from __future__ import annotations

import importlib
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.clients import Sample

TRANSPORTS = {"grpc": "grpc.aio (HTTP/2)", "raw": "raw nats-py", "ours": "nats_transport"}


@dataclass(frozen=True, slots=True)
class Measurement:
    """One timed window of one case, with the CPU each process spent in it."""

    sample: Sample
    server_cpu: float
    broker_cpu: float
    client_cpu: float


@dataclass(frozen=True, slots=True)
class Spread:
    """Median of the runs and their range."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values))

    def show(self, digits: int) -> str:
        text = f"{self.median:,.{digits}f}"
        return text if self.low == self.high else f"{text} ({self.low:,.{digits}f}-{self.high:,.{digits}f})"


@dataclass(frozen=True, slots=True)
class Ratio:
    """A DESIGN.md figure (ratio of medians, per-run range) and its target; no target = reference."""

    name: str
    value: Spread
    target: float | None = None
    at_least: bool = True

    @property
    def verdict(self) -> str:
        if self.target is None:
            return "reference"
        met = self.value.median >= self.target if self.at_least else self.value.median <= self.target
        return "met" if met else "**not met**"


Results = dict[tuple[str, int], list[Measurement]]
Metric = Callable[[Measurement], float]


def _rate(m: Measurement) -> float:
    return m.sample.rate


def _p50(m: Measurement) -> float:
    return m.sample.percentile_ms(0.50)


def _p99(m: Measurement) -> float:
    return m.sample.percentile_ms(0.99)


def _ratio(results: Results, num: tuple[str, int], den: tuple[str, int], metric: Metric) -> Spread:
    """Ratio of the medians; the range is over runs (runs are interleaved, so run i pairs with run i)."""
    tops, bottoms = [metric(m) for m in results[num]], [metric(m) for m in results[den]]
    paired = [t / b for t, b in zip(tops, bottoms, strict=True)]
    return Spread(statistics.median(tops) / statistics.median(bottoms), min(paired), max(paired))


def ratios(results: Results, high: int, low: int) -> list[Ratio]:
    """The unary figures of DESIGN.md ("Figures to reach"), then raw nats-py / grpc.aio for reference."""
    figures = [
        ("throughput", high, "grpc", _rate, 5.0, True),
        ("throughput", high, "raw", _rate, 0.9, True),
        ("p50 latency", low, "grpc", _p50, 0.6, False),
        ("p99 latency", low, "grpc", _p99, 0.6, False),
    ]
    found = [
        Ratio(
            f"{what}, {n} in flight: nats_transport / {TRANSPORTS[other]}",
            _ratio(results, ("ours", n), (other, n), metric),
            target,
            at_least,
        )
        for what, n, other, metric, target, at_least in figures
    ]
    found += [
        Ratio(f"{what}, {n} in flight: raw nats-py / grpc.aio", _ratio(results, ("raw", n), ("grpc", n), metric))
        for what, n, other, metric, _, _ in figures
        if other == "grpc"
    ]
    return found


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def case_table(results: Results) -> list[str]:
    """Throughput and latency per case."""
    lines = [_row(["transport", "in flight", "req/s", "p50 ms", "p99 ms", "errors"])]
    lines.append(_row(["---", "---:", "---:", "---:", "---:", "---:"]))
    for (kind, concurrency), runs in results.items():
        lines.append(
            _row(
                [
                    TRANSPORTS[kind],
                    str(concurrency),
                    Spread.of([_rate(m) for m in runs]).show(0),
                    Spread.of([_p50(m) for m in runs]).show(3),
                    Spread.of([_p99(m) for m in runs]).show(3),
                    str(sum(m.sample.errors for m in runs)),
                ]
            )
        )
    return lines


def cpu_table(results: Results) -> list[str]:
    """CPU seconds each process spent in the measured window, and per call (microseconds)."""
    processes: list[tuple[str, Metric]] = [
        ("server", lambda m: m.server_cpu),
        ("nats-server", lambda m: m.broker_cpu),
        ("client", lambda m: m.client_cpu),
        ("all three", lambda m: m.server_cpu + m.broker_cpu + m.client_cpu),
    ]
    header = ["transport", "in flight"]
    header += [f"{name} CPU s" for name, _ in processes[:3]]
    header += [f"{name} us/call" for name, _ in processes]
    lines = [_row(header), _row(["---", "---:"] + ["---:"] * (len(header) - 2))]
    for (kind, concurrency), runs in results.items():
        counted = [m for m in runs if m.sample.calls]
        cells = [TRANSPORTS[kind], str(concurrency)]
        cells += [Spread.of([cpu(m) for m in runs]).show(2) for _, cpu in processes[:3]]
        cells += [
            Spread.of([cpu(m) / m.sample.calls * 1e6 for m in counted]).show(0) if counted else "-"
            for _, cpu in processes
        ]
        lines.append(_row(cells))
    return lines


def ratio_table(figures: list[Ratio]) -> list[str]:
    lines = [_row(["figure", "median (per-run range)", "target", ""]), _row(["---", "---:", "---:", "---"])]
    for r in figures:
        v = r.value
        target = "-" if r.target is None else f"{'>=' if r.at_least else '<='} {r.target:g}x"
        spread = "" if v.low == v.high else f" ({v.low:.2f}-{v.high:.2f})"
        lines.append(_row([r.name, f"{v.median:.2f}x{spread}", target, r.verdict]))
    return lines


def plot(results: Results, path: Path) -> str:
    """Draw throughput and p50/p99 per transport and concurrency; say what happened."""
    try:
        plt = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return "plot: not generated; matplotlib not installed"
    concurrencies = sorted({c for _, c in results})
    kinds = [k for k in TRANSPORTS if any(key[0] == k for key in results)]
    width = 0.8 / len(kinds)
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for i, kind in enumerate(kinds):
        xs = [j + i * width for j in range(len(concurrencies))]
        left.bar(
            xs,
            [Spread.of([_rate(m) for m in results[kind, c]]).median for c in concurrencies],
            width,
            label=TRANSPORTS[kind],
        )
        for q, hatch in ((_p99, "//"), (_p50, "")):  # p99 behind, p50 in front
            right.bar(
                xs,
                [Spread.of([q(m) for m in results[kind, c]]).median for c in concurrencies],
                width,
                hatch=hatch,
                alpha=0.5 if hatch else 1.0,
                color=f"C{i}",
                label=f"{TRANSPORTS[kind]} {'p99' if hatch else 'p50'}",
            )
    for axis, title in ((left, "unary throughput (req/s)"), (right, "latency (ms): p50 solid, p99 hatched")):
        axis.set_xticks([j + width * (len(kinds) - 1) / 2 for j in range(len(concurrencies))])
        axis.set_xticklabels([f"{c} in flight" for c in concurrencies])
        axis.set_title(title)
    right.set_yscale("log")
    left.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return f"plot: [{path.name}]({path.name})"
