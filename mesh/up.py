"""``mesh up``: run NATS (embedded unless told otherwise), print what runs where, wait for a signal.

Services, the gRPC ingress, the HTTP edge and the admin server are not built yet; the table says
so rather than pretending.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from contextlib import AsyncExitStack
from typing import TextIO
from urllib.parse import urlsplit, urlunsplit

import nats
import nats.errors
from nats.aio.client import Client

from mesh.config import LOOPBACK, UpConfig
from mesh.embedded_nats import EmbeddedNats

__all__ = ["UpError", "run"]

# Bounds for the start-up check, so an unreachable --nats-url fails in seconds, not minutes.
_CONNECT_TIMEOUT = 2.0
_JETSTREAM_TIMEOUT = 5.0


class UpError(RuntimeError):
    """``mesh up`` could not start, or something it started stopped on its own."""


async def run(config: UpConfig, out: TextIO = sys.stdout) -> None:
    """Start everything ``config`` asks for, print the endpoints, and run until SIGINT or SIGTERM.

    Raises:
        mesh.embedded_nats.PortUnavailableError: an embedded NATS port is taken.
        mesh.embedded_nats.EmbeddedNatsError: the embedded server failed to start.
        UpError: NATS is unreachable, lacks JetStream, or the embedded server died while up.
    """
    began = time.monotonic()
    # Handlers first: a signal that arrives while starting must still stop the child in order.
    stop = _event_on_signals(signal.SIGINT, signal.SIGTERM)
    async with AsyncExitStack() as stack:
        server = await _start_embedded(config, stack) if config.embedded else None
        await _check_nats(config.client_url)
        _print_endpoints(config, server, time.monotonic() - began, out)
        await _wait_for_stop(stop, server)
    print("mesh up: stopped", file=out, flush=True)


def _event_on_signals(*signals: signal.Signals) -> asyncio.Event:
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in signals:
        loop.add_signal_handler(number, event.set)
    return event


async def _start_embedded(config: UpConfig, stack: AsyncExitStack) -> EmbeddedNats:
    server = EmbeddedNats(
        port=config.nats_port, monitor_port=config.nats_monitor_port, data_dir=config.data_dir, host=LOOPBACK
    )
    # start() and stop() block on the child process; threads keep the signal handlers live.
    await asyncio.to_thread(server.start)
    stack.push_async_callback(asyncio.to_thread, server.stop)
    return server


async def _check_nats(url: str) -> None:
    """Connect once and ask JetStream for the account, since every service keeps state there."""
    try:
        nc = await nats.connect(
            url,
            connect_timeout=_CONNECT_TIMEOUT,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.2,
            error_cb=_ignore_error,
        )
    except (OSError, TimeoutError, nats.errors.Error) as error:
        raise UpError(f"cannot connect to NATS at {redact(url)}: {describe(error)}") from error
    try:
        await _check_jetstream(nc, url)
    finally:
        await nc.close()


async def _check_jetstream(nc: Client, url: str) -> None:
    try:
        await nc.jetstream(timeout=_JETSTREAM_TIMEOUT).account_info()
    except (TimeoutError, nats.errors.Error) as error:
        message = f"JetStream does not answer on {redact(url)} (is it enabled?): {describe(error)}"
        raise UpError(message) from error


async def _ignore_error(error: Exception) -> None:
    # The start-up check reports failures through the exception connect() raises; nats-py would
    # otherwise log each failed attempt as well.
    del error


def _print_endpoints(config: UpConfig, server: EmbeddedNats | None, elapsed: float, out: TextIO) -> None:
    rows = [
        *_nats_rows(config, server),
        ("services", "not built yet"),
        ("gRPC ingress", f"not built yet (will listen on :{config.grpc_port})"),
        ("HTTP edge", f"not built yet (will listen on :{config.http_port})"),
        ("admin server", f"not built yet (will listen on :{config.admin_port})"),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"mesh up: ready in {elapsed:.2f} s; Ctrl-C or SIGTERM stops it", file=out)
    for name, where in rows:
        print(f"  {name.ljust(width)}  {where}", file=out)
    # Flushed because stdout is often a pipe (a supervisor, a test) waiting for this table.
    out.flush()


def _nats_rows(config: UpConfig, server: EmbeddedNats | None) -> list[tuple[str, str]]:
    if server is None:
        return [
            ("NATS", f"{redact(config.client_url)}  (external)"),
            ("NATS monitoring", "not managed (external NATS)"),
        ]
    return [
        ("NATS", f"{server.url}  (embedded, JetStream store {server.store_dir})"),
        ("NATS monitoring", server.monitor_url),
    ]


async def _wait_for_stop(stop: asyncio.Event, server: EmbeddedNats | None) -> None:
    if server is None:
        await stop.wait()
        return
    stopped = asyncio.create_task(stop.wait())
    # A thread blocked in waitpid notices the child dying; it returns once stop() reaps the child.
    exited = asyncio.ensure_future(asyncio.to_thread(server.wait))
    done, _ = await asyncio.wait({stopped, exited}, return_when=asyncio.FIRST_COMPLETED)
    if exited in done:
        stopped.cancel()
        raise UpError(f"nats-server exited unexpectedly with code {exited.result()} (log: {server.log_path})")
    exited.cancel()


def describe(error: BaseException) -> str:
    """An error's message, or its type name when it has none (asyncio's TimeoutError)."""
    return str(error) or type(error).__name__


def redact(url: str) -> str:
    """``url`` with any user and password replaced by ``***``, fit to print."""
    return ",".join(_redact_one(server) for server in url.split(","))


def _redact_one(server: str) -> str:
    parts = urlsplit(server.strip())
    if parts.username is None and parts.password is None:
        return server.strip()
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"***@{host}"))
