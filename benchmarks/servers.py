"""Server processes: ``python -m benchmarks.servers {grpc,raw,ours} ...`` prints READY when serving.

Each runs until SIGTERM. The parent side, :class:`ServerProcess`, starts one, waits for its
READY line and reads its CPU time and peak RSS from /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NoReturn

import grpc
import nats
from gaming.quest.v1 import quest_pb2, quest_pb2_grpc
from nats.aio.msg import Msg

import nats_transport
from benchmarks import procstat, workload

READY = "READY"
_REPO = Path(__file__).resolve().parent.parent


async def _unimplemented(self: object, request: object, context: Any) -> NoReturn:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not part of the benchmark")
    raise AssertionError("abort returned")


class Quests(quest_pb2_grpc.QuestServiceServicer):
    """GetQuest answers a small fixed Quest; the other methods are not benchmarked."""

    async def GetQuest(self, request: quest_pb2.GetQuestRequest, context: object) -> quest_pb2.GetQuestResponse:
        return workload.RESPONSE

    GenerateQuest = Accept = UpdateProgress = List = _unimplemented


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


async def serve_ours(url: str) -> None:
    """nats_transport.aio.server for the benchmark target."""
    nc = await nats.connect(url, max_reconnect_attempts=0)
    server = nats_transport.aio.server(nc, workload.OURS_TARGET)
    quest_pb2_grpc.add_QuestServiceServicer_to_server(Quests(), server)
    server.add_generic_rpc_handlers((STREAM_HANDLER,))
    await server.start()
    await nc.flush()
    _ready()
    await _until_sigterm()
    await server.stop(grace=1)
    await nc.drain()


class ServerProcess:
    """One benchmark server in a subprocess of this interpreter."""

    def __init__(self, kind: str, *args: str) -> None:
        self.kind = kind
        self.args = args
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError(f"{self.kind} server is not running")
        return self._process.pid

    def start(self, timeout: float = 20.0) -> ServerProcess:
        """Start it and wait for its READY line."""
        command = [sys.executable, "-m", "benchmarks.servers", self.kind, *self.args]
        self._process = subprocess.Popen(command, cwd=_REPO, stdout=subprocess.PIPE)
        assert self._process.stdout is not None
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
        if line.strip() != READY.encode():
            self.stop()
            raise RuntimeError(f"{self.kind} server said {line!r} instead of READY")
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
    kinds.add_parser("grpc").add_argument("--port", type=int, required=True)
    kinds.add_parser("raw").add_argument("--nats", required=True)
    kinds.add_parser("ours").add_argument("--nats", required=True)
    args = parser.parse_args(argv)
    if args.kind == "grpc":
        serve = serve_grpc(args.port)
    elif args.kind == "raw":
        serve = serve_raw(args.nats)
    else:
        serve = serve_ours(args.nats)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve)


if __name__ == "__main__":
    main()
