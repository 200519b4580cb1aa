"""The thread pool of plain-function handlers: results and errors on the loop, the bound on its
threads, shutdown with work still queued, one loop wakeup for many completions; and, over a real
NATS, a server whose handler outlives its call or its server's stop keeps its pool working."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import threading
import uuid
from typing import Any

import grpc
import pytest
from gaming.quest.v1 import quest_pb2, quest_pb2_grpc
from nats.aio.client import Client

import nats_transport
from nats_transport._handler_io import wait_on_loop
from nats_transport._thread_pool import ThreadPool
from tests._quests import reply, serving
from tests._waiting import wait_for

BOUND = 5.0  # seconds any wait in these tests may take before the test fails
SERVER_LOG = "nats_transport.server"

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="none")


def pool_name() -> str:
    return f"test-pool-{uuid.uuid4().hex[:8]}"


def threads_named(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(f"{name}_")]


class Gate:
    """Calls that block on a pool thread until the test opens the gate; counts how many run at
    once and which ran."""

    def __init__(self) -> None:
        self._open = threading.Event()
        self._lock = threading.Lock()
        self.running = 0
        self.peak = 0
        self.ran: list[int] = []

    def open(self) -> None:
        self._open.set()

    def call(self, n: int) -> int:
        with self._lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.ran.append(n)
        try:
            if not self._open.wait(BOUND):
                raise TimeoutError("the gate was never opened")
            return n * 10
        finally:
            with self._lock:
                self.running -= 1


# -- the pool on its own -------------------------------------------------------------------------


async def test_a_call_runs_on_a_pool_thread_and_its_result_arrives_on_the_loop() -> None:
    pool = ThreadPool(4, pool_name())
    loop_thread = threading.current_thread()
    try:
        thread, total = await asyncio.wait_for(pool.run(lambda a, b: (threading.current_thread(), a + b), 2, 3), BOUND)
    finally:
        pool.shutdown()
    assert total == 5
    assert thread is not loop_thread


async def test_a_call_runs_in_the_context_it_is_given_and_its_changes_stay_there() -> None:
    pool = ThreadPool(2, pool_name())
    request_id.set("call-1")
    context = contextvars.copy_context()
    request_id.set("loop")

    def read_and_change() -> str:
        seen = request_id.get()
        request_id.set("changed by the handler")
        return seen

    try:
        seen = await asyncio.wait_for(pool.run(read_and_change, context=context), BOUND)
        without = await asyncio.wait_for(pool.run(request_id.get), BOUND)
    finally:
        pool.shutdown()
    assert seen == "call-1"
    assert context[request_id] == "changed by the handler"
    assert request_id.get() == "loop"
    assert without == "none"  # no context given: the worker's own, not the caller's


async def test_an_exception_of_the_call_is_raised_where_it_is_awaited() -> None:
    pool = ThreadPool(2, pool_name())

    def fail() -> None:
        raise KeyError("missing")

    try:
        with pytest.raises(KeyError, match="missing"):
            await asyncio.wait_for(pool.run(fail), BOUND)
        # A future cannot carry StopIteration: it arrives as a RuntimeError caused by it.
        with pytest.raises(RuntimeError, match="StopIteration") as caught:
            await asyncio.wait_for(pool.run(next, iter(())), BOUND)
        assert isinstance(caught.value.__cause__, StopIteration)
        assert await asyncio.wait_for(pool.run(int, "7"), BOUND) == 7  # and the pool goes on
    finally:
        pool.shutdown()


async def test_no_more_calls_run_at_once_than_the_pool_has_threads() -> None:
    name = pool_name()
    pool = ThreadPool(2, name)
    gate = Gate()
    try:
        futures = [pool.run(gate.call, n) for n in range(6)]
        await wait_for(lambda: gate.running == 2, BOUND)
        assert pool.threads == 2
        assert len(threads_named(name)) == 2
        gate.open()
        results = await asyncio.wait_for(asyncio.gather(*futures), BOUND)
    finally:
        pool.shutdown()
    assert results == [n * 10 for n in range(6)]
    assert gate.peak == 2
    assert sorted(gate.ran) == list(range(6))


async def test_threads_start_only_as_calls_need_them() -> None:
    pool = ThreadPool(8, pool_name())
    try:
        for n in range(5):
            assert await asyncio.wait_for(pool.run(abs, -n), BOUND) == n
    finally:
        pool.shutdown()
    assert pool.threads == 1  # one call at a time never needed a second thread


async def test_a_cancelled_call_that_has_started_runs_to_its_end_and_the_pool_goes_on() -> None:
    pool = ThreadPool(1, pool_name())
    gate = Gate()
    try:
        started = pool.run(gate.call, 1)
        await wait_for(lambda: gate.running == 1, BOUND)
        started.cancel()
        gate.open()
        await wait_for(lambda: gate.running == 0, BOUND)
        assert await asyncio.wait_for(pool.run(abs, -2), BOUND) == 2
    finally:
        pool.shutdown()
    assert started.cancelled()
    assert pool.threads == 1


async def test_a_call_cancelled_before_a_thread_was_free_never_runs() -> None:
    pool = ThreadPool(1, pool_name())
    gate = Gate()
    try:
        first = pool.run(gate.call, 1)
        queued = pool.run(gate.call, 2)
        await wait_for(lambda: gate.running == 1, BOUND)
        queued.cancel()
        gate.open()
        assert await asyncio.wait_for(first, BOUND) == 10
        assert await asyncio.wait_for(pool.run(abs, -3), BOUND) == 3  # after the cancelled one
    finally:
        pool.shutdown()
    assert gate.ran == [1]


async def test_shutdown_cancels_queued_calls_lets_the_running_one_finish_and_ends_the_threads() -> None:
    name = pool_name()
    pool = ThreadPool(1, name)
    gate = Gate()
    running = pool.run(gate.call, 1)
    queued = [pool.run(gate.call, n) for n in (2, 3)]
    await wait_for(lambda: gate.running == 1, BOUND)
    pool.shutdown()
    assert all(future.cancelled() for future in queued)
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.run(abs, -1)
    gate.open()
    assert await asyncio.wait_for(running, BOUND) == 10
    await wait_for(lambda: not threads_named(name), BOUND)
    assert gate.ran == [1]


async def test_many_completions_wake_the_loop_once_per_batch_not_once_per_call() -> None:
    calls = 1000
    threads = 4
    pool = ThreadPool(threads, pool_name())
    wakeups = 0
    settle = pool._settle

    def counting_settle() -> None:
        nonlocal wakeups
        wakeups += 1
        settle()

    pool._settle = counting_settle  # type: ignore[method-assign]
    finished = threading.Event()
    done = 0
    lock = threading.Lock()

    def work(n: int) -> int:
        nonlocal done
        with lock:
            done += 1
            if done == calls:
                finished.set()
        return n

    try:
        futures = [pool.run(work, n) for n in range(calls)]
        # Hold the loop while the threads finish every call: their outcomes pile up for it.
        assert finished.wait(BOUND)
        results = await asyncio.wait_for(asyncio.gather(*futures), BOUND)
    finally:
        pool.shutdown()
    assert results == list(range(calls))
    # One wakeup for the pile; at worst, each thread also raced another to ask for it once while
    # the loop was held, and once more with the outcome it added as the loop began to take them.
    assert 1 <= wakeups <= 2 * threads


async def test_the_pool_serves_only_the_loop_it_first_ran_on() -> None:
    pool = ThreadPool(1, pool_name())
    try:
        assert await asyncio.wait_for(pool.run(abs, -1), BOUND) == 1

        async def elsewhere() -> None:
            pool.run(abs, -2)

        with pytest.raises(RuntimeError, match="event loop"):
            await asyncio.to_thread(asyncio.run, elsewhere())
    finally:
        pool.shutdown()


async def test_a_thread_waiting_on_the_loop_gets_the_result_or_the_error_of_the_coroutine_it_ran() -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[int] = asyncio.Queue()

    async def fail() -> None:
        raise ValueError("bad message")

    async def never() -> None:
        await asyncio.Event().wait()

    def read_two() -> list[int]:
        return [wait_on_loop(loop, queue.get) for _ in range(2)]

    reading = asyncio.ensure_future(asyncio.to_thread(read_two))
    queue.put_nowait(1)
    queue.put_nowait(2)
    assert await asyncio.wait_for(reading, BOUND) == [1, 2]
    with pytest.raises(ValueError, match="bad message"):
        await asyncio.wait_for(asyncio.to_thread(wait_on_loop, loop, fail), BOUND)

    # A task cancelled under the thread (the loop shutting down) ends its wait, as
    # run_coroutine_threadsafe reports it.
    def wait_for_never() -> BaseException | None:
        try:
            wait_on_loop(loop, never)
        except BaseException as exc:  # asyncio would turn it into its own CancelledError on the way back
            return exc
        return None

    def waiting_task() -> list[asyncio.Task[Any]]:
        return [task for task in asyncio.all_tasks() if task.get_coro().__name__ == "never"]  # type: ignore[union-attr]

    waiting = asyncio.ensure_future(asyncio.to_thread(wait_for_never))
    await wait_for(lambda: bool(waiting_task()), BOUND)
    waiting_task()[0].cancel()
    assert isinstance(await asyncio.wait_for(waiting, BOUND), concurrent.futures.CancelledError)


# -- the pool behind a server --------------------------------------------------------------------


@pytest.fixture
def target() -> str:
    return f"pool-{uuid.uuid4().hex[:12]}"


async def test_a_plain_handler_that_outlives_its_deadline_leaves_its_one_thread_to_the_next_call(
    nc: Client, target: str
) -> None:
    release = threading.Event()
    finished: list[str] = []
    threads: list[str] = []

    def get_quest(request: Any, context: Any) -> quest_pb2.GetQuestResponse:
        threads.append(threading.current_thread().name)
        if request.quest_id == "slow":
            release.wait(BOUND)
        finished.append(request.quest_id)
        return reply(request.quest_id)

    options = nats_transport.ServerOptions(thread_pool_size=1)
    async with serving(nc, target, get_quest, options=options), nats_transport.aio.channel(nc, target) as channel:
        stub = quest_pb2_grpc.QuestServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetQuest(quest_pb2.GetQuestRequest(quest_id="slow"), timeout=0.3)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        release.set()
        await wait_for(lambda: finished == ["slow"], BOUND)
        response = await stub.GetQuest(quest_pb2.GetQuestRequest(quest_id="next"), timeout=BOUND)
    assert response.quest.title == "next"
    assert finished == ["slow", "next"]
    assert len(set(threads)) == 1  # the same single thread served both


async def test_a_plain_handler_that_raises_is_unknown_and_logged_and_its_thread_serves_the_next_call(
    nc: Client, target: str, caplog: pytest.LogCaptureFixture
) -> None:
    def get_quest(request: Any, context: Any) -> quest_pb2.GetQuestResponse:
        if request.quest_id == "bad":
            raise LookupError("no quest like that")
        return reply("fine")

    options = nats_transport.ServerOptions(thread_pool_size=1)
    async with serving(nc, target, get_quest, options=options), nats_transport.aio.channel(nc, target) as channel:
        stub = quest_pb2_grpc.QuestServiceStub(channel)
        with caplog.at_level(logging.ERROR, logger=SERVER_LOG), pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetQuest(quest_pb2.GetQuestRequest(quest_id="bad"), timeout=BOUND)
        response = await stub.GetQuest(quest_pb2.GetQuestRequest(quest_id="good"), timeout=BOUND)
    assert caught.value.code() == grpc.StatusCode.UNKNOWN
    assert "no quest like that" not in (caught.value.details() or "")
    (record,) = [r for r in caplog.records if r.name == SERVER_LOG]
    assert "exception calling application method" in record.getMessage()
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], LookupError)
    assert response.quest.title == "fine"


async def test_stop_with_grace_waits_for_a_running_plain_handler_and_its_reply_arrives(nc: Client, target: str) -> None:
    release = threading.Event()
    started = threading.Event()

    def get_quest(request: Any, context: Any) -> quest_pb2.GetQuestResponse:
        started.set()
        release.wait(BOUND)
        return reply("finished in grace")

    async with serving(nc, target, get_quest) as server, nats_transport.aio.channel(nc, target) as channel:
        call = asyncio.ensure_future(
            quest_pb2_grpc.QuestServiceStub(channel).GetQuest(quest_pb2.GetQuestRequest(), timeout=BOUND)
        )
        await wait_for(started.is_set, BOUND)
        stopping = asyncio.ensure_future(server.stop(grace=BOUND))
        await wait_for(lambda: server._refusing, BOUND)
        assert not stopping.done()
        release.set()
        response = await asyncio.wait_for(call, BOUND)
        await asyncio.wait_for(stopping, BOUND)
    assert response.quest.title == "finished in grace"


async def test_a_plain_handler_sees_the_deadline_of_its_own_call_each_time(nc: Client, target: str) -> None:
    seen: list[float | None] = []

    def get_quest(request: Any, context: Any) -> quest_pb2.GetQuestResponse:
        seen.append(nats_transport.time_remaining())
        return reply()

    async with serving(nc, target, get_quest), nats_transport.aio.channel(nc, target) as channel:
        stub = quest_pb2_grpc.QuestServiceStub(channel)
        await stub.GetQuest(quest_pb2.GetQuestRequest(), timeout=30)
        await stub.GetQuest(quest_pb2.GetQuestRequest())
        await stub.GetQuest(quest_pb2.GetQuestRequest(), timeout=2)
    first, second, third = seen
    assert first is not None
    assert 2 < first <= 30
    assert second is None  # the call before left nothing behind on the thread
    assert third is not None
    assert 0 < third <= 2
