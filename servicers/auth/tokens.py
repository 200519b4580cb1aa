"""Signed tokens (pure code, no I/O): JWTs signed with Ed25519.

A token is a compact JWS (RFC 7515) with the header ``{"alg": "EdDSA", "typ": "JWT", "kid":
<key id>}`` and the claims::

    iss    "gaming.auth"
    sub    the account id, or "service:<target>" for a service token
    sid    the session id ("" for a service token)
    scope  the scopes granted, a list of strings
    typ    "access" or "refresh"
    gen    the refresh generation (0 for access tokens)
    iat    issue time, Unix seconds
    exp    expiry, Unix seconds

Verification accepts only EdDSA: the algorithm is pinned, never taken from the token, so neither
``alg: none`` nor an HS256 token "signed" with a public key as its HMAC secret gets through. The
signature proves auth issued the token and until when it holds; whether its session is still
open is for the caller to learn (the session store, or the revocation list).
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ISSUER = "gaming.auth"
ALGORITHM = "EdDSA"
_CLAIMS = ("iss", "sub", "sid", "scope", "typ", "gen", "iat", "exp")
# Three base64url segments; anything else is not worth handing to the JWT parser.
_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
MAX_TOKEN_CHARS = 4096


class TokenKind(enum.Enum):
    """What a token may be used for (its ``typ`` claim)."""

    ACCESS = "access"
    REFRESH = "refresh"


class InvalidToken(Exception):
    """A token that does not verify. ``reason``: ``malformed``, ``invalid`` or ``expired``."""

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(message or reason)
        self.reason = reason


class UnknownKey(InvalidToken):
    """A well-formed token signed with a key id the verifier does not know (yet): a verifier may
    fetch the keys again and retry before calling the token invalid."""

    def __init__(self, kid: str) -> None:
        super().__init__("invalid", f"unknown signing key {kid[:64]!r}")
        self.kid = kid


@dataclass(frozen=True, slots=True, kw_only=True)
class Claims:
    """What a token says: whose it is, which session, what for, and until when.

    Attributes:
        kind: access or refresh.
        subject: the account id, or ``service:<target>``.
        session_id: the session ("" for service tokens).
        expire_time: Unix seconds after which the token no longer verifies.
        scopes: the scopes the token grants.
        generation: the refresh generation of a refresh token (0 for access tokens).
        issue_time: Unix seconds when it was signed.
    """

    kind: TokenKind
    subject: str
    session_id: str
    expire_time: float
    scopes: tuple[str, ...] = ()
    generation: int = 0
    issue_time: float = 0.0


class TokenSigner:
    """Issues tokens with one Ed25519 private key, named ``kid`` in their header."""

    def __init__(self, kid: str, private_key: Ed25519PrivateKey) -> None:
        self.kid = kid
        self._key = private_key

    def __repr__(self) -> str:
        return f"<TokenSigner kid={self.kid!r}>"  # never show the key

    def issue(self, claims: Claims) -> str:
        """The token carrying ``claims``."""
        payload = {
            "iss": ISSUER,
            "sub": claims.subject,
            "sid": claims.session_id,
            "scope": list(claims.scopes),
            "typ": claims.kind.value,
            "gen": claims.generation,
            # Whole seconds, as JWT clients expect; expiry rounds down so it never outlives the
            # time the issuer reported.
            "iat": math.floor(claims.issue_time),
            "exp": math.floor(claims.expire_time),
        }
        return jwt.encode(payload, self._key, algorithm=ALGORITHM, headers={"kid": self.kid})


def key_id_of(token: str) -> str:
    """The ``kid`` header of ``token``, unverified.

    Raises:
        InvalidToken: ``malformed``, when the token is not a JWT with a string ``kid``.
    """
    if len(token) > MAX_TOKEN_CHARS or not _SHAPE.fullmatch(token):
        raise InvalidToken("malformed")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError as exc:
        raise InvalidToken("malformed") from exc
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise InvalidToken("malformed", "token has no key id")
    return kid


def verify_token(token: str, keys: Mapping[str, Ed25519PublicKey], kind: TokenKind, now: float) -> Claims:
    """The claims of ``token``, if it is a genuine, unexpired token of ``kind`` signed by one of
    ``keys`` (key id -> public key).

    Raises:
        UnknownKey: the token names a key id not in ``keys``.
        InvalidToken: ``malformed`` (not a JWT), ``invalid`` (wrong algorithm, bad signature,
            wrong kind or issuer, missing claims) or ``expired``.
    """
    kid = key_id_of(token)
    key = keys.get(kid)
    if key is None:
        raise UnknownKey(kid)
    try:
        # Expiry is checked below against the caller's clock, not pyjwt's; everything else
        # pyjwt checks, with the algorithm pinned to EdDSA whatever the header says.
        payload = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            issuer=ISSUER,
            options={"require": list(_CLAIMS), "verify_exp": False, "verify_iat": False, "verify_nbf": False},
        )
    except jwt.DecodeError as exc:
        if isinstance(exc, jwt.InvalidSignatureError):
            raise InvalidToken("invalid", "bad signature") from exc
        raise InvalidToken("malformed") from exc
    except jwt.InvalidTokenError as exc:
        raise InvalidToken("invalid", str(exc)) from exc
    claims = _claims_of(payload)
    if claims.kind is not kind:
        raise InvalidToken("invalid", f"not an {kind.value} token")
    if now >= claims.expire_time:
        raise InvalidToken("expired")
    return claims


def _claims_of(payload: Mapping[str, object]) -> Claims:
    """The typed claims of a verified payload; ``invalid`` if a claim has the wrong type."""
    sub, sid, scope, typ = payload["sub"], payload["sid"], payload["scope"], payload["typ"]
    gen, iat, exp = payload["gen"], payload["iat"], payload["exp"]
    if not (
        isinstance(sub, str)
        and isinstance(sid, str)
        and isinstance(scope, list)
        and all(isinstance(s, str) for s in scope)
        and typ in {k.value for k in TokenKind}
        and isinstance(gen, int)
        and isinstance(iat, int | float)
        and isinstance(exp, int | float)
    ):
        raise InvalidToken("invalid", "claims of the wrong type")
    return Claims(
        kind=TokenKind(typ),
        subject=sub,
        session_id=sid,
        expire_time=float(exp),
        scopes=tuple(scope),
        generation=gen,
        issue_time=float(iat),
    )
