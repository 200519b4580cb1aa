"""The token signing key set: one active Ed25519 key, and the retired keys whose tokens live on.

The set is one ``KeySet`` record under ``keyset`` in the ``auth_keys`` bucket, which only auth
may read (it holds the private key). Every change is a compare-and-set on that one record, so
replicas agree: the first to create the set, or to rotate an active key older than the
rotation period, wins, and the others adopt what it wrote. A new key is written to the bucket,
where GetVerificationKeys reads it, before any replica signs with it, so a verifier that meets
an unknown key id and fetches the keys again always finds it. A retired key keeps its public half
until every token it signed has expired (the refresh token lifetime after its retirement).
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from servicers.auth.records import KEY_SETS, KeySet, RetiredKey
from servicers.auth.tokens import TokenSigner
from servicers.storage import KeyValue, RevisionConflict

log = logging.getLogger(__name__)

KEY_SET = "keyset"
# How long a replica trusts its copy of the key set before reading the bucket again: a rotation
# by another replica reaches this one's signing within this time (its tokens verify either way).
RELOAD_INTERVAL = 30.0
# Unknown key ids make a replica re-read the bucket at most this often.
UNKNOWN_KID_RELOAD = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class PublicKey:
    """A key that verifies tokens: its id, public half, and until when its tokens may live
    (infinity for the active key, which may sign a token any moment)."""

    kid: str
    public_key: Ed25519PublicKey
    valid_until: float
    active: bool

    def raw(self) -> bytes:
        """The raw 32-byte Ed25519 public key."""
        return self.public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _raw_private(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def _new_key_set(now: float, previous: KeySet | None, token_lifetime: float) -> KeySet:
    """A key set with a fresh active key; ``previous``'s active key retired, expired keys gone."""
    retired: list[RetiredKey] = []
    if previous is not None:
        old = Ed25519PrivateKey.from_private_bytes(previous.private_key).public_key()
        raw = old.public_bytes(Encoding.Raw, PublicFormat.Raw)
        retired.append(RetiredKey(kid=previous.kid, public_key=raw, valid_until=now + token_lifetime))
        retired.extend(key for key in previous.retired if key.valid_until > now)
    return KeySet(
        kid=uuid.uuid4().hex[:16],
        private_key=_raw_private(Ed25519PrivateKey.generate()),
        create_time=now,
        retired=tuple(retired),
    )


class KeyRing:
    """This replica's view of the key set: signs with the active key and verifies with all.

    Args:
        bucket: the ``auth_keys`` bucket.
        clock: wall-clock seconds (rotation age and key validity).
        rotation_period: seconds after which the active key is replaced.
        token_lifetime: the longest lifetime of a token (the refresh token's), for how long a
            retired key is kept.
    """

    def __init__(
        self, bucket: KeyValue, *, clock: Callable[[], float], rotation_period: float, token_lifetime: float
    ) -> None:
        if rotation_period <= 0:
            raise ValueError("the key rotation period must be positive")
        self._bucket = bucket
        self._clock = clock
        self._rotation_period = rotation_period
        self._token_lifetime = token_lifetime
        self._set: KeySet | None = None
        self._signer: TokenSigner | None = None
        self._public: dict[str, PublicKey] = {}
        self._loaded_at = -float("inf")  # monotonic
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        kid = self._set.kid if self._set else None
        return f"<KeyRing active={kid!r} known={len(self._public)}>"

    async def signer(self) -> TokenSigner:
        """The signer of the active key, after rotating it if it is due."""
        loop = asyncio.get_running_loop()
        if self._signer is None or loop.time() - self._loaded_at > RELOAD_INTERVAL or self._rotation_due():
            await self.reload()
        assert self._signer is not None  # reload sets it or raises
        return self._signer

    async def verification_keys(self) -> Mapping[str, PublicKey]:
        """The keys that may have signed a still valid token, read from the bucket now."""
        await self.reload()
        return self._public

    async def public_keys(self, kid: str) -> Mapping[str, Ed25519PublicKey]:
        """Key id -> public key for verifying a token signed with ``kid``: the cached set, read
        again first if ``kid`` is unknown and the last read is over a second old."""
        loop = asyncio.get_running_loop()
        if kid not in self._public and loop.time() - self._loaded_at >= UNKNOWN_KID_RELOAD:
            await self.reload()
        now = self._clock()
        return {key.kid: key.public_key for key in self._public.values() if key.valid_until > now}

    async def reload(self) -> None:
        """Read the key set from the bucket, creating or rotating it if needed.

        Raises:
            StorageUnavailable: the bucket cannot be read or written.
        """
        async with self._lock:
            for _ in range(8):
                entry = await self._bucket.get(KEY_SET)
                current = KEY_SETS.decode(entry.value) if entry is not None else None
                now = self._clock()
                if current is not None and now - current.create_time < self._rotation_period:
                    self._adopt(current)
                    return
                fresh = _new_key_set(now, current, self._token_lifetime)
                try:
                    # Written before anyone signs with it, so every verifier can fetch it.
                    await self._bucket.update(KEY_SET, KEY_SETS.encode(fresh), entry.revision if entry else 0)
                except RevisionConflict:
                    continue  # another replica created or rotated it first: read theirs
                log.info("token signing key %s is now active (replacing %s)", fresh.kid, current and current.kid)
                self._adopt(fresh)
                return
            raise RevisionConflict(KEY_SET, 0, 0)

    def _rotation_due(self) -> bool:
        return self._set is not None and self._clock() - self._set.create_time >= self._rotation_period

    def _adopt(self, key_set: KeySet) -> None:
        private = Ed25519PrivateKey.from_private_bytes(key_set.private_key)
        self._set = key_set
        self._signer = TokenSigner(key_set.kid, private)
        now = self._clock()
        public = {
            key_set.kid: PublicKey(
                kid=key_set.kid,
                public_key=private.public_key(),
                # Unbounded while it signs: GetVerificationKeys reports now + the token lifetime.
                valid_until=math.inf,
                active=True,
            )
        }
        for retired in key_set.retired:
            if retired.valid_until > now:
                public[retired.kid] = PublicKey(
                    kid=retired.kid,
                    public_key=Ed25519PublicKey.from_public_bytes(retired.public_key),
                    valid_until=retired.valid_until,
                    active=False,
                )
        self._public = public
        self._loaded_at = asyncio.get_running_loop().time()
