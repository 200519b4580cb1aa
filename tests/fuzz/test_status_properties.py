"""Properties of ``_status``: wire numbers and transport failures become the spec's statuses (§9).

Proves, for inputs hypothesis draws: any wire number maps to its own status or to UNKNOWN; any
exception a transport may see becomes a status of the spec's table with one of the table's fixed
texts, never the exception's own words; and a frame error is RESOURCE_EXHAUSTED exactly when a
frame announced more than the limit (§7), INTERNAL otherwise.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats import errors as nats_errors

from nats_transport import _status
from nats_transport._framing import FramingError, decode_complete
from tests.fuzz._wire import any_text, frame_bytes, scan_frames

pytestmark = pytest.mark.fuzz

TRANSPORT_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNKNOWN,
}
FIXED_TEXTS = {text for _, _, text in _status.FAILURE_TABLE} | {"Unexpected error in the transport"}
SECRET = "s3cr3t-token-in-the-error"

exception_types = st.sampled_from(
    [kind for kind, _, _ in _status.FAILURE_TABLE]
    + [nats_errors.BadSubjectError, ConnectionResetError, TimeoutError, asyncio.CancelledError]
    + [ValueError, KeyError, RuntimeError, OSError, ZeroDivisionError]
)


@given(st.integers(-3, 20) | st.integers(-(2**70), 2**70))
def test_every_wire_number_maps_to_its_own_status_or_to_unknown(number: int) -> None:
    code = _status.code_from_number(number)
    if 0 <= number <= 16:
        assert code.value[0] == number
    else:
        assert code == grpc.StatusCode.UNKNOWN


@given(exception_types, any_text)
def test_a_transport_failure_becomes_a_status_of_the_table_and_never_leaks_its_text(
    kind: type[BaseException], words: str
) -> None:
    exc = kind(f"{SECRET} {words}")
    code, text = _status.status_for_exception(exc)
    assert code in TRANSPORT_CODES
    assert text in FIXED_TEXTS
    assert SECRET not in text


@given(st.lists(frame_bytes(max_message=100), min_size=1, max_size=4).map(b"".join), st.integers(0, 150))
def test_a_frame_error_is_resource_exhausted_exactly_when_a_frame_was_over_the_limit(
    stream: bytes, max_message: int
) -> None:
    try:
        decode_complete(stream, max_message)
    except FramingError as exc:
        code = _status.status_for_framing_error(exc)
        too_large = scan_frames(stream, max_message).error == "too_large"
        assert code == (grpc.StatusCode.RESOURCE_EXHAUSTED if too_large else grpc.StatusCode.INTERNAL)
