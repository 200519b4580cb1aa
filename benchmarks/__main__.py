"""``python -m benchmarks [--quick] [--profile | --no-profile] [--write-results]``: the design
targets, measured.

grpcio sync and grpc.aio over HTTP/2, raw nats-py and nats_transport (asyncio and sync channels,
async and sync servicers): servers in subprocesses, each transport's client in a subprocess
per run (benchmarks/load.py); server streaming from this process. Writes RESULTS.md and the PNGs
beside it into a new scratch folder (its path is printed), or into benchmarks/ with
--write-results.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import clients, document, floor, ingress_floor, load, procstat, traced
from benchmarks.cases import (
    BY_KEY,
    FULL,
    PROFILED,
    QUICK,
    STREAM_TRANSPORTS,
    TRANSPORTS,
    Endpoints,
    Settings,
    Transport,
)
from benchmarks.profile_report import ROLES, ProfiledCase
from benchmarks.profiling import Profile, py_spy
from benchmarks.servers import ServerProcess, edge_available, ingress_available, workers_available
from nats_transport.testing import NatsServer, free_port

SERVER_LABELS = {
    "grpc-aio": "grpc.aio server",
    "grpc-aio-uvloop": "grpc.aio server, uvloop",
    "raw-uvloop": "raw nats-py responder, uvloop",
    "ours-uvloop": "nats_transport server (async def servicer), uvloop",
    "grpc-sync": "grpcio sync server",
    "raw": "raw nats-py responder",
    "ours": "nats_transport server (async def servicer)",
    "ours-sync-servicer": "nats_transport server (def servicer)",
    "ours-traced": "nats_transport server, tracing on (async def servicer)",
    "ingress": "gRPC ingress (gateway.ingress)",
    "ingress-2": "gRPC ingress, 2 workers: the supervising parent (gateway.workers)",
    "edge": "Envoy edge control plane (gateway.edge, Python)",
}
Servers = dict[str, ServerProcess]


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _servers(endpoints: Endpoints, transports: tuple[Transport, ...]) -> Servers:
    nats = ("--nats", endpoints.nats_url)
    every = {
        "grpc-aio": ServerProcess("grpc-aio", "--port", str(endpoints.grpc_aio_port)),
        "grpc-aio-uvloop": ServerProcess("grpc-aio-uvloop", "--port", str(endpoints.grpc_aio_uvloop_port)),
        "raw-uvloop": ServerProcess("raw-uvloop", *nats),
        "ours-uvloop": ServerProcess("ours-uvloop", *nats),
        "grpc-sync": ServerProcess("grpc-sync", "--port", str(endpoints.grpc_sync_port)),
        "raw": ServerProcess("raw", *nats),
        "ours": ServerProcess("ours", *nats),
        "ours-sync-servicer": ServerProcess("ours-sync-servicer", *nats),
        "ours-traced": ServerProcess("ours-traced", *nats, "--trace-dir", endpoints.trace_dir),
        "ingress": ServerProcess("ingress", *nats, "--port", str(endpoints.ingress_port)),
        "ingress-2": ServerProcess("ingress-2", *nats, "--port", str(endpoints.ingress_workers_port)),
        "edge": ServerProcess(
            "edge", "--ingress-port", str(endpoints.ingress_port), "--port", str(endpoints.edge_port)
        ),
    }
    wanted = {t.server for t in transports}
    if "edge" in wanted:
        wanted.add("ingress")  # Envoy calls it
    if wanted & {"ingress", "ingress-2"}:
        wanted.add("ours")  # the ingresses forward to it
    return {kind: server for kind, server in every.items() if kind in wanted}


def _start(servers: Servers) -> None:
    """Start them all at once; then the ingresses, as they must find the nats_transport server;
    then the Envoy edge in front of the first."""
    first = [s for kind, s in servers.items() if kind not in ("ingress", "ingress-2", "edge")]
    for server in first:
        server.launch()
    for server in first:
        server.wait_ready()
    for kind in ("ingress", "ingress-2", "edge"):
        if kind in servers:
            servers[kind].launch().wait_ready(timeout=40.0)


def _server_pids(servers: Servers, kind: str) -> tuple[int, tuple[int, ...]]:
    """The process whose CPU (and profile) is the server's, and helpers whose CPU is added to it.

    The edge: Envoy, plus the edge's control-plane process and the ingress Envoy calls. The ingress
    of 2 workers: its supervising parent, plus the workers (named on its READY line), which serve.
    """
    if kind == "edge":
        (envoy,) = servers["edge"].helper_pids
        return envoy, (servers["edge"].pid, servers["ingress"].pid)
    if kind == "ingress-2":
        return servers[kind].pid, servers[kind].helper_pids
    return servers[kind].pid, ()


def _ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        if (port := free_port()) not in ports:
            ports.append(port)
    return ports


def run_unary(session: document.Session, endpoints: Endpoints, servers: Servers, broker: int) -> None:
    """Every transport at each of its concurrencies; runs interleaved (run 1 of all, then run 2, ...)."""
    settings = session.settings
    for run in range(1, settings.runs + 1):
        for transport in session.transports:
            server, helpers = _server_pids(servers, transport.server)
            done = load.run_client(transport, endpoints, settings, (server, broker), helpers=helpers)
            session.client_costs.setdefault(transport.key, []).append((done.cpu_seconds, done.peak_rss_mib))
            for n, m in done.measurements.items():
                session.results.setdefault((transport.key, n), []).append(m)
                _say(
                    f"run {run}/{settings.runs} {transport.label:>34} x{n:<3} {m.rate:9,.0f} req/s  "
                    f"p50 {m.p50_ms:7.3f} ms  p99 {m.p99_ms:7.3f} ms  errors {m.errors}"
                )


async def run_streams(session: document.Session, endpoints: Endpoints) -> None:
    """Server-streaming messages/s per transport: one warm-up stream, then one per run."""
    count = session.settings.stream_messages
    running = {t.key for t in session.transports}
    keys = [key for key in STREAM_TRANSPORTS if key in running]  # --only may leave some out
    for run in range(1, session.settings.runs + 1):
        for key in keys:
            async with clients.open_stream(key, endpoints) as open_stream:
                await clients.stream_rate(open_stream, count // 10)
                rate = await clients.stream_rate(open_stream, count)
            session.streams.setdefault(key, []).append(rate)
            _say(f"run {run}/{session.settings.runs} {BY_KEY[key].label:>34} stream {rate:12,.0f} msg/s")


def run_profiles(session: document.Session, endpoints: Endpoints, servers: Servers, broker: int) -> None:
    """One extra window per profiled case with py-spy on the server and the client."""
    settings = dataclasses.replace(session.settings, duration=session.settings.profile_seconds)
    measured = {t.key for t in session.transports}
    for key, n in (case for case in PROFILED if case[0] in measured):
        transport = BY_KEY[key]
        with tempfile.TemporaryDirectory(prefix="bench-profile-") as scratch:
            server, helpers = _server_pids(servers, transport.server)
            done = load.run_client(
                transport, endpoints, settings, (server, broker), (n,), Path(scratch), helpers
            )
            profiles = {role: Profile.read(Path(scratch, f"{role}.txt")) for role in ROLES}
            session.profiles[key, n] = ProfiledCase(profiles, done.measurements[n])
        _say(f"profiled {transport.label} x{n}")


def _wants_profile(args: argparse.Namespace, settings: Settings) -> tuple[bool, str]:
    if args.profile is False:
        return False, "--no-profile was given"
    if py_spy() is None:
        return False, "py-spy is not installed (`pip install -e '.[dev]'` installs it)"
    if args.profile is None and not settings.profile:
        return False, "quick mode profiles only with --profile"
    return True, ""


def _keys(text: str) -> set[str]:
    keys = {key.strip() for key in text.split(",") if key.strip()}
    if unknown := keys - {t.key for t in TRANSPORTS}:
        raise argparse.ArgumentTypeError(f"unknown transport {', '.join(sorted(unknown))}")
    return keys


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Measure the design targets (grpcio vs raw nats-py vs nats_transport) and write "
        "RESULTS.md with its plots (into benchmarks/ with --write-results). Full mode: 3 interleaved runs "
        "and a profile, about 6 minutes.",
    )
    parser.add_argument("--quick", action="store_true", help="0.5 s warm-up, 2 s per case, 1 run, no profile")
    parser.add_argument("--write-results", action="store_true",
                        help="write benchmarks/RESULTS.md and its plots (the committed results); "
                             "by default they go to a new scratch folder, whose path is printed")
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=None,
                        help="profile with py-spy after measuring (default: in full mode only)")
    parser.add_argument("--only", metavar="KEY,...", type=_keys, default=None,
                        help="run only these transports (" + ", ".join(t.key for t in TRANSPORTS) + "); "
                             "figures whose cases did not run are left out")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    profile, note = _wants_profile(args, settings)
    missing = set()
    if not ingress_available():
        missing |= {"ingress", "envoy"}
    elif not edge_available():
        missing.add("envoy")
    if not workers_available():
        missing.add("ingress-2")
    if args.only is not None:
        missing |= {t.key for t in TRANSPORTS} - args.only
    transports = tuple(t for t in TRANSPORTS if t.key not in missing)
    session = document.Session(settings, transports, profile_note=note)
    began = time.monotonic()
    folder = document.HERE if args.write_results else Path(tempfile.mkdtemp(prefix="mesh-bench-"))
    with contextlib.ExitStack() as stack:
        # The traced case's spans: beside a scratch RESULTS.md (`mesh trace --spans` reads them),
        # or in a temporary folder rather than among the committed results.
        if args.write_results:
            trace_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mesh-bench-traces-")))
        else:
            trace_dir = folder / "traces"
        _measure(session, trace_dir, profile)
        if "ours-traced" in {key for key, _ in session.results}:
            # Read once every server has stopped, so the traced one has written what it queued.
            session.spans = traced.kept(trace_dir)
            if (problem := session.spans.problem()) is not None:
                _say(f"tracing on: {problem}")
    session.wall = time.monotonic() - began
    print("\n".join(document.write(session, folder / "RESULTS.md").splitlines()[:40]))
    print(f"\nwritten: {folder / 'RESULTS.md'} and its plots", flush=True)


def _measure(session: document.Session, trace_dir: Path, profile: bool) -> None:
    """Start nats-server and the servers, run every case, read the processes' costs, stop them."""
    with NatsServer(jetstream=False, name="bench") as nats_server:
        assert nats_server.process is not None
        broker = nats_server.process.pid
        aio_port, aio_uvloop_port, sync_port, ingress_port, workers_port, edge_port = _ports(6)
        endpoints = Endpoints(
            nats_url=nats_server.url,
            grpc_aio_port=aio_port,
            grpc_aio_uvloop_port=aio_uvloop_port,
            grpc_sync_port=sync_port,
            ingress_port=ingress_port,
            ingress_workers_port=workers_port,
            edge_port=edge_port,
            trace_dir=str(trace_dir),
        )
        servers = _servers(endpoints, session.transports)
        try:
            _start(servers)
            run_unary(session, endpoints, servers, broker)
            asyncio.run(run_streams(session, endpoints))
            if "ours" in {t.key for t in session.transports}:
                _say("the floor: raw nats-py, step by step up to nats_transport (one process each)")
                session.floor = floor.measure(endpoints.nats_url)
            if "ingress" in {t.key for t in session.transports}:
                _say("the ingress floor: grpc.aio's server, step by step up to a NATS hop (one server process each)")
                session.ingress_floor = ingress_floor.measure(endpoints.nats_url)
            if profile:
                run_profiles(session, endpoints, servers, broker)
            session.processes = [
                (SERVER_LABELS[kind], s.cpu_seconds(), s.peak_rss_mib()) for kind, s in servers.items()
            ]
            for number, worker in enumerate(servers["ingress-2"].helper_pids if "ingress-2" in servers else (), 1):
                cost = (procstat.cpu_seconds(worker), procstat.peak_rss_mib(worker))
                session.processes.append((f"gRPC ingress, 2 workers: worker {number} (gateway.workers)", *cost))
            if "edge" in servers:
                (envoy,) = servers["edge"].helper_pids
                envoy_cost = (procstat.cpu_seconds(envoy), procstat.peak_rss_mib(envoy))
                session.processes.append(("Envoy (gateway.edge)", *envoy_cost))
            session.processes.append(("nats-server", procstat.cpu_seconds(broker), procstat.peak_rss_mib(broker)))
            me = os.getpid()
            session.processes.append(
                ("main process (orchestrator, stream clients)", procstat.cpu_seconds(me), procstat.peak_rss_mib(me))
            )
        finally:
            for server in servers.values():
                server.stop()


if __name__ == "__main__":
    main()
