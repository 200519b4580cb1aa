"""Subjects of calls, ``{prefix}.{target}.{package.Service}.{Method}``, and of cancels. Pure code, no I/O."""

from __future__ import annotations

import re

DEFAULT_PREFIX = "grpc"
# Used with fullmatch: a `$` anchor would also match before a final newline.
_SERVICE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_METHOD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TOKEN = re.compile(r"[A-Za-z0-9_\-]+")


def check_token(name: str, what: str) -> str:
    """Validate a prefix or target: one NATS token of ``[A-Za-z0-9_-]``.

    One token only: a dotted target ``quest.x`` would fall under target ``quest``'s wildcard
    ``grpc.quest.>``, and ADR-32 service names allow no dots either.
    """
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"{what} {name!r} must be one token of [A-Za-z0-9_-]")
    return name


def call_subject(prefix: str, target: str, method: str) -> str:
    """Subject for a gRPC method path ``/package.Service/Method``."""
    service, _, name = method.lstrip("/").partition("/")
    if not _SERVICE.fullmatch(service) or not _METHOD.fullmatch(name):
        raise ValueError(f"method {method!r} is not of the form /package.Service/Method")
    return f"{prefix}.{target}.{service}.{name}"


def server_wildcard(prefix: str, target: str) -> str:
    """What the replicas of a target subscribe to (with queue group = target)."""
    return f"{prefix}.{target}.>"


CANCEL_TOKEN = "$cancel"


def cancel_subject(prefix: str, target: str) -> str:
    """Where clients cancel unary calls of ``target`` (wire protocol 1.1); every replica
    subscribes to it without a queue group.

    ``$`` is no target character, so this is never a call subject, and it lies outside
    ``{prefix}.{target}.>``: permissions grant it apart from the target's calls.
    """
    return f"{prefix}.{CANCEL_TOKEN}.{target}"


def cancel_subject_of(prefix: str, subject: str) -> str:
    """The cancel subject of the target that call subject ``subject`` goes to."""
    target = subject[len(prefix) + 1 :].partition(".")[0]
    return cancel_subject(prefix, target)


def stream_prefix_of(inbox: str) -> str:
    """Where a server puts its per-call stream subjects, given a fresh inbox of its connection.

    ``{inbox_prefix}.{nuid}`` becomes ``{inbox_prefix}.s.{nuid}``: still under the connection's
    own inbox prefix (which its permissions let it subscribe to), but apart from the reply
    subjects of the calls it makes itself (``{inbox_prefix}.{nuid}.{n}``, no ``s`` token), so
    callers may be granted publish on ``{inbox_prefix}.s.>`` without being able to forge replies
    to the server's own outgoing calls.
    """
    prefix, dot, nuid = inbox.rpartition(".")
    if not dot:
        raise ValueError(f"{inbox!r} is not an inbox subject")
    return f"{prefix}.s.{nuid}"


def method_of(subject: str, prefix_len: int) -> str | None:
    """``/package.Service/Method`` from a call subject, given ``len(prefix + '.' + target + '.')``."""
    rest = subject[prefix_len:]
    service, dot, name = rest.rpartition(".")
    if not dot or not service or not name:
        return None
    return f"/{service}/{name}"
