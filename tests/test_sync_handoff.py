"""How the synchronous channel hands calls to its loop thread and their ends back: many threads
at once, cancellation, timeouts, interrupts, done callbacks, blocking calls from the loop thread,
and closing the channel with calls in flight (``nats_transport/_loop_bridge.py``).

These tests are plain functions: the server runs on an event loop in a thread of its own, so the
test's thread (the main thread, for the interrupt) is free to block in calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import signal
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import nats
import pytest

import nats_transport
import nats_transport.aio
from nats_transport._loop_bridge import Latch, LoopInbox
from nats_transport.testing import NatsServer
from tests._waiting import wait_until

SERVICE = "handoff.Handoff"
CLOSED = (grpc.StatusCode.CANCELLED, "Channel closed!")  # what grpcio's calls end with on close


class Handlers:
    """Raw-bytes handlers: ``Echo`` answers its request; ``Hang`` and ``HangStream`` (after one
    response) wait until released or cancelled. Each call is named by its request."""

    def __init__(self) -> None:
        self.started: set[bytes] = set()
        self.cancelled: set[bytes] = set()
        self.releases: dict[bytes, asyncio.Event] = {}  # by request, made on the server's loop

    async def echo(self, request: bytes, context: Any) -> bytes:
        return b"echo:" + request

    async def _wait(self, request: bytes) -> None:
        release = self.releases.setdefault(request, asyncio.Event())
        self.started.add(request)
        try:
            await release.wait()
        except asyncio.CancelledError:
            self.cancelled.add(request)
            raise

    async def hang(self, request: bytes, context: Any) -> bytes:
        await self._wait(request)
        return b"released:" + request

    async def hang_stream(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        yield b"first"
        await self._wait(request)

    def generic(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Echo": grpc.unary_unary_rpc_method_handler(self.echo),
            "Hang": grpc.unary_unary_rpc_method_handler(self.hang),
            "HangStream": grpc.unary_stream_rpc_method_handler(self.hang_stream),
        })


class Served:
    """A nats_transport server of :class:`Handlers` on a loop thread of its own."""

    def __init__(self, loop: asyncio.AbstractEventLoop, handlers: Handlers) -> None:
        self.loop = loop
        self.handlers = handlers

    def release(self, *requests: bytes) -> None:
        """Let the handlers of ``requests`` (that have started) answer."""
        for request in requests:
            self.loop.call_soon_threadsafe(self.handlers.releases[request].set)


@contextlib.contextmanager
def served(url: str, target: str) -> Iterator[Served]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True, name="handoff-server")
    thread.start()
    handlers = Handlers()

    async def start() -> tuple[Any, Any]:
        nc = await nats.connect(url)
        server = nats_transport.aio.server(nc, target)
        server.add_generic_rpc_handlers((handlers.generic(),))
        await server.start()
        return nc, server

    nc, server = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield Served(loop, handlers)
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(10)
        asyncio.run_coroutine_threadsafe(nc.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


@pytest.fixture
def target() -> str:
    return f"handoff-{uuid.uuid4().hex[:12]}"


def method(channel: grpc.Channel, name: str) -> Any:
    kind = channel.unary_stream if name == "HangStream" else channel.unary_unary
    return kind(f"/{SERVICE}/{name}")


def status_of(err: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    return err.code(), err.details()


# -- many threads --------------------------------------------------------------------------------


def test_many_threads_calling_at_once_each_get_their_own_answer(nats_server: NatsServer, target: str) -> None:
    threads, calls = 16, 40
    answers: dict[int, list[bytes]] = {}
    with served(nats_server.url, target), nats_transport.channel(nats_server.url, target) as channel:
        echo = method(channel, "Echo")

        def caller(index: int) -> None:
            answers[index] = [echo(f"{index}-{n}".encode(), timeout=10) for n in range(calls)]

        workers = [threading.Thread(target=caller, args=(i,)) for i in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(30)
    assert answers == {i: [f"echo:{i}-{n}".encode() for n in range(calls)] for i in range(threads)}


# -- cancellation, timeouts, interrupts ------------------------------------------------------------


def test_a_future_cancelled_while_running_ends_cancelled_and_the_server_hears_of_it(
    nats_server: NatsServer, target: str
) -> None:
    with served(nats_server.url, target) as server, nats_transport.channel(nats_server.url, target) as channel:
        future = method(channel, "Hang").future(b"f", timeout=30)
        wait_until(lambda: b"f" in server.handlers.started, 5, "the handler started")
        assert future.cancel()
        assert not future.cancel()  # only the cancel that ends it says True
        assert future.cancelled()
        assert future.done()
        assert not future.running()
        assert future.code() == grpc.StatusCode.CANCELLED
        with pytest.raises(grpc.FutureCancelledError):
            future.result()
        wait_until(lambda: b"f" in server.handlers.cancelled, 5, "the handler cancelled")


def test_a_result_that_times_out_leaves_the_call_running(nats_server: NatsServer, target: str) -> None:
    with served(nats_server.url, target) as server, nats_transport.channel(nats_server.url, target) as channel:
        future = method(channel, "Hang").future(b"t", timeout=30)
        wait_until(lambda: b"t" in server.handlers.started, 5, "the handler started")
        with pytest.raises(grpc.FutureTimeoutError):
            future.result(timeout=0.05)
        with pytest.raises(grpc.FutureTimeoutError):
            future.exception(timeout=0)
        assert future.running()
        server.release(b"t")
        assert future.result(timeout=10) == b"released:t"
        assert future.exception() is None


class _Interrupted(BaseException):
    """What the test's SIGINT handler raises: KeyboardInterrupt's path, without the risk of one
    escaping into the test runner."""


def test_a_blocking_call_interrupted_by_a_signal_is_cancelled_on_the_server(
    nats_server: NatsServer, target: str
) -> None:
    assert threading.current_thread() is threading.main_thread()  # signals go to the main thread

    def interrupt(signum: int, frame: Any) -> None:
        raise _Interrupted()

    with served(nats_server.url, target) as server, nats_transport.channel(nats_server.url, target) as channel:
        hang = method(channel, "Hang")
        main = threading.main_thread().ident
        assert main is not None

        def interrupt_once_started() -> None:  # Ctrl-C, once the call is running on the server
            wait_until(lambda: b"i" in server.handlers.started, 5, "the handler started")
            signal.pthread_kill(main, signal.SIGINT)

        interrupter = threading.Thread(target=interrupt_once_started, daemon=True)
        previous = signal.signal(signal.SIGINT, interrupt)
        try:
            interrupter.start()
            with pytest.raises(_Interrupted):
                hang(b"i", timeout=60)  # the signal ends the wait long before the deadline
        finally:
            interrupter.join(5)
            signal.signal(signal.SIGINT, previous)
        wait_until(lambda: b"i" in server.handlers.cancelled, 5, "the handler cancelled")
        assert method(channel, "Echo")(b"after", timeout=10) == b"echo:after"  # the channel goes on


# -- done callbacks and the loop thread ----------------------------------------------------------


def test_done_callbacks_run_once_each_whether_added_before_or_after_the_end(
    nats_server: NatsServer, target: str
) -> None:
    ran: list[tuple[int, str]] = []
    with served(nats_server.url, target), nats_transport.channel(nats_server.url, target) as channel:
        echo = method(channel, "Echo")
        futures = [echo.future(str(n).encode(), timeout=10) for n in range(50)]
        for n, future in enumerate(futures):
            future.add_done_callback(lambda f, n=n: ran.append((n, "before")))
        for future in futures:
            future.result(timeout=10)
        for n, future in enumerate(futures):
            future.add_done_callback(lambda f, n=n: ran.append((n, "after")))
            assert not future.add_callback(lambda n=n: ran.append((n, "add_callback")))  # ended: refused
        wait_until(lambda: len(ran) == 100, 5, "every callback ran")
    assert sorted(ran) == sorted([(n, when) for n in range(50) for when in ("before", "after")])


def test_a_blocking_call_from_the_channels_loop_thread_raises_instead_of_deadlocking(
    nats_server: NatsServer, target: str
) -> None:
    seen: list[BaseException | str] = []
    with served(nats_server.url, target) as server, nats_transport.channel(nats_server.url, target) as channel:
        hang = method(channel, "Hang")
        pending = hang.future(b"other", timeout=30)

        def on_loop_thread(_: Any) -> None:  # a done callback added before the end runs there
            for blocking in (lambda: method(channel, "Echo")(b"x", timeout=5), pending.result):
                try:
                    blocking()
                    seen.append("returned")
                except BaseException as exc:  # what it raised is the observation
                    seen.append(exc)

        future = hang.future(b"loop", timeout=30)
        future.add_done_callback(on_loop_thread)
        wait_until(lambda: {b"loop", b"other"} <= server.handlers.started, 5, "the handlers started")
        server.release(b"loop")
        wait_until(lambda: len(seen) == 2, 5, "the callback ran")
        server.release(b"other")
        assert pending.result(timeout=10) == b"released:other"
    assert all(isinstance(exc, RuntimeError) and "deadlock" in str(exc) for exc in seen), seen


# -- closing with calls in flight ----------------------------------------------------------------


def test_closing_the_channel_ends_the_calls_in_flight_cancelled_as_grpcio_does(
    nats_server: NatsServer, target: str
) -> None:
    outcomes: dict[str, Any] = {}

    def blocking(name: str, request: bytes, **kwargs: Any) -> None:
        try:
            outcomes[name] = method(channel, "Hang")(request, **kwargs)
        except grpc.RpcError as err:
            outcomes[name] = status_of(err)

    def reading(stream: Any) -> None:
        try:
            outcomes["stream"] = list(stream)
        except grpc.RpcError as err:
            outcomes["stream"] = status_of(err)

    with served(nats_server.url, target) as server:
        channel = nats_transport.channel(nats_server.url, target)
        future = method(channel, "Hang").future(b"future", timeout=30)
        stream = method(channel, "HangStream")(b"stream", timeout=30)
        assert next(stream) == b"first"
        threads = [
            threading.Thread(target=blocking, args=("no timeout", b"no timeout")),
            threading.Thread(target=blocking, args=("timeout", b"timeout"), kwargs={"timeout": 30}),
            threading.Thread(target=reading, args=(stream,)),
        ]
        for thread in threads:
            thread.start()
        everything = {b"future", b"stream", b"no timeout", b"timeout"}
        wait_until(lambda: everything <= server.handlers.started, 5, "every handler started")
        channel.close()
        for thread in threads:
            thread.join(10)
        assert not any(thread.is_alive() for thread in threads)
        assert outcomes == {"no timeout": CLOSED, "timeout": CLOSED, "stream": CLOSED}
        assert future.done()
        assert not future.cancelled()  # as grpcio's: ended, but not by its caller's cancel()
        assert status_of(future.exception()) == CLOSED
        assert (stream.code(), stream.details()) == CLOSED
        assert not future.cancel()
        assert not stream.cancel()
        with pytest.raises(RuntimeError):
            method(channel, "Echo")(b"after", timeout=5)
        with pytest.raises(RuntimeError):
            method(channel, "Echo").future(b"after", timeout=5)
        channel.close()  # twice is harmless


# -- the bridge itself ---------------------------------------------------------------------------


def test_the_inbox_runs_callbacks_in_order_in_their_callers_context_and_on_the_caller_once_closed() -> None:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    inbox = LoopInbox(loop)
    name: contextvars.ContextVar[str] = contextvars.ContextVar("name", default="")
    seen: dict[str, list[tuple[int, str, bool]]] = {}

    def note(item: tuple[str, int]) -> None:
        who, n = item
        seen.setdefault(who, []).append((n, name.get(), threading.current_thread() is thread))

    def hand_over(who: str) -> None:
        name.set(who)
        for n in range(200):
            inbox.submit(note, (who, n), contextvars.copy_context())

    try:
        senders = [threading.Thread(target=hand_over, args=(f"t{i}",)) for i in range(4)]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(10)
        wait_until(lambda: sum(len(items) for items in seen.values()) == 800, 5, "every callback ran")
        assert seen == {f"t{i}": [(n, f"t{i}", True) for n in range(200)] for i in range(4)}
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        inbox.close()
        loop.close()
    inbox.submit(note, ("late", 0), contextvars.copy_context())  # the loop is gone: runs here
    assert seen["late"] == [(0, "", False)]


def test_a_latch_lets_every_waiter_through_once_open() -> None:
    latch = Latch()
    assert not latch.wait(0)
    assert not latch.wait(0.01)
    passed: list[bool] = []
    waiters = [threading.Thread(target=lambda: passed.append(latch.wait(10))) for _ in range(4)]
    for waiter in waiters:
        waiter.start()
    latch.open()
    for waiter in waiters:
        waiter.join(10)
    assert passed == [True] * 4
    assert latch.is_open
    assert latch.wait()
    assert latch.wait(0)
