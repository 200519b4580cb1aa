"""The unary grpc.aio call object over the NATS client core, and how one unary call is attempted.

The streaming call object is in ``_stream_call.py``; what both share is in ``_call_base.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any

import grpc
from nats.aio.client import Client

from nats_transport import _client
from nats_transport._options import TransportOptions
from nats_transport._retry import PREVIOUS_ATTEMPTS_HEADER, CallPolicy, run_unary
from nats_transport._status import code_from_number
from nats_transport.aio._call_base import (
    CANCELLED,
    DESERIALIZE_FAILED,
    SERIALIZE_FAILED,
    CallBase,
    Deserializer,
    Serializer,
    deserialize,
    internal,
    rpc_error,
    serialize,
)


async def attempt_unary(nc: Client, options: TransportOptions, subject: str, payload: bytes, metadata: Any,
                        deadline: float | None, policy: CallPolicy | None,
                        wait_for_ready: bool | None = None) -> _client.Outcome:
    """One unary call: a single attempt, or as many as the method's policy asks for."""
    if policy is None:
        return await _client.unary_call(nc, options, subject, payload, metadata, deadline)
    config = policy.config
    ready = config.wait_for_ready if wait_for_ready is None else wait_for_ready
    if config.retry is None and config.hedging is None and not ready:
        # The common case, kept free of closures: one attempt, watched by the breaker.
        breaker = policy.breaker
        if breaker is None:
            outcome = await _client.unary_call(nc, options, subject, payload, metadata, deadline)
        else:
            refusal = breaker.admit()
            if refusal is not None:
                return _client.failed(grpc.StatusCode.UNAVAILABLE, refusal)
            started = breaker.stamp()
            try:
                outcome = await _client.unary_call(nc, options, subject, payload, metadata, deadline)
            except asyncio.CancelledError:
                breaker.record(grpc.StatusCode.CANCELLED, "", started)
                raise
            breaker.record(code_from_number(outcome.trailers.code), outcome.trailers.message, started)
        if policy.throttle is not None and outcome.trailers.code == 0:
            policy.throttle.succeeded()
        return outcome

    def attempt(previous: int) -> Coroutine[Any, Any, _client.Outcome]:
        extra = {PREVIOUS_ATTEMPTS_HEADER: str(previous)} if previous else None
        return _client.unary_call(nc, options, subject, payload, metadata, deadline, extra)

    return await run_unary(attempt, policy, deadline, wait_for_ready)


class UnaryUnaryCall(CallBase, grpc.aio.UnaryUnaryCall[Any, Any]):
    """A unary call in flight; await it for the response.

    Its task never raises a call's failure: like grpc.aio's, it keeps the status and ``await``
    raises it, so a call nobody awaits leaves no "exception was never retrieved" behind.
    """

    def __init__(
        self,
        nc: Client,
        options: TransportOptions,
        subject: str,
        request: Any,
        serializer: Serializer,
        deserializer: Deserializer,
        timeout: float | None,
        metadata: Any,
        policy: CallPolicy | None = None,
        wait_for_ready: bool | None = None,
    ) -> None:
        deadline = _client.effective_deadline(timeout)
        super().__init__(deadline)
        self._deserializer = deserializer
        self._policy = policy
        self._wait_for_ready = wait_for_ready
        self._response: Any = None
        self._cause: Exception | None = None  # a (de)serializer's exception, chained to the error
        self._locally_cancelled = False
        self._task = asyncio.get_running_loop().create_task(
            self._run(nc, options, subject, request, serializer, metadata, deadline)
        )

    async def _run(
        self,
        nc: Client,
        options: TransportOptions,
        subject: str,
        request: Any,
        serializer: Serializer,
        metadata: Any,
        deadline: float | None,
    ) -> None:
        try:
            payload = serialize(serializer, request)
        except Exception as exc:
            # grpcio's sync channel fails the call so; grpc.aio sends an empty message instead.
            self._cause = exc
            self._set_outcome(internal(SERIALIZE_FAILED), ())
            return
        try:
            outcome = await attempt_unary(nc, options, subject, payload, metadata, deadline,
                                          self._policy, self._wait_for_ready)
        except asyncio.CancelledError:
            self._set_outcome(CANCELLED, ())
            raise
        trailers = outcome.trailers
        if trailers.code == 0 and outcome.response is not None:
            try:
                self._response = deserialize(self._deserializer, outcome.response)
            except Exception as exc:
                # As grpcio's sync channel: INTERNAL, with the server's metadata (grpc.aio would
                # hand back None as the response).
                self._cause = exc
                trailers = internal(DESERIALIZE_FAILED, trailers.metadata)
        self._set_outcome(trailers, outcome.initial_metadata)

    def response_nowait(self) -> Any:
        """The response of a call that ended OK (the sync channel reads it from its thread)."""
        return self._response

    def __await__(self) -> Generator[Any, None, Any]:
        try:
            # Not shielded: cancelling the task that awaits cancels the call's task with it (its
            # _run reports CANCELLED and tells the server, wire protocol 1.1), as grpc.aio does.
            # A shield would cost a future and a trip through the event loop on every call.
            yield from self._task.__await__()
        except asyncio.CancelledError:
            if not self.done():
                self.cancel()
            elif self._task.cancelled():
                self._locally_cancelled = True  # the call ended because its awaiter was cancelled
            raise
        if self._locally_cancelled:
            raise asyncio.CancelledError()  # what grpc.aio raises once the caller cancelled
        trailers = self._trailers
        assert trailers is not None
        if trailers.code != 0:
            raise rpc_error(trailers, self._initial) from self._cause
        return self._response

    def cancel(self) -> bool:
        if self.done():
            return False
        self._locally_cancelled = True
        self._task.cancel()
        self._set_outcome(CANCELLED, ())
        return True
