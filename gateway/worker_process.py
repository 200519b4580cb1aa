"""What runs inside an ingress worker process (``gateway.workers`` starts them).

A worker is ``python -c`` running :func:`worker_main`: it reads its :class:`WorkerPlan` (pickled,
length-prefixed) from stdin, calls the plan's :class:`WorkerSetup` for its NATS connection and
interceptors, serves an :class:`~gateway.ingress.Ingress` bound with SO_REUSEPORT, and says
``LISTENING <pid>`` on stdout (or ``FAILED listen|start <why>``). It stops on ``stop <grace>``
on stdin, on stdin closing (its parent died) or on SIGTERM, draining as a single ingress does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import struct
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from typing import Any, Protocol

import nats
from nats.aio.client import Client

from gateway.forwarding import ChannelInterceptors
from gateway.ingress import Ingress, IngressOptions

__all__ = ["FAILED", "LISTENING", "PlainNats", "WorkerConnection", "WorkerPlan", "WorkerSetup", "encode_plan",
           "worker_main", "worker_name"]

log = logging.getLogger("gateway.worker_process")

LISTENING = "LISTENING"
FAILED = "FAILED"
_LENGTH = struct.Struct(">Q")


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerConnection:
    """What a worker's ingress runs with: its NATS connection and its interceptors (see
    ``IngressOptions.server_interceptors`` and ``channel_interceptors``)."""

    nc: Client
    server_interceptors: Sequence[Any] = ()
    channel_interceptors: ChannelInterceptors | None = None


class WorkerSetup(Protocol):
    """Called in worker ``index`` (1-based): an async context manager that gives the worker's
    :class:`WorkerConnection` and, on exit, closes (drains) what it opened. It must pickle: a
    module-level class or function, with picklable fields or arguments."""

    def __call__(self, index: int) -> AbstractAsyncContextManager[WorkerConnection]: ...


def worker_name(base: str, index: int) -> str:
    """The NATS connection name of worker ``index`` of this process (as NATS monitoring shows
    it: ``/connz``), so an operator can tell the workers' connections apart."""
    return f"{base}:worker-{index}:pid-{os.getpid()}"


@dataclass(frozen=True, slots=True)
class PlainNats:
    """A :class:`WorkerSetup`: plain NATS access to ``servers`` (no credentials), reconnecting
    for ever, no interceptors; ``log_level`` configures plain-text logging in the worker."""

    servers: tuple[str, ...]
    name: str = "gateway-ingress"
    log_level: str | None = None

    def __call__(self, index: int) -> AbstractAsyncContextManager[WorkerConnection]:
        return _plain_connection(self, index)


@contextlib.asynccontextmanager
async def _plain_connection(setup: PlainNats, index: int) -> AsyncIterator[WorkerConnection]:
    if setup.log_level is not None:
        logging.basicConfig(level=setup.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    nc = await nats.connect(list(setup.servers), name=worker_name(setup.name, index), connect_timeout=5,
                            max_reconnect_attempts=-1, reconnect_time_wait=0.5)
    try:
        yield WorkerConnection(nc=nc)
    finally:
        with contextlib.suppress(Exception):
            await nc.drain()


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    """What one worker runs: pickled by the parent, read from stdin by the worker."""

    setup: WorkerSetup
    host: str
    port: int
    options: IngressOptions
    index: int
    uvloop: bool = False  # the worker runs on the kind of loop its parent runs on


def encode_plan(plan: WorkerPlan) -> bytes:
    """What the parent writes on a worker's stdin: the plan, behind this interpreter's
    ``sys.path`` (in a pickle of its own: the plan names modules the worker must find)."""
    payload = pickle.dumps((list(sys.path), pickle.dumps(plan)))
    return _LENGTH.pack(len(payload)) + payload


# -- inside a worker --------------------------------------------------------------------------


def worker_main() -> None:
    """A worker process: read its plan from stdin, serve until told to stop, exit 0 (1: it could
    not start; the parent has been told why on stdout)."""
    # Ctrl-C reaches the whole process group: the parent decides, and tells each worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    report = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything else written to stdout (grpc's own lines too) goes to stderr
    size = _LENGTH.unpack(_read_exactly(0, _LENGTH.size))[0]
    path, plan_bytes = pickle.loads(_read_exactly(0, size))
    sys.path[:] = path
    plan: WorkerPlan = pickle.loads(plan_bytes)
    if plan.uvloop:
        import uvloop  # the parent runs on it, so it is installed

        sys.exit(uvloop.run(_serve(plan, report)))
    sys.exit(asyncio.run(_serve(plan, report)))


def _read_exactly(fd: int, size: int) -> bytes:
    # Unbuffered: what follows the plan on stdin (the stop line) is read by the event loop.
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            raise SystemExit("gateway worker: stdin closed before the plan arrived")
        data += chunk
    return data


def _say(report: Any, *words: str) -> None:
    report.write(" ".join(word.replace("\n", " ") for word in words) + "\n")
    report.flush()


async def _serve(plan: WorkerPlan, report: Any) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    grace = [plan.options.grace]
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    watcher = asyncio.create_task(_watch_parent(stop, grace))
    listening = asyncio.Event()
    serving = asyncio.create_task(_run(plan, report, stop, grace, listening))
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait((serving, stopped), return_when=asyncio.FIRST_COMPLETED)
        if not serving.done() and not listening.is_set():
            # Told to stop while starting (NATS may be awaited for long): nothing to drain.
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving
            return 0
        return await serving
    finally:
        stopped.cancel()
        watcher.cancel()


async def _run(plan: WorkerPlan, report: Any, stop: asyncio.Event, grace: list[float], listening: asyncio.Event) -> int:
    """Connect, listen, tell the parent, serve until ``stop``, drain; the exit code."""
    try:
        async with plan.setup(plan.index) as connection:
            options = replace(plan.options, workers=1, server_interceptors=connection.server_interceptors,
                              channel_interceptors=connection.channel_interceptors)
            ingress = Ingress(connection.nc, plan.host, plan.port, options, shared_port=True)
            try:
                await ingress.start()
            except RuntimeError as error:
                _say(report, FAILED, "listen", str(error) or type(error).__name__)
                return 1
            listening.set()
            _say(report, LISTENING, str(os.getpid()))
            await stop.wait()
            await ingress.stop(grace[0])
    except Exception as error:
        if listening.is_set():
            log.exception("ingress worker failed", extra={"worker": plan.index})
        else:
            _say(report, FAILED, "start", str(error) or type(error).__name__)
        return 1
    return 0


async def _watch_parent(stop: asyncio.Event, grace: list[float]) -> None:
    """Set ``stop`` on ``stop <grace>`` from the parent, or when stdin closes (it died)."""
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                os.fdopen(0, "rb", buffering=0))
    try:
        line = (await reader.readline()).decode(errors="replace").split()
        if len(line) == 2 and line[0] == "stop":
            with contextlib.suppress(ValueError):
                grace[0] = max(float(line[1]), 0.0)
        stop.set()
    finally:
        transport.close()
