"""ABORTED for a lost compare-and-set, carrying the service's own ``RevisionConflict`` detail.

``servicers.errors.abort_conflict`` attaches only an ErrorInfo; protos that define their own
``RevisionConflict`` message promise it in the status details. This sends both: the same
ErrorInfo (reason REVISION_CONFLICT, so generic clients keep working) and the typed detail.
"""

from __future__ import annotations

from typing import Any, NoReturn

from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from servicers.errors import DOMAIN


async def abort_revision_conflict(
    context: Any, *, subject: str, expected: int, current: int, detail: Message, what: str
) -> NoReturn:
    """Abort the call with ABORTED: ``what`` is at revision ``current``, not ``expected``.

    Args:
        context: the call's servicer context.
        subject: the id the conflict is about (a player id, a scope), for the ErrorInfo.
        expected: the revision the caller passed.
        current: the revision stored now (0 when nothing is).
        detail: the proto's own RevisionConflict message, packed after the ErrorInfo.
        what: a human name for the value, used in the status message.
    """
    info = error_details_pb2.ErrorInfo(
        reason="REVISION_CONFLICT",
        domain=DOMAIN,
        metadata={"key": subject, "expected_revision": str(expected), "current_revision": str(current)},
    )
    details = []
    for message in (info, detail):
        holder = any_pb2.Any()
        holder.Pack(message)
        details.append(holder)
    status = status_pb2.Status(
        code=code_pb2.ABORTED, message=f"{what} is at revision {current}, not {expected}", details=details
    )
    await context.abort_with_status(rpc_status.to_status(status))
    raise AssertionError("abort_with_status returned")  # pragma: no cover - abort always raises
