"""``mesh conformance``: host the conformance service on a NATS URL, so that a client in any
language can check itself against the wire protocol (docs/conformance.md lists the cases).

It serves ``gaming.conformance.v1.ConformanceService`` with health and reflection under the
target (``conformance`` by default), and the same again under ``<target>-limited``, which takes
one call at a time, for the cases where a server refuses a call before accepting it. The server's
receive window is small (``--window``, 1024 bytes by default), so flow control shows within a few
kilobytes, and so is its keepalive interval (``--keepalive-ms``). SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import re
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass

import nats.errors
from gaming.conformance.v1 import conformance_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from nats.aio.client import Client

import nats_transport.aio
from health.call_log import configure_json_logging
from mesh import event_loop, serve
from mesh.config import ConfigError
from mesh.conformance.service import SERVICE_NAME, ConformanceServicer, RequestedException
from mesh.connection import AccessDenied, NatsAccess, NatsUnreachable, connect
from mesh.event_loop import EventLoopError
from nats_transport import ServerOptions

__all__ = ["DEFAULT_KEEPALIVE_MS", "DEFAULT_TARGET", "DEFAULT_WINDOW", "LIMITED_SUFFIX", "ConformanceConfig",
           "Running", "add_arguments", "describe", "resolve", "run", "serve_until_stopped", "start"]

log = logging.getLogger("mesh.conformance")

EXIT_OK = 0
EXIT_USAGE = 2

DEFAULT_TARGET = "conformance"  # what the proto's option (gaming.common.v1.target) says
LIMITED_SUFFIX = "-limited"
DEFAULT_WINDOW = 1024  # the least window the wire protocol allows (§6.5)
DEFAULT_KEEPALIVE_MS = 250
MAX_WINDOW = 2**32 - 1  # what ACCEPT's uint32 carries
# A target is dot-separated tokens of [A-Za-z0-9_-] (wire protocol §1).
_TARGET = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")


@dataclass(frozen=True, slots=True, kw_only=True)
class ConformanceConfig:
    """What ``mesh conformance`` serves and where.

    Attributes:
        access: how to reach NATS and who we are there.
        target: the target of the service; ``<target>-limited`` serves it one call at a time.
        window: the server's receive window (``nats-grpc-window`` of its ACCEPTs), in bytes.
        keepalive_ms: the server's own keepalive interval; it gives up a silent stream after
            three of them. 0: no keepalives of its own (it still PINGs clients that ask).
        connect_timeout: seconds to reach NATS before giving up.
    """

    access: NatsAccess
    target: str = DEFAULT_TARGET
    window: int = DEFAULT_WINDOW
    keepalive_ms: int = DEFAULT_KEEPALIVE_MS
    connect_timeout: float = 5.0

    @property
    def limited_target(self) -> str:
        """The target that takes one call at a time."""
        return self.target + LIMITED_SUFFIX

    def server_options(self) -> ServerOptions:
        """The transport options of both servers."""
        interval = self.keepalive_ms / 1000 if self.keepalive_ms else None
        return ServerOptions(stream_window=self.window, keepalive_interval=interval,
                             keepalive_timeout=3 * interval if interval else None)


def _bounded_int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not in {low}..{high}")
        return value

    return parse


def _target(text: str) -> str:
    if not _TARGET.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a target (dot-separated tokens of [A-Za-z0-9_-])")
    return text


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``mesh conformance``: the NATS connection ones of ``mesh serve``, then its own."""
    serve.add_connection_arguments(parser)
    parser.add_argument("--target", type=_target, default=DEFAULT_TARGET,
                        help=f"target to serve under; TARGET{LIMITED_SUFFIX} serves one call at a time "
                             "(default: %(default)s)")
    parser.add_argument("--window", type=_bounded_int(1024, MAX_WINDOW), default=DEFAULT_WINDOW, metavar="BYTES",
                        help="the server's stream receive window, at least 1024 (default: %(default)s)")
    parser.add_argument("--keepalive-ms", type=_bounded_int(0, 3_600_000), default=DEFAULT_KEEPALIVE_MS,
                        metavar="MS", help="the server's keepalive interval; it gives up a silent stream after three "
                                           "(0: none of its own) (default: %(default)s)")
    parser.add_argument("--connect-timeout", type=_seconds, default=5.0, metavar="SECONDS",
                        help="give up reaching NATS after this long (default: %(default)s)")
    parser.add_argument("--log-level", type=str.upper, choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        default="WARNING", help="of the JSON logs on stderr (default: %(default)s)")


def resolve(args: argparse.Namespace) -> ConformanceConfig:
    """The configuration from the flags (the connection ones also from MESH_* variables).

    Raises:
        ConfigError: naming the flag or variable that holds a bad value.
    """
    return ConformanceConfig(access=serve.resolve_access(args), target=args.target, window=args.window,
                             keepalive_ms=args.keepalive_ms, connect_timeout=args.connect_timeout)


class Running:
    """A started conformance server: its connection and its two servers, stopped together."""

    def __init__(self, nc: Client, servers: list[nats_transport.aio.Server]) -> None:
        self.nc = nc
        self.servers = servers

    async def stop(self) -> None:
        """Stop both servers (calls in flight end UNAVAILABLE), then drain the connection."""
        for server in self.servers:
            await server.stop(0)
        with contextlib.suppress(Exception):  # already closed by NATS: nothing left to drain
            await self.nc.drain()


async def start(config: ConformanceConfig) -> Running:
    """Connect and start serving both targets.

    Raises:
        AccessDenied, NatsUnreachable: NATS refused us, or did not answer in time.
    """
    connected = False

    async def on_error(exc: Exception) -> None:
        # Until the first connection, failures are retried and then reported as one line; after
        # it, they are worth a log line each (NATS went away, a publish was refused).
        if connected:
            log.warning("NATS error", extra={"error": str(exc) or type(exc).__name__})

    nc = await connect(config.access, name="mesh:conformance", give_up_after=config.connect_timeout,
                       connect_timeout=min(config.connect_timeout, 5.0), max_reconnect_attempts=-1,
                       reconnect_time_wait=0.5, error_cb=on_error)
    connected = True
    options = config.server_options()
    servicer = ConformanceServicer(max_message_size=options.max_message_size)
    servers = [nats_transport.aio.server(nc, config.target, options=options),
               nats_transport.aio.server(nc, config.limited_target, options=options, maximum_concurrent_rpcs=1)]
    try:
        for server in servers:
            await _serve_on(server, servicer)
    except BaseException:
        await Running(nc, servers).stop()
        raise
    return Running(nc, servers)


async def _serve_on(server: nats_transport.aio.Server, servicer: ConformanceServicer) -> None:
    conformance_pb2_grpc.add_ConformanceServiceServicer_to_server(servicer, server)
    health = health_aio.HealthServicer()
    for name in ("", SERVICE_NAME):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection((SERVICE_NAME, reflection.SERVICE_NAME, "grpc.health.v1.Health"), server)
    await server.start()


def describe(config: ConformanceConfig) -> str:
    """The startup line: what is served, where, and with which settings."""
    keepalive = f"keepalive {config.keepalive_ms} ms" if config.keepalive_ms else "no keepalive of its own"
    return (f"mesh conformance: {SERVICE_NAME} (with health and reflection) as {config.target}, and as "
            f"{config.limited_target} one call at a time, on {', '.join(config.access.urls)}; "
            f"window {config.window} B, {keepalive}; cases in docs/conformance.md")


async def serve_until_stopped(config: ConformanceConfig) -> None:
    """Serve until SIGINT or SIGTERM, which may come at any moment, even while connecting."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(number, stop.set)
    starting = asyncio.ensure_future(start(config))
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            running = starting.result()
            print(describe(config), flush=True)
            try:
                await stopping
            finally:
                await running.stop()
    finally:
        for task in (starting, stopping):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        for number in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(number)
    print("mesh conformance: stopped", flush=True)


def _not_requested(record: logging.LogRecord) -> bool:
    # Fail's raise_exception case makes the handler raise on purpose; the transport logs every
    # handler exception with its traceback, which here would only alarm whoever reads the log.
    return not (record.exc_info and isinstance(record.exc_info[1], RequestedException))


def run(args: argparse.Namespace) -> int:
    """The ``mesh conformance`` command: 0 once stopped by a signal, 2 on a bad setting or when
    NATS cannot be reached or refuses us."""
    try:
        config = resolve(args)
    except ConfigError as error:
        return _fail(str(error))
    configure_json_logging(args.log_level)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_not_requested)
    try:
        event_loop.run(serve_until_stopped(config))
    except (AccessDenied, NatsUnreachable, EventLoopError) as error:
        return _fail(str(error))
    except (OSError, nats.errors.Error) as error:
        return _fail(f"cannot reach NATS: {error or type(error).__name__}")
    return EXIT_OK


def _fail(message: str) -> int:
    print(f"mesh conformance: error: {message}", file=sys.stderr, flush=True)
    return EXIT_USAGE
