"""A small mesh for one test: real servicers on per-test target names over the shared NATS, and
a way to see the deadline each downstream call arrived with.

Targets are logical names (``world-state``) mapped to unique ones (``world-state-1a2b3c4d``), so
tests running on one nats-server never answer each other's calls; ``channel`` is the factory a
servicer under test gets as ``Dependencies.channel``.
"""

from __future__ import annotations

import contextlib
import inspect
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client

import nats_transport.aio
from nats_transport import ServerOptions
from servicers.error_boundary import ErrorBoundary


@dataclass
class Seen:
    """One call a downstream servicer received, and the time its caller had left."""

    method: str
    time_remaining: float | None
    request: Any


@dataclass
class Calls:
    """What the recorded servicers saw, in arrival order."""

    seen: list[Seen] = field(default_factory=list)

    def of(self, method: str) -> list[Seen]:
        return [item for item in self.seen if item.method == method]


def recorded(servicer: Any, calls: Calls, *methods: str) -> Any:
    """``servicer`` with ``methods`` wrapped to note ``context.time_remaining()`` on arrival.

    The real methods still answer; only instance attributes are replaced, so the generated
    ``add_*_to_server`` picks the wrappers up. Streaming-response methods stay async generators.
    """
    for name in methods:
        inner = getattr(servicer, name)
        if inspect.isasyncgenfunction(inner):
            async def streaming(request: Any, context: Any, inner: Any = inner, name: str = name) -> Any:
                calls.seen.append(Seen(name, context.time_remaining(), request))
                async for item in inner(request, context):
                    yield item

            setattr(servicer, name, streaming)
        else:
            async def unary(request: Any, context: Any, inner: Any = inner, name: str = name) -> Any:
                calls.seen.append(Seen(name, context.time_remaining(), request))
                return await inner(request, context)

            setattr(servicer, name, unary)
    return servicer


class Mesh:
    """The targets of one test."""

    def __init__(self, nc: Client, stack: contextlib.AsyncExitStack) -> None:
        self.nc = nc
        self.suffix = uuid.uuid4().hex[:8]
        self._stack = stack
        self._servers: dict[str, Any] = {}

    def name(self, target: str) -> str:
        return f"{target}-{self.suffix}"

    def channel(self, target: str) -> Any:
        return nats_transport.aio.channel(self.nc, self.name(target))

    async def host(
        self, target: str, add: Callable[[Any, Any], None], servicer: Any, *, options: ServerOptions | None = None
    ) -> Any:
        """Serve ``servicer`` as ``target`` until the test ends (or ``stop``)."""
        server = nats_transport.aio.server(self.nc, self.name(target), options=options, interceptors=[ErrorBoundary()])
        add(servicer, server)
        await server.start()
        self._servers[target] = server
        self._stack.push_async_callback(server.stop, 0)
        return server

    async def stop(self, target: str) -> None:
        """Take ``target`` off the mesh: its callers now get UNAVAILABLE (no responders)."""
        await self._servers.pop(target).stop(0)


@contextlib.asynccontextmanager
async def mesh_on(nc: Client) -> AsyncIterator[Mesh]:
    async with contextlib.AsyncExitStack() as stack:
        yield Mesh(nc, stack)
