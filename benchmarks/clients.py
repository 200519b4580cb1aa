"""asyncio clients: N tasks calling back to back, timed over a fixed window; the stream reader."""

from __future__ import annotations

import asyncio
import contextvars
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import nats
from gaming.quest.v1 import quest_pb2_grpc

import nats_transport
from benchmarks import http1, traced, workload
from benchmarks.cases import Endpoints
from nats_transport._metadata import TIMEOUT_HEADER, encode_timeout

Call = Callable[[], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class Sample:
    """What one timed window measured."""

    calls: int
    errors: int
    seconds: float
    latencies: list[float]  # seconds, sorted

    @property
    def rate(self) -> float:
        return self.calls / self.seconds

    def percentile_ms(self, q: float) -> float:
        """Nearest-rank percentile (0 < q <= 1) of the call latencies, in milliseconds."""
        if not self.latencies:
            return math.nan
        rank = max(math.ceil(q * len(self.latencies)), 1)
        return self.latencies[rank - 1] * 1000


async def measure(call: Call, concurrency: int, warmup: float, duration: float) -> Sample:
    """Run ``concurrency`` tasks calling back to back; count calls that end inside the window.

    The window opens ``warmup`` seconds after the tasks start and lasts ``duration``; a call
    counts (and its latency is kept) if it completes inside it. No task starts a call after
    the window closes.
    """
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    opens, closes = start + warmup, start + warmup + duration

    async def worker() -> None:  # the same loop as sync_clients.measure's threads
        nonlocal errors
        clock = time.perf_counter
        while (began := clock()) < closes:
            try:
                await call()
            except Exception:
                ended = clock()
                if opens <= ended <= closes:
                    errors += 1
                continue
            ended = clock()
            if opens <= ended <= closes:
                latencies.append(ended - began)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    latencies.sort()
    return Sample(len(latencies), errors, duration, latencies)


StreamOpener = Callable[[int], Any]


async def stream_rate(open_stream: StreamOpener, count: int) -> float:
    """Messages per second of one server stream of ``count`` messages, read as they come."""
    began = time.perf_counter()
    received = 0
    async for _ in open_stream(count):
        received += 1
    if received != count:
        raise RuntimeError(f"stream delivered {received} of {count} messages")
    return count / (time.perf_counter() - began)


@asynccontextmanager
async def grpc_aio_stream(port: int) -> AsyncIterator[StreamOpener]:
    """The streaming method through a grpc.aio channel over HTTP/2."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        method = channel.unary_stream(workload.STREAM_METHOD)
        yield lambda count: method(str(count).encode(), timeout=120)


@asynccontextmanager
async def ours_stream(url: str) -> AsyncIterator[StreamOpener]:
    """The streaming method through nats_transport.aio.channel."""
    nc = await nats.connect(url, max_reconnect_attempts=0)
    try:
        method = nats_transport.aio.channel(nc, workload.OURS_TARGET).unary_stream(workload.STREAM_METHOD)
        yield lambda count: method(str(count).encode(), timeout=120)
    finally:
        await nc.close()


@asynccontextmanager
async def grpc_aio(port: int) -> AsyncIterator[Call]:
    """GetQuest through a grpc.aio channel over HTTP/2."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        stub = quest_pb2_grpc.QuestServiceStub(channel)

        async def call() -> object:
            return await stub.GetQuest(workload.REQUEST, timeout=workload.CALL_TIMEOUT)

        yield call


@asynccontextmanager
async def raw_nats(url: str) -> AsyncIterator[Call]:
    """nc.request with the serialized request and the ``grpc-timeout`` header our transport sends."""
    nc = await nats.connect(url, max_reconnect_attempts=0)
    # Built once: the floor a hand-written client reaches (nats_transport encodes it per call).
    headers = {TIMEOUT_HEADER: encode_timeout(workload.CALL_TIMEOUT)}
    try:

        async def call() -> object:
            return await nc.request(
                workload.RAW_SUBJECT, workload.REQUEST_BYTES, timeout=workload.CALL_TIMEOUT, headers=headers
            )

        yield call
    finally:
        await nc.close()


@asynccontextmanager
async def ours(url: str, target: str = workload.OURS_TARGET, trace_dir: str | None = None) -> AsyncIterator[Call]:
    """GetQuest through nats_transport.aio.channel; given a ``trace_dir``, with the client
    interceptors a host's channels get when it traces."""
    nc = await nats.connect(url, max_reconnect_attempts=0)
    # As a host decides: None without a trace folder, and then no interceptor at all.
    tracing = traced.tracing(traced.CLIENT_PROCESS, trace_dir)
    interceptors = tracing.client_interceptors(traced.CALLER, target) if tracing is not None else None
    channel = nats_transport.aio.channel(nc, target, interceptors=interceptors)
    try:
        stub = quest_pb2_grpc.QuestServiceStub(channel)

        async def call() -> object:
            return await stub.GetQuest(workload.REQUEST, timeout=workload.CALL_TIMEOUT)

        yield call
    finally:
        await channel.close()
        await nc.close()
        if tracing is not None:
            tracing.shutdown()  # after the last window: the spans still queued go to the file


@asynccontextmanager
async def http_json(port: int) -> AsyncIterator[Call]:
    """GetQuest as an HTTP/1.1 keep-alive GET of its google.api.http path (JSON back), one
    connection per calling task, opened on its first call."""
    connections: list[http1.Connection] = []
    mine: contextvars.ContextVar[http1.Connection] = contextvars.ContextVar("http_connection")

    async def call() -> object:
        try:
            connection = mine.get()
        except LookupError:
            connection = http1.Connection("127.0.0.1", port)
            connections.append(connection)
            mine.set(connection)  # the calling task's own context: its connection from now on
        return await connection.get(workload.HTTP_PATH)

    probe = http1.Connection("127.0.0.1", port)
    try:
        answer = json.loads(await asyncio.wait_for(probe.get(workload.HTTP_PATH), 10))
    finally:
        await probe.close()
    if answer.get("quest", {}).get("questId") != workload.QUEST.quest_id:
        raise RuntimeError(f"unexpected answer from Envoy: {answer!r}")
    try:
        yield call
    finally:
        for connection in connections:
            await connection.close()


def open_client(key: str, endpoints: Endpoints) -> AbstractAsyncContextManager[Call]:
    """The asyncio client of transport ``key`` (cases.TRANSPORTS)."""
    if key == "grpc-aio":
        return grpc_aio(endpoints.grpc_aio_port)
    if key == "ingress":
        return grpc_aio(endpoints.ingress_port)
    if key == "envoy":
        return http_json(endpoints.edge_port)
    if key == "raw":
        return raw_nats(endpoints.nats_url)
    if key == "ours":
        return ours(endpoints.nats_url)
    if key == "ours-sync-servicer":
        return ours(endpoints.nats_url, workload.OURS_SYNC_SERVICER_TARGET)
    if key == "ours-traced":
        return ours(endpoints.nats_url, workload.OURS_TRACED_TARGET, endpoints.trace_dir)
    raise ValueError(f"no asyncio client for {key!r}")


def open_stream(key: str, endpoints: Endpoints) -> AbstractAsyncContextManager[StreamOpener]:
    """The server-streaming client of transport ``key``."""
    if key == "grpc-aio":
        return grpc_aio_stream(endpoints.grpc_aio_port)
    if key == "ours":
        return ours_stream(endpoints.nats_url)
    raise ValueError(f"no streaming client for {key!r}")
