"""The one error servicers raise, ``RpcError``, and the helpers that build the rich google.rpc
statuses callers get: bad input -> INVALID_ARGUMENT with a ``BadRequest`` naming the field; a lost
compare-and-set -> ABORTED with the current revision; other refusals -> their code with an
``ErrorInfo`` reason.

Servicers raise these; ``servicers.error_boundary.ErrorBoundary`` (one server interceptor)
turns them into statuses. ``abort`` and ``abort_with_error`` send the same statuses straight from
a context, for code that runs outside the boundary: the boundary itself, and other interceptors'
refusing handlers (``servicers.auth.access.refusing_handler``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from servicers.storage import RevisionConflict

DOMAIN = "gaming.mesh"


class RpcError(Exception):
    """A call's failure as its caller sees it: a status ``code``, a ``message`` and google.rpc
    ``details`` (packed into ``grpc-status-details-bin`` in that order).

    A detail that is a ``google.protobuf.Any`` is one already packed, such as a detail of another
    service's status passed on as it came: it is sent as it is, not packed again, so the caller
    sees the type the other service sent, even one this process has no class for.
    """

    def __init__(self, code: grpc.StatusCode, message: str, details: Iterable[Message] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = tuple(details)

    def __repr__(self) -> str:
        kinds = ", ".join(
            f"packed {detail.TypeName()}" if isinstance(detail, any_pb2.Any) else type(detail).__name__
            for detail in self.details
        )
        return f"RpcError({self.code.name}, {self.message!r}, details=[{kinds}])"

    @property
    def reason(self) -> str | None:
        """The reason of the first ErrorInfo among the details (packed or not), if there is one."""
        for detail in self.details:
            if isinstance(detail, any_pb2.Any) and detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                return str(info.reason)
            if isinstance(detail, error_details_pb2.ErrorInfo):
                return str(detail.reason)
        return None

    def status(self) -> grpc.Status:
        """The status to end the call with (``context.abort_with_status``)."""
        code: int = self.code.value[0]
        packed = [_packed(detail) for detail in self.details]
        status: grpc.Status = rpc_status.to_status(status_pb2.Status(code=code, message=self.message, details=packed))
        return status


def _packed(detail: Message) -> any_pb2.Any:
    if isinstance(detail, any_pb2.Any):
        return detail  # packed already (forwarded from another status): packing it again would hide its type
    holder = any_pb2.Any()
    holder.Pack(detail)
    return holder


class InvalidArgument(RpcError):
    """INVALID_ARGUMENT: ``field`` (a request path such as ``event.spawn.kind``) is wrong, as
    ``description`` says; the details hold a BadRequest violation naming it."""

    def __init__(self, field: str, description: str) -> None:
        violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
        super().__init__(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {description}",
                         [error_details_pb2.BadRequest(field_violations=[violation])])
        self.field = field
        self.description = description


def rpc_error(code: grpc.StatusCode, message: str, reason: str | None = None) -> RpcError:
    """An error with ``code``, and an ErrorInfo (domain ``gaming.mesh``) when ``reason`` is given."""
    return RpcError(code, message, [error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN)] if reason else [])


def invalid_argument(field: str, why: str) -> InvalidArgument:
    """INVALID_ARGUMENT with a BadRequest violation naming ``field``; the message is ``field: why``."""
    return InvalidArgument(field, why)


def not_found(message: str, reason: str) -> RpcError:
    """NOT_FOUND, e.g. ``not_found("region 'r1' does not exist", "REGION_NOT_FOUND")``."""
    return rpc_error(grpc.StatusCode.NOT_FOUND, message, reason)


def already_exists(message: str, reason: str) -> RpcError:
    """ALREADY_EXISTS with an ErrorInfo ``reason``."""
    return rpc_error(grpc.StatusCode.ALREADY_EXISTS, message, reason)


def failed_precondition(message: str, reason: str) -> RpcError:
    """FAILED_PRECONDITION with an ErrorInfo ``reason``."""
    return rpc_error(grpc.StatusCode.FAILED_PRECONDITION, message, reason)


def aborted(message: str, reason: str) -> RpcError:
    """ABORTED with an ErrorInfo ``reason`` (contention, a race to retry); a lost compare-and-set
    the caller asked for is ``revision_conflict``."""
    return rpc_error(grpc.StatusCode.ABORTED, message, reason)


def unavailable(message: str, reason: str) -> RpcError:
    """UNAVAILABLE (retryable) with an ErrorInfo ``reason``."""
    return rpc_error(grpc.StatusCode.UNAVAILABLE, message, reason)


def revision_conflict(conflict: RevisionConflict, what: str = "value", *extra: Message) -> RpcError:
    """ABORTED, with the revision the value is at now in an ErrorInfo (reason REVISION_CONFLICT),
    followed by ``extra`` details (a proto's own RevisionConflict message, when it promises one)."""
    info = error_details_pb2.ErrorInfo(
        reason="REVISION_CONFLICT",
        domain=DOMAIN,
        metadata={"key": conflict.key, "expected_revision": str(conflict.expected),
                  "current_revision": str(conflict.current)},
    )
    return RpcError(grpc.StatusCode.ABORTED, f"{what} is at revision {conflict.current}, not {conflict.expected}",
                    [info, *extra])


async def abort_with_error(context: Any, error: RpcError) -> NoReturn:
    """End the call with ``error``'s status, from an async context (outside the boundary only:
    a servicer raises ``error`` instead)."""
    await context.abort_with_status(error.status())
    raise AssertionError("abort_with_status returned")  # pragma: no cover - abort always raises


async def abort(context: Any, code: grpc.StatusCode, message: str, reason: str | None = None) -> NoReturn:
    """``abort_with_error`` of ``rpc_error(code, message, reason)``, for refusing handlers outside
    the boundary (a servicer raises ``rpc_error(...)`` instead)."""
    await abort_with_error(context, rpc_error(code, message, reason))
