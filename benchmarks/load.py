"""Client processes: ``python -m benchmarks.load TRANSPORT ...`` prints one JSON line per case.

Each transport's client runs in a process of its own, so its CPU time and peak RSS are its own
and one client's garbage or threads never slow another. The child reads the CPU time of the
server, the nats-server and itself from /proc around each measured window. The parent side is
:func:`run_client`.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextvars
import dataclasses
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from gaming.quest.v1 import quest_pb2_grpc

from benchmarks import clients, procstat, profiling, sync_clients, workload
from benchmarks.cases import BY_KEY, Endpoints, Settings, Transport
from benchmarks.report import Measurement

_REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class ClientRun:
    """What one client process measured, and what it cost."""

    measurements: dict[int, Measurement]  # by calls in flight
    cpu_seconds: float
    peak_rss_mib: float


@dataclass(frozen=True, slots=True)
class _Window:
    """When the measured window opens and how long it lasts, and who is watched in it."""

    warmup: float
    duration: float
    pids: tuple[int, int, int]  # server, nats-server, this process
    profile_dir: Path | None
    helpers: tuple[int, ...] = ()  # more server-side processes, their CPU counted as the server's

    @property
    def servers(self) -> tuple[int, ...]:
        return (self.pids[0], *self.helpers)

    def time(self) -> list[float]:
        """Sleep through warm-up and window; the CPU seconds of each process in the window."""
        time.sleep(self.warmup)
        cpu = procstat.CpuWindow((*self.servers, *self.pids[1:]))
        cpu.open()
        recorders = []
        if self.profile_dir is not None:
            recorders = [
                profiling.record(pid, self.duration, self.profile_dir / f"{role}.txt")
                for role, pid in (("server", self.pids[0]), ("client", self.pids[2]))
            ]
        time.sleep(self.duration)
        spent = cpu.close()
        for recorder in recorders:
            _, error = recorder.communicate(timeout=30)
            if recorder.returncode:
                raise RuntimeError(f"py-spy failed: {error.decode(errors='replace').strip()}")
        servers = len(self.servers)
        return [sum(spent[:servers]), *spent[servers:]]


def _open_client(transport: Transport, endpoints: Endpoints) -> AbstractAsyncContextManager[clients.Call]:
    # The ingress of several workers is called over several connections, which the shared
    # client of clients.py (one channel, one connection) does not do.
    if transport.key == "ingress-2":
        return _grpc_aio_spread(endpoints.ingress_workers_port, transport.connections)
    if transport.key == "grpc-aio-uvloop":
        return clients.grpc_aio(endpoints.grpc_aio_uvloop_port)
    return clients.open_client(transport.base, endpoints)


@asynccontextmanager
async def _grpc_aio_spread(port: int, connections: int) -> AsyncIterator[clients.Call]:
    """GetQuest through ``connections`` grpc.aio channels, each its own HTTP/2 connection; each
    calling task keeps the channel it was dealt on its first call (round robin)."""
    async with AsyncExitStack() as stack:
        stubs = []
        for _ in range(connections):
            # A local subchannel pool: channels to one address would otherwise share a connection.
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
            await stack.enter_async_context(channel)
            await asyncio.wait_for(channel.channel_ready(), 10)
            stubs.append(quest_pb2_grpc.QuestServiceStub(channel))
        dealt = itertools.cycle(stubs)
        mine: contextvars.ContextVar[quest_pb2_grpc.QuestServiceStub] = contextvars.ContextVar("stub")

        async def call() -> object:
            try:
                stub = mine.get()
            except LookupError:
                stub = next(dealt)
                mine.set(stub)  # the calling task's own context: its connection from now on
            return await stub.GetQuest(workload.REQUEST, timeout=workload.CALL_TIMEOUT)

        yield call


async def _run_tasks(transport: Transport, endpoints: Endpoints, in_flight: list[int], window: _Window) -> None:
    async with _open_client(transport, endpoints) as call:
        for n in in_flight:
            sample, cpu = await asyncio.gather(
                clients.measure(call, n, window.warmup, window.duration), asyncio.to_thread(window.time)
            )
            _emit(n, Measurement.of(sample, cpu))


def _run_threads(transport: Transport, endpoints: Endpoints, in_flight: list[int], window: _Window) -> None:
    with sync_clients.open_client(transport.key, endpoints) as call:
        for n in in_flight:
            with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="window") as timer:
                cpu = timer.submit(window.time)
                sample = sync_clients.measure(call, n, window.warmup, window.duration)
                _emit(n, Measurement.of(sample, cpu.result()))


def _emit(in_flight: int, measurement: Measurement) -> None:
    print(json.dumps({"in_flight": in_flight, **dataclasses.asdict(measurement)}), flush=True)


def run_client(
    transport: Transport,
    endpoints: Endpoints,
    settings: Settings,
    pids: tuple[int, int],
    in_flight: tuple[int, ...] | None = None,
    profile_dir: Path | None = None,
    helpers: tuple[int, ...] = (),
) -> ClientRun:
    """Run ``transport``'s client process at each of ``in_flight`` (default: all of its levels).

    ``pids`` are the server's and the nats-server's; ``helpers`` more server-side processes whose
    CPU counts as the server's; ``profile_dir`` makes py-spy record the server (``pids[0]``) and
    the client during each window into ``server.txt`` and ``client.txt`` there.
    """
    command = [
        sys.executable, "-m", "benchmarks.load", transport.key,
        "--nats", endpoints.nats_url,
        "--grpc-aio-port", str(endpoints.grpc_aio_port),
        "--grpc-aio-uvloop-port", str(endpoints.grpc_aio_uvloop_port),
        "--grpc-sync-port", str(endpoints.grpc_sync_port),
        "--ingress-port", str(endpoints.ingress_port),
        "--ingress-workers-port", str(endpoints.ingress_workers_port),
        "--edge-port", str(endpoints.edge_port),
        "--trace-dir", endpoints.trace_dir,
        "--helper-pids", ",".join(map(str, helpers)),
        "--in-flight", ",".join(map(str, in_flight or transport.in_flight)),
        "--warmup", str(settings.warmup), "--duration", str(settings.duration),
        "--server-pid", str(pids[0]), "--broker-pid", str(pids[1]),
    ]
    if profile_dir is not None:
        command += ["--profile-dir", str(profile_dir)]
    levels = len(in_flight or transport.in_flight)
    budget = 60 + levels * (settings.warmup + settings.duration + 10)
    done = subprocess.run(command, cwd=_REPO, stdout=subprocess.PIPE, timeout=budget, check=True)
    measurements: dict[int, Measurement] = {}
    cost: dict[str, float] = {}
    for line in done.stdout.decode().splitlines():
        record = json.loads(line)
        if "in_flight" in record:
            n = record.pop("in_flight")
            measurements[n] = Measurement(**record)
        else:
            cost = record
    return ClientRun(measurements, cost["cpu_seconds"], cost["peak_rss_mib"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load")
    parser.add_argument("transport", choices=sorted(BY_KEY))
    parser.add_argument("--nats", required=True)
    parser.add_argument("--grpc-aio-port", type=int, required=True)
    parser.add_argument("--grpc-aio-uvloop-port", type=int, required=True)
    parser.add_argument("--grpc-sync-port", type=int, required=True)
    parser.add_argument("--ingress-port", type=int, required=True)
    parser.add_argument("--ingress-workers-port", type=int, required=True)
    parser.add_argument("--edge-port", type=int, required=True)
    parser.add_argument("--trace-dir", required=True, help="where the traced client keeps its spans")
    parser.add_argument("--helper-pids", default="", help="comma-separated; CPU counted as the server's")
    parser.add_argument("--in-flight", required=True, help="comma-separated, e.g. 1,64")
    parser.add_argument("--warmup", type=float, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--server-pid", type=int, required=True)
    parser.add_argument("--broker-pid", type=int, required=True)
    parser.add_argument("--profile-dir", type=Path)
    args = parser.parse_args(argv)
    transport = BY_KEY[args.transport]
    endpoints = Endpoints(
        nats_url=args.nats,
        grpc_aio_port=args.grpc_aio_port,
        grpc_aio_uvloop_port=args.grpc_aio_uvloop_port,
        grpc_sync_port=args.grpc_sync_port,
        ingress_port=args.ingress_port,
        ingress_workers_port=args.ingress_workers_port,
        edge_port=args.edge_port,
        trace_dir=args.trace_dir,
    )
    in_flight = [int(n) for n in args.in_flight.split(",")]
    helpers = tuple(int(pid) for pid in args.helper_pids.split(",") if pid)
    window = _Window(
        args.warmup, args.duration, (args.server_pid, args.broker_pid, os.getpid()), args.profile_dir, helpers
    )
    if transport.threads:
        _run_threads(transport, endpoints, in_flight, window)
    elif transport.uvloop:
        import uvloop

        uvloop.run(_run_tasks(transport, endpoints, in_flight, window))
    else:
        asyncio.run(_run_tasks(transport, endpoints, in_flight, window))
    me = os.getpid()
    cost = {"cpu_seconds": procstat.cpu_seconds(me), "peak_rss_mib": procstat.peak_rss_mib(me)}
    print(json.dumps(cost), flush=True)


if __name__ == "__main__":
    main()
