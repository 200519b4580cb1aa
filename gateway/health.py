"""grpc.health.v1 for the whole mesh, answered at the ingress.

``""`` (and the ingress's own services) is the ingress itself: SERVING while it runs and its NATS
connection is up. Any other name is a mesh service, asked of the target serving it over NATS.
Unknown names follow grpc.health.v1: ``Check`` fails with NOT_FOUND, ``Watch`` sends
SERVICE_UNKNOWN and stays open, so a service deployed later is reported on the same stream. A
service whose targets are all gone is NOT_SERVING (it is known, just not there).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, Protocol, cast

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.discovery import Discovery
from gateway.forwarding import abort
from gateway.metadata import remaining_timeout

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name

# A forwarded Check never waits longer than this, whatever the caller's deadline.
CHECK_TIMEOUT = 5.0
# How long a Watch waits before asking again a target whose own Watch failed.
WATCH_RETRY = 1.0


class HealthClient(Protocol):
    """grpc.health.v1's client stub on a grpc.aio channel. types-grpcio-health-checking declares
    ``HealthStub`` without its two methods, so callers cast the stub to this."""

    Check: grpc.aio.UnaryUnaryMultiCallable[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse]
    Watch: grpc.aio.UnaryStreamMultiCallable[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse]


class MeshHealth(health_pb2_grpc.HealthServicer):
    """Check and Watch for the ingress and every mesh service.

    Args:
        discovery: where services are found.
        channel: the NATS channel to a target, by name.
        own_services: services the ingress serves itself (reported as ``""`` is).
        connected: whether the NATS connection is up.
    """

    def __init__(
        self,
        discovery: Discovery,
        channel: Callable[[str], Any],
        own_services: Iterable[str],
        connected: Callable[[], bool],
    ) -> None:
        self._discovery = discovery
        self._channel = channel
        self._own = frozenset(own_services)
        self._connected = connected
        self._stopping = asyncio.Event()

    def __repr__(self) -> str:
        return f"<gateway.MeshHealth stopping={self._stopping.is_set()}>"

    def enter_graceful_shutdown(self) -> None:
        """Report NOT_SERVING for the ingress from now on (watchers hear it at once)."""
        self._stopping.set()

    def _own_status(self) -> int:
        return int(NOT_SERVING if self._stopping.is_set() or not self._connected() else SERVING)

    def _is_own(self, name: str) -> bool:
        return name == "" or name in self._own

    # -- Check ---------------------------------------------------------------------------------

    async def Check(self, request: health_pb2.HealthCheckRequest, context: Any) -> health_pb2.HealthCheckResponse:
        """The status of ``request.service`` now."""
        name = request.service
        if self._is_own(name):
            return health_pb2.HealthCheckResponse(status=self._own_status())
        target = await self._discovery.resolve(name)
        if target is None:
            if self._discovery.knows(name):
                return health_pb2.HealthCheckResponse(status=NOT_SERVING)
            await abort(context, grpc.StatusCode.NOT_FOUND, f"unknown service {name}")
        timeout = remaining_timeout(context.time_remaining())
        stub = cast(HealthClient, health_pb2_grpc.HealthStub(self._channel(target)))
        try:
            reply: health_pb2.HealthCheckResponse = await stub.Check(
                health_pb2.HealthCheckRequest(service=name), timeout=min(timeout or CHECK_TIMEOUT, CHECK_TIMEOUT)
            )
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                await abort(context, grpc.StatusCode.NOT_FOUND, err.details() or f"unknown service {name}")
            # The target is unreachable or broken: for a health check that is an answer.
            return health_pb2.HealthCheckResponse(status=NOT_SERVING)
        return health_pb2.HealthCheckResponse(status=reply.status)

    # -- Watch ---------------------------------------------------------------------------------

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> AsyncIterator[Any]:
        """The status of ``request.service`` now, then each change, until the caller leaves."""
        name = request.service
        last: int | None = None
        async for status in self._statuses(name):
            if status != last:
                last = status
                yield health_pb2.HealthCheckResponse(status=status)

    async def _statuses(self, name: str) -> AsyncIterator[int]:
        while True:
            changed = self._discovery.changed()  # taken before looking, so no change is missed
            if self._is_own(name):
                yield self._own_status()
                await self._until(changed)
                continue
            target = self._discovery.target_of(name)
            if target is None:
                yield NOT_SERVING if self._discovery.knows(name) else SERVICE_UNKNOWN
                await self._until(changed)
                continue
            async for status in self._target_statuses(target, name):
                yield status
            # The target's stream ended (the target left, or NATS did): report that, then look
            # again after a pause or at the next change, whichever is first.
            yield NOT_SERVING
            await self._until(self._discovery.changed(), WATCH_RETRY)

    async def _target_statuses(self, target: str, name: str) -> AsyncIterator[int]:
        stub = cast(HealthClient, health_pb2_grpc.HealthStub(self._channel(target)))
        call = stub.Watch(health_pb2.HealthCheckRequest(service=name))
        try:
            while True:
                reply = await call.read()
                if reply is grpc.aio.EOF:
                    return
                # grpc.aio's stub types read() as object (EOF's type), which hides the response's.
                yield cast(health_pb2.HealthCheckResponse, reply).status
        except grpc.aio.AioRpcError:
            return
        finally:
            call.cancel()  # also when our caller cancels: the target stops watching too

    async def _until(self, changed: asyncio.Event, at_most: float | None = None) -> None:
        """Wait for ``changed``, for shutdown, or ``at_most`` seconds."""
        waits = [asyncio.ensure_future(changed.wait())]
        if not self._stopping.is_set():
            waits.append(asyncio.ensure_future(self._stopping.wait()))
        try:
            await asyncio.wait(waits, timeout=at_most, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waiter
