"""What the auth service keeps in its buckets: accounts, sessions, failed-login counters.

Each record is a frozen dataclass stored as a serialized protobuf message. The message types are
internal (nothing outside this service reads them), so rather than adding them to the public
``auth.proto`` their schema is derived here from the dataclass: every field carries its protobuf
field number in ``Annotated[..., Tag(n)]``. As with a ``.proto`` file, a number must never be
reused or changed; add fields with new numbers, and old records decode with the default value.
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
    """Encodes one record dataclass to protobuf bytes and back."""

    def __init__(self, record_type: type[R], message_name: str) -> None:
        self._type = record_type
        hints = typing.get_type_hints(record_type, include_extras=True)
        proto = descriptor_pb2.FileDescriptorProto(
            name=f"gaming/auth/internal/v1/{message_name.lower()}.proto", package=_PACKAGE, syntax="proto3"
        )
        described = proto.message_type.add(name=message_name)
        self._repeated: set[str] = set()
        for item in dataclasses.fields(record_type):  # type: ignore[arg-type]
            hint = hints[item.name]
            base, *extras = typing.get_args(hint)
            tag = next(extra for extra in extras if isinstance(extra, Tag))
            label = _FIELD.LABEL_OPTIONAL
            if typing.get_origin(base) is tuple:
                base = typing.get_args(base)[0]
                label = _FIELD.LABEL_REPEATED
                self._repeated.add(item.name)
            described.field.add(name=item.name, number=tag.number, type=_SCALARS[base], label=label)
        _POOL.Add(proto)
        self._message = message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{_PACKAGE}.{message_name}"))
        self._names = tuple(item.name for item in dataclasses.fields(record_type))  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"<Codec {self._message.DESCRIPTOR.full_name}>"

    def encode(self, record: R) -> bytes:
        """The record as serialized protobuf."""
        values = {name: getattr(record, name) for name in self._names}
        encoded: bytes = self._message(**values).SerializeToString(deterministic=True)
        return encoded

    def decode(self, data: bytes) -> R:
        """The record stored as ``data``.

        Raises:
            google.protobuf.message.DecodeError: ``data`` is not a record of this type.
        """
        parsed: message.Message = self._message.FromString(data)
        values = {
            name: tuple(getattr(parsed, name)) if name in self._repeated else getattr(parsed, name)
            for name in self._names
        }
        return self._type(**values)


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


ACCOUNTS = Codec(Account, "AccountRecord")
SESSIONS = Codec(Session, "SessionRecord")
FAILURES = Codec(Failures, "FailuresRecord")
