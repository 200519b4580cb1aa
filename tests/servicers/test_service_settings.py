"""The one integer-setting parser servicers read their settings with."""

from __future__ import annotations

import pytest

from servicers.service_settings import bucket_max_bytes, positive_int


def test_an_unset_setting_is_the_default() -> None:
    assert positive_int({}, "cas_attempts", 100) == 100
    assert bucket_max_bytes({}, 256) == 256


def test_a_positive_integer_is_taken() -> None:
    assert positive_int({"cas_attempts": "7"}, "cas_attempts", 100) == 7
    assert bucket_max_bytes({"bucket_max_bytes": "1048576"}, 256) == 1048576


@pytest.mark.parametrize(("text", "problem"), [("x", "is not an integer"), ("1.5", "is not an integer"),
                                               ("", "is not an integer"), ("0", "must be positive"),
                                               ("-3", "must be positive")])
def test_anything_else_is_refused_naming_the_setting_and_the_service(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=r"^payment setting cas_attempts=") as caught:
        positive_int({"cas_attempts": text}, "cas_attempts", 100, service="payment")
    assert str(caught.value) == f"payment setting cas_attempts={text!r} {problem}"
    with pytest.raises(ValueError, match=r"^bucket_max_bytes=") as caught:
        bucket_max_bytes({"bucket_max_bytes": text}, 256)
    assert str(caught.value) == f"bucket_max_bytes={text!r} {problem}"
