"""How a served call fails: a :class:`CallStatus` raised where the failure is decided.

A call path (the unary fast path, a stream) catches it once, where it builds what ends the call,
and writes it on the call's :class:`~nats_transport._context.CallState`: the state is what
interceptors, call logs, done callbacks and ``$SRV.STATS`` read.

Some failures cannot wait for that catch. Interceptors read a call's status as its handler
unwinds, and a handler may catch what unwinds it and go on. So a failure decided while the
handler is still on the stack (its own ``abort()``, a request it reads that cannot be decoded, a
response it writes that cannot travel) and one that comes from outside (the deadline, the
client's cancel, a broken stream) is written on the state when it happens
(:func:`fail_running_call`, ``CallState.abort`` and the cancellation callbacks); the exception
that unwinds the call then carries the same status.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NoReturn

import grpc

if TYPE_CHECKING:  # _context imports the stream endpoint; only the type is needed here
    from nats_transport._context import CallState


class CallStatus(Exception):
    """Ends a call with ``code`` and ``details`` (None: no details, as ``CallState.details``)."""

    def __init__(self, code: grpc.StatusCode, details: str | None) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def fail_running_call(state: CallState, code: grpc.StatusCode, details: str) -> NoReturn:
    """End a call whose handler is running: the status goes on its state now (a handler that
    catches the exception cannot erase it), then unwinds the handler as a CallStatus."""
    state.code, state.details = code, details
    raise CallStatus(code, details)
