"""The ServicerContext handlers see, and the per-call deadline and trace context they pass on.

One :class:`CallState` holds what a handler can change (code, details, metadata); the two context
classes put grpc.aio's (awaitable) or grpc's (blocking) face on it, so async and plain-function
handlers get the API they expect from grpcio.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, NoReturn

import grpc

from nats_transport import _framing
from nats_transport._cancel_watch import cancel_call_task
from nats_transport._envelope import Kind
from nats_transport._metadata import (
    MetadataTuple,
    MetadataValue,
    check_trailing_key,
    check_user_key,
    encode_value,
    to_headers,
)
from nats_transport._stream import StreamEndpoint

# The deadline (time.monotonic) and trace headers of the call being handled: a call made from
# inside a handler inherits them unless it is given its own.
current_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "nats_transport_deadline", default=None
)
current_trace: contextvars.ContextVar[tuple[tuple[str, str], ...]] = contextvars.ContextVar(
    "nats_transport_trace", default=()
)


def time_remaining() -> float | None:
    """Seconds left before the deadline of the call being handled (inherited by the tasks and
    calls it starts), 0.0 once it has passed; None outside a call or when the call has none.

    Work a handler hands to something slow (a store, another service) can stop short of the
    caller's deadline with this and still answer with a status of its own.
    """
    deadline = current_deadline.get()
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def detached() -> contextvars.Context:
    """A copy of the current context without the deadline of the call being handled, for work
    that must outlive the call: ``asyncio.create_task(work(), context=nats_transport.detached())``.

    A task copies its creator's context, so calls made from a task started inside a handler
    inherit the handler's deadline and die with it. Run in this context they carry no deadline
    of their own (give each its ``timeout=``); the trace context stays, so the work's calls still
    belong to the trace of the call that started it. Cancellation needs nothing: a task started
    with ``create_task`` is not cancelled when the handler that started it is.
    """
    context = contextvars.copy_context()
    context.run(current_deadline.set, None)
    return context


class _Metadatum(NamedTuple):
    """One metadata entry as grpc hands it to handlers: a ``(key, value)`` tuple that also has
    ``.key`` and ``.value``. Named like grpc's own (``grpc._cython.cygrpc._Metadatum``), which is
    private; stock interceptors (OpenTelemetry's among them) read the attributes."""

    key: str
    value: MetadataValue


class AbortError(Exception):
    """Raised by ``abort`` to unwind the handler; the status is already in the call state."""


class CallState:
    """What a handler sets while it runs, and the facts of the call it reads."""

    __slots__ = (
        "_callbacks",
        "_cancelled",
        "code",
        "deadline",
        "details",
        "done",
        "endpoint",
        "expired",
        "initial_metadata",
        "initial_metadata_sent",
        "invocation_metadata",
        "metadatum",
        "method",
        "peer",
        "started_ns",
        "status_details",
        "trailing_metadata",
    )

    def __init__(
        self,
        method: str,
        invocation_metadata: tuple[MetadataTuple, ...],
        deadline: float | None,
        peer: str,
    ) -> None:
        self.method = method
        self.invocation_metadata = invocation_metadata
        self.metadatum: tuple[_Metadatum, ...] | None = None
        self.deadline = deadline
        self.peer = peer
        self.code: grpc.StatusCode | None = None
        self.details: str | None = None
        self.status_details: bytes | None = None
        self.trailing_metadata: tuple[MetadataTuple, ...] = ()
        self.initial_metadata: tuple[MetadataTuple, ...] = ()
        self.initial_metadata_sent = False
        self.endpoint: StreamEndpoint | None = None
        self.done = False
        self.expired = False
        self.started_ns = time.monotonic_ns()
        self._cancelled = False
        self._callbacks: list[Callable[[], None]] = []

    def invocation_metadatum(self) -> tuple[_Metadatum, ...]:
        """The invocation metadata as grpc's metadatum objects, made on first use: most calls
        never ask, and the fast path should not pay for objects nobody reads."""
        if self.metadatum is None:
            self.metadatum = tuple(map(_Metadatum._make, self.invocation_metadata))
        return self.metadatum

    def time_remaining(self) -> float | None:
        if self.deadline is None:
            return None
        return max(self.deadline - time.monotonic(), 0.0)

    def set_trailing_metadata(self, metadata: Iterable[tuple[str, MetadataValue]] | None) -> None:
        kept: list[MetadataTuple] = []
        for key, value in metadata or ():
            if key.lower() == "grpc-status-details-bin":
                # Rich status (grpc_status.rpc_status.to_status) travels as its own trailer.
                self.status_details = value if isinstance(value, bytes) else value.encode()
                continue
            name = check_trailing_key(key)
            encode_value(name, value)  # reject non-ASCII text now, inside the handler
            kept.append((name, value))
        self.trailing_metadata = tuple(kept)

    def set_initial_metadata(self, metadata: Iterable[tuple[str, MetadataValue]] | None) -> None:
        if self.initial_metadata_sent:
            raise ValueError("initial metadata was already sent")
        kept = []
        for key, value in metadata or ():
            name = check_user_key(key)
            encode_value(name, value)
            kept.append((name, value))
        self.initial_metadata = tuple(kept)

    def abort(self, code: grpc.StatusCode, details: str, trailing: Sequence[MetadataTuple] | None) -> NoReturn:
        if code == grpc.StatusCode.OK:
            # grpcio refuses abort(OK) the same way: an abort must carry an error.
            code, details = grpc.StatusCode.UNKNOWN, "abort() called with OK status"
        self.code = code
        self.details = details
        if trailing:
            self.set_trailing_metadata(trailing)
        raise AbortError()

    def cancel(self) -> None:
        """Mark the call cancelled (by the client, a deadline or the server) and run callbacks."""
        if self._cancelled or self.done:
            return
        self._cancelled = True
        self.finish()

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def add_callback(self, callback: Callable[[], None]) -> bool:
        if self.done:
            return False
        self._callbacks.append(callback)
        return True

    def finish(self) -> None:
        """The call is over: run the callbacks once."""
        if self.done:
            return
        self.done = True
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # a callback's failure must not break the call's teardown
                import logging

                logging.getLogger(__name__).exception("RPC termination callback failed")

    def trailers(self, default_code: grpc.StatusCode = grpc.StatusCode.OK) -> _framing.Trailers:
        code = self.code or default_code
        return _framing.Trailers(
            code.value[0], self.details or "", self.status_details, self.trailing_metadata
        )


class _ContextBase:
    """What both context faces share."""

    def __init__(self, state: CallState, writer: Callable[[Any], Any] | None, reader: Any) -> None:
        self._state = state
        self._writer = writer
        self._reader = reader

    def invocation_metadata(self) -> tuple[_Metadatum, ...]:
        return self._state.invocation_metadatum()

    def set_trailing_metadata(self, trailing_metadata: Any) -> None:
        self._state.set_trailing_metadata(trailing_metadata)

    def trailing_metadata(self) -> tuple[MetadataTuple, ...]:
        return self._state.trailing_metadata

    def set_code(self, code: grpc.StatusCode) -> None:
        self._state.code = code

    def code(self) -> grpc.StatusCode | None:
        return self._state.code

    def set_details(self, details: str) -> None:
        self._state.details = details

    def details(self) -> str | None:
        return self._state.details

    def set_compression(self, compression: grpc.Compression) -> None:
        """Accepted for compatibility; messages travel uncompressed over NATS."""

    def disable_next_message_compression(self) -> None:
        """Accepted for compatibility; messages travel uncompressed over NATS."""

    def peer(self) -> str:
        # grpc's peers read "<scheme>:<address>:<port>", and stock interceptors (OpenTelemetry's
        # server interceptor) split them so and fail the call when they cannot. A NATS caller's
        # address is its inbox prefix (its identity under `mesh security`); the NUID and the
        # call's token that follow it in the reply subject stay out, since the reply subject is
        # what a cancel must name (wire protocol §11). There is no port: 0.
        inbox = self._state.peer.rsplit(".", 2)[0]
        return f"{inbox}:0"

    def peer_identities(self) -> None:
        return None

    def peer_identity_key(self) -> None:
        return None

    def auth_context(self) -> Mapping[str, Iterable[bytes]]:
        return {}

    def time_remaining(self) -> float | None:
        return self._state.time_remaining()

    def cancelled(self) -> bool:
        return self._state.cancelled

    def done(self) -> bool:
        return self._state.done

    def is_active(self) -> bool:
        return not self._state.done


# The [misc] ignores below: _ContextBase answers as grpcio's contexts do at run time, where the
# stubs declare otherwise: time_remaining() is None without a deadline, invocation_metadata() and
# trailing_metadata() are tuples, code() is None until set (all as grpc.aio's), details() is None
# until set (as grpcio's sync context's), auth_context() maps each property to several values.
class AioServicerContext(_ContextBase, grpc.aio.ServicerContext[Any, Any]):  # type: ignore[misc]  # see above
    """grpc.aio.ServicerContext over NATS (for ``async def`` handlers)."""

    def __init__(
        self,
        state: CallState,
        writer: Callable[[Any], Any] | None,
        reader: Any,
        task: asyncio.Task[Any] | None = None,
    ) -> None:
        super().__init__(state, writer, reader)
        self._task = task

    async def read(self) -> Any:
        if self._reader is None:
            raise grpc.RpcError("read() is only available for request-streaming methods")
        return await self._reader.read()

    async def write(self, message: Any) -> None:
        if self._writer is None:
            raise grpc.RpcError("write() is only available for response-streaming methods")
        await self._writer(message)

    async def send_initial_metadata(self, initial_metadata: Any) -> None:
        self._state.set_initial_metadata(initial_metadata)
        if self._state.endpoint is not None:
            send_initial_metadata(self._state)

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> NoReturn:
        self._state.abort(code, details, trailing_metadata)

    async def abort_with_status(self, status: grpc.Status) -> NoReturn:
        self._state.abort(status.code, status.details, status.trailing_metadata)

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self._state.add_callback(lambda: callback(self))

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return self._state.add_callback(callback)

    def cancel(self) -> bool:
        if self._state.done:
            return False
        self._state.cancel()
        if self._task is not None:
            cancel_call_task(self._task, self._state.method)
        return True


class SyncServicerContext(_ContextBase, grpc.ServicerContext):  # type: ignore[misc]  # see above AioServicerContext
    """grpc.ServicerContext over NATS (for plain-function handlers run in the thread pool)."""

    def __init__(
        self,
        state: CallState,
        writer: Callable[[Any], Any] | None,
        reader: Any,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(state, writer, reader)
        self._loop = loop

    def send_initial_metadata(self, initial_metadata: Any) -> None:
        self._state.set_initial_metadata(initial_metadata)
        if self._state.endpoint is not None:
            self._loop.call_soon_threadsafe(send_initial_metadata, self._state)

    def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> NoReturn:
        self._state.abort(code, details, trailing_metadata)

    def abort_with_status(self, status: grpc.Status) -> NoReturn:
        self._state.abort(status.code, status.details, status.trailing_metadata)

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return self._state.add_callback(callback)

    def cancel(self) -> None:  # type: ignore[override]  # None, as grpcio's own context's cancel()
        self._loop.call_soon_threadsafe(self._state.cancel)


def initial_headers(state: CallState) -> dict[str, str] | None:
    """Initial metadata as NATS headers, marking it sent."""
    state.initial_metadata_sent = True
    if not state.initial_metadata:
        return None
    return to_headers(state.initial_metadata)


def send_initial_metadata(state: CallState) -> None:
    """Send initial metadata now on a stream call, as a HEADERS message, if not yet sent."""
    if state.initial_metadata_sent or state.endpoint is None:
        return
    headers = initial_headers(state)
    if headers:
        state.endpoint.send_control(Kind.HEADERS, headers=headers)
