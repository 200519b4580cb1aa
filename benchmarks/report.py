"""Summaries: the measurement of one window, spreads over runs, target ratios, Markdown tables."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from benchmarks.cases import BY_KEY
from benchmarks.clients import Sample


@dataclass(frozen=True, slots=True, kw_only=True)
class Measurement:
    """One timed window of one case, with the CPU each process spent in it."""

    calls: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    server_cpu: float
    broker_cpu: float
    client_cpu: float

    @property
    def rate(self) -> float:
        return self.calls / self.seconds

    @classmethod
    def of(cls, sample: Sample, cpu: Sequence[float]) -> Measurement:
        """Summarise a sample; ``cpu`` is the (server, broker, client) CPU seconds of its window."""
        server, broker, client = cpu
        return cls(
            calls=sample.calls,
            errors=sample.errors,
            seconds=sample.seconds,
            p50_ms=sample.percentile_ms(0.50),
            p99_ms=sample.percentile_ms(0.99),
            server_cpu=server,
            broker_cpu=broker,
            client_cpu=client,
        )


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
    """A design target figure (ratio of medians, per-run range) and its target; no target = reference."""

    name: str
    value: Spread
    target: float | None = None
    at_least: bool = True

    def _meets(self, x: float) -> bool:
        assert self.target is not None
        return x >= self.target if self.at_least else x <= self.target

    @property
    def verdict(self) -> str:
        """met / **not met** by the median, saying so when single runs fell on the other side."""
        if self.target is None:
            return "reference"
        runs = {self._meets(self.value.low), self._meets(self.value.high)}
        if self._meets(self.value.median):
            return "met" if runs == {True} else "met (not in every run)"
        return "**not met**" if runs == {False} else "**not met** (met in some runs)"

    def target_text(self) -> str:
        if self.target is None:
            return "-"
        return f"{'>=' if self.at_least else '<='} {self.target:.3g}x"


Results = dict[tuple[str, int], list[Measurement]]  # (transport key, in flight) -> one per run
Metric = Callable[[Measurement], float]


def rate(m: Measurement) -> float:
    return m.rate


def p50(m: Measurement) -> float:
    return m.p50_ms


def p99(m: Measurement) -> float:
    return m.p99_ms


def paired(tops: Sequence[float], bottoms: Sequence[float]) -> Spread:
    """Ratio of the medians; the range is over runs (interleaved, so run i pairs with run i)."""
    pairs = [t / b for t, b in zip(tops, bottoms, strict=True)]
    return Spread(statistics.median(tops) / statistics.median(bottoms), min(pairs), max(pairs))


def concurrency(key: str, n: int, unit: str = "in flight") -> str:
    """``16 threads`` for sync-stub clients, else ``64 in flight`` (or ``64 tasks`` with unit="tasks")."""
    if BY_KEY[key].threads:
        unit = "threads"
    if n == 1 and unit != "in flight":
        unit = unit.removesuffix("s")
    return f"{n} {unit}"


def case_name(key: str, n: int) -> str:
    return f"{BY_KEY[key].label}, {concurrency(key, n)}"


# (what, numerator case, denominator case, metric, target, at least): the design targets for unary calls.
_FIGURES: tuple[tuple[str, tuple[str, int], tuple[str, int], Metric, float | None, bool], ...] = (
    ("throughput", ("ours", 64), ("grpc-aio", 64), rate, 5.0, True),
    ("throughput", ("ours", 64), ("raw", 64), rate, 0.9, True),
    ("p50 latency", ("ours", 1), ("grpc-aio", 1), p50, 0.6, False),
    ("p99 latency", ("ours", 1), ("grpc-aio", 1), p99, 0.6, False),
    ("throughput", ("ours-sync", 16), ("grpc-sync", 16), rate, 2.5, True),
    # References: no design target, shown to place the figures above.
    ("throughput", ("ours", 256), ("raw", 256), rate, None, True),
    ("throughput", ("ours-sync-servicer", 64), ("ours", 64), rate, None, True),
    ("p50 latency", ("ours-sync", 1), ("grpc-sync", 1), p50, None, True),
    ("throughput", ("ours-sync", 16), ("raw-sync-inbox", 16), rate, None, True),
    ("throughput", ("raw-sync-inbox", 16), ("grpc-sync", 16), rate, None, True),
    ("throughput", ("raw-sync", 16), ("grpc-sync", 16), rate, None, True),
    ("throughput", ("raw", 64), ("grpc-aio", 64), rate, None, True),
    ("p50 latency", ("raw", 1), ("grpc-aio", 1), p50, None, True),
    # uvloop: what it buys our transport, and the figures above with every side on it.
    ("throughput", ("ours-uvloop", 64), ("ours", 64), rate, None, True),
    ("p50 latency", ("ours-uvloop", 1), ("ours", 1), p50, None, True),
    ("throughput", ("ours-uvloop", 64), ("grpc-aio-uvloop", 64), rate, None, True),
    ("throughput", ("ours-uvloop", 64), ("raw-uvloop", 64), rate, None, True),
    ("p50 latency", ("ours-uvloop", 1), ("grpc-aio-uvloop", 1), p50, None, True),
    ("throughput", ("raw-uvloop", 64), ("raw", 64), rate, None, True),
    ("throughput", ("grpc-aio-uvloop", 64), ("grpc-aio", 64), rate, None, True),
)


# References named for what they compare rather than by their cases: the same server and channel
# with the tracing interceptors of `mesh up --trace` (on) and with nothing installed (off, which is
# the plain "ours" case: tracing off is the same code).
TRACING_CASES = (("ours-traced", 64), ("ours", 64))
_TRACING_FIGURES: tuple[tuple[str, Metric], ...] = (
    ("throughput: tracing on / tracing off (nats_transport aio, 64 in flight)", rate),
    ("p50 latency: tracing on / tracing off (nats_transport aio, 64 in flight)", p50),
)


def unary_ratios(results: Results) -> list[Ratio]:
    """The unary figures whose two cases were both measured."""
    found = []
    for what, num, den, metric, target, at_least in _FIGURES:
        if num in results and den in results:
            value = paired([metric(m) for m in results[num]], [metric(m) for m in results[den]])
            name = f"{what}: {case_name(*num)} / {BY_KEY[den[0]].label}"
            found.append(Ratio(name, value, target, at_least))
    on, off = TRACING_CASES
    if on in results and off in results:
        for name, metric in _TRACING_FIGURES:
            found.append(Ratio(name, paired([metric(m) for m in results[on]], [metric(m) for m in results[off]])))
    return found


def row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def case_table(results: Results) -> list[str]:
    """Throughput and latency per case."""
    lines = [row(["transport", "in flight", "req/s", "p50 ms", "p99 ms", "errors"])]
    lines.append(row(["---", "---:", "---:", "---:", "---:", "---:"]))
    for (key, n), runs in results.items():
        lines.append(
            row(
                [
                    BY_KEY[key].label,
                    concurrency(key, n, "tasks"),
                    Spread.of([rate(m) for m in runs]).show(0),
                    Spread.of([p50(m) for m in runs]).show(3),
                    Spread.of([p99(m) for m in runs]).show(3),
                    str(sum(m.errors for m in runs)),
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
    lines = [row(header), row(["---", "---:"] + ["---:"] * (len(header) - 2))]
    for (key, n), runs in results.items():
        counted = [m for m in runs if m.calls]
        cells = [BY_KEY[key].label, str(n)]
        cells += [Spread.of([cpu(m) for m in runs]).show(2) for _, cpu in processes[:3]]
        cells += [
            Spread.of([cpu(m) / m.calls * 1e6 for m in counted]).show(0) if counted else "-" for _, cpu in processes
        ]
        lines.append(row(cells))
    return lines


def ratio_table(figures: Sequence[Ratio]) -> list[str]:
    lines = [row(["figure", "median (per-run range)", "target", ""]), row(["---", "---:", "---:", "---"])]
    for r in figures:
        v = r.value
        spread = "" if v.low == v.high else f" ({v.low:.2f}-{v.high:.2f})"
        lines.append(row([r.name, f"{v.median:.2f}x{spread}", r.target_text(), r.verdict]))
    return lines
