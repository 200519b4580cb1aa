"""Sync-stub clients: N threads sharing one channel, calling back to back over a fixed window;
and raw nats-py called from N threads, the floor under the sync channel."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import grpc
import nats
from gaming.quest.v1 import quest_pb2_grpc

import nats_transport
from benchmarks import workload
from benchmarks.cases import Endpoints
from benchmarks.clients import Sample
from nats_transport._loop_bridge import Awaited, LoopInbox
from nats_transport._metadata import TIMEOUT_HEADER, encode_timeout

SyncCall = Callable[[], object]


def measure(call: SyncCall, threads: int, warmup: float, duration: float) -> Sample:
    """Run ``threads`` threads calling back to back; count calls that end inside the window.

    The same rules as :func:`benchmarks.clients.measure`: the window opens ``warmup`` seconds
    after the threads start and lasts ``duration``; no thread starts a call after it closes.
    """
    latencies: list[float] = []  # list.append is atomic under the GIL
    errors = [0] * threads  # one slot per thread, summed at the end
    start = time.perf_counter()
    opens, closes = start + warmup, start + warmup + duration

    def worker(index: int) -> None:
        clock = time.perf_counter
        while (began := clock()) < closes:
            try:
                call()
            except Exception:
                ended = clock()
                if opens <= ended <= closes:
                    errors[index] += 1
                continue
            ended = clock()
            if opens <= ended <= closes:
                latencies.append(ended - began)

    workers = [threading.Thread(target=worker, args=(i,), name=f"load-{i}") for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    latencies.sort()
    return Sample(len(latencies), sum(errors), duration, latencies)


@contextmanager
def grpc_sync(port: int) -> Iterator[SyncCall]:
    """GetQuest through grpcio's sync channel over HTTP/2."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        stub = quest_pb2_grpc.QuestServiceStub(channel)

        def call() -> object:
            return stub.GetQuest(workload.REQUEST, timeout=workload.CALL_TIMEOUT)

        yield call


@contextmanager
def ours_sync(url: str) -> Iterator[SyncCall]:
    """GetQuest through ``nats_transport.channel(url, target)`` (it owns its NATS connection)."""
    with nats_transport.channel(url, workload.OURS_TARGET) as channel:
        stub = quest_pb2_grpc.QuestServiceStub(channel)

        def call() -> object:
            return stub.GetQuest(workload.REQUEST, timeout=workload.CALL_TIMEOUT)

        call()  # the first call sets up the reply subscription; keep it out of the warm-up
        yield call


@contextmanager
def raw_from_threads(url: str, handoff: str) -> Iterator[SyncCall]:
    """raw nats-py's ``nc.request`` (the same bytes and header as the asyncio raw client) on an
    event loop in a thread of its own, called from the calling threads.

    ``handoff`` is how a calling thread gets the request onto the loop and its reply back:
    ``"threadsafe"``, ``asyncio.run_coroutine_threadsafe`` and its concurrent Future (what
    hand-written sync code over nats-py does); ``"inbox"``, the sync channel's own handoff
    (``nats_transport._loop_bridge``: requests handed over together share one wake-up of the
    loop, and a reply is one lock release; ``Awaited``, as the channel's ``_run`` uses it). With
    it, this is the sync channel without gRPC: the floor under it on nats-py.
    """
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="raw-nats-loop", daemon=True)
    thread.start()
    nc = asyncio.run_coroutine_threadsafe(nats.connect(url, max_reconnect_attempts=0), loop).result(10)
    headers = {TIMEOUT_HEADER: encode_timeout(workload.CALL_TIMEOUT)}

    async def request() -> object:
        return await nc.request(
            workload.RAW_SUBJECT, workload.REQUEST_BYTES, timeout=workload.CALL_TIMEOUT, headers=headers
        )

    def threadsafe() -> object:
        return asyncio.run_coroutine_threadsafe(request(), loop).result()

    inbox = LoopInbox(loop)
    context = contextvars.Context()

    def through_inbox() -> object:
        awaited = Awaited(request())
        inbox.submit(awaited.start, loop, context)
        return awaited.result()

    try:
        yield threadsafe if handoff == "threadsafe" else through_inbox
    finally:
        asyncio.run_coroutine_threadsafe(nc.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


def open_client(key: str, endpoints: Endpoints) -> AbstractContextManager[SyncCall]:
    """The sync-stub client of transport ``key`` (cases.TRANSPORTS)."""
    if key == "grpc-sync":
        return grpc_sync(endpoints.grpc_sync_port)
    if key == "ours-sync":
        return ours_sync(endpoints.nats_url)
    if key == "raw-sync":
        return raw_from_threads(endpoints.nats_url, "threadsafe")
    if key == "raw-sync-inbox":
        return raw_from_threads(endpoints.nats_url, "inbox")
    raise ValueError(f"no sync client for {key!r}")
