"""Properties of ``_envelope``: stream-mode envelopes and ACCEPT payloads (§6.1).

Proves, for inputs hypothesis draws: every kind round-trips with its payload and its seq modulo
2^32; unpacking any body gives kind, seq and payload that pack back to the same bytes, or a
``ValueError`` for a body shorter than the envelope; a body is taken for an envelope exactly when
its first byte is one of the seven kinds, so bare frames never are; and ACCEPT round-trips the
window and per-call subject, while any other payload gives them or a ``ValueError``.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nats_transport import _envelope as env
from nats_transport._envelope import Kind
from tests.fuzz._wire import FRAME_FLAGS, PRINTABLE, envelope_bodies, frame

pytestmark = pytest.mark.fuzz

seqs = st.integers(0, 2**32 - 1) | st.integers(-(2**40), 2**40)
subjects = st.text(st.sampled_from(PRINTABLE), min_size=1, max_size=60)


@given(st.sampled_from(Kind), seqs, st.binary(max_size=300))
def test_an_envelope_round_trips_its_kind_and_payload_and_its_seq_modulo_2_to_the_32(
    kind: Kind, seq: int, payload: bytes
) -> None:
    body = env.pack(kind, seq, payload)
    assert len(body) == env.ENVELOPE_SIZE + len(payload)
    got_kind, got_seq, got_payload = env.unpack(body)
    assert (got_kind, got_seq, bytes(got_payload)) == (kind, seq % 2**32, payload)


@given(envelope_bodies() | st.binary(max_size=12))
def test_unpacking_any_body_gives_what_packs_back_to_it_or_a_value_error(body: bytes) -> None:
    try:
        kind, seq, payload = env.unpack(body)
    except ValueError:
        assert len(body) < env.ENVELOPE_SIZE
        return
    assert struct.pack(">BI", kind, seq) + bytes(payload) == body


@given(st.binary(max_size=12))
def test_a_body_is_an_envelope_exactly_when_its_first_byte_is_a_kind(body: bytes) -> None:
    assert env.is_envelope(body) == (body[:1] != b"" and 0x21 <= body[0] <= 0x27)


@given(st.sampled_from(FRAME_FLAGS), st.binary(max_size=50))
def test_bare_frames_are_never_taken_for_envelopes(flag: int, payload: bytes) -> None:
    assert not env.is_envelope(frame(flag, payload))


@given(seqs, st.integers(0, 2**32 - 1), subjects)
def test_accept_round_trips_the_window_and_the_per_call_subject(seq: int, window: int, subject: str) -> None:
    kind, got_seq, payload = env.unpack(env.pack_accept(seq, window, subject))
    assert (kind, got_seq) == (Kind.ACCEPT, seq % 2**32)
    assert env.unpack_accept(payload) == (window, subject)


@given(st.binary(max_size=30))
def test_reading_any_accept_payload_gives_window_and_subject_or_a_value_error(payload: bytes) -> None:
    try:
        window, subject = env.unpack_accept(memoryview(payload))
    except ValueError:
        # §6.1: shorter than 5 bytes is malformed; and a subject must be ASCII to be one.
        assert len(payload) < 5 or not payload[4:].isascii()
        return
    assert env.CREDIT.pack(window) + subject.encode("ascii") == payload
