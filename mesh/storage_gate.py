"""``StorageGate``: the server interceptor that answers a target's calls with UNAVAILABLE at once
while its storage is down, instead of letting each call wait on a store that will not answer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from mesh.storage_health import StorageHealth
from servicers.auth.access import UNGUARDED_SERVICES, refusing_handler

# The same reason servicers give when a store call fails (servicers.error_boundary).
REASON = "STORAGE_UNAVAILABLE"


class StorageGate(grpc.aio.ServerInterceptor):
    """Refuses every call but health and reflection while ``health.problem`` is set."""

    def __init__(self, health: StorageHealth) -> None:
        self._health = health

    def __repr__(self) -> str:
        return f"<StorageGate {self._health!r}>"

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]], details: Any) -> Any:
        """The method's handler, or while storage is down one that answers UNAVAILABLE."""
        handler = await continuation(details)
        problem = self._health.problem
        if problem is None or handler is None or details.method.split("/")[1] in UNGUARDED_SERVICES:
            return handler
        return refusing_handler(handler, grpc.StatusCode.UNAVAILABLE,
                                f"{self._health.target} cannot reach its storage, retry later: {problem}", REASON)
