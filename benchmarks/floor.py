"""The floor under nats_transport: what raw nats-py spends per request/reply, and what each thing
a gRPC transport has to add costs on top of it.

Every variant runs requester and responder in one process (``python -m benchmarks.floor URL``
prints one JSON line per variant), 64 calls in flight, and counts that process's CPU time per
call: on a shared two-core machine CPU per call is steadier than throughput, and one process
takes the two sides' costs together, as the figures to reach do. nats-server's own CPU is not in
it. The ladder:

1. raw nats-py, no headers: ``nc.request`` and a responder that publishes a fixed reply from its
   subscription callback; nothing parsed, nothing serialized;
2. the same with the one header our fast path sends (``grpc-timeout``): nats-py builds and
   parses header blocks in Python;
3. plus an asyncio task per call on the responder (a handler that may await needs one);
4. plus a task per call on the requester (a grpc.aio call object runs without being awaited);
5. nats_transport aio: the generated stub over ``nats_transport.aio.channel`` against
   ``nats_transport.aio.server`` with an ``async def`` servicer (protobuf both ways, metadata,
   deadlines, status, interceptor chain, metrics-ready call state);

and the cost of the four protobuf (de)serializations of the call alone, outside any transport.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import nats
import nats.aio.client
import nats.errors
from gaming.quest.v1 import quest_pb2, quest_pb2_grpc
from nats.aio.msg import Msg

import nats_transport.aio
from benchmarks import workload

IN_FLIGHT = 64
CALLS = 20_000  # per window
WINDOWS = 3
TIMEOUT_HEADER = {"grpc-timeout": "5S"}  # what nats_transport sends for a 5 s deadline


@dataclass(frozen=True, slots=True)
class Step:
    """One rung of the ladder: CPU microseconds per call, median and range over the windows."""

    name: str
    median: float
    low: float
    high: float


async def _windows(call: Callable[[], Awaitable[object]]) -> list[float]:
    async def worker(n: int) -> None:
        for _ in range(n):
            await call()

    await asyncio.gather(*(worker(200) for _ in range(IN_FLIGHT)))  # warm-up
    spent = []
    for _ in range(WINDOWS):
        began = time.process_time()
        await asyncio.gather(*(worker(CALLS // IN_FLIGHT) for _ in range(IN_FLIGHT)))
        spent.append((time.process_time() - began) / CALLS * 1e6)
    return spent


async def until_answered(nc: nats.aio.client.Client, subject: str, within: float = 10.0) -> None:
    """Wait until a request on ``subject`` is answered. nats-py 2.16's ``flush()`` may return
    before the server has seen a SUB still waiting in the client's buffer (nats_transport's
    connection guard fixes that on its own connections; a raw client keeps the race)."""
    deadline = time.monotonic() + within
    while True:
        try:
            await nc.request(subject, workload.REQUEST_BYTES, timeout=1)
            return
        except nats.errors.NoRespondersError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.01)


async def _raw(url: str, subject: str, headers: dict[str, str] | None, server_task: bool,
               client_task: bool) -> list[float]:
    responder, requester = await nats.connect(url), await nats.connect(url)
    response = workload.RESPONSE.SerializeToString()
    loop = asyncio.get_running_loop()

    async def answer(msg: Msg) -> None:
        await responder.publish(msg.reply, response)

    running: set[asyncio.Task[None]] = set()  # as a server keeps its calls, to stop them

    async def answer_in_task(msg: Msg) -> None:
        try:
            await answer(msg)
        finally:
            running.discard(asyncio.current_task())  # type: ignore[arg-type]  # always in a task

    async def in_a_task(msg: Msg) -> None:
        running.add(loop.create_task(answer_in_task(msg)))

    await responder.subscribe(subject, queue="floor", cb=in_a_task if server_task else answer)
    await responder.flush()
    await until_answered(requester, subject)

    async def request() -> object:
        return await requester.request(subject, workload.REQUEST_BYTES, timeout=5, headers=headers)

    async def call() -> object:
        return await (loop.create_task(request()) if client_task else request())

    try:
        return await _windows(call)
    finally:
        await responder.close()
        await requester.close()


class _Quests(quest_pb2_grpc.QuestServiceServicer):
    async def GetQuest(self, request: quest_pb2.GetQuestRequest, context: object) -> quest_pb2.GetQuestResponse:
        return workload.RESPONSE


async def _ours(url: str) -> list[float]:
    server_nc, client_nc = await nats.connect(url), await nats.connect(url)
    server = nats_transport.aio.server(server_nc, "benchfloor")
    quest_pb2_grpc.add_QuestServiceServicer_to_server(_Quests(), server)
    await server.start()
    channel = nats_transport.aio.channel(client_nc, "benchfloor")
    stub = quest_pb2_grpc.QuestServiceStub(channel)

    async def call() -> object:
        return await stub.GetQuest(workload.REQUEST, timeout=5)

    try:
        return await _windows(call)
    finally:
        await channel.close()
        await server.stop(0)
        await server_nc.close()
        await client_nc.close()


def _protobuf() -> list[float]:
    request, response = workload.REQUEST, workload.RESPONSE
    request_bytes, response_bytes = workload.REQUEST_BYTES, response.SerializeToString()
    spent = []
    for _ in range(WINDOWS):
        began = time.process_time()
        for _ in range(CALLS):
            request.SerializeToString()
            quest_pb2.GetQuestRequest.FromString(request_bytes)
            response.SerializeToString()
            quest_pb2.GetQuestResponse.FromString(response_bytes)
        spent.append((time.process_time() - began) / CALLS * 1e6)
    return spent


LADDER = (
    "raw nats-py, no headers",
    "raw nats-py + the grpc-timeout header",
    "+ a task per call on the responder",
    "+ a task per call on the requester",
    "nats_transport aio (stub, channel, server, async def servicer)",
)
PROTOBUF = "the call's 4 protobuf (de)serializations alone"


async def _ladder(url: str) -> list[tuple[str, list[float]]]:
    return [
        (LADDER[0], await _raw(url, "floor.plain", None, False, False)),
        (LADDER[1], await _raw(url, "floor.header", TIMEOUT_HEADER, False, False)),
        (LADDER[2], await _raw(url, "floor.server-task", TIMEOUT_HEADER, True, False)),
        (LADDER[3], await _raw(url, "floor.both-tasks", TIMEOUT_HEADER, True, True)),
        (LADDER[4], await _ours(url)),
        (PROTOBUF, _protobuf()),
    ]


def measure(url: str) -> list[Step]:
    """Run the ladder in a child process against the nats-server at ``url``."""
    return steps_of_child("benchmarks.floor", url)


def steps_of_child(module: str, url: str) -> list[Step]:
    """Run ``python -m module url`` (a ladder that prints :func:`print_steps`'s lines) and read
    its steps."""
    done = subprocess.run([sys.executable, "-m", module, url], capture_output=True, text=True,
                          timeout=600, cwd=Path(__file__).resolve().parent.parent)
    if done.returncode:
        raise RuntimeError(f"{module} failed: {done.stderr.strip()[-2000:]}")
    steps = []
    for line in done.stdout.splitlines():
        record = json.loads(line)
        spent = record["us_per_call"]
        steps.append(Step(record["name"], statistics.median(spent), min(spent), max(spent)))
    return steps


def print_steps(steps: list[tuple[str, list[float]]]) -> None:
    """One JSON line per step: its name and the CPU us per call of each window."""
    for name, spent in steps:
        print(json.dumps({"name": name, "us_per_call": spent}), flush=True)


def main(argv: list[str] | None = None) -> None:
    (url,) = argv if argv is not None else sys.argv[1:]
    print_steps(asyncio.run(_ladder(url)))


if __name__ == "__main__":
    main()
