"""What the conformance server saw of each call that named itself with ``conformance-call-id``.

A client cannot see from its own side whether the server's handler stopped when it cancelled,
or how far a stream got while it held back its credit; the server keeps a record per named call
and answers ``GetCallRecord`` from it. Records are bounded, so a long-running server that many
clients use does not grow without end.
"""

from __future__ import annotations

import collections
import time
from typing import Any

from gaming.conformance.v1 import conformance_pb2 as pb

__all__ = ["CALL_ID_KEY", "CallRecord", "CallRecords"]

# The metadata key whose value names a call for GetCallRecord.
CALL_ID_KEY = "conformance-call-id"
# Records kept; the oldest is forgotten first.
MAX_RECORDS = 1024


class CallRecord:
    """One call's progress on the server, updated by its handler."""

    __slots__ = ("_ended_ns", "_started_ns", "deadline_exceeded", "method", "received", "sent", "state")

    def __init__(self, method: str) -> None:
        self.method = method
        self.state: pb.CallState.ValueType = pb.CALL_STATE_RUNNING
        self.deadline_exceeded = False
        self.received = 0
        self.sent = 0
        self._started_ns = time.monotonic_ns()
        self._ended_ns: int | None = None

    def end(self) -> None:
        """The handler ended by itself (returned, failed, or was refused)."""
        self._finish(pb.CALL_STATE_ENDED)

    def cancel(self, *, deadline: bool) -> None:
        """The handler was cancelled: by the deadline when ``deadline``, else by the client."""
        self.deadline_exceeded = deadline
        self._finish(pb.CALL_STATE_CANCELLED)

    def _finish(self, state: pb.CallState.ValueType) -> None:
        if self._ended_ns is None:
            self.state = state
            self._ended_ns = time.monotonic_ns()

    def to_proto(self) -> pb.GetCallRecordResponse:
        """The record as GetCallRecord answers it."""
        reply = pb.GetCallRecordResponse(state=self.state, method=self.method, deadline_exceeded=self.deadline_exceeded,
                                         messages_received=self.received, messages_sent=self.sent)
        end = self._ended_ns if self._ended_ns is not None else time.monotonic_ns()
        reply.elapsed.FromNanoseconds(end - self._started_ns)
        return reply


class CallRecords:
    """The records of the calls that carried ``conformance-call-id``, newest last."""

    def __init__(self, limit: int = MAX_RECORDS) -> None:
        self._limit = limit
        self._records: collections.OrderedDict[str, CallRecord] = collections.OrderedDict()

    def start(self, context: Any, method: str) -> CallRecord:
        """A record for the call ``context`` belongs to, kept only if the call named itself; a
        call that did not still gets one, which its handler updates and nobody reads."""
        record = CallRecord(method)
        call_id = _call_id(context)
        if call_id is not None:
            self._records.pop(call_id, None)
            self._records[call_id] = record
            while len(self._records) > self._limit:
                self._records.popitem(last=False)
        return record

    def lookup(self, call_id: str) -> pb.GetCallRecordResponse:
        """The record of ``call_id``, or an empty answer (CALL_STATE_UNSPECIFIED) if none."""
        record = self._records.get(call_id)
        return record.to_proto() if record is not None else pb.GetCallRecordResponse()


def _call_id(context: Any) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == CALL_ID_KEY and isinstance(value, str) and value:
            return value
    return None
