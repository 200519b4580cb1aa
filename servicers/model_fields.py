"""Request fields that name or describe models, checked the same way by every service that
takes them (model-management registers models, ai-integration serves them, ai-router and
story-teller ask for them): one rule each, so no service refuses what another accepts."""

from __future__ import annotations

import re
from collections.abc import Collection

from google.protobuf import duration_pb2

from servicers.errors import InvalidArgument

MODEL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")
# A latency beyond a day is a typo, not a model.
MAX_LATENCY_SECONDS = 86_400


def check_name(field: str, name: str) -> None:
    """A model name: 1 to 128 characters of ``[A-Za-z0-9_.-]``.

    Raises:
        InvalidArgument: naming ``field``.
    """
    if not MODEL_NAME.fullmatch(name):
        raise InvalidArgument(field, "must be 1 to 128 characters of [A-Za-z0-9_.-]")


def check_enum(field: str, value: int, known: Collection[int], *, allow_unspecified: bool) -> None:
    """``value`` is a defined member of its enum (proto3 lets any number through the wire).

    Raises:
        InvalidArgument: naming ``field``.
    """
    if value not in known or (value == 0 and not allow_unspecified):
        raise InvalidArgument(field, "must be set" if value == 0 else f"has no member {value}")


def check_duration(field: str, duration: duration_pb2.Duration) -> None:
    """A non-negative, well-formed duration of at most a day.

    Raises:
        InvalidArgument: naming ``field``.
    """
    if duration.seconds < 0 or duration.nanos < 0 or duration.nanos >= 1_000_000_000:
        raise InvalidArgument(field, "must be a non-negative duration")
    if duration.seconds > MAX_LATENCY_SECONDS:
        raise InvalidArgument(field, f"must be at most {MAX_LATENCY_SECONDS} s")
