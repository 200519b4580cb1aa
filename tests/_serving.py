"""Serve a servicer over a real NATS for a test, and hand back a channel to it (behind the
ErrorBoundary the host installs, so RpcErrors and storage outages become statuses)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from nats.aio.client import Client

import nats_transport.aio
from servicers.error_boundary import ErrorBoundary


@contextlib.asynccontextmanager
async def served(
    nc: Client, add_to_server: Callable[[Any, Any], None], servicer: Any, *, target: str | None = None
) -> AsyncIterator[nats_transport.aio.Channel]:
    """Start ``servicer`` on a fresh target; yield an aio channel to it; stop the server after."""
    name = target or f"svc-{uuid.uuid4().hex[:10]}"
    server = nats_transport.aio.server(nc, name, interceptors=[ErrorBoundary()])
    add_to_server(servicer, server)
    await server.start()
    try:
        yield nats_transport.aio.channel(nc, name)
    finally:
        await server.stop(0)
