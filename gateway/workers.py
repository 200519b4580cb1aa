"""Several ingress processes on one port, so that the ingress uses more than one core.

A grpc.aio server spends most of its CPU inside grpc's own server code, and one process runs on
one core at a time. :func:`run_workers` starts ``options.workers`` processes, each a whole
:class:`gateway.ingress.Ingress` (its own NATS connection, discovery, schemas and forwarder),
all bound to the same port with SO_REUSEPORT. The kernel spreads incoming *connections* over
them: the calls of one HTTP/2 connection all go to the worker that accepted it::

    workers = await run_workers(nc, "0.0.0.0", 50051, PlainNats(("nats://nats:4222",)),
                                IngressOptions(workers=4))
    ...
    await workers.stop()

The parent (this process) serves no call. It:

- checks that the port is free with a bind *without* SO_REUSEPORT, so a port that another
  process listens on (even one that set SO_REUSEPORT itself) is "cannot listen", never shared in
  silence; then keeps that socket, bound but never listening, as the port's holder: it takes no
  connections, and no process without SO_REUSEPORT can take the port while workers restart;
- starts each worker as ``python -c`` with its plan pickled on stdin; a worker says LISTENING
  on stdout once it serves (or FAILED and why);
- restarts a worker that exits (after ``options.worker_restarts`` quick exits in a row it gives
  up on it: :attr:`IngressWorkers.problem` says so);
- stops them by writing ``stop <grace>`` to their stdin: each drains as a single ingress does
  (health NOT_SERVING, in-flight calls get the grace), and is killed if it takes much longer.
  A worker whose stdin closes (the parent died, even by SIGKILL) drains and exits too;
- runs a :class:`~gateway.discovery.Discovery` of its own on ``nc`` for whoever needs the service
  table here (Envoy's routes, metrics): the workers' tables live in other processes.

What crosses to a worker must pickle, so NATS connections and interceptor objects cannot: the
``setup`` (:class:`WorkerSetup`) is a picklable callable that, inside the worker, connects to
NATS and makes the interceptors (and may configure logging or tracing there).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import time

from nats.aio.client import Client

from gateway.discovery import Discovery
from gateway.ingress import OWN_SERVICES, IngressOptions
from gateway.worker_process import (
    FAILED,
    LISTENING,
    PlainNats,
    WorkerConnection,
    WorkerPlan,
    WorkerSetup,
    encode_plan,
    worker_name,
)

__all__ = ["IngressWorkerError", "IngressWorkers", "PlainNats", "PortUnavailable", "WorkerConnection",
           "WorkerSetup", "run_workers", "usable_cores", "worker_count", "worker_name"]

log = logging.getLogger("gateway.workers")

# How a worker is started: the plan comes on stdin (see worker_main).
_WORKER_CODE = "from gateway.worker_process import worker_main; worker_main()"
# Seconds of running after which an exit counts as a new failure, not part of a crash loop.
_HEALTHY_RUN = 60.0
# Seconds a stopping worker gets beyond its grace before it is killed (its NATS drain, exit).
_STOP_MARGIN = 5.0


class PortUnavailable(RuntimeError):
    """The port cannot be listened on (taken, or an address this machine does not have)."""


class IngressWorkerError(RuntimeError):
    """A worker could not start (NATS refused it, a TLS file is unreadable, ...)."""


def usable_cores() -> int:
    """The cores this process may run on (its affinity, which a container's cpuset narrows)."""
    return len(os.sched_getaffinity(0))


def worker_count(text: str) -> int:
    """A worker count as a command line gives it: a whole number of at least 1, or ``auto``
    (:func:`usable_cores`).

    Raises:
        ValueError: anything else.
    """
    if text.strip().lower() == "auto":
        return usable_cores()
    try:
        count = int(text)
    except ValueError:
        raise ValueError("must be a whole number of at least 1, or auto") from None
    if count < 1:
        raise ValueError("must be at least 1 (or auto)")
    return count


class _Worker:
    """The parent's handle on one worker process (replaced when it is restarted)."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: asyncio.subprocess.Process | None = None
        self.listening = False
        self.started = 0.0
        self.starts = 0

    @property
    def pid(self) -> int | None:
        process = self.process
        return process.pid if process is not None and process.returncode is None else None


class IngressWorkers:
    """Worker processes serving one port; ``start()`` returns once every one listens.

    Args:
        nc: the parent's NATS connection, for its own :attr:`discovery` (not closed here).
        host, port: where the workers listen; port 0 picks a free one.
        setup: how each worker connects to NATS (:class:`WorkerSetup`).
        options: the ingress's options; ``workers`` processes are started. Interceptors must come
            from ``setup``: objects do not cross to another process.
    """

    def __init__(self, nc: Client, host: str, port: int, setup: WorkerSetup, options: IngressOptions) -> None:
        if options.server_interceptors or options.channel_interceptors is not None:
            raise ValueError("a worker's interceptors come from its setup (objects cannot cross processes)")
        self.host = host
        self._requested_port = port
        self.options = options
        self._setup = setup
        self.port: int | None = None
        self.discovery = Discovery(nc, interval=options.poll_interval, window=options.poll_window,
                                   misses=options.poll_misses, ignore=OWN_SERVICES)
        self._workers = [_Worker(index) for index in range(1, options.workers + 1)]
        self._holder: socket.socket | None = None
        self._supervisors: list[asyncio.Task[None]] = []
        self._gave_up: list[int] = []
        self._stopping = False
        self.failed = asyncio.Event()  # set when a worker is given up on (see problem)

    def __repr__(self) -> str:
        where = f"{self.host}:{self.port}" if self.port is not None else "not started"
        return f"<gateway.IngressWorkers {where} {self.summary}>"

    @property
    def address(self) -> str:
        """``host:port`` as clients dial it (after start)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"{host}:{self.port}"

    @property
    def pids(self) -> tuple[int, ...]:
        """The running workers' process ids."""
        return tuple(pid for worker in self._workers if (pid := worker.pid) is not None)

    @property
    def listening(self) -> bool:
        """Whether every worker serves the port now (what readiness needs)."""
        return not self._stopping and all(w.listening and w.pid is not None for w in self._workers)

    @property
    def summary(self) -> str:
        """``2 of 2 workers listening``, and which the pool gave up on."""
        listening = sum(1 for w in self._workers if w.listening and w.pid is not None)
        text = f"{listening} of {len(self._workers)} workers listening"
        return f"{text}; {self.problem}" if self._gave_up else text

    @property
    def problem(self) -> str | None:
        """Why the pool cannot serve fully without a restart of this process (a worker kept
        exiting and is not restarted any more); None when there is no such problem."""
        if not self._gave_up:
            return None
        return f"ingress worker(s) {', '.join(map(str, self._gave_up))} kept exiting and are not restarted"

    @property
    def restarts(self) -> int:
        """Worker starts beyond the first of each."""
        return sum(max(w.starts - 1, 0) for w in self._workers)

    async def start(self) -> None:
        """Check and hold the port, start every worker and wait until each listens, then
        discover the mesh once here too.

        Raises:
            PortUnavailable: the port is taken (or the host is not this machine's).
            IngressWorkerError: a worker failed to start; the others are stopped.
        """
        self._holder, self.port = _hold_port(self.host, self._requested_port)
        spawning = [asyncio.create_task(self._spawn(worker)) for worker in self._workers]
        try:
            await asyncio.gather(*spawning)
        except BaseException:
            # One failed, or the start was cancelled (a signal while starting): none of them
            # may outlive it, nor start after this.
            for task in spawning:
                task.cancel()
            await asyncio.gather(*spawning, return_exceptions=True)
            await self._stop_workers(0.0)
            self._release()
            raise
        self._supervisors = [asyncio.create_task(self._supervise(w), name=f"ingress-worker-{w.index}")
                             for w in self._workers]
        await self.discovery.start()
        log.info("gRPC ingress workers listening", extra={
            "address": f"{self.host}:{self.port}", "workers": len(self._workers), "pids": list(self.pids)})

    async def stop(self, grace: float | None = None) -> None:
        """Tell every worker to stop (each reports NOT_SERVING, refuses new calls and gives
        in-flight ones ``grace`` seconds, the options' by default), wait for them, kill any
        that overstays, release the port and stop discovery."""
        self._stopping = True
        for task in self._supervisors:
            task.cancel()
        for task in self._supervisors:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._supervisors = []
        await self._stop_workers(self.options.grace if grace is None else grace)
        self._release()
        await self.discovery.stop()
        log.info("gRPC ingress workers stopped")

    def _release(self) -> None:
        if self._holder is not None:
            self._holder.close()
            self._holder = None

    async def _spawn(self, worker: _Worker) -> None:
        """Start ``worker``'s process and return once it listens.

        Raises:
            PortUnavailable, IngressWorkerError: it said why it cannot serve, or exited.
        """
        assert self.port is not None
        worker.listening = False
        on_uvloop = type(asyncio.get_running_loop()).__module__.startswith("uvloop")
        plan = WorkerPlan(self._setup, self.host, self.port, self.options, worker.index, uvloop=on_uvloop)
        worker.started = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _WORKER_CODE,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,  # stderr: ours, for its logs
        )
        worker.process = process
        worker.starts += 1
        assert process.stdin is not None
        assert process.stdout is not None
        process.stdin.write(encode_plan(plan))
        with contextlib.suppress(ConnectionError):  # it died already: its exit says more below
            await process.stdin.drain()
        line = (await process.stdout.readline()).decode(errors="replace").strip()
        word, _, rest = line.partition(" ")
        if word == LISTENING:
            worker.listening = True
            log.info("ingress worker listening", extra={"worker": worker.index, "pid": process.pid})
            return
        if word == FAILED:
            kind, _, reason = rest.partition(" ")
            await process.wait()
            if kind == "listen":
                raise PortUnavailable(f"cannot listen on {self.host}:{self.port}: {reason}")
            raise IngressWorkerError(f"ingress worker {worker.index}: {reason}")
        code = await process.wait()
        raise IngressWorkerError(f"ingress worker {worker.index} exited with {code} before listening")

    async def _supervise(self, worker: _Worker) -> None:
        """Restart ``worker`` whenever it exits, until stopped or out of restarts."""
        crashes = 0
        while True:
            assert worker.process is not None
            code = await worker.process.wait()
            worker.listening = False
            # A crash after a long healthy run starts the count afresh; a crash loop gives up.
            crashes = 1 if time.monotonic() - worker.started > _HEALTHY_RUN else crashes + 1
            if crashes > self.options.worker_restarts:
                log.error("ingress worker keeps exiting; giving up", extra={"worker": worker.index, "returncode": code})
                self._gave_up.append(worker.index)
                self.failed.set()
                return
            log.error("ingress worker exited; restarting", extra={"worker": worker.index, "returncode": code})
            await asyncio.sleep(min(0.2 * 2 ** (crashes - 1), 5.0))  # back off: a crash loop must not spin
            try:
                await self._spawn(worker)
            except (IngressWorkerError, PortUnavailable, OSError) as error:
                log.error("ingress worker restart failed", extra={"worker": worker.index, "error": str(error)})

    async def _stop_workers(self, grace: float) -> None:
        await asyncio.gather(*(_stop_process(w, grace) for w in self._workers))


async def _stop_process(worker: _Worker, grace: float) -> None:
    process = worker.process
    worker.listening = False
    if process is None or process.returncode is not None:
        return
    if process.stdin is not None and not process.stdin.is_closing():
        with contextlib.suppress(ConnectionError):
            process.stdin.write(f"stop {grace}\n".encode())
            await process.stdin.drain()
        process.stdin.close()
    try:
        async with asyncio.timeout(grace + _STOP_MARGIN):
            code = await process.wait()
    except TimeoutError:
        log.warning("ingress worker did not stop in time; killing it", extra={"worker": worker.index})
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        code = await process.wait()
    if code != 0:
        log.warning("ingress worker exited uncleanly", extra={"worker": worker.index, "returncode": code})


def _hold_port(host: str, port: int) -> tuple[socket.socket, int]:
    """A socket bound to ``host:port`` that never listens, and the port it holds.

    Raises:
        PortUnavailable: something else has the port (or ``host`` is not an address here).
    """
    holder = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        # As grpc binds: a port held only by connections in TIME_WAIT is free.
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # No SO_REUSEPORT yet: this bind fails if any process listens there, whatever it set.
        holder.bind((host, port))
        # Now the workers may join; the kernel checks each new bind against the flags of the
        # sockets already bound, so this one lets them in (same user only).
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    except OSError as error:
        holder.close()
        reason = (error.strerror or str(error)).lower()
        raise PortUnavailable(f"cannot listen on {host}:{port}: {reason}") from None
    return holder, int(holder.getsockname()[1])


async def run_workers(nc: Client, host: str, port: int, setup: WorkerSetup,
                      options: IngressOptions) -> IngressWorkers:
    """Start ``options.workers`` ingress processes on ``host:port`` (see :class:`IngressWorkers`);
    ``stop()`` them later."""
    workers = IngressWorkers(nc, host, port, setup, options)
    await workers.start()
    return workers
