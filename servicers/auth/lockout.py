"""Login lockout (pure code): when repeated failed logins lock a username, and the reply that says so.

The MAX_FAILURES-th failed login within FAILURE_WINDOW of the previous one locks the username for
LOCKOUT_BASE seconds, doubling with each further failure up to LOCKOUT_MAX.
"""

from __future__ import annotations

import hashlib
import math

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2

from servicers.auth.records import Failures
from servicers.errors import DOMAIN, RpcError

MAX_FAILURES = 5
FAILURE_WINDOW = 15 * 60.0
LOCKOUT_BASE = 30.0
LOCKOUT_MAX = 15 * 60.0


def throttle_key_of(username: str) -> str:
    """The ``auth_login_failures`` key counting the failures of ``username``."""
    # Any string may be typed as a username at login: hash it into a valid, bounded key.
    return hashlib.sha256(username.lower().encode()).hexdigest()[:40]


def next_failures(previous: Failures | None, now: float) -> Failures:
    """The failure record after one more failed login at ``now``."""
    recent = previous is not None and now - previous.last_failure_time <= FAILURE_WINDOW
    count = previous.count + 1 if previous is not None and recent else 1
    locked_until = 0.0
    if count >= MAX_FAILURES:
        delay = min(LOCKOUT_BASE * 2 ** min(count - MAX_FAILURES, 16), LOCKOUT_MAX)
        locked_until = now + delay
    return Failures(count=count, last_failure_time=now, locked_until=locked_until)


def locked(delay: float) -> RpcError:
    """RESOURCE_EXHAUSTED with a RetryInfo (retry in ``delay`` seconds, rounded up) before the
    ErrorInfo, which the plain helpers of ``servicers.errors`` do not carry."""
    return RpcError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"too many failed logins; retry in {math.ceil(delay)} s",
        [error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=math.ceil(delay))),
         error_details_pb2.ErrorInfo(reason="TOO_MANY_FAILED_LOGINS", domain=DOMAIN)],
    )
