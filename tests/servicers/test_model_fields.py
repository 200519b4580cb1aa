"""Model fields every service checks alike (model-management, ai-integration, ai-router)."""

from __future__ import annotations

import pytest
from google.protobuf import duration_pb2

from servicers.errors import InvalidArgument
from servicers.model_fields import MAX_LATENCY_SECONDS, check_duration, check_enum, check_name


def refused(check: object, *args: object, **kwargs: object) -> tuple[str, str]:
    with pytest.raises(InvalidArgument) as caught:
        check(*args, **kwargs)  # type: ignore[operator]
    return caught.value.field, caught.value.description


def test_model_names() -> None:
    check_name("model", "sage-13b_v1.2")
    assert refused(check_name, "model", "") == ("model", "must be 1 to 128 characters of [A-Za-z0-9_.-]")
    assert refused(check_name, "preferred_models[0]", "a b")[0] == "preferred_models[0]"
    assert refused(check_name, "model", "x" * 129)[0] == "model"


def test_enums() -> None:
    check_enum("capability", 2, [0, 1, 2], allow_unspecified=False)
    check_enum("availability", 0, [0, 1], allow_unspecified=True)
    assert refused(check_enum, "capability", 0, [0, 1], allow_unspecified=False) == ("capability", "must be set")
    assert refused(check_enum, "capability", 9, [0, 1], allow_unspecified=True) == ("capability", "has no member 9")


def test_durations() -> None:
    check_duration("latency_budget", duration_pb2.Duration(seconds=MAX_LATENCY_SECONDS))
    assert refused(check_duration, "latency_budget", duration_pb2.Duration(seconds=-1))[1] == (
        "must be a non-negative duration")
    assert refused(check_duration, "latency_budget", duration_pb2.Duration(seconds=MAX_LATENCY_SECONDS + 1))[1] == (
        f"must be at most {MAX_LATENCY_SECONDS} s")
