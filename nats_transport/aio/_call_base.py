"""What every grpc.aio call object over NATS shares: its status, metadata, done callbacks, and
the errors it raises (real AioRpcErrors)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from nats_transport._framing import Trailers
from nats_transport._metadata import MetadataTuple
from nats_transport._status import code_from_number

Serializer = Callable[[Any], bytes] | None
Deserializer = Callable[[bytes], Any] | None

# The details grpcio gives these failures (grpc/_channel.py, grpc/aio/_call.py): callers may match them.
LOCAL_CANCEL = "Locally cancelled by application!"
SERIALIZE_FAILED = "Exception serializing request!"
DESERIALIZE_FAILED = "Exception deserializing response!"

CANCELLED = Trailers(grpc.StatusCode.CANCELLED.value[0], LOCAL_CANCEL)


def internal(details: str, metadata: tuple[MetadataTuple, ...] = ()) -> Trailers:
    """An INTERNAL status decided on this side."""
    return Trailers(grpc.StatusCode.INTERNAL.value[0], details, metadata=metadata)


def aio_metadata(items: tuple[MetadataTuple, ...]) -> grpc.aio.Metadata:
    """A grpc.aio.Metadata from tuples."""
    return grpc.aio.Metadata(*items)


def trailing_of(trailers: Trailers) -> tuple[MetadataTuple, ...]:
    """Trailing metadata as grpcio shows it: rich status details included as a ``-bin`` entry."""
    if trailers.details:
        return (*trailers.metadata, ("grpc-status-details-bin", trailers.details))
    return trailers.metadata


def rpc_error(trailers: Trailers, initial: tuple[MetadataTuple, ...] = ()) -> grpc.aio.AioRpcError:
    """The AioRpcError for a non-OK status."""
    return grpc.aio.AioRpcError(
        code_from_number(trailers.code),
        aio_metadata(initial),
        aio_metadata(trailing_of(trailers)),
        details=trailers.message,
    )


def serialize(serializer: Serializer, message: Any) -> bytes:
    return message if serializer is None else serializer(message)


def deserialize(deserializer: Deserializer, data: bytes) -> Any:
    return data if deserializer is None else deserializer(data)


@dataclass(frozen=True, slots=True)
class Ending:
    """How a call ended: its status and trailing metadata, and the initial metadata it got."""

    trailers: Trailers
    initial_metadata: tuple[MetadataTuple, ...]

    @property
    def ok(self) -> bool:
        return self.trailers.code == 0


class CallBase:
    """Status, metadata, callbacks and deadline of one call; the call kinds add the rest."""

    _trailers: Trailers | None
    _initial: tuple[MetadataTuple, ...]

    def __init__(self, deadline: float | None) -> None:
        self._deadline = deadline
        self._trailers = None
        self._initial = ()
        # Made only when asked for: most calls are awaited, and end with nobody else waiting.
        self._callbacks: list[Callable[[Any], None]] | None = None
        self._done: asyncio.Event | None = None

    def _set_outcome(self, trailers: Trailers, initial: tuple[MetadataTuple, ...]) -> None:
        if self._trailers is not None:
            return
        self._trailers = trailers
        self._initial = initial
        if self._done is not None:
            self._done.set()
        callbacks, self._callbacks = self._callbacks, None
        for callback in callbacks or ():
            callback(self)

    async def _wait_ended(self) -> None:
        """Return once the call has ended."""
        if self._trailers is None:
            if self._done is None:
                self._done = asyncio.Event()
            await self._done.wait()

    # -- the public surface the sync channel reads (from any thread, once the call has ended) --

    def ending(self) -> Ending | None:
        """How the call ended, or None while it runs."""
        trailers = self._trailers
        return None if trailers is None else Ending(trailers, self._initial)

    async def wait_ending(self) -> Ending:
        """How the call ended, once it has."""
        await self._wait_ended()
        assert self._trailers is not None
        return Ending(self._trailers, self._initial)

    async def initial_metadata_tuples(self) -> tuple[MetadataTuple, ...]:
        """Initial metadata as tuples, once the server sends it (or the call ends)."""
        return await self._initial_metadata()

    # -- grpc.aio.Call ----------------------------------------------------------------------

    def done(self) -> bool:
        return self._trailers is not None

    def cancelled(self) -> bool:
        return self._trailers is not None and self._trailers.code == grpc.StatusCode.CANCELLED.value[0]

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(self._deadline - time.monotonic(), 0.0)

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if self._trailers is not None:
            callback(self)
        elif self._callbacks is None:
            self._callbacks = [callback]
        else:
            self._callbacks.append(callback)

    async def _wait_done(self) -> Trailers:
        return (await self.wait_ending()).trailers

    async def initial_metadata(self) -> grpc.aio.Metadata:
        return aio_metadata(await self._initial_metadata())

    async def _initial_metadata(self) -> tuple[MetadataTuple, ...]:
        await self._wait_ended()
        return self._initial

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        return aio_metadata(trailing_of(await self._wait_done()))

    async def code(self) -> grpc.StatusCode:
        return code_from_number((await self._wait_done()).code)

    async def details(self) -> str:
        return (await self._wait_done()).message

    async def wait_for_connection(self) -> None:
        await self._initial_metadata()
