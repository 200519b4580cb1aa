"""The auth service: accounts with scrypt password hashes, and sessions carried by signed tokens.

- Register stores an ``Account`` with a scrypt hash (``passwords``); usernames are unique.
- Login checks the password (an unknown username costs the same scrypt, against a dummy hash,
  and gets the same UNAUTHENTICATED reply), locks a username out for a while after repeated
  failures, and opens a ``Session``: a 15-minute access token and a 30-day refresh token.
- Tokens are JWTs signed with Ed25519 (``tokens``) by the active key of a rotating key set
  (``keys``, in the ``auth_keys`` bucket only auth reads). Validate also reads the session, so
  Logout (a revocation stored in KV) takes effect at once on every replica; Refresh rotates the
  refresh token, and presenting a used one revokes the session.
- Other services verify tokens themselves with ``LocalVerifier`` (``verifier``): the public keys
  come from GetVerificationKeys, and revoked sessions from ListRevocations, polled every few
  seconds. A mesh target gets a token of its own from IssueServiceToken, proving who it is with
  its NATS nkey (``proofs``); ``ServiceTokenSource`` fetches and renews it.
- ``AccessPolicy`` (``access``) admits each call of every target by the access its proto declares,
  verifying tokens with a ``TokenVerifier`` such as ``ValidateVerifier``; handlers read the
  verified caller with ``caller()`` (``call_identity``).

Settings (``deps.settings``):
    key_rotation_days: age in days (a decimal number) at which the signing key is replaced
        (default 30). The first replica to see it due rotates it; the others follow.
    service_keys: path to a JSON file ``{target: "U..." public nkey}`` of the targets that may
        get service tokens. Unset, any caller gets a service token for any target without
        proof: only for a mesh on one trusted machine, where the bus is open anyway.
    scrypt_log2_n: scrypt cost for new hashes (default 15, as auth.proto says; lower for tests).
    account_scopes: comma-separated scopes new accounts may hold (default ``player``).
"""

from __future__ import annotations

import asyncio
import logging
import secrets

from gaming.auth.v1 import auth_pb2_grpc

from servicers.auth.access import AccessPolicy, bearer_token
from servicers.auth.call_identity import acts_for, audit_actor, caller, current_authorization, recorded_actor
from servicers.auth.keys import KeyRing
from servicers.auth.passwords import ScryptParams, hash_password
from servicers.auth.proofs import load_service_keys
from servicers.auth.service import (
    ACCESS_TOKEN_TTL,
    REFRESH_TOKEN_TTL,
    SERVICE_NAMES,
    TARGET,
    AuthServicer,
    auth_store,
)
from servicers.auth.validate_verifier import ValidateVerifier
from servicers.auth.verifier import LocalVerifier, ServiceTokenSource
from servicers.dependencies import Dependencies

__all__ = [
    "TARGET",
    "SERVICE_NAMES",
    "AccessPolicy",
    "AuthServicer",
    "LocalVerifier",
    "ServiceTokenSource",
    "ValidateVerifier",
    "acts_for",
    "add_to_server",
    "audit_actor",
    "recorded_actor",
    "bearer_token",
    "caller",
    "create",
    "current_authorization",
]

_MiB = 1024 * 1024
_DAY = 24 * 3600.0
# Revocations are kept a little longer than an access token lives, so clock skew between
# replicas cannot drop one before its tokens have expired.
_REVOCATION_TTL = ACCESS_TOKEN_TTL + 120

log = logging.getLogger(__name__)

add_to_server = auth_pb2_grpc.add_AuthServiceServicer_to_server


async def create(deps: Dependencies) -> AuthServicer:
    """An AuthServicer on ``deps``' storage, with its buckets open and its key set loaded (or
    created, by the first replica)."""
    settings = deps.settings
    scrypt = ScryptParams(log2_n=int(settings.get("scrypt_log2_n", "15")))
    scopes = tuple(s.strip() for s in settings.get("account_scopes", "player").split(",") if s.strip())
    rotation_days = float(settings.get("key_rotation_days", "30"))
    service_keys_path = settings.get("service_keys")
    service_keys = load_service_keys(service_keys_path) if service_keys_path else None
    if service_keys is None:
        log.warning("auth: service_keys is not set; service tokens are issued to anyone, without proof")
    storage = deps.storage
    accounts = await storage.key_value("auth_accounts", history=1, max_bytes=256 * _MiB)
    # Records outlive nothing useful: a session is dead 30 days after login at the latest (a
    # refresh never extends it), and the bucket TTL counts from each record's last write.
    sessions = await storage.key_value(
        "auth_sessions", history=1, ttl=REFRESH_TOKEN_TTL + 24 * 3600, max_bytes=512 * _MiB
    )
    failures = await storage.key_value("auth_login_failures", history=1, ttl=3600, max_bytes=32 * _MiB)
    revocations = await storage.key_value("auth_revocations", history=1, ttl=_REVOCATION_TTL, max_bytes=32 * _MiB)
    keys = KeyRing(
        auth_store(await storage.key_value("auth_keys", history=1, max_bytes=_MiB), "keys"),
        clock=deps.clock,
        rotation_period=rotation_days * _DAY,
        token_lifetime=REFRESH_TOKEN_TTL,
    )
    await keys.reload()
    return AuthServicer(
        accounts=accounts,
        sessions=sessions,
        failures=failures,
        revocations=revocations,
        keys=keys,
        service_keys=service_keys,
        scrypt=scrypt,
        dummy_hash=await asyncio.to_thread(hash_password, secrets.token_urlsafe(24), scrypt),
        account_scopes=scopes,
        clock=deps.clock,
    )
