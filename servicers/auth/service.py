"""The AuthService servicer: accounts, logins, and sessions carried by signed tokens.

State, all in KV buckets so every replica sees the same thing at once:

- ``auth_accounts``: one ``Account`` per lower-case username (a create-only write makes
  usernames unique).
- ``auth_sessions``: one ``Session`` per session id. Validate reads it on every call, so a
  revocation by any replica is seen by all of them at the next call; Refresh rotates the
  session's refresh generation with compare-and-set, so of two uses of one refresh token
  exactly one wins and the other is treated as theft.
- ``auth_login_failures``: failed logins per username (known or not), for lockout.
- ``auth_keys``: the token signing keys (``keys``), read only by auth.
- ``auth_revocations``: one ``Revocation`` per session revoked in the last access token
  lifetime, which ListRevocations hands to the verifiers of other services.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from gaming.auth.v1 import auth_pb2, auth_pb2_grpc
from google.protobuf import timestamp_pb2

from servicers.auth import proofs
from servicers.auth.keys import KeyRing
from servicers.auth.lockout import locked, next_failures, throttle_key_of
from servicers.auth.passwords import ScryptParams, hash_password, verify_password
from servicers.auth.records import ACCOUNTS, FAILURES, REVOCATIONS, SESSIONS, Account, Revocation, Session
from servicers.auth.tokens import Claims, InvalidToken, TokenKind, key_id_of, verify_token
from servicers.errors import RpcError, already_exists, invalid_argument, not_found, revision_conflict, rpc_error
from servicers.named_store import NamedStore
from servicers.storage import Entry, KeyValue, RevisionConflict

log = logging.getLogger(__name__)

TARGET = "auth"
SERVICE_NAMES = ("gaming.auth.v1.AuthService",)

ACCESS_TOKEN_TTL = 15 * 60.0
REFRESH_TOKEN_TTL = 30 * 24 * 3600.0
SERVICE_TOKEN_TTL = 10 * 60.0
SERVICE_SCOPE = "service"
# Read-modify-write retries on one key before giving up with ABORTED: losing this often means
# something is hammering one session or username.
CAS_ATTEMPTS = 8

INVALID_CREDENTIALS = "invalid username or password"
_USERNAME = re.compile(r"[A-Za-z0-9_]{3,32}")
_SCOPE = re.compile(r"[a-z][a-z0-9_]*(?::[a-z][a-z0-9_]*)*")
_SESSION_ID = re.compile(r"[0-9a-f]{32}")
_TOKEN_PROBLEMS = {
    "malformed": ("malformed token", "TOKEN_MALFORMED"),
    "invalid": ("invalid token", "TOKEN_INVALID"),
    "expired": ("token expired", "TOKEN_EXPIRED"),
}

T = TypeVar("T")


def auth_store(kv: KeyValue, name: str) -> NamedStore:
    """``kv``, whose outage callers hear about as "the <name> store cannot be reached"."""
    return NamedStore(kv, f"the {name} store cannot be reached")


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(round(seconds * 1e9))
    return stamp


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    """Registers accounts, opens sessions, and validates, refreshes and revokes them."""

    def __init__(
        self,
        *,
        accounts: KeyValue,
        sessions: KeyValue,
        failures: KeyValue,
        revocations: KeyValue,
        keys: KeyRing,
        service_keys: Mapping[str, Ed25519PublicKey] | None,
        scrypt: ScryptParams,
        dummy_hash: str,
        account_scopes: Sequence[str],
        clock: Callable[[], float],
        scrypt_concurrency: int = 2,
    ) -> None:
        # auth.proto promises UNAVAILABLE when a store cannot be reached, naming which.
        self._accounts = auth_store(accounts, "accounts")
        self._sessions = auth_store(sessions, "sessions")
        self._failures = auth_store(failures, "login failures")
        self._revocations = auth_store(revocations, "revocations")
        self._keys = keys
        # None: no proof asked of service token requests (the insecure laptop mode).
        self._service_keys = service_keys
        self._scrypt = scrypt
        # Unknown usernames are checked against this hash, so they cost the same time as a
        # wrong password and the reply's timing does not tell which it was.
        self._dummy_hash = dummy_hash
        self._account_scopes = tuple(account_scopes)
        self._clock = clock
        # Each scrypt call takes ~32 MiB and a core for ~70 ms: bound how many run at once.
        self._scrypt_slots = asyncio.Semaphore(scrypt_concurrency)

    def __repr__(self) -> str:
        return f"<AuthServicer scrypt_log2_n={self._scrypt.log2_n}>"

    # -- RPCs ----------------------------------------------------------------------------

    async def Register(self, request: auth_pb2.RegisterRequest, context: Any) -> auth_pb2.RegisterResponse:
        """Create an account (see auth.proto)."""
        return await self._guarded(self._register(request))

    async def Login(self, request: auth_pb2.LoginRequest, context: Any) -> auth_pb2.LoginResponse:
        """Check credentials and open a session (see auth.proto)."""
        return await self._guarded(self._login(request, context))

    async def Validate(self, request: auth_pb2.ValidateRequest, context: Any) -> auth_pb2.ValidateResponse:
        """Check an access token and its session (see auth.proto)."""
        return await self._guarded(self._validate(request))

    async def Refresh(self, request: auth_pb2.RefreshRequest, context: Any) -> auth_pb2.RefreshResponse:
        """Rotate a session's tokens (see auth.proto)."""
        return await self._guarded(self._refresh(request))

    async def Logout(self, request: auth_pb2.LogoutRequest, context: Any) -> auth_pb2.LogoutResponse:
        """Revoke a session (see auth.proto)."""
        return await self._guarded(self._logout(request))

    async def GetVerificationKeys(
        self, request: auth_pb2.GetVerificationKeysRequest, context: Any
    ) -> auth_pb2.GetVerificationKeysResponse:
        """List the public keys that verify tokens (see auth.proto)."""
        return await self._guarded(self._get_verification_keys())

    async def ListRevocations(
        self, request: auth_pb2.ListRevocationsRequest, context: Any
    ) -> auth_pb2.ListRevocationsResponse:
        """List the sessions revoked within an access token lifetime (see auth.proto)."""
        return await self._guarded(self._list_revocations())

    async def IssueServiceToken(
        self, request: auth_pb2.IssueServiceTokenRequest, context: Any
    ) -> auth_pb2.IssueServiceTokenResponse:
        """Give a mesh target that proves its identity a service token (see auth.proto)."""
        return await self._guarded(self._issue_service_token(request))

    # -- behaviour -----------------------------------------------------------------------

    async def _register(self, request: auth_pb2.RegisterRequest) -> auth_pb2.RegisterResponse:
        if not _USERNAME.fullmatch(request.username):
            raise invalid_argument("username", "must be 3 to 32 characters of a-z, 0-9 and _")
        if not 8 <= len(request.password) <= 128:
            raise invalid_argument("password", "must be 8 to 128 characters")
        name = request.display_name
        if not 1 <= len(name) <= 64 or not name.strip() or not name.isprintable():
            raise invalid_argument("display_name", "must be 1 to 64 printable characters, not only spaces")
        username = request.username.lower()
        # Cheap check first, so a taken name does not cost a scrypt; the create-only write
        # below is what actually guarantees uniqueness.
        if await self._accounts.get(username) is not None:
            raise self._taken(username)
        now = self._clock()
        account = Account(
            account_id=uuid.uuid4().hex,
            username=username,
            display_name=name,
            password_hash=await self._run_scrypt(hash_password, request.password, self._scrypt),
            scopes=self._account_scopes,
            create_time=now,
        )
        try:
            await self._accounts.update(username, ACCOUNTS.encode(account), 0)
        except RevisionConflict:
            raise self._taken(username) from None
        return auth_pb2.RegisterResponse(account_id=account.account_id, create_time=_timestamp(now))

    async def _login(self, request: auth_pb2.LoginRequest, context: Any) -> auth_pb2.LoginResponse:
        if not request.username:
            raise invalid_argument("username", "is required")
        if not request.password:
            raise invalid_argument("password", "is required")
        for index, scope in enumerate(request.scopes):
            if len(scope) > 64 or not _SCOPE.fullmatch(scope):
                raise invalid_argument(f"scopes[{index}]", f"{scope[:64]!r} is not a scope")
        if len(request.client_description) > 128:
            raise invalid_argument("client_description", "must be at most 128 characters")

        now = self._clock()
        throttle_key = throttle_key_of(request.username)
        failures = await self._failures.get(throttle_key)
        if failures is not None:
            locked_until = FAILURES.decode(failures.value).locked_until
            if now < locked_until:
                raise locked(locked_until - now)

        # A malformed username cannot name an account: treat it as unknown (same work, same reply).
        stored = await self._accounts.get(request.username.lower()) if _USERNAME.fullmatch(request.username) else None
        account = ACCOUNTS.decode(stored.value) if stored is not None else None
        password_hash = account.password_hash if account is not None else self._dummy_hash
        matched = await self._run_scrypt(verify_password, request.password, password_hash)
        if account is None or not matched:
            await self._record_failure(throttle_key, now)
            raise rpc_error(grpc.StatusCode.UNAUTHENTICATED, INVALID_CREDENTIALS, "INVALID_CREDENTIALS")
        if failures is not None:
            await self._failures.delete(throttle_key)
        # Only now, with the password proven, may the reply say anything about the account.
        if account.disabled:
            raise rpc_error(grpc.StatusCode.PERMISSION_DENIED, "account is disabled", "ACCOUNT_DISABLED")
        for index, scope in enumerate(request.scopes):
            if scope not in account.scopes:
                raise invalid_argument(f"scopes[{index}]", f"scope {scope!r} is not available to this account")
        scopes = tuple(dict.fromkeys(request.scopes)) or account.scopes

        session = Session(
            session_id=uuid.uuid4().hex,
            account_id=account.account_id,
            scopes=scopes,
            client_description=request.client_description,
            create_time=now,
            refresh_expire_time=now + REFRESH_TOKEN_TTL,
            refresh_generation=1,
        )
        await self._sessions.update(session.session_id, SESSIONS.encode(session), 0)
        return auth_pb2.LoginResponse(
            account_id=account.account_id,
            session_id=session.session_id,
            tokens=await self._tokens(session, now),
            scopes=scopes,
        )

    async def _validate(self, request: auth_pb2.ValidateRequest) -> auth_pb2.ValidateResponse:
        if not request.access_token:
            raise invalid_argument("access_token", "is required")
        claims = await self._verified(request.access_token, TokenKind.ACCESS)
        if not claims.session_id and claims.subject.startswith("service:"):
            # A service token has no session to revoke: its short life is its bound.
            return auth_pb2.ValidateResponse(
                account_id=claims.subject, expire_time=_timestamp(claims.expire_time), scopes=claims.scopes
            )
        session = await self._open_session(claims)
        return auth_pb2.ValidateResponse(
            account_id=claims.subject,
            session_id=claims.session_id,
            expire_time=_timestamp(claims.expire_time),
            scopes=session.scopes,
        )

    async def _refresh(self, request: auth_pb2.RefreshRequest) -> auth_pb2.RefreshResponse:
        if not request.refresh_token:
            raise invalid_argument("refresh_token", "is required")
        claims = await self._verified(request.refresh_token, TokenKind.REFRESH)
        conflict: RevisionConflict | None = None
        for _ in range(CAS_ATTEMPTS):
            entry = await self._sessions.get(claims.session_id)
            session = _live_session(claims, entry)
            assert entry is not None  # _live_session aborts otherwise
            if claims.generation != session.refresh_generation:
                # This refresh token was already exchanged: someone else holds a copy of it.
                await self._revoke(claims.session_id, "refresh token reuse")
                raise rpc_error(
                    grpc.StatusCode.UNAUTHENTICATED, "refresh token already used; the session is revoked",
                    "REFRESH_TOKEN_REUSED",
                )
            rotated = replace(session, refresh_generation=session.refresh_generation + 1)
            try:
                await self._sessions.update(claims.session_id, SESSIONS.encode(rotated), entry.revision)
            except RevisionConflict as lost:
                # Re-read: if a concurrent Refresh with this same token won, the next pass sees
                # the generation moved on and treats this one as a reuse.
                conflict = lost
                continue
            return auth_pb2.RefreshResponse(
                account_id=claims.subject,
                session_id=claims.session_id,
                tokens=await self._tokens(rotated, self._clock()),
            )
        assert conflict is not None
        raise conflict

    async def _logout(self, request: auth_pb2.LogoutRequest) -> auth_pb2.LogoutResponse:
        if not request.access_token:
            raise invalid_argument("access_token", "is required")
        claims = await self._verified(request.access_token, TokenKind.ACCESS)
        target = request.session_id or claims.session_id
        if target != claims.session_id:
            # Revoking another session takes a live one; repeating one's own logout does not.
            await self._open_session(claims)
        entry = await self._sessions.get(target) if _SESSION_ID.fullmatch(target) else None
        if entry is None or SESSIONS.decode(entry.value).account_id != claims.subject:
            raise not_found(f"no session {target[:64]!r} on this account", "NO_SESSION")
        revoked = await self._revoke(target, "logout")
        if revoked is None:  # deleted between the read and the revocation
            raise not_found(f"no session {target[:64]!r} on this account", "NO_SESSION")
        return auth_pb2.LogoutResponse(session_id=target, revoke_time=_timestamp(revoked.revoke_time))

    async def _get_verification_keys(self) -> auth_pb2.GetVerificationKeysResponse:
        keys = sorted((await self._keys.verification_keys()).values(), key=lambda key: not key.active)
        now = self._clock()
        return auth_pb2.GetVerificationKeysResponse(
            keys=[
                auth_pb2.VerificationKey(
                    kid=key.kid,
                    public_key=key.raw(),
                    valid_until=_timestamp(min(key.valid_until, now + REFRESH_TOKEN_TTL)),
                    active=key.active,
                )
                for key in keys
            ]
        )

    async def _list_revocations(self) -> auth_pb2.ListRevocationsResponse:
        # The bucket's TTL forgets a revocation a little after ACCESS_TOKEN_TTL; the time check
        # makes the answer exact on this replica's clock.
        since = self._clock() - ACCESS_TOKEN_TTL
        entries = await asyncio.gather(*(self._revocations.get(key) for key in await self._revocations.keys()))
        recent = (REVOCATIONS.decode(entry.value) for entry in entries if entry is not None)
        return auth_pb2.ListRevocationsResponse(
            session_ids=sorted(r.session_id for r in recent if r.revoke_time >= since)
        )

    async def _issue_service_token(
        self, request: auth_pb2.IssueServiceTokenRequest
    ) -> auth_pb2.IssueServiceTokenResponse:
        target = request.target
        if not proofs.TARGET.fullmatch(target):
            raise invalid_argument("target", "must be 1 to 64 characters of a-z, 0-9, _ and -")
        now = self._clock()
        if self._service_keys is not None:
            if target not in self._service_keys:
                raise rpc_error(
                    grpc.StatusCode.PERMISSION_DENIED, f"no key is configured for {target!r}", "UNKNOWN_TARGET",
                )
            issued_at = request.issued_at.seconds
            if not proofs.proof_holds(self._service_keys, target, issued_at, request.signature):
                raise rpc_error(grpc.StatusCode.UNAUTHENTICATED, "bad proof signature", "BAD_PROOF")
            if abs(now - issued_at) > proofs.MAX_SKEW:
                raise rpc_error(grpc.StatusCode.UNAUTHENTICATED, "issued_at is too far from server time", "STALE_PROOF")
        claims = Claims(
            kind=TokenKind.ACCESS,
            subject=f"service:{target}",
            session_id="",
            scopes=(SERVICE_SCOPE,),
            issue_time=now,
            expire_time=math.floor(now + SERVICE_TOKEN_TTL),
        )
        token = (await self._keys.signer()).issue(claims)
        return auth_pb2.IssueServiceTokenResponse(access_token=token, expire_time=_timestamp(claims.expire_time))

    # -- pieces --------------------------------------------------------------------------

    async def _guarded(self, operation: Awaitable[T]) -> T:
        # A compare-and-set still lost after the retries is reported as the session's.
        try:
            return await operation
        except RevisionConflict as conflict:
            raise revision_conflict(conflict, "session") from conflict

    async def _run_scrypt(self, function: Callable[[str, Any], T], password: str, argument: Any) -> T:
        async with self._scrypt_slots:
            return await asyncio.to_thread(function, password, argument)

    def _taken(self, username: str) -> RpcError:
        return already_exists(f"username {username!r} is taken", "USERNAME_TAKEN")

    async def _verified(self, token: str, kind: TokenKind) -> Claims:
        try:
            keys = await self._keys.public_keys(key_id_of(token))
            return verify_token(token, keys, kind, self._clock())
        except InvalidToken as problem:
            message, reason = _TOKEN_PROBLEMS[problem.reason]
            raise rpc_error(grpc.StatusCode.UNAUTHENTICATED, message, reason) from problem

    async def _open_session(self, claims: Claims) -> Session:
        """The session of ``claims``, read now; UNAUTHENTICATED unless it is open (see below)."""
        return _live_session(claims, await self._sessions.get(claims.session_id))

    async def _revoke(self, session_id: str, reason: str) -> Session | None:
        """Mark a session revoked (keeping the first revocation); None if it does not exist."""
        conflict: RevisionConflict | None = None
        for _ in range(CAS_ATTEMPTS):
            entry = await self._sessions.get(session_id)
            if entry is None:
                return None
            session = SESSIONS.decode(entry.value)
            if session.revoke_time:
                # Written again: the first attempt may have stopped before its revocation record.
                await self._publish_revocation(session)
                return session
            revoked = replace(session, revoke_time=self._clock(), revoke_reason=reason)
            try:
                await self._sessions.update(session_id, SESSIONS.encode(revoked), entry.revision)
            except RevisionConflict as lost:
                conflict = lost
                continue
            await self._publish_revocation(revoked)
            return revoked
        assert conflict is not None
        raise conflict

    async def _publish_revocation(self, session: Session) -> None:
        """Tell other services' verifiers (through ListRevocations) to refuse the session's tokens."""
        if self._clock() - session.revoke_time < ACCESS_TOKEN_TTL:
            record = Revocation(session_id=session.session_id, revoke_time=session.revoke_time)
            await self._revocations.put(session.session_id, REVOCATIONS.encode(record))

    async def _record_failure(self, key: str, now: float) -> None:
        for _ in range(CAS_ATTEMPTS):
            entry = await self._failures.get(key)
            previous = FAILURES.decode(entry.value) if entry is not None else None
            record = next_failures(previous, now)
            try:
                await self._failures.update(key, FAILURES.encode(record), entry.revision if entry else 0)
            except RevisionConflict:
                continue  # another failed login for this name at the same time: count both
            return
        log.warning("could not record a failed login after %d attempts", CAS_ATTEMPTS)

    async def _tokens(self, session: Session, now: float) -> auth_pb2.SessionTokens:
        signer = await self._keys.signer()
        access = Claims(
            kind=TokenKind.ACCESS,
            subject=session.account_id,
            session_id=session.session_id,
            scopes=session.scopes,
            issue_time=now,
            expire_time=math.floor(now + ACCESS_TOKEN_TTL),
        )
        refresh = Claims(
            kind=TokenKind.REFRESH,
            subject=session.account_id,
            session_id=session.session_id,
            scopes=session.scopes,
            issue_time=now,
            expire_time=math.floor(session.refresh_expire_time),  # rotation never extends the session
            generation=session.refresh_generation,
        )
        return auth_pb2.SessionTokens(
            access_token=signer.issue(access),
            access_token_expire_time=_timestamp(access.expire_time),
            refresh_token=signer.issue(refresh),
            refresh_token_expire_time=_timestamp(refresh.expire_time),
        )


def _live_session(claims: Claims, entry: Entry | None) -> Session:
    """The session stored as ``entry``; UNAUTHENTICATED unless it exists, belongs to the token's
    account and is not revoked."""
    session = SESSIONS.decode(entry.value) if entry is not None else None
    if session is None or session.account_id != claims.subject:
        raise rpc_error(grpc.StatusCode.UNAUTHENTICATED, "session not found", "SESSION_NOT_FOUND")
    if session.revoke_time:
        raise rpc_error(grpc.StatusCode.UNAUTHENTICATED, "session revoked", "SESSION_REVOKED")
    return session
