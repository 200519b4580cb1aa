"""Signed session tokens (pure code, no I/O).

A token is ``base64url(payload) "." base64url(HMAC-SHA256(key, payload))``, both without
padding, 106 characters. The 46-byte payload packs, big-endian::

    version (1 byte, 1) | kind (1: access, 2: refresh) | account id (16) | session id (16)
    | expiry in Unix milliseconds (8, signed) | refresh generation (4, 0 for access tokens)

Account and session ids are UUIDs (32 lower-case hex digits as text). The signature only proves
the service issued the token and when it expires; whether its session is still open is for the
caller to check in the session store, which is what makes revocation immediate.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import re
import struct
from dataclasses import dataclass

_PAYLOAD = struct.Struct(">BB16s16sqI")
_VERSION = 1
_SHAPE = re.compile(r"[A-Za-z0-9_-]{62}\.[A-Za-z0-9_-]{43}")
MIN_KEY_BYTES = 32


class TokenKind(enum.IntEnum):
    """What a token may be used for."""

    ACCESS = 1
    REFRESH = 2


class InvalidToken(Exception):
    """A token that does not verify. ``reason``: ``malformed``, ``invalid`` or ``expired``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True, kw_only=True)
class Claims:
    """What a token says: whose session it belongs to, what for, and until when."""

    kind: TokenKind
    account_id: str
    session_id: str
    expire_time: float
    generation: int = 0


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenSigner:
    """Issues and verifies tokens with one HMAC-SHA256 key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"the signing key must be at least {MIN_KEY_BYTES} bytes")
        self._key = key

    def __repr__(self) -> str:
        return "<TokenSigner>"  # never show the key

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()

    def issue(self, claims: Claims) -> str:
        """The token carrying ``claims``."""
        payload = _PAYLOAD.pack(
            _VERSION,
            claims.kind,
            bytes.fromhex(claims.account_id),
            bytes.fromhex(claims.session_id),
            round(claims.expire_time * 1000),
            claims.generation,
        )
        return f"{_b64(payload)}.{_b64(self._mac(payload))}"

    def verify(self, token: str, kind: TokenKind, now: float) -> Claims:
        """The claims of ``token``, if it is a well-formed, genuine, unexpired token of ``kind``.

        Raises:
            InvalidToken: it is not.
        """
        if not _SHAPE.fullmatch(token):
            raise InvalidToken("malformed")
        body, signature = token.split(".")
        payload = _unb64(body)
        if len(payload) != _PAYLOAD.size:
            raise InvalidToken("malformed")
        # Check the signature before trusting any field, in constant time.
        if not hmac.compare_digest(self._mac(payload), _unb64(signature)):
            raise InvalidToken("invalid")
        version, found_kind, account, session, expire_ms, generation = _PAYLOAD.unpack(payload)
        if version != _VERSION or found_kind != kind:
            raise InvalidToken("invalid")
        expire_time = expire_ms / 1000
        if now >= expire_time:
            raise InvalidToken("expired")
        return Claims(
            kind=TokenKind(found_kind),
            account_id=account.hex(),
            session_id=session.hex(),
            expire_time=expire_time,
            generation=generation,
        )
