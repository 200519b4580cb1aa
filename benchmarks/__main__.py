"""``python -m benchmarks [--quick]``: unary grpc.aio vs raw nats-py vs nats_transport.

Servers run in subprocesses, the client in this process; results go to benchmarks/RESULTS.md
and benchmarks/unary.png (when matplotlib is importable).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from benchmarks import clients, procstat, report, workload
from benchmarks.clients import Call
from benchmarks.report import Measurement, Results
from benchmarks.servers import ServerProcess
from nats_transport.testing import NatsServer, find_nats_server, free_port

HERE = Path(__file__).resolve().parent
CONCURRENCY = (1, 64)


@dataclass(frozen=True, slots=True)
class Settings:
    warmup: float
    duration: float
    runs: int
    stream_messages: int


QUICK = Settings(warmup=0.5, duration=2.0, runs=1, stream_messages=20_000)
FULL = Settings(warmup=1.0, duration=5.0, runs=3, stream_messages=100_000)


async def _case(call: Call, concurrency: int, settings: Settings, server_pid: int, broker_pid: int) -> Measurement:
    pids = (server_pid, broker_pid, os.getpid())

    async def cpu_in_window() -> list[float]:
        await asyncio.sleep(settings.warmup)
        before = [procstat.cpu_seconds(pid) for pid in pids]
        await asyncio.sleep(settings.duration)
        return [procstat.cpu_seconds(pid) - b for pid, b in zip(pids, before, strict=True)]

    sample, (server, broker, client) = await asyncio.gather(
        clients.measure(call, concurrency, settings.warmup, settings.duration), cpu_in_window()
    )
    return Measurement(sample, server, broker, client)


async def run_all(
    openers: dict[str, Callable[[], AbstractAsyncContextManager[Call]]],
    servers: dict[str, ServerProcess],
    broker_pid: int,
    settings: Settings,
) -> Results:
    """Every case, runs interleaved (run 1 of every transport, then run 2, ...)."""
    results: Results = {(kind, c): [] for kind in openers for c in CONCURRENCY}
    for run in range(1, settings.runs + 1):
        for kind, open_client in openers.items():
            async with open_client() as call:
                for concurrency in CONCURRENCY:
                    m = await _case(call, concurrency, settings, servers[kind].pid, broker_pid)
                    results[kind, concurrency].append(m)
                    print(
                        f"run {run}/{settings.runs} {report.TRANSPORTS[kind]:>18} x{concurrency:<3} "
                        f"{m.sample.rate:9,.0f} req/s  p50 {m.sample.percentile_ms(0.5):7.3f} ms  "
                        f"p99 {m.sample.percentile_ms(0.99):7.3f} ms  errors {m.sample.errors}",
                        file=sys.stderr,
                        flush=True,
                    )
    return results


StreamResults = dict[str, list[float]]


async def run_streams(
    openers: dict[str, Callable[[], AbstractAsyncContextManager[clients.StreamOpener]]], settings: Settings
) -> StreamResults:
    """Server-streaming messages/s per transport: one warm-up stream, then one per run."""
    results: StreamResults = {kind: [] for kind in openers}
    count = settings.stream_messages
    for run in range(1, settings.runs + 1):
        for kind, open_client in openers.items():
            async with open_client() as open_stream:
                await clients.stream_rate(open_stream, count // 10)
                rate = await clients.stream_rate(open_stream, count)
            results[kind].append(rate)
            print(f"run {run}/{settings.runs} {report.TRANSPORTS[kind]:>18} stream {rate:12,.0f} msg/s",
                  file=sys.stderr, flush=True)
    return results


def _stream_section(results: StreamResults, settings: Settings) -> list[str]:
    grpc_rates, our_rates = results["grpc"], results["ours"]
    ratio = report.Spread.of([o / g for o, g in zip(our_rates, grpc_rates, strict=True)])
    verdict = "met" if ratio.median >= 3 else "not met"
    return [
        f"One stream of {settings.stream_messages:,} messages (a {len(workload.RESPONSE_BYTES)}-byte Quest "
        "each) per run, read as fast as they come, after a warm-up stream of a tenth of that.",
        "",
        "| transport | messages/s |",
        "| --- | ---: |",
        *(f"| {report.TRANSPORTS[k]} | {report.Spread.of(v).show(0)} |" for k, v in results.items()),
        "",
        f"nats_transport / grpc.aio: {ratio.show(2)}x (target >= 3x: {verdict})",
    ]


def _machine() -> list[str]:
    nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout.strip()
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown",
    )
    broker = subprocess.run([find_nats_server(), "--version"], capture_output=True, text=True).stdout.strip()
    versions = ", ".join(f"{p} {metadata.version(p)}" for p in ("grpcio", "nats-py", "protobuf", "nats-grpc-mesh"))
    return [
        f"- nproc: {nproc}; CPU: {model}; kernel {platform.release()}",
        f"- Python {platform.python_version()}; {versions}; {broker}",
    ]


def _method(settings: Settings) -> list[str]:
    runs = "1 run" if settings.runs == 1 else f"{settings.runs} runs, interleaved; median (min-max over runs)"
    return [
        f"- Each case: {settings.warmup:g} s warm-up, then a {settings.duration:g} s window; {runs}.",
        "- Unary `QuestService.GetQuest` (request 8 bytes, response a small fixed Quest); every call has "
        "a 5 s timeout. N asyncio tasks call back to back; a call counts if it completes inside the window.",
        "- Servers run in their own subprocesses; the client (all three transports, one asyncio loop) in the "
        "main process; one local nats-server (JetStream off). All share the same cores.",
        "- raw nats-py: `nc.request` with the serialized request and a `grpc-timeout` header (what "
        "nats_transport sends for a call with a deadline); the responder, a queue subscriber, answers "
        "`nc.publish(msg.reply, <serialized response>)` inside its callback; nothing is parsed.",
        "- CPU seconds are utime+stime from /proc/<pid>/stat over the window; peak RSS is VmHWM.",
    ]


def write_results(
    path: Path,
    settings: Settings,
    results: Results,
    streams: StreamResults,
    processes: list[tuple[str, float, float]],
    wall: float,
) -> str:
    plot_line = report.plot(results, HERE / "unary.png")
    command = shlex.join(["python", "-m", "benchmarks", *sys.argv[1:]])
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Unary benchmark: grpc.aio vs raw nats-py vs nats_transport",
        "",
        f"Generated by `{command}` on {when}; the whole run took {wall:.0f} s.",
        "",
        "## Machine",
        "",
        *_machine(),
        "",
        "## Method",
        "",
        *_method(settings),
        "",
        "## Results",
        "",
        *report.case_table(results),
        "",
        "CPU spent in the measured window by each process, in total and per counted call:",
        "",
        *report.cpu_table(results),
        "",
        "## DESIGN.md figures",
        "",
        *report.ratio_table(report.ratios(results, high=max(CONCURRENCY), low=min(CONCURRENCY))),
        "",
        "## Server streaming",
        "",
        *_stream_section(streams, settings),
        "",
        "## Processes (whole session)",
        "",
        "| process | CPU s | peak RSS MiB |",
        "| --- | ---: | ---: |",
        *(f"| {name} | {cpu:.1f} | {rss:.1f} |" for name, cpu, rss in processes),
        "",
        plot_line,
        "",
    ]
    text = "\n".join(lines)
    path.write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="0.5 s warm-up, 2 s per case, 1 run")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    began = time.monotonic()
    with NatsServer(jetstream=False, name="bench") as broker:
        assert broker.process is not None
        broker_pid = broker.process.pid
        port = free_port()
        servers = {
            "grpc": ServerProcess("grpc", "--port", str(port)),
            "raw": ServerProcess("raw", "--nats", broker.url),
            "ours": ServerProcess("ours", "--nats", broker.url),
        }
        openers: dict[str, Callable[[], AbstractAsyncContextManager[Call]]] = {
            "grpc": lambda: clients.grpc_aio(port),
            "raw": lambda: clients.raw_nats(broker.url),
            "ours": lambda: clients.ours(broker.url),
        }
        try:
            for server in servers.values():
                server.start()
            results = asyncio.run(run_all(openers, servers, broker_pid, settings))
            stream_openers: dict[str, Callable[[], AbstractAsyncContextManager[clients.StreamOpener]]] = {
                "grpc": lambda: clients.grpc_aio_stream(port),
                "ours": lambda: clients.ours_stream(broker.url),
            }
            streams = asyncio.run(run_streams(stream_openers, settings))
            processes = [
                (f"{report.TRANSPORTS[kind]} server", s.cpu_seconds(), s.peak_rss_mib()) for kind, s in servers.items()
            ]
            processes.append(("nats-server", procstat.cpu_seconds(broker_pid), procstat.peak_rss_mib(broker_pid)))
            me = os.getpid()
            processes.append(("client (main process)", procstat.cpu_seconds(me), procstat.peak_rss_mib(me)))
        finally:
            for server in servers.values():
                server.stop()
    text = write_results(HERE / "RESULTS.md", settings, results, streams, processes, time.monotonic() - began)
    print(text)


if __name__ == "__main__":
    main()
