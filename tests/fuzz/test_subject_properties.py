"""Properties of ``_subjects``: call subjects, tokens and per-call subject prefixes (§2).

Proves, for inputs hypothesis draws: the call subject of any valid target, service and method
lies under the target's wildcard and gives the method path back; anything else is refused with
``ValueError``; tokens are accepted exactly when they are one plain token; ``method_of`` never
raises; and a server's per-call subjects stay under its connection's inbox prefix yet apart from
its own reply subjects.

A final newline is refused too: a ``$`` anchor would let ``'quest\\n'`` through.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from nats_transport import _subjects

pytestmark = pytest.mark.fuzz

TOKEN = re.compile(r"[A-Za-z0-9_\-]+")
IDENT = r"[A-Za-z_][A-Za-z0-9_]*"

tokens = st.from_regex(TOKEN, fullmatch=True).filter(lambda s: "\n" not in s)
idents = st.from_regex(IDENT, fullmatch=True).filter(lambda s: "\n" not in s)
services = st.lists(idents, min_size=1, max_size=4).map(".".join)
odd_text = st.text(st.sampled_from("abAB09_-./ *>\t\n\r"), max_size=24)


def _is_literal_subject(subject: str) -> bool:
    """A subject NATS takes literally: non-empty tokens with no whitespace and no wildcard."""
    return all(tok and not any(ch.isspace() or ch in "*>" for ch in tok) for tok in subject.split("."))


@given(tokens, tokens, services, idents, st.booleans())
def test_a_call_subject_lies_under_its_targets_wildcard_and_gives_its_method_back(
    prefix: str, target: str, service: str, method: str, leading_slash: bool
) -> None:
    path = f"{'/' if leading_slash else ''}{service}/{method}"
    subject = _subjects.call_subject(prefix, target, path)
    assert _is_literal_subject(subject)
    assert subject.startswith(_subjects.server_wildcard(prefix, target)[:-1])
    assert _subjects.method_of(subject, len(prefix) + len(target) + 2) == f"/{service}/{method}"


@given(odd_text | st.text(max_size=20))
def test_call_subject_gives_a_subject_that_splits_back_or_a_value_error(method: str) -> None:
    try:
        subject = _subjects.call_subject("grpc", "quest", method)
    except ValueError:
        return
    assert _subjects.method_of(subject, len("grpc.quest.")) == "/" + method.lstrip("/")


@given(odd_text)
@example("/pkg.Svc/Get\n")
@example("/pkg.Svc\n/Get")
def test_call_subject_only_ever_builds_a_literal_nats_subject(method: str) -> None:
    try:
        subject = _subjects.call_subject("grpc", "quest", method)
    except ValueError:
        return
    assert _is_literal_subject(subject), f"{method!r} became the subject {subject!r}"


@given(tokens)
def test_check_token_accepts_every_plain_token(name: str) -> None:
    assert _subjects.check_token(name, "target") == name


@given(odd_text | st.text(max_size=10))
def test_check_token_refuses_dots_wildcards_spaces_and_empty_names(name: str) -> None:
    assume(not TOKEN.fullmatch(name))
    with pytest.raises(ValueError, match="target"):
        _subjects.check_token(name, "target")


@given(tokens.map(lambda t: t + "\n"))
@example("quest\n")
def test_check_token_refuses_a_token_followed_by_a_newline(name: str) -> None:
    with pytest.raises(ValueError, match="target"):
        _subjects.check_token(name, "target")


@given(st.text(max_size=40), st.integers(0, 50))
def test_method_of_any_subject_splits_it_at_the_last_dot_or_is_none(subject: str, prefix_len: int) -> None:
    rest = subject[prefix_len:]
    last = rest.rfind(".")
    expected = f"/{rest[:last]}/{rest[last + 1 :]}" if 0 < last < len(rest) - 1 else None
    assert _subjects.method_of(subject, prefix_len) == expected


@given(st.lists(tokens, min_size=1, max_size=3).map(".".join), tokens, st.integers(1, 10**6))
def test_per_call_subjects_stay_under_the_inbox_prefix_and_apart_from_its_reply_subjects(
    inbox_prefix: str, nuid: str, n: int
) -> None:
    stream_prefix = _subjects.stream_prefix_of(f"{inbox_prefix}.{nuid}")
    assert stream_prefix == f"{inbox_prefix}.s.{nuid}"
    # Replies to the server's own calls are {inbox_prefix}.{NUID}.{n}: never under .s.{nuid}.
    assert not f"{inbox_prefix}.{nuid}.{n}".startswith(stream_prefix + ".")


@given(odd_text.filter(lambda s: "." not in s))
def test_an_inbox_without_a_dot_has_no_per_call_prefix(inbox: str) -> None:
    with pytest.raises(ValueError, match="inbox"):
        _subjects.stream_prefix_of(inbox)
