"""Who a call comes from, once its bearer token is verified, and the interface that verifies it.

The access interceptor (built from the ``gaming.common.v1.access`` method options) asks a
``TokenVerifier`` for the ``Identity`` behind a token; handlers read it with ``caller()``. The
identity is the only source of an audit actor: never client metadata such as ``x-actor-id``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True, kw_only=True)
class Identity:
    """The verified holder of a token.

    Attributes:
        subject: the account id of a player or operator, or ``service:<target>`` for a mesh
            target acting on its own behalf.
        session_id: the session the token belongs to (empty for service tokens).
        scopes: what the token grants, such as ``player``, ``operator``, ``service``.
        expire_time: Unix seconds after which the token no longer verifies.
    """

    subject: str
    session_id: str
    scopes: tuple[str, ...]
    expire_time: float

    def holds_any(self, scopes: tuple[str, ...] | list[str]) -> bool:
        """True if the token grants at least one of ``scopes``."""
        return any(scope in self.scopes for scope in scopes)


class TokenRejected(Exception):
    """The token is malformed, forged, expired or revoked: the caller is UNAUTHENTICATED.

    ``reason`` is a machine-readable word (``malformed``, ``invalid``, ``expired``, ``revoked``).
    """

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(message or reason)
        self.reason = reason


class VerifierUnavailable(Exception):
    """The verifier cannot decide now (no keys yet, auth unreachable): the call is UNAVAILABLE."""


class TokenVerifier(Protocol):
    """Turns a bearer token into an Identity, or refuses it."""

    async def verify(self, token: str) -> Identity:
        """The identity behind ``token``.

        Raises:
            TokenRejected: the token does not verify.
            VerifierUnavailable: the verifier cannot tell right now.
        """
        ...
