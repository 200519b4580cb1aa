"""Subjects of calls: ``{prefix}.{target}.{package.Service}.{Method}``. Pure code, no I/O."""

from __future__ import annotations

import re

DEFAULT_PREFIX = "grpc"
_TOKEN = re.compile(r"^[A-Za-z0-9_\-]+$")


def check_token(name: str, what: str) -> str:
    """Validate a prefix or target: one or more NATS tokens without wildcards or spaces."""
    parts = name.split(".")
    if not name or not all(_TOKEN.match(p) for p in parts):
        raise ValueError(f"{what} {name!r} must be dot-separated tokens of [A-Za-z0-9_-]")
    return name


def call_subject(prefix: str, target: str, method: str) -> str:
    """Subject for a gRPC method path ``/package.Service/Method``."""
    service, _, name = method.lstrip("/").partition("/")
    if not service or not name or "/" in name:
        raise ValueError(f"method {method!r} is not of the form /package.Service/Method")
    return f"{prefix}.{target}.{service}.{name}"


def server_wildcard(prefix: str, target: str) -> str:
    """What the replicas of a target subscribe to (with queue group = target)."""
    return f"{prefix}.{target}.>"


def method_of(subject: str, prefix_len: int) -> str | None:
    """``/package.Service/Method`` from a call subject, given ``len(prefix + '.' + target + '.')``."""
    rest = subject[prefix_len:]
    service, dot, name = rest.rpartition(".")
    if not dot or not service or not name:
        return None
    return f"/{service}/{name}"
