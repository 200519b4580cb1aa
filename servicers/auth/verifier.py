"""Verifying tokens without asking auth each time, and getting service tokens from it.

``LocalVerifier`` checks an access token's Ed25519 signature, expiry and kind in-process, with
the public keys of ``AuthService.GetVerificationKeys``, and refuses the tokens of sessions in
``AuthService.ListRevocations``, which it polls in the background. ``ServiceTokenSource`` gives
a mesh target a service token of its own (``AuthService.IssueServiceToken``), renewed before it
expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from gaming.auth.v1 import auth_pb2, auth_pb2_grpc
from google.protobuf import timestamp_pb2

from servicers.auth import proofs
from servicers.auth.identity import Identity, TokenRejected, VerifierUnavailable
from servicers.auth.tokens import InvalidToken, TokenKind, UnknownKey, key_id_of, verify_token

log = logging.getLogger(__name__)

# An unknown key id makes the verifier fetch the keys again, but at most this often, so tokens
# with made-up key ids cannot turn it into a flood of GetVerificationKeys calls.
UNKNOWN_KID_REFETCH = 1.0


def _stub(stub_or_channel: Any) -> Any:
    """An AuthService stub: ``stub_or_channel`` itself if it is one, else a stub on the channel."""
    if hasattr(stub_or_channel, "GetVerificationKeys"):
        return stub_or_channel
    return auth_pb2_grpc.AuthServiceStub(stub_or_channel)


class LocalVerifier:
    """A ``TokenVerifier`` that checks access tokens locally, with auth's public keys.

    The keys are fetched at ``start()``, every ``refresh_interval`` seconds, and again when a
    token names an unknown key id (at most once a second). The revocation list is polled every
    ``revocation_poll`` seconds: a Logout (or a refresh-token reuse) takes effect everywhere
    within ``revocation_poll`` plus one ``call_timeout`` (the poll that carries it), as long as
    auth answers; while it does not, the last list is kept and known keys go on verifying. Before
    the first keys are fetched, ``verify`` raises VerifierUnavailable.

    Args:
        stub_or_channel: an ``AuthServiceStub``, or a grpc.aio channel to the auth target.
        refresh_interval: seconds between routine key fetches.
        revocation_poll: seconds between ListRevocations polls.
        call_timeout: deadline of each call to auth, in seconds.
        clock: wall-clock seconds, for token expiry.
    """

    def __init__(
        self,
        stub_or_channel: Any,
        *,
        refresh_interval: float = 60.0,
        revocation_poll: float = 2.0,
        call_timeout: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if min(refresh_interval, revocation_poll, call_timeout) <= 0:
            raise ValueError("intervals and timeouts must be positive")
        self._stub = _stub(stub_or_channel)
        self._refresh_interval = refresh_interval
        self._revocation_poll = revocation_poll
        self._call_timeout = call_timeout
        self._clock = clock
        self._keys: dict[str, tuple[Ed25519PublicKey, float]] | None = None
        self._fetched_at = -float("inf")  # monotonic time of the last key fetch attempt
        self._revoked: frozenset[str] = frozenset()
        self._polls = 0
        self._poll_starts = 0
        self._poll_ends = 0
        self._polled = asyncio.Condition()
        self._fetch_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        keys = len(self._keys) if self._keys is not None else None
        return f"<LocalVerifier keys={keys} revoked={len(self._revoked)} polls={self._polls}>"

    @property
    def revocation_polls(self) -> int:
        """How many revocation polls have succeeded (lets tests and probes see progress)."""
        return self._polls

    async def next_poll(self) -> None:
        """Wait until a revocation poll that starts after this call has finished (succeeded or
        not): from then on, every revocation made before this call is refused."""
        wanted = self._poll_starts + 1
        async with self._polled:
            await self._polled.wait_for(lambda: self._poll_ends >= wanted)

    async def start(self) -> None:
        """Fetch the keys and revocations once, then keep them fresh in a background task.

        Auth being unreachable is not an error here: the task keeps trying.
        """
        if self._task is not None:
            return
        await self._fetch_keys()
        await self._poll_revocations()
        self._task = asyncio.create_task(self._run(), name="auth-local-verifier")

    async def aclose(self) -> None:
        """Stop the background task."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def verify(self, token: str) -> Identity:
        """The identity behind an access token (see ``TokenVerifier``).

        Raises:
            TokenRejected: ``malformed``, ``invalid``, ``expired`` or ``revoked``.
            VerifierUnavailable: no keys have been obtained from auth yet.
        """
        try:
            kid = key_id_of(token)
            if self._keys is None or kid not in self._keys:
                await self._refetch_for(kid)
            if self._keys is None:
                raise VerifierUnavailable("no token verification keys from auth yet")
            now = self._clock()
            keys = {k: key for k, (key, valid_until) in self._keys.items() if valid_until > now}
            claims = verify_token(token, keys, TokenKind.ACCESS, now)
        except UnknownKey as unknown:
            raise TokenRejected("invalid", str(unknown)) from unknown
        except InvalidToken as problem:
            raise TokenRejected(problem.reason, str(problem)) from problem
        if claims.session_id and claims.session_id in self._revoked:
            raise TokenRejected("revoked", "session revoked")
        return Identity(
            subject=claims.subject,
            session_id=claims.session_id,
            scopes=claims.scopes,
            expire_time=claims.expire_time,
        )

    async def _refetch_for(self, kid: str) -> None:
        """Fetch the keys again for an unknown ``kid``, waiting out the rate limit if needed."""
        async with self._fetch_lock:
            if self._keys is not None and kid in self._keys:
                return  # fetched by another caller while this one waited
            wait = self._fetched_at + UNKNOWN_KID_REFETCH - asyncio.get_running_loop().time()
            if wait > 0:
                await asyncio.sleep(wait)  # the rate limit, not a wait for a condition
            await self._fetch_keys_locked()

    async def _fetch_keys(self) -> None:
        async with self._fetch_lock:
            await self._fetch_keys_locked()

    async def _fetch_keys_locked(self) -> None:
        self._fetched_at = asyncio.get_running_loop().time()
        try:
            reply = await self._stub.GetVerificationKeys(
                auth_pb2.GetVerificationKeysRequest(), timeout=self._call_timeout
            )
        except grpc.aio.AioRpcError as err:
            log.warning("cannot fetch token verification keys: %s %s", err.code().name, err.details())
            return
        keys = {}
        for key in reply.keys:
            try:
                public = Ed25519PublicKey.from_public_bytes(key.public_key)
            except ValueError:
                log.warning("auth listed a malformed verification key %r; ignored", key.kid)
                continue
            keys[key.kid] = (public, key.valid_until.ToNanoseconds() / 1e9)
        self._keys = keys

    async def _poll_revocations(self) -> None:
        self._poll_starts += 1
        started = self._poll_starts
        try:
            reply = await self._stub.ListRevocations(auth_pb2.ListRevocationsRequest(), timeout=self._call_timeout)
        except grpc.aio.AioRpcError as err:
            log.warning("cannot poll revocations: %s %s", err.code().name, err.details())
        else:
            self._revoked = frozenset(reply.session_ids)
            self._polls += 1
        async with self._polled:
            self._poll_ends = started
            self._polled.notify_all()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._revocation_poll)  # the polling period
            await self._poll_revocations()
            if loop.time() - self._fetched_at >= self._refresh_interval:
                await self._fetch_keys()


class ServiceTokenSource:
    """A mesh target's own service token, from ``AuthService.IssueServiceToken``, cached and
    renewed once less than ``renew_before`` seconds of it are left.

    Args:
        stub_or_channel: an ``AuthServiceStub``, or a grpc.aio channel to the auth target.
        target: the target asking, such as ``quest``.
        seed_path: the file holding the target's NATS nkey seed (``SU...``), which signs the
            proof; None sends no proof (only an auth without configured service keys accepts).
        renew_before: seconds before expiry at which a new token is fetched.
        call_timeout: deadline of each IssueServiceToken call, in seconds.
        clock: wall-clock seconds.
    """

    def __init__(
        self,
        stub_or_channel: Any,
        target: str,
        seed_path: str | Path | None,
        *,
        renew_before: float = 120.0,
        call_timeout: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not proofs.TARGET.fullmatch(target):
            raise ValueError(f"{target!r} is not a target name")
        self._stub = _stub(stub_or_channel)
        self._target = target
        self._seed = Path(seed_path).read_bytes().strip() if seed_path is not None else None
        self._renew_before = renew_before
        self._call_timeout = call_timeout
        self._clock = clock
        self._token = ""
        self._expire_time = 0.0
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<ServiceTokenSource target={self._target!r} expire_time={self._expire_time}>"  # never the token

    async def token(self) -> str:
        """A service token valid for a while yet, fetched if the cached one is about to expire.

        Raises:
            grpc.aio.AioRpcError: auth refused or could not be reached.
        """
        if self._clock() < self._expire_time - self._renew_before:
            return self._token
        async with self._lock:
            now = self._clock()
            if now < self._expire_time - self._renew_before:
                return self._token  # renewed by another caller while this one waited
            issued_at = int(now)
            signature = proofs.sign_proof(self._seed, self._target, issued_at) if self._seed else b""
            reply = await self._stub.IssueServiceToken(
                auth_pb2.IssueServiceTokenRequest(
                    target=self._target,
                    issued_at=timestamp_pb2.Timestamp(seconds=issued_at),
                    signature=signature,
                ),
                timeout=self._call_timeout,
            )
            self._token = str(reply.access_token)
            self._expire_time = reply.expire_time.ToNanoseconds() / 1e9
            return self._token
