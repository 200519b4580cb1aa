"""Calls a handler makes to other targets: how much of the caller's time each may take, and how a
failed dependency is answered.

The rule for calls made side by side (``asyncio.gather``) from one handler:

- Each call gets a *share* of the time the caller has left when the fan-out starts:
  ``timeout = remaining * share.fraction``, at most ``share.ceiling`` seconds. The calls run
  concurrently, so the shares are not added up: every one may use its fraction of the same
  remaining time, and what the largest fraction leaves over (at least 20 %) is kept for the
  handler's own work after the calls (storing, answering).
- A dependency the answer cannot do without gets ``REQUIRED`` (80 %); one the handler can answer
  without (a degraded answer, flagged) gets ``OPTIONAL`` (50 %), so that a slow optional
  dependency is given up on while there is still time to answer without it.
- A caller without a deadline (``time_remaining()`` None, or grpcio's ~9.2e18 for "none") is
  treated as having ``share.ceiling / share.fraction`` left, so every call still has a bound and a
  dead dependency fails the call instead of hanging it.

The deadline itself also reaches the downstream without help (the transport passes the
handler's deadline on through contextvars); the explicit ``timeout=`` is what makes it shorter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc

from servicers.errors import RpcError, rpc_error

# grpcio reports "no deadline" as ~9.2e18 seconds; nothing real is anywhere near this.
NO_DEADLINE = 1e9
# Trailing metadata naming the optional dependencies an answer was made without.
DEGRADED_KEY = "degraded-sources"


@dataclass(frozen=True, slots=True, kw_only=True)
class Share:
    """How much of the caller's remaining time one downstream call may take.

    Attributes:
        fraction: of the remaining time, in (0, 1].
        ceiling: seconds at most, also what a caller without a deadline gets.
    """

    fraction: float
    ceiling: float

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError("fraction must be in (0, 1]")
        if self.ceiling <= 0.0:
            raise ValueError("ceiling must be positive")


REQUIRED = Share(fraction=0.8, ceiling=5.0)
OPTIONAL = Share(fraction=0.5, ceiling=2.0)


def time_left(context: Any) -> float | None:
    """Seconds the call has left, or None when it has no deadline."""
    remaining = context.time_remaining()
    if remaining is None or remaining > NO_DEADLINE:
        return None
    return max(float(remaining), 0.0)


def budget(remaining: float | None, share: Share) -> float:
    """The timeout of one call given ``remaining`` seconds (None: no deadline) and its share."""
    if remaining is None:
        return share.ceiling
    return min(remaining * share.fraction, share.ceiling)


def is_down(err: grpc.aio.AioRpcError) -> bool:
    """Whether a failed call means the dependency could not answer (rather than refused the
    request): its answer would be the same on a healthy day only by luck."""
    return err.code() not in _ANSWERS


# Codes a working service answers with about the request itself; everything else (UNAVAILABLE,
# DEADLINE_EXCEEDED, UNKNOWN, INTERNAL, UNIMPLEMENTED, ...) means we could not use it.
_ANSWERS = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.ABORTED,
})


def describe(err: grpc.aio.AioRpcError) -> str:
    """``CODE: details`` of a failed call, for messages that name the dependency."""
    details = err.details() or ""
    return f"{err.code().name}: {details}" if details else err.code().name


class DependencyError(RpcError):
    """A downstream call failed in a way the handler answers with ``code`` (and an ErrorInfo
    ``reason``); raised, it reaches the caller as that status through the error boundary."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str) -> None:
        super().__init__(code, message, rpc_error(code, message, reason).details)

    @classmethod
    def down(cls, target: str, err: grpc.aio.AioRpcError | None = None) -> DependencyError:
        """UNAVAILABLE naming ``target``; the code it answered (if any) is in the message."""
        cause = f" ({describe(err)})" if err is not None else ""
        return cls(grpc.StatusCode.UNAVAILABLE, f"{target} is unavailable{cause}", "DEPENDENCY_UNAVAILABLE")


async def gather_all(*calls: Awaitable[Any]) -> list[Any]:
    """``asyncio.gather`` of ``calls``, except that the first failure cancels the others: their
    results no longer matter, and the caller should not wait out their timeouts to hear so."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        # Let the cancelled ones finish unwinding (closing their calls) before going on.
        await asyncio.gather(*tasks, return_exceptions=True)


def flag_degraded(context: Any, targets: Iterable[str]) -> None:
    """Say in the trailing metadata which optional dependencies the answer was made without."""
    names = sorted(set(targets))
    if names:
        context.set_trailing_metadata(((DEGRADED_KEY, ",".join(names)),))


def degraded_sources(trailing_metadata: Iterable[tuple[str, Any]] | None) -> list[str]:
    """The dependencies a response's trailing metadata names as missing (client side)."""
    for key, value in trailing_metadata or ():
        if key == DEGRADED_KEY:
            text = value.decode() if isinstance(value, bytes) else str(value)
            return [name for name in text.split(",") if name]
    return []
