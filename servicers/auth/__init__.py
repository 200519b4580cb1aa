"""The auth service: accounts with scrypt password hashes, and sessions carried by signed tokens.

- Register stores an ``Account`` with a scrypt hash (``passwords``); usernames are unique.
- Login checks the password (an unknown username costs the same scrypt, against a dummy hash,
  and gets the same UNAUTHENTICATED reply), locks a username out for a while after repeated
  failures, and opens a ``Session``: a 15-minute access token and a 30-day refresh token.
- Tokens are HMAC-SHA256 signed (``tokens``). Validate also reads the session, so Logout (a
  revocation stored in KV) takes effect at once on every replica; Refresh rotates the refresh
  token, and presenting a used one revokes the session.
- ``RequireToken`` (``interceptor``) protects other services' methods with these tokens.

Settings (``deps.settings``):
    signing_key: HMAC key, at least 32 bytes of text. Absent, a random key is generated once
        and kept in the ``auth_keys`` bucket, so every replica signs with the same one.
    scrypt_log2_n: scrypt cost for new hashes (default 15, as auth.proto says; lower for tests).
    account_scopes: comma-separated scopes new accounts may hold (default ``player``).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets

from gaming.auth.v1 import auth_pb2_grpc
from google.protobuf import wrappers_pb2

from servicers.auth.interceptor import RequireToken, bearer_token, caller
from servicers.auth.passwords import ScryptParams, hash_password
from servicers.auth.service import (
    REFRESH_TOKEN_TTL,
    SERVICE_NAMES,
    TARGET,
    AuthServicer,
)
from servicers.auth.tokens import TokenSigner
from servicers.dependencies import Dependencies
from servicers.storage import RevisionConflict

__all__ = [
    "TARGET",
    "SERVICE_NAMES",
    "AuthServicer",
    "RequireToken",
    "add_to_server",
    "bearer_token",
    "caller",
    "create",
]

_MiB = 1024 * 1024
_SIGNING_KEY = "signing_key"

add_to_server = auth_pb2_grpc.add_AuthServiceServicer_to_server


async def create(deps: Dependencies) -> AuthServicer:
    """An AuthServicer on ``deps``' storage, with its buckets open and its signing key loaded."""
    settings = deps.settings
    scrypt = ScryptParams(log2_n=int(settings.get("scrypt_log2_n", "15")))
    scopes = tuple(s.strip() for s in settings.get("account_scopes", "player").split(",") if s.strip())
    storage = deps.storage
    accounts = await storage.key_value("auth_accounts", history=1, max_bytes=256 * _MiB)
    # Records outlive nothing useful: a session is dead 30 days after login at the latest (a
    # refresh never extends it), and the bucket TTL counts from each record's last write.
    sessions = await storage.key_value(
        "auth_sessions", history=1, ttl=REFRESH_TOKEN_TTL + 24 * 3600, max_bytes=512 * _MiB
    )
    failures = await storage.key_value("auth_login_failures", history=1, ttl=3600, max_bytes=32 * _MiB)
    key = settings.get(_SIGNING_KEY)
    signer = TokenSigner(key.encode() if key else await _shared_signing_key(deps))
    return AuthServicer(
        accounts=accounts,
        sessions=sessions,
        failures=failures,
        signer=signer,
        scrypt=scrypt,
        dummy_hash=await asyncio.to_thread(hash_password, secrets.token_urlsafe(24), scrypt),
        account_scopes=scopes,
        clock=deps.clock,
    )


async def _shared_signing_key(deps: Dependencies) -> bytes:
    """The key in the ``auth_keys`` bucket, created by whichever replica gets there first."""
    keys = await deps.storage.key_value("auth_keys", history=1, max_bytes=_MiB)
    entry = await keys.get(_SIGNING_KEY)
    if entry is None:
        fresh = wrappers_pb2.BytesValue(value=secrets.token_bytes(32)).SerializeToString()
        # If another replica created it at the same moment, keep theirs: it is read below.
        with contextlib.suppress(RevisionConflict):
            await keys.update(_SIGNING_KEY, fresh, 0)
        entry = await keys.get(_SIGNING_KEY)
        if entry is None:
            raise RuntimeError("the shared signing key vanished right after it was created")
    return wrappers_pb2.BytesValue.FromString(entry.value).value
