"""The gRPC ingress as ``mesh gateway`` and ``mesh up`` start it: in this process, or as
``--ingress-workers N`` worker processes sharing its port (``gateway.workers``).

Each worker connects to NATS with the same access (URLs, TLS, credentials, inbox prefix) as the
process that starts it, under a name of its own (``<name>:worker-<i>:pid-<pid>`` in NATS
monitoring), and builds its own span pipeline from the same environment, keeping its spans in a
file of its own (``ingress-<i>.jsonl`` in ``MESH_TRACE_DIR``: no two processes share one).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nats.aio.client import Client

from gateway.envoy_config import TlsPair
from gateway.ingress import Ingress, IngressOptions, TlsFiles, run_ingress
from gateway.workers import (
    IngressWorkerError,
    IngressWorkers,
    PortUnavailable,
    WorkerConnection,
    run_workers,
    worker_name,
)
from health.call_log import configure_json_logging
from health.tracing import TRACE_DIR, TracingConfigError, from_environment
from mesh.connection import NatsAccess, connect

if TYPE_CHECKING:
    from health.trace_pipeline import Tracing

__all__ = ["INGRESS", "GatewayError", "IngressWorkerSetup", "ingress_tracing", "start_ingress"]

log = logging.getLogger("mesh.ingress")

# The ingress's name in traces: the service.name of its spans, the caller on its client spans,
# and its spans file in MESH_TRACE_DIR.
INGRESS = "ingress"


class GatewayError(RuntimeError):
    """The ingress or the edge could not start. ``flag`` names the setting at fault (a taken
    port); it is None when the fault is not in the configuration (Envoy failed)."""

    def __init__(self, message: str, flag: str | None = None) -> None:
        super().__init__(message)
        self.flag = flag


def ingress_tracing(environ: Mapping[str, str] = os.environ, process: str = INGRESS) -> Tracing | None:
    """The ingress's span pipeline as ``environ`` asks for it (``health.tracing``), or None
    (the default: nothing traced, nothing installed). Shut it down after the ingress stops.
    ``process`` names its spans file.

    Raises:
        GatewayError: a value that cannot be used; ``flag`` is the variable that holds it.
    """
    try:
        return from_environment(process, environ)
    except TracingConfigError as error:
        raise GatewayError(str(error), str(error).partition(": ")[0]) from None


def _server_interceptors(tracing: Tracing | None) -> list[Any]:
    # The server span of each call is the parent of the client span of its forwarded call,
    # whose traceparent the target continues. Off, neither list exists.
    return [] if tracing is None else tracing.server_interceptors(INGRESS, over_nats=False)


def _channel_interceptors(tracing: Tracing | None) -> Any:
    return None if tracing is None else functools.partial(tracing.client_interceptors, INGRESS)


@dataclass(frozen=True, slots=True, kw_only=True)
class IngressWorkerSetup:
    """How an ingress worker reaches NATS, logs and traces (a ``gateway.workers.WorkerSetup``).

    Attributes:
        access: the NATS access of the process that starts the workers.
        name: its NATS connection name; a worker's adds ``:worker-<i>:pid-<pid>``.
        log_level: JSON logs on stderr at this level, as the parent's; None leaves Python's
            default (warnings and errors only), as ``mesh up`` has it.
        trace_dir: ``MESH_TRACE_DIR`` for the worker (``mesh up --trace``); None: the environment's.
    """

    access: NatsAccess
    name: str
    log_level: str | None = None
    trace_dir: str | None = None

    def __call__(self, index: int) -> AbstractAsyncContextManager[WorkerConnection]:
        return _worker_connection(self, index)


@contextlib.asynccontextmanager
async def _worker_connection(setup: IngressWorkerSetup, index: int) -> AsyncIterator[WorkerConnection]:
    if setup.log_level is not None:
        configure_json_logging(setup.log_level)
    environ = os.environ if setup.trace_dir is None else {**os.environ, TRACE_DIR: setup.trace_dir}
    tracing = ingress_tracing(environ, f"{INGRESS}-{index}")

    async def on_error(exc: Exception) -> None:
        log.warning("NATS error", extra={"error": str(exc), "worker": index})

    try:
        # Reconnect for ever, as the parent does: NATS may restart under a running worker.
        nc = await connect(setup.access, name=worker_name(setup.name, index), max_reconnect_attempts=-1,
                           reconnect_time_wait=0.5, connect_timeout=5, error_cb=on_error)
        try:
            yield WorkerConnection(nc=nc, server_interceptors=_server_interceptors(tracing),
                                   channel_interceptors=_channel_interceptors(tracing))
        finally:
            with contextlib.suppress(Exception):
                await nc.drain()
    finally:
        if tracing is not None:
            await asyncio.to_thread(tracing.shutdown)  # blocks while it exports what is queued


async def start_ingress(nc: Client, host: str, port: int, *, tls: TlsPair | None = None,
                        grace: float = 5.0, tracing: Tracing | None = None, workers: int = 1,
                        worker_setup: IngressWorkerSetup | None = None) -> Ingress | IngressWorkers:
    """A started gRPC ingress on ``host:port`` over ``nc`` (``tls``: serve TLS to clients;
    ``tracing``: trace the calls it takes and forwards).

    With ``workers`` above 1 it is that many processes sharing the port, each connecting as
    ``worker_setup`` says and tracing as the environment asks (``tracing`` is not theirs: a
    pipeline cannot cross processes); ``nc`` then only feeds the returned pool's discovery.

    Raises:
        GatewayError: the port cannot be bound (flag ``--grpc-port``), or a worker failed to start.
    """
    files = None if tls is None else TlsFiles(cert=tls.cert, key=tls.key)
    if workers > 1:
        if worker_setup is None:
            raise ValueError("workers > 1 needs a worker_setup: how each worker connects to NATS")
        options = IngressOptions(grace=grace, tls=files, workers=workers)
        try:
            return await run_workers(nc, host, port, worker_setup, options)
        except PortUnavailable as error:
            raise GatewayError(f"--grpc-port: {error}", "--grpc-port") from error
        except IngressWorkerError as error:
            raise GatewayError(f"gRPC ingress: {error}") from error
    options = IngressOptions(grace=grace, tls=files, server_interceptors=_server_interceptors(tracing),
                             channel_interceptors=_channel_interceptors(tracing))
    try:
        return await run_ingress(nc, host, port, options=options)
    except RuntimeError as error:
        reason = str(error) or type(error).__name__
        raise GatewayError(f"--grpc-port: cannot listen on {host}:{port}: {reason}", "--grpc-port") from error
