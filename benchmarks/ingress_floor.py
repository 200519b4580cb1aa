"""The floor under a gRPC ingress over NATS: what grpc.aio's own server spends per call, first
answering at once, then when its handler has to wait, then when it waits for a raw nats-py
request/reply, as an ingress does.

``python -m benchmarks.ingress_floor URL`` prints one JSON line per rung. Each rung is a grpc.aio
server process (``benchmarks.servers``: ``grpc-bytes``, ``grpc-bytes-turn``, ``grpc-bytes-nats``)
with one generic handler for GetQuest that takes and returns bytes (no protobuf, as the ingress
forwards bytes), called by grpc.aio stubs from this process, 64 in flight over one HTTP/2
connection; the figure is the server process's CPU per call. The raw nats-py responder of the
last rung is a process of its own (``servers raw``), so its CPU is not in the figure, as the
nats_transport server behind the real ingress is not in the ingress's.
"""

from __future__ import annotations

import asyncio
import socket
import sys

import grpc
from gaming.quest.v1 import quest_pb2_grpc

from benchmarks import procstat, workload
from benchmarks.floor import Step, print_steps, steps_of_child
from benchmarks.servers import ServerProcess

IN_FLIGHT = 64
CALLS = 10_000  # per window
WINDOWS = 3

LADDER = (
    ("grpc-bytes", "grpc.aio server, a bytes handler that answers at once"),
    ("grpc-bytes-turn", "+ the handler waits one event-loop turn before answering"),
    ("grpc-bytes-nats", "+ instead, the handler waits for a raw nats-py request/reply (an ingress's hop alone)"),
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _windows(port: int, server_pid: int) -> list[float]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = quest_pb2_grpc.QuestServiceStub(channel)

        async def worker(n: int) -> None:
            for _ in range(n):
                await stub.GetQuest(workload.REQUEST, timeout=workload.CALL_TIMEOUT)

        await asyncio.gather(*(worker(50) for _ in range(IN_FLIGHT)))  # warm-up
        spent = []
        for _ in range(WINDOWS):
            began = procstat.cpu_seconds(server_pid)
            await asyncio.gather(*(worker(CALLS // IN_FLIGHT) for _ in range(IN_FLIGHT)))
            spent.append((procstat.cpu_seconds(server_pid) - began) / CALLS * 1e6)
        return spent


def _ladder(url: str) -> list[tuple[str, list[float]]]:
    responder = ServerProcess("raw", "--nats", url).launch().wait_ready()
    try:
        steps = []
        for kind, name in LADDER:
            port = _free_port()
            extra = ("--nats", url) if kind == "grpc-bytes-nats" else ()
            server = ServerProcess(kind, "--port", str(port), *extra).launch().wait_ready()
            try:
                steps.append((name, asyncio.run(_windows(port, server.pid))))
            finally:
                server.stop()
        return steps
    finally:
        responder.stop()


def measure(url: str) -> list[Step]:
    """Run the ladder in a child process against the nats-server at ``url``."""
    return steps_of_child("benchmarks.ingress_floor", url)


def main(argv: list[str] | None = None) -> None:
    (url,) = argv if argv is not None else sys.argv[1:]
    print_steps(_ladder(url))


if __name__ == "__main__":
    main()
