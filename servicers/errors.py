"""Rich gRPC errors every servicer uses: bad input -> INVALID_ARGUMENT with a
``BadRequest`` naming the field; a lost compare-and-set -> ABORTED with the current revision."""

from __future__ import annotations

from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from servicers.storage import RevisionConflict

DOMAIN = "gaming.mesh"


def _status(code: int, message: str, *details: Any) -> grpc.Status:
    packed = []
    for detail in details:
        holder = any_pb2.Any()
        holder.Pack(detail)
        packed.append(holder)
    return rpc_status.to_status(status_pb2.Status(code=code, message=message, details=packed))


async def abort_invalid(context: Any, field: str, description: str) -> NoReturn:
    """INVALID_ARGUMENT with a BadRequest field violation."""
    violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
    await context.abort_with_status(
        _status(
            code_pb2.INVALID_ARGUMENT,
            f"{field}: {description}",
            error_details_pb2.BadRequest(field_violations=[violation]),
        )
    )
    raise AssertionError("abort_with_status returned")  # pragma: no cover - abort always raises


async def abort_conflict(context: Any, conflict: RevisionConflict, what: str = "value") -> NoReturn:
    """ABORTED, with the revision the value is at now in an ErrorInfo (reason REVISION_CONFLICT)."""
    info = error_details_pb2.ErrorInfo(
        reason="REVISION_CONFLICT",
        domain=DOMAIN,
        metadata={"key": conflict.key, "expected_revision": str(conflict.expected),
                  "current_revision": str(conflict.current)},
    )
    await context.abort_with_status(
        _status(
            code_pb2.ABORTED,
            f"{what} is at revision {conflict.current}, not {conflict.expected}",
            info,
        )
    )
    raise AssertionError("abort_with_status returned")  # pragma: no cover


async def abort(context: Any, code: grpc.StatusCode, message: str, reason: str | None = None) -> NoReturn:
    """Any other error, with an ErrorInfo reason when given (NOT_FOUND, FAILED_PRECONDITION...)."""
    details = [error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN)] if reason else []
    await context.abort_with_status(_status(code.value[0], message, *details))
    raise AssertionError("abort_with_status returned")  # pragma: no cover
