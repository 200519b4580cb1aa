"""Server processes: ``python -m benchmarks.servers KIND ...`` prints READY when serving.

Kinds: ``grpc-aio`` and ``grpc-sync`` (grpcio over HTTP/2, asyncio server or a thread-pool
server), ``raw`` (a bare nats-py responder), ``ours`` and ``ours-sync-servicer``
(nats_transport.aio.server with an ``async def`` or a plain ``def`` servicer), ``ours-traced``
(the ``ours`` server with the tracing interceptors of ``mesh up --trace``), ``ingress``
(gateway.ingress forwarding HTTP/2 calls over NATS to the ``ours`` server), ``ingress-2`` (the
same as 2 worker processes sharing the port, gateway.workers; its READY line also gives the
workers' pids), and ``edge``
(gateway.edge's Envoy, transcoding HTTP/JSON to gRPC calls of the ingress; its READY line also
gives Envoy's pid); ``grpc-bytes``, ``grpc-bytes-turn`` and ``grpc-bytes-nats`` (grpc.aio
answering GetQuest as bytes at once, after one event-loop turn, or over raw nats-py: the ingress
floor, ``benchmarks/ingress_floor.py``).

Each runs until SIGTERM. The parent side, :class:`ServerProcess`, starts one, waits for its
READY line and reads its CPU time and peak RSS from /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import importlib
import importlib.util
import logging
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, NoReturn

import grpc
import nats
from gaming.quest.v1 import quest_pb2, quest_pb2_grpc
from grpc_reflection.v1alpha import reflection
from nats.aio.msg import Msg

import nats_transport
from benchmarks import procstat, traced, workload
from benchmarks.floor import TIMEOUT_HEADER, until_answered

READY = "READY"
_REPO = Path(__file__).resolve().parent.parent
POOL_THREADS = 16  # grpc.server's pool; nats_transport's sync-servicer pool is 16 by default too


async def _unimplemented(self: object, request: object, context: Any) -> NoReturn:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not part of the benchmark")
    raise AssertionError("abort returned")


class Quests(quest_pb2_grpc.QuestServiceServicer):
    """GetQuest answers a small fixed Quest; the other methods are not benchmarked."""

    async def GetQuest(self, request: quest_pb2.GetQuestRequest, context: object) -> quest_pb2.GetQuestResponse:
        return workload.RESPONSE

    GenerateQuest = Accept = UpdateProgress = List = _unimplemented


def _unimplemented_sync(self: object, request: object, context: Any) -> NoReturn:
    context.abort(grpc.StatusCode.UNIMPLEMENTED, "not part of the benchmark")
    raise AssertionError("abort returned")


class SyncQuests(quest_pb2_grpc.QuestServiceServicer):
    """The same answers from plain functions (run on the server's thread pool)."""

    def GetQuest(self, request: quest_pb2.GetQuestRequest, context: object) -> quest_pb2.GetQuestResponse:
        return workload.RESPONSE

    GenerateQuest = Accept = UpdateProgress = List = _unimplemented_sync


async def _stream(request: bytes, context: object) -> AsyncIterator[bytes]:
    for _ in range(int(request)):
        yield workload.RESPONSE_BYTES


STREAM_HANDLER = grpc.method_handlers_generic_handler(
    workload.STREAM_SERVICE, {"Stream": grpc.unary_stream_rpc_method_handler(_stream)}
)


def _ready() -> None:
    print(READY, flush=True)


async def _until_sigterm() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()


async def serve_grpc(port: int) -> None:
    """grpc.aio over HTTP/2 on 127.0.0.1:port."""
    server = grpc.aio.server()
    quest_pb2_grpc.add_QuestServiceServicer_to_server(Quests(), server)
    server.add_generic_rpc_handlers((STREAM_HANDLER,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    _ready()
    await _until_sigterm()
    await server.stop(grace=1)


async def serve_grpc_bytes(port: int, hop: str | None, nats_url: str | None = None) -> None:
    """grpc.aio on 127.0.0.1:port answering GetQuest as bytes (no protobuf): at once (``hop``
    None), after one event-loop turn (``"turn"``), or with what the raw nats-py responder answers
    on NATS at ``nats_url`` (``"nats"``). The rungs of ``benchmarks.ingress_floor``."""
    nc = None if nats_url is None else await nats.connect(nats_url, max_reconnect_attempts=0)

    async def at_once(request: bytes, context: object) -> bytes:
        return workload.RESPONSE_BYTES

    async def after_a_turn(request: bytes, context: object) -> bytes:
        await asyncio.sleep(0)
        return workload.RESPONSE_BYTES

    async def over_nats(request: bytes, context: object) -> bytes:
        assert nc is not None
        reply = await nc.request(workload.RAW_SUBJECT, request, timeout=workload.CALL_TIMEOUT, headers=TIMEOUT_HEADER)
        return reply.data

    if nc is not None:
        await until_answered(nc, workload.RAW_SUBJECT)  # the responder may still be subscribing
    handler = {None: at_once, "turn": after_a_turn, "nats": over_nats}[hop]
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        workload.SERVICE, {workload.METHOD: grpc.unary_unary_rpc_method_handler(handler)}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    _ready()
    await _until_sigterm()
    await server.stop(grace=1)
    if nc is not None:
        await nc.close()


def serve_grpc_sync(port: int) -> None:
    """grpcio's thread-pool server over HTTP/2 on 127.0.0.1:port."""
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=POOL_THREADS))
    quest_pb2_grpc.add_QuestServiceServicer_to_server(SyncQuests(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    _ready()
    stop.wait()
    server.stop(grace=1).wait()


async def serve_raw(url: str) -> None:
    """Raw nats-py responder: answers every request with the serialized response, no framing."""
    nc = await nats.connect(url, max_reconnect_attempts=0)

    async def answer(msg: Msg) -> None:
        await nc.publish(msg.reply, workload.RESPONSE_BYTES)

    await nc.subscribe(workload.RAW_SUBJECT, queue=workload.RAW_TARGET, cb=answer)
    await nc.flush()
    _ready()
    await _until_sigterm()
    await nc.drain()


async def serve_ours(url: str, *, sync_servicer: bool, trace_dir: str | None = None) -> None:
    """nats_transport.aio.server for the benchmark target (or the sync-servicer one, or, given a
    ``trace_dir``, the traced one)."""
    nc = await nats.connect(url, max_reconnect_attempts=0)
    if sync_servicer:
        target = workload.OURS_SYNC_SERVICER_TARGET
    else:
        target = workload.OURS_TRACED_TARGET if trace_dir else workload.OURS_TARGET
    # As a host decides: None without a trace folder, and then no interceptor at all.
    tracing = traced.tracing(traced.SERVER_PROCESS, trace_dir)
    interceptors = tracing.server_interceptors(target) if tracing is not None else None
    server = nats_transport.aio.server(nc, target, interceptors=interceptors)
    if sync_servicer:
        quest_pb2_grpc.add_QuestServiceServicer_to_server(SyncQuests(), server)
    else:
        quest_pb2_grpc.add_QuestServiceServicer_to_server(Quests(), server)
        # The ingress learns method types from reflection (unary calls then take the fast path).
        reflection.enable_server_reflection((workload.SERVICE, reflection.SERVICE_NAME), server)
    server.add_generic_rpc_handlers((STREAM_HANDLER,))
    await server.start()
    await nc.flush()
    _ready()
    await _until_sigterm()
    await server.stop(grace=1)
    await nc.drain()
    if tracing is not None:
        tracing.shutdown()  # the spans still queued go to the file


def ingress_available() -> bool:
    """Whether gateway.ingress (built separately) offers ``run_ingress`` yet."""
    if importlib.util.find_spec("gateway.ingress") is None:
        return False
    return hasattr(importlib.import_module("gateway.ingress"), "run_ingress")


async def serve_ingress(url: str, port: int) -> None:
    """gateway.ingress on 127.0.0.1:port, READY once it routes QuestService to the ``ours`` server."""
    # Imported by name: the gateway is built separately, and this keeps its types out of ours.
    ingress_module = importlib.import_module("gateway.ingress")
    logging.getLogger("gateway").setLevel(logging.ERROR)  # two bench targets serve QuestService
    nc = await nats.connect(url, max_reconnect_attempts=0)
    ingress = await ingress_module.run_ingress(nc, "127.0.0.1", port)
    target = await ingress.discovery.resolve(workload.SERVICE)
    if target != workload.OURS_TARGET:
        raise RuntimeError(f"the ingress routes {workload.SERVICE} to {target!r}, not {workload.OURS_TARGET!r}")
    await ingress.schemas.loaded(target)
    if ingress.schemas.method_kind(target, workload.SERVICE, workload.METHOD) is None:
        raise RuntimeError("the ingress did not load QuestService's descriptors")
    _ready()
    await _until_sigterm()
    await ingress.stop(grace=1)
    await nc.drain()


def workers_available() -> bool:
    """Whether gateway.workers (several ingress processes on one port) is there."""
    return ingress_available() and importlib.util.find_spec("gateway.workers") is not None


async def serve_ingress_workers(url: str, port: int, workers: int) -> None:
    """gateway.workers: ``workers`` ingress processes on 127.0.0.1:port; READY <worker pids> once
    each of them routes QuestService to the ``ours`` server."""
    options = importlib.import_module("gateway.ingress").IngressOptions(workers=workers)
    pool_module = importlib.import_module("gateway.workers")
    logging.getLogger("gateway").setLevel(logging.ERROR)  # two bench targets serve QuestService
    nc = await nats.connect(url, max_reconnect_attempts=0)
    setup = pool_module.PlainNats((url,), name="bench-ingress", log_level="ERROR")
    pool = await pool_module.run_workers(nc, "127.0.0.1", port, setup, options)
    try:
        await _until_every_worker_routes(port, len(pool.pids))
        print(" ".join([READY, *map(str, pool.pids)]), flush=True)
        await _until_sigterm()
    finally:
        await pool.stop(grace=1)
        await nc.drain()


async def _until_every_worker_routes(port: int, workers: int, within: float = 20.0) -> None:
    """Call GetQuest over new connections until ``workers * 8`` in a row succeed. The kernel
    picks each connection's worker by a hash, so that many leave a worker that cannot forward
    yet (each discovered the mesh before it said it listens) very unlikely to go unnoticed."""
    deadline = time.monotonic() + within
    succeeded = 0
    while succeeded < workers * 8:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the ingress workers do not all route {workload.SERVICE} yet")
        options = [("grpc.use_local_subchannel_pool", 1)]  # a connection of its own
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            try:
                await quest_pb2_grpc.QuestServiceStub(channel).GetQuest(workload.REQUEST, timeout=5)
            except grpc.aio.AioRpcError:
                succeeded = 0
                await asyncio.sleep(0.1)
                continue
        succeeded += 1


def edge_available() -> bool:
    """Whether gateway.edge offers ``start_edge`` and an Envoy binary is installed."""
    if not ingress_available() or importlib.util.find_spec("gateway.edge") is None:
        return False
    try:
        importlib.import_module("gateway.envoy").find_envoy()
    except Exception:
        return False
    return hasattr(importlib.import_module("gateway.edge"), "start_edge")


async def serve_edge(ingress_port: int, port: int) -> None:
    """gateway.edge's Envoy on 127.0.0.1:port in front of the ingress at 127.0.0.1:ingress_port,
    routing (and transcoding) QuestService only; READY <envoy pid> once it answers.

    Envoy dies with the thread that started it (PR_SET_PDEATHSIG): this process's main thread,
    which runs the event loop until SIGTERM.
    """
    edge_module = importlib.import_module("gateway.edge")
    logging.getLogger("gateway").setLevel(logging.ERROR)
    edge = await edge_module.start_edge(
        "127.0.0.1", ingress_port, port, http_host="127.0.0.1", services=[workload.SERVICE]
    )
    try:
        print(f"{READY} {edge.envoy.pid}", flush=True)
        await _until_sigterm()
    finally:
        await edge.stop()


class ServerProcess:
    """One benchmark server in a subprocess of this interpreter."""

    def __init__(self, kind: str, *args: str) -> None:
        self.kind = kind
        self.args = args
        self._process: subprocess.Popen[bytes] | None = None
        self.helper_pids: tuple[int, ...] = ()  # processes it started and named on its READY line

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError(f"{self.kind} server is not running")
        return self._process.pid

    def launch(self) -> ServerProcess:
        """Start it; :meth:`wait_ready` waits for its READY line."""
        command = [sys.executable, "-m", "benchmarks.servers", self.kind, *self.args]
        self._process = subprocess.Popen(command, cwd=_REPO, stdout=subprocess.PIPE)
        return self

    def wait_ready(self, timeout: float = 20.0) -> ServerProcess:
        """Wait for the READY line of a launched server."""
        if self._process is None or self._process.stdout is None:
            raise RuntimeError(f"{self.kind} server was not launched")
        deadline = time.monotonic() + timeout
        line = b""
        with selectors.DefaultSelector() as selector:
            selector.register(self._process.stdout, selectors.EVENT_READ)
            while not line.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    self.stop()
                    raise TimeoutError(f"{self.kind} server not ready within {timeout}s")
                chunk = os.read(self._process.stdout.fileno(), 64)
                if not chunk:
                    code = self._process.wait()
                    raise RuntimeError(f"{self.kind} server exited with {code} before READY")
                line += chunk
        words = line.split()
        if not words or words[0] != READY.encode() or not all(w.isdigit() for w in words[1:]):
            self.stop()
            raise RuntimeError(f"{self.kind} server said {line!r} instead of READY")
        self.helper_pids = tuple(int(w) for w in words[1:])
        return self

    def cpu_seconds(self) -> float:
        return procstat.cpu_seconds(self.pid)

    def peak_rss_mib(self) -> float:
        return procstat.peak_rss_mib(self.pid)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within 10 s."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()
        self._process = None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.servers")
    kinds = parser.add_subparsers(dest="kind", required=True)
    for kind in ("grpc-aio", "grpc-aio-uvloop", "grpc-sync", "grpc-bytes", "grpc-bytes-turn"):
        kinds.add_parser(kind).add_argument("--port", type=int, required=True)
    bytes_nats = kinds.add_parser("grpc-bytes-nats")
    bytes_nats.add_argument("--port", type=int, required=True)
    bytes_nats.add_argument("--nats", required=True)
    for kind in ("raw", "raw-uvloop", "ours", "ours-uvloop", "ours-sync-servicer"):
        kinds.add_parser(kind).add_argument("--nats", required=True)
    ours_traced = kinds.add_parser("ours-traced")
    ours_traced.add_argument("--nats", required=True)
    ours_traced.add_argument("--trace-dir", required=True)
    ingress = kinds.add_parser("ingress")
    ingress.add_argument("--nats", required=True)
    ingress.add_argument("--port", type=int, required=True)
    ingress_workers = kinds.add_parser("ingress-2")
    ingress_workers.add_argument("--nats", required=True)
    ingress_workers.add_argument("--port", type=int, required=True)
    edge = kinds.add_parser("edge")
    edge.add_argument("--ingress-port", type=int, required=True)
    edge.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    run: Callable[[Coroutine[Any, Any, None]], None] = asyncio.run
    if args.kind.endswith("-uvloop"):
        import uvloop

        run, args.kind = uvloop.run, args.kind.removesuffix("-uvloop")
    with contextlib.suppress(KeyboardInterrupt):
        if args.kind == "grpc-sync":
            serve_grpc_sync(args.port)
        elif args.kind == "grpc-aio":
            run(serve_grpc(args.port))
        elif args.kind == "grpc-bytes":
            run(serve_grpc_bytes(args.port, None))
        elif args.kind == "grpc-bytes-turn":
            run(serve_grpc_bytes(args.port, "turn"))
        elif args.kind == "grpc-bytes-nats":
            run(serve_grpc_bytes(args.port, "nats", args.nats))
        elif args.kind == "raw":
            run(serve_raw(args.nats))
        elif args.kind == "ingress":
            run(serve_ingress(args.nats, args.port))
        elif args.kind == "ingress-2":
            run(serve_ingress_workers(args.nats, args.port, 2))
        elif args.kind == "edge":
            run(serve_edge(args.ingress_port, args.port))
        elif args.kind == "ours-traced":
            run(serve_ours(args.nats, sync_servicer=False, trace_dir=args.trace_dir))
        else:
            run(serve_ours(args.nats, sync_servicer=args.kind == "ours-sync-servicer"))


if __name__ == "__main__":
    main()
