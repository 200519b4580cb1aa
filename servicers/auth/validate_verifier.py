"""``ValidateVerifier``: a ``TokenVerifier`` that asks the auth service (its Validate RPC, over a
channel) about every token, so a logout shuts the door at once on every replica."""

from __future__ import annotations

import logging
from typing import Any

import grpc
from gaming.auth.v1 import auth_pb2, auth_pb2_grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from servicers.auth.identity import Identity, TokenRejected, VerifierUnavailable

log = logging.getLogger(__name__)

# Validate's own verdicts on the token; any other failure (UNAVAILABLE, DEADLINE_EXCEEDED...)
# says nothing about the token, so the verifier is unavailable and the client may retry.
_TOKEN_REJECTED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT)
# Validate's ErrorInfo reasons -> TokenRejected reasons.
_REASONS = {
    "TOKEN_MALFORMED": "malformed",
    "TOKEN_INVALID": "invalid",
    "TOKEN_EXPIRED": "expired",
    "SESSION_REVOKED": "revoked",
    "SESSION_NOT_FOUND": "revoked",
}


class ValidateVerifier:
    """Verifies tokens with ``AuthService.Validate`` over ``channel`` (a grpc.aio channel, such
    as ``host.channel("auth")``).

    Args:
        channel: where the auth service answers.
        timeout: deadline of each Validate call, in seconds.
    """

    def __init__(self, channel: Any, *, timeout: float = 2.0) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self._validate = auth_pb2_grpc.AuthServiceStub(channel).Validate
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"<ValidateVerifier timeout={self._timeout}>"

    async def verify(self, token: str) -> Identity:
        """The identity Validate reports for ``token``.

        Raises:
            TokenRejected: Validate refused the token (UNAUTHENTICATED or INVALID_ARGUMENT).
            VerifierUnavailable: Validate failed in any other way.
        """
        try:
            reply = await self._validate(auth_pb2.ValidateRequest(access_token=token), timeout=self._timeout)
        except grpc.aio.AioRpcError as err:
            if err.code() in _TOKEN_REJECTED:
                raise TokenRejected(_reason_of(err), err.details() or "invalid token") from err
            raise VerifierUnavailable(f"auth Validate failed: {err.code().name} {err.details()}") from err
        return identity_of(reply)


def identity_of(reply: auth_pb2.ValidateResponse) -> Identity:
    """The Identity a ValidateResponse describes (subject = its account id)."""
    return Identity(
        subject=reply.account_id,
        session_id=reply.session_id,
        scopes=tuple(reply.scopes),
        expire_time=reply.expire_time.ToNanoseconds() / 1e9,
    )


def _reason_of(err: grpc.aio.AioRpcError) -> str:
    """malformed, invalid, expired or revoked, from the ErrorInfo Validate attached."""
    if err.code() == grpc.StatusCode.INVALID_ARGUMENT:
        return "malformed"
    try:
        status = rpc_status.from_call(err)
    except ValueError:  # details that contradict the status: trust the status
        return "invalid"
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info) and info.reason in _REASONS:
            return _REASONS[info.reason]
    return "invalid"
