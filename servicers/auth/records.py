"""What the auth service keeps in its buckets: accounts, sessions, failed-login counters, the
signing key set and recent revocations.

Each record is a frozen dataclass stored as a serialized protobuf message of
``protos/gaming/auth/storage/v1/auth_records.proto`` (a storage-only package, so the records stay
out of the public ``auth.proto``). The proto is the schema: a field number there must never be
reused or changed; a field added with a new number reads as its default from older records. The
codecs below copy fields between the dataclasses and the generated messages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from gaming.auth.storage.v1 import auth_records_pb2 as pb
from google.protobuf import message

R = TypeVar("R")
M = TypeVar("M", bound=message.Message)


class Codec(Generic[R, M]):
    """Encodes one record dataclass to its stored message's bytes and back."""

    def __init__(self, message_type: type[M], to_message: Callable[[R], M], from_message: Callable[[M], R]) -> None:
        self._message_type = message_type
        self._to_message = to_message
        self._from_message = from_message

    def __repr__(self) -> str:
        return f"<Codec {self._message_type.DESCRIPTOR.full_name}>"

    def encode(self, record: R) -> bytes:
        """The record as serialized protobuf."""
        # Deterministic, as before the schema moved to a .proto: equal records store equal bytes.
        return self._to_message(record).SerializeToString(deterministic=True)

    def decode(self, data: bytes) -> R:
        """The record stored as ``data``.

        Raises:
            google.protobuf.message.DecodeError: ``data`` is not a record of this type.
        """
        return self._from_message(self._message_type.FromString(data))


@dataclass(frozen=True, slots=True, kw_only=True)
class Account:
    """A player account, stored under its (lower-case) username.

    ``password_hash`` is the self-describing scrypt string of ``servicers.auth.passwords``;
    ``scopes`` are the scopes the account may hold, all granted by a login that names none.
    """

    account_id: str
    username: str
    display_name: str
    password_hash: str
    scopes: tuple[str, ...]
    create_time: float
    disabled: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Session:
    """An open (or revoked) session, stored under its id.

    ``refresh_generation`` numbers the one refresh token that currently works: each Refresh
    bumps it, so an older refresh token presented again is a reuse. ``revoke_time`` is 0 until
    the session is revoked. Times are Unix seconds.
    """

    session_id: str
    account_id: str
    scopes: tuple[str, ...]
    client_description: str
    create_time: float
    refresh_expire_time: float
    refresh_generation: int
    revoke_time: float = 0.0
    revoke_reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Failures:
    """Recent failed logins for one username (known or not), for lockout.

    ``count`` failures, the last at ``last_failure_time``; logins are refused until
    ``locked_until`` (Unix seconds, 0 when not locked).
    """

    count: int
    last_failure_time: float
    locked_until: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RetiredKey:
    """The public half of a signing key that no longer signs; tokens it signed may still be
    valid until ``valid_until`` (Unix seconds)."""

    kid: str
    public_key: bytes
    valid_until: float


@dataclass(frozen=True, slots=True, kw_only=True)
class KeySet:
    """The token signing keys, stored under ``keyset`` in ``auth_keys`` (which only auth reads).

    ``private_key`` is the raw 32-byte Ed25519 private key that signs now, known as ``kid``
    since ``create_time``; ``retired`` are the keys it replaced, kept while their tokens live.
    """

    kid: str
    private_key: bytes
    create_time: float
    retired: tuple[RetiredKey, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Revocation:
    """A session revoked recently, stored under its id in ``auth_revocations`` (which forgets it
    once its access tokens have all expired). ``revoke_time`` is Unix seconds."""

    session_id: str
    revoke_time: float


def _account_message(record: Account) -> pb.AccountRecord:
    return pb.AccountRecord(
        account_id=record.account_id, username=record.username, display_name=record.display_name,
        password_hash=record.password_hash, scopes=record.scopes, create_time=record.create_time,
        disabled=record.disabled,
    )


def _account(stored: pb.AccountRecord) -> Account:
    return Account(
        account_id=stored.account_id, username=stored.username, display_name=stored.display_name,
        password_hash=stored.password_hash, scopes=tuple(stored.scopes), create_time=stored.create_time,
        disabled=stored.disabled,
    )


def _session_message(record: Session) -> pb.SessionRecord:
    return pb.SessionRecord(
        session_id=record.session_id, account_id=record.account_id, scopes=record.scopes,
        client_description=record.client_description, create_time=record.create_time,
        refresh_expire_time=record.refresh_expire_time, refresh_generation=record.refresh_generation,
        revoke_time=record.revoke_time, revoke_reason=record.revoke_reason,
    )


def _session(stored: pb.SessionRecord) -> Session:
    return Session(
        session_id=stored.session_id, account_id=stored.account_id, scopes=tuple(stored.scopes),
        client_description=stored.client_description, create_time=stored.create_time,
        refresh_expire_time=stored.refresh_expire_time, refresh_generation=stored.refresh_generation,
        revoke_time=stored.revoke_time, revoke_reason=stored.revoke_reason,
    )


def _failures_message(record: Failures) -> pb.FailuresRecord:
    return pb.FailuresRecord(
        count=record.count, last_failure_time=record.last_failure_time, locked_until=record.locked_until
    )


def _failures(stored: pb.FailuresRecord) -> Failures:
    return Failures(count=stored.count, last_failure_time=stored.last_failure_time, locked_until=stored.locked_until)


def _key_set_message(record: KeySet) -> pb.KeySetRecord:
    retired = [pb.RetiredKeyRecord(kid=key.kid, public_key=key.public_key, valid_until=key.valid_until)
               for key in record.retired]
    return pb.KeySetRecord(
        kid=record.kid, private_key=record.private_key, create_time=record.create_time, retired=retired
    )


def _key_set(stored: pb.KeySetRecord) -> KeySet:
    retired = tuple(RetiredKey(kid=key.kid, public_key=key.public_key, valid_until=key.valid_until)
                    for key in stored.retired)
    return KeySet(kid=stored.kid, private_key=stored.private_key, create_time=stored.create_time, retired=retired)


def _revocation_message(record: Revocation) -> pb.RevocationRecord:
    return pb.RevocationRecord(session_id=record.session_id, revoke_time=record.revoke_time)


def _revocation(stored: pb.RevocationRecord) -> Revocation:
    return Revocation(session_id=stored.session_id, revoke_time=stored.revoke_time)


ACCOUNTS = Codec(pb.AccountRecord, _account_message, _account)
SESSIONS = Codec(pb.SessionRecord, _session_message, _session)
FAILURES = Codec(pb.FailuresRecord, _failures_message, _failures)
KEY_SETS = Codec(pb.KeySetRecord, _key_set_message, _key_set)
REVOCATIONS = Codec(pb.RevocationRecord, _revocation_message, _revocation)
