"""The gRPC service config (the JSON grpcio takes as ``grpc.service_config``), parsed and checked.

Pure code, no I/O. Only what a client channel acts on is kept: per-method ``timeout``,
``waitForReady``, ``retryPolicy`` or ``hedgingPolicy`` (gRFC A6), and the per-target
``retryThrottling``. Validation follows grpc's ``doc/service_config.md`` and A6: a document
grpcio refuses is refused here too, with a message naming the field, so one config serves both.
Other fields (``loadBalancingConfig``, message size limits, ...) are accepted and ignored.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc

# A6: maxAttempts above this is treated as this (a config must not make a client hammer a server).
MAX_ATTEMPTS_LIMIT = 5

_DURATION = re.compile(r"^(-?)(\d*)(?:\.(\d{0,9}))?s\Z")
_CODE_BY_NAME = {code.name: code for code in grpc.StatusCode}
_CODE_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


class ServiceConfigError(ValueError):
    """A service config that grpcio would refuse too: malformed JSON or an invalid field."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """gRFC A6 ``retryPolicy``: attempts (the first included), backoff, retryable codes."""

    max_attempts: int
    initial_backoff: float
    max_backoff: float
    backoff_multiplier: float
    retryable_codes: frozenset[grpc.StatusCode]

    def backoff_ceiling(self, retry: int) -> float:
        """The upper bound of the randomised wait before retry number ``retry`` (1 = first)."""
        return min(self.initial_backoff * self.backoff_multiplier ** (retry - 1), self.max_backoff)


@dataclass(frozen=True, slots=True, kw_only=True)
class HedgingPolicy:
    """gRFC A6 ``hedgingPolicy``: up to ``max_attempts`` copies, ``delay`` apart."""

    max_attempts: int
    delay: float
    non_fatal_codes: frozenset[grpc.StatusCode]


@dataclass(frozen=True, slots=True, kw_only=True)
class MethodConfig:
    """What applies to the calls of one method."""

    timeout: float | None = None
    wait_for_ready: bool | None = None
    retry: RetryPolicy | None = None
    hedging: HedgingPolicy | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryThrottling:
    """gRFC A6 ``retryThrottling``: a token bucket per target that stops retries and hedges
    while failures outweigh successes."""

    max_tokens: float
    token_ratio: float


NO_METHOD_CONFIG = MethodConfig()


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """A parsed gRPC service config: method configs by name, and throttling. Channels take the
    JSON text, its decoded object or this; :meth:`parse` checks a document ahead of time."""

    by_method: Mapping[tuple[str, str], MethodConfig]
    throttling: RetryThrottling | None = None

    @classmethod
    def parse(cls, document: str | Mapping[str, Any] | ServiceConfig | None) -> ServiceConfig:
        """Parse and check a service config (JSON text or its decoded object) before use.

        Raises:
            ServiceConfigError: the document is not JSON, or a field is invalid.
        """
        return parse_service_config(document)

    def for_method(self, path: str) -> MethodConfig:
        """The config of ``/package.Service/Method``: the most specific name that matches
        (service and method, then service, then the empty default name)."""
        service, _, method = path.lstrip("/").partition("/")
        for key in ((service, method), (service, ""), ("", "")):
            found = self.by_method.get(key)
            if found is not None:
                return found
        return NO_METHOD_CONFIG


EMPTY = ServiceConfig({})


def parse_service_config(document: str | Mapping[str, Any] | ServiceConfig | None) -> ServiceConfig:
    """Parse a service config given as JSON text or as the decoded mapping (a parsed one is
    returned as it is).

    Raises:
        ServiceConfigError: the document is not JSON, or a field is invalid.
    """
    if document is None:
        return EMPTY
    if isinstance(document, ServiceConfig):
        return document
    if isinstance(document, str | bytes):
        try:
            document = json.loads(document)
        except ValueError as exc:
            raise ServiceConfigError(f"service config is not JSON: {exc}") from None
    if not isinstance(document, Mapping):
        raise ServiceConfigError("service config must be a JSON object")
    by_method: dict[tuple[str, str], MethodConfig] = {}
    for index, entry in enumerate(_list(document, "methodConfig")):
        where = f"methodConfig[{index}]"
        if not isinstance(entry, Mapping):
            raise ServiceConfigError(f"{where} must be an object")
        config = _method_config(entry, where)
        for name in _list(entry, "name", where):
            key = _name_key(name, where)
            if key in by_method:
                raise ServiceConfigError(f"{where}: duplicate name {_show(key)}")
            by_method[key] = config
    throttling = document.get("retryThrottling")
    return ServiceConfig(by_method, None if throttling is None else _throttling(throttling))


def _method_config(entry: Mapping[str, Any], where: str) -> MethodConfig:
    retry = entry.get("retryPolicy")
    hedging = entry.get("hedgingPolicy")
    if retry is not None and hedging is not None:
        raise ServiceConfigError(f"{where}: retryPolicy and hedgingPolicy are mutually exclusive")
    timeout = entry.get("timeout")
    wait_for_ready = entry.get("waitForReady")
    if wait_for_ready is not None and not isinstance(wait_for_ready, bool):
        raise ServiceConfigError(f"{where}.waitForReady must be a boolean")
    return MethodConfig(
        timeout=None if timeout is None else _duration(timeout, f"{where}.timeout"),
        wait_for_ready=wait_for_ready,
        retry=None if retry is None else _retry(retry, f"{where}.retryPolicy"),
        hedging=None if hedging is None else _hedging(hedging, f"{where}.hedgingPolicy"),
    )


def _retry(policy: Any, where: str) -> RetryPolicy:
    if not isinstance(policy, Mapping):
        raise ServiceConfigError(f"{where} must be an object")
    initial = _duration(_required(policy, "initialBackoff", where), f"{where}.initialBackoff")
    maximum = _duration(_required(policy, "maxBackoff", where), f"{where}.maxBackoff")
    multiplier = _number(_required(policy, "backoffMultiplier", where), f"{where}.backoffMultiplier")
    if initial <= 0 or maximum <= 0 or multiplier <= 0:
        raise ServiceConfigError(f"{where}: initialBackoff, maxBackoff and backoffMultiplier must be > 0")
    codes = _codes(_required(policy, "retryableStatusCodes", where), f"{where}.retryableStatusCodes")
    if not codes:
        raise ServiceConfigError(f"{where}.retryableStatusCodes must not be empty")
    return RetryPolicy(
        max_attempts=_attempts(policy, where), initial_backoff=initial, max_backoff=maximum,
        backoff_multiplier=multiplier, retryable_codes=codes,
    )


def _hedging(policy: Any, where: str) -> HedgingPolicy:
    if not isinstance(policy, Mapping):
        raise ServiceConfigError(f"{where} must be an object")
    delay = policy.get("hedgingDelay")
    return HedgingPolicy(
        max_attempts=_attempts(policy, where),
        delay=0.0 if delay is None else _duration(delay, f"{where}.hedgingDelay"),
        non_fatal_codes=_codes(policy.get("nonFatalStatusCodes", []), f"{where}.nonFatalStatusCodes"),
    )


def _throttling(policy: Any) -> RetryThrottling:
    where = "retryThrottling"
    if not isinstance(policy, Mapping):
        raise ServiceConfigError(f"{where} must be an object")
    tokens = _number(_required(policy, "maxTokens", where), f"{where}.maxTokens")
    ratio = _number(_required(policy, "tokenRatio", where), f"{where}.tokenRatio")
    if tokens <= 0 or tokens > 1000 or ratio <= 0:
        raise ServiceConfigError(f"{where}: maxTokens must be in (0, 1000] and tokenRatio > 0")
    # A6: up to 3 decimal places of tokenRatio are honoured.
    return RetryThrottling(max_tokens=tokens, token_ratio=math.floor(ratio * 1000) / 1000)


def _attempts(policy: Mapping[str, Any], where: str) -> int:
    attempts = _required(policy, "maxAttempts", where)
    if isinstance(attempts, bool) or not isinstance(attempts, int | float) or attempts != int(attempts):
        raise ServiceConfigError(f"{where}.maxAttempts must be an integer")
    if attempts < 2:
        raise ServiceConfigError(f"{where}.maxAttempts must be at least 2")
    return min(int(attempts), MAX_ATTEMPTS_LIMIT)


def _name_key(name: Any, where: str) -> tuple[str, str]:
    if not isinstance(name, Mapping):
        raise ServiceConfigError(f"{where}.name entries must be objects")
    service, method = name.get("service", ""), name.get("method", "")
    if not isinstance(service, str) or not isinstance(method, str):
        raise ServiceConfigError(f"{where}.name: service and method must be strings")
    if method and not service:
        raise ServiceConfigError(f"{where}.name: a method needs its service")
    return service, method


def _codes(value: Any, where: str) -> frozenset[grpc.StatusCode]:
    if not isinstance(value, list):
        raise ServiceConfigError(f"{where} must be a list")
    codes = set()
    for item in value:
        code = _CODE_BY_NAME.get(item.upper()) if isinstance(item, str) else None
        if code is None and isinstance(item, int) and not isinstance(item, bool):
            code = _CODE_BY_NUMBER.get(item)
        if code is None or code is grpc.StatusCode.OK:
            raise ServiceConfigError(f"{where}: {item!r} is not a non-OK status code")
        codes.add(code)
    return frozenset(codes)


def _duration(value: Any, where: str) -> float:
    """Seconds from a proto3 JSON Duration ("1.5s", ".1s")."""
    match = _DURATION.match(value) if isinstance(value, str) else None
    if match is None or not (match.group(2) or match.group(3)):
        raise ServiceConfigError(f"{where} must be a duration such as \"0.5s\", not {value!r}")
    if match.group(1):
        raise ServiceConfigError(f"{where} must not be negative")
    return float(f"{match.group(2) or 0}.{match.group(3) or 0}")


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ServiceConfigError(f"{where} must be a number")
    return float(value)


def _required(policy: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in policy:
        raise ServiceConfigError(f"{where}.{key} is required")
    return policy[key]


def _list(document: Mapping[str, Any], key: str, where: str = "") -> list[Any]:
    value = document.get(key, [])
    if not isinstance(value, list):
        raise ServiceConfigError(f"{where + '.' if where else ''}{key} must be a list")
    return value


def _show(key: tuple[str, str]) -> str:
    return "/".join(part for part in key if part) or "(default)"
