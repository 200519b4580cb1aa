"""What the auth service keeps in its buckets: accounts, sessions, failed-login counters, the
signing key set and recent revocations.

Each record is a frozen dataclass stored as a serialized protobuf message. The message types are
internal (nothing outside this service reads them), so rather than adding them to the public
``auth.proto`` their schema is derived here from the dataclass: every field carries its protobuf
field number in ``Annotated[..., Tag(n)]``. As with a ``.proto`` file, a number must never be
reused or changed; add fields with new numbers, and old records decode with the default value.
A field may be a scalar, another record dataclass (a nested message), or a tuple of either
(repeated).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Annotated, Generic, TypeVar

from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory

_FIELD = descriptor_pb2.FieldDescriptorProto
# Python annotation -> protobuf scalar type; a tuple[X, ...] is a repeated X.
_SCALARS: dict[object, int] = {
    str: _FIELD.TYPE_STRING,
    int: _FIELD.TYPE_INT64,
    float: _FIELD.TYPE_DOUBLE,
    bool: _FIELD.TYPE_BOOL,
    bytes: _FIELD.TYPE_BYTES,
}
# A private pool: these types must not show up in server reflection or clash with public ones.
_POOL = descriptor_pool.DescriptorPool()
_PACKAGE = "gaming.auth.internal.v1"


@dataclass(frozen=True, slots=True)
class Tag:
    """The protobuf field number of a record field."""

    number: int


R = TypeVar("R")


class Codec(Generic[R]):
    """Encodes one record dataclass (and the records nested in it) to protobuf bytes and back."""

    def __init__(self, record_type: type[R], message_name: str) -> None:
        self._type = record_type
        proto = descriptor_pb2.FileDescriptorProto(
            name=f"gaming/auth/internal/v1/{message_name.lower()}.proto", package=_PACKAGE, syntax="proto3"
        )
        # Nested record types become messages of the same file, named after the outer one.
        self._names: dict[type, str] = {}
        self._describe(proto, record_type, message_name)
        _POOL.Add(proto)
        self._message = message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{_PACKAGE}.{message_name}"))

    def _describe(self, proto: descriptor_pb2.FileDescriptorProto, record_type: type, name: str) -> None:
        self._names[record_type] = name
        described = proto.message_type.add(name=name)
        hints = typing.get_type_hints(record_type, include_extras=True)
        for item in dataclasses.fields(record_type):
            base, *extras = typing.get_args(hints[item.name])
            tag = next(extra for extra in extras if isinstance(extra, Tag))
            label = _FIELD.LABEL_OPTIONAL
            if typing.get_origin(base) is tuple:
                base = typing.get_args(base)[0]
                label = _FIELD.LABEL_REPEATED
            if _is_record(base):
                if base not in self._names:
                    self._describe(proto, base, f"{name}{base.__name__}")
                described.field.add(
                    name=item.name,
                    number=tag.number,
                    label=label,
                    type=_FIELD.TYPE_MESSAGE,
                    type_name=f".{_PACKAGE}.{self._names[base]}",
                )
            else:
                described.field.add(name=item.name, number=tag.number, label=label, type=_SCALARS[base])

    def __repr__(self) -> str:
        return f"<Codec {self._message.DESCRIPTOR.full_name}>"

    def encode(self, record: R) -> bytes:
        """The record as serialized protobuf."""
        encoded: bytes = self._message(**_values(record)).SerializeToString(deterministic=True)
        return encoded

    def decode(self, data: bytes) -> R:
        """The record stored as ``data``.

        Raises:
            google.protobuf.message.DecodeError: ``data`` is not a record of this type.
        """
        parsed: message.Message = self._message.FromString(data)
        return typing.cast(R, _record(self._type, parsed))


def _is_record(annotation: object) -> typing.TypeGuard[type]:
    """Whether a field's type is a record dataclass (a nested message), not a scalar."""
    return isinstance(annotation, type) and dataclasses.is_dataclass(annotation)


def _values(record: object) -> dict[str, object]:
    """The fields of ``record`` as keyword arguments of its message (nested records as dicts)."""

    def plain(value: object) -> object:
        if isinstance(value, tuple):
            return [plain(item) for item in value]
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return _values(value)
        return value

    return {item.name: plain(getattr(record, item.name)) for item in dataclasses.fields(record)}  # type: ignore[arg-type]


def _record(record_type: type, parsed: message.Message) -> object:
    """The dataclass ``record_type`` holding the fields of ``parsed``."""
    hints = typing.get_type_hints(record_type, include_extras=True)
    values: dict[str, object] = {}
    for item in dataclasses.fields(record_type):
        base = typing.get_args(hints[item.name])[0]
        value = getattr(parsed, item.name)
        if typing.get_origin(base) is tuple:
            inner = typing.get_args(base)[0]
            values[item.name] = tuple(_record(inner, v) if _is_record(inner) else v for v in value)
        elif _is_record(base):
            values[item.name] = _record(base, value)
        else:
            values[item.name] = value
    return record_type(**values)


@dataclass(frozen=True, slots=True, kw_only=True)
class Account:
    """A player account, stored under its (lower-case) username.

    ``password_hash`` is the self-describing scrypt string of ``servicers.auth.passwords``;
    ``scopes`` are the scopes the account may hold, all granted by a login that names none.
    """

    account_id: Annotated[str, Tag(1)]
    username: Annotated[str, Tag(2)]
    display_name: Annotated[str, Tag(3)]
    password_hash: Annotated[str, Tag(4)]
    scopes: Annotated[tuple[str, ...], Tag(5)]
    create_time: Annotated[float, Tag(6)]
    disabled: Annotated[bool, Tag(7)] = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Session:
    """An open (or revoked) session, stored under its id.

    ``refresh_generation`` numbers the one refresh token that currently works: each Refresh
    bumps it, so an older refresh token presented again is a reuse. ``revoke_time`` is 0 until
    the session is revoked. Times are Unix seconds.
    """

    session_id: Annotated[str, Tag(1)]
    account_id: Annotated[str, Tag(2)]
    scopes: Annotated[tuple[str, ...], Tag(3)]
    client_description: Annotated[str, Tag(4)]
    create_time: Annotated[float, Tag(5)]
    refresh_expire_time: Annotated[float, Tag(6)]
    refresh_generation: Annotated[int, Tag(7)]
    revoke_time: Annotated[float, Tag(8)] = 0.0
    revoke_reason: Annotated[str, Tag(9)] = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Failures:
    """Recent failed logins for one username (known or not), for lockout.

    ``count`` failures, the last at ``last_failure_time``; logins are refused until
    ``locked_until`` (Unix seconds, 0 when not locked).
    """

    count: Annotated[int, Tag(1)]
    last_failure_time: Annotated[float, Tag(2)]
    locked_until: Annotated[float, Tag(3)] = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RetiredKey:
    """The public half of a signing key that no longer signs; tokens it signed may still be
    valid until ``valid_until`` (Unix seconds)."""

    kid: Annotated[str, Tag(1)]
    public_key: Annotated[bytes, Tag(2)]
    valid_until: Annotated[float, Tag(3)]


@dataclass(frozen=True, slots=True, kw_only=True)
class KeySet:
    """The token signing keys, stored under ``keyset`` in ``auth_keys`` (which only auth reads).

    ``private_key`` is the raw 32-byte Ed25519 private key that signs now, known as ``kid``
    since ``create_time``; ``retired`` are the keys it replaced, kept while their tokens live.
    """

    kid: Annotated[str, Tag(1)]
    private_key: Annotated[bytes, Tag(2)]
    create_time: Annotated[float, Tag(3)]
    retired: Annotated[tuple[RetiredKey, ...], Tag(4)] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Revocation:
    """A session revoked recently, stored under its id in ``auth_revocations`` (which forgets it
    once its access tokens have all expired). ``revoke_time`` is Unix seconds."""

    session_id: Annotated[str, Tag(1)]
    revoke_time: Annotated[float, Tag(2)]


ACCOUNTS = Codec(Account, "AccountRecord")
SESSIONS = Codec(Session, "SessionRecord")
FAILURES = Codec(Failures, "FailuresRecord")
KEY_SETS = Codec(KeySet, "KeySetRecord")
REVOCATIONS = Codec(Revocation, "RevocationRecord")
