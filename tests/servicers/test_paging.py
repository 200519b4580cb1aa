"""servicers.paging: page sizes and keyset page tokens, shared by every List; tokens issued by the
four copies it replaced (and already held by clients) still decode."""

from __future__ import annotations

import base64
import json

import grpc
import pytest
from gaming.common.v1 import common_pb2

from servicers import paging
from servicers.errors import InvalidArgument
from servicers.orchestration._records import decode_page_token, encode_page_token

# Tokens written by the code servicers.paging replaced (computed with it before its removal):
# (token, the query it was issued for, the key it resumes after).
OLD_TOKENS = {
    "model_management._paging": (
        "eyJxIjoiMDk1MDE3ZjRmZjE3YWZmOCIsImFmdGVyIjoic2FnZS0xM2IifQ", ("1", "2"), "sage-13b"),
    "world_state._paging": (
        "eyJxIjoiNDEzODlkZTBhNWYyMDcwMiIsImFmdGVyIjoiZW50aXR5LTQyIn0", ("region-1", "npc"), "entity-42"),
    "capability_registry._page_token": (
        "eyJxIjoiNTg5MjE2NjBhYmQ3MzU4MiIsImFmdGVyIjoibnBjLmRpYWxvZ3VlIn0", ("npc.",), "npc.dialogue"),
}
OLD_ORCHESTRATION_TOKEN = (
    "eyJxIjoiYmVkMmE3NmM0NDdjNjY0MSIsImFmdGVyIjoiMTcwMDAwMDAwMDAwMC03ZjJkYWRjNjk3OGIifQ"
)


def decode_error(token: str, *query: str, **kwargs: str) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        paging.decode_token(token, *query, **kwargs)
    return caught.value


@pytest.mark.parametrize("name", sorted(OLD_TOKENS))
def test_a_token_issued_by_the_old_copies_decodes_and_reencodes_the_same(name: str) -> None:
    token, query, after = OLD_TOKENS[name]
    assert paging.decode_token(token, *query) == after
    assert paging.encode_token(after, *query) == token


def test_an_old_orchestration_token_decodes_with_its_name_and_state() -> None:
    assert decode_page_token(OLD_ORCHESTRATION_TOKEN, "daily-reward", 3) == "1700000000000-7f2dadc6978b"
    assert encode_page_token("1700000000000-7f2dadc6978b", "daily-reward", 3) == OLD_ORCHESTRATION_TOKEN


def test_the_token_is_unpadded_base64url_json_of_the_fingerprint_and_the_key() -> None:
    token = paging.encode_token("a/b+c", "q1", "q2")
    assert "=" not in token
    body = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    assert body == {"q": paging.fingerprint("q1", "q2"), "after": "a/b+c"}


def test_an_empty_token_is_the_first_page() -> None:
    assert paging.decode_token("", "anything") is None


def test_the_fingerprint_tells_the_parts_apart_not_only_their_concatenation() -> None:
    assert paging.fingerprint("ab", "c") != paging.fingerprint("a", "bc")
    assert paging.fingerprint("a") != paging.fingerprint("a", "")


@pytest.mark.parametrize("token", ["%%%", "bm90IGpzb24", base64.urlsafe_b64encode(b'["a"]').decode(),
                                   base64.urlsafe_b64encode(b'{"q": "x", "after": 3}').decode()])
def test_a_token_we_did_not_issue_is_invalid_argument_on_page_token(token: str) -> None:
    error = decode_error(token, "q")
    assert (error.code, error.field, error.description) == (
        grpc.StatusCode.INVALID_ARGUMENT, "page.page_token", paging.NOT_OURS)
    assert error.message == f"page.page_token: {paging.NOT_OURS}"


def test_a_token_of_another_query_is_refused_in_the_services_words() -> None:
    token = paging.encode_token("k", "region-1")
    assert decode_error(token, "region-2").description == paging.OTHER_QUERY
    assert decode_error(token, "region-2", other_query="was issued for different filters").description == (
        "was issued for different filters")


def test_an_orchestration_token_must_resume_after_a_workflow_id() -> None:
    token = paging.encode_token("not-an-id", "daily-reward", "3")
    with pytest.raises(InvalidArgument) as caught:
        decode_page_token(token, "daily-reward", 3)
    assert caught.value.description == paging.NOT_OURS


@pytest.mark.parametrize(("asked", "given"), [(0, paging.DEFAULT_PAGE_SIZE), (7, 7),
                                              (paging.MAX_PAGE_SIZE + 1, paging.MAX_PAGE_SIZE)])
def test_page_size_defaults_and_caps(asked: int, given: int) -> None:
    assert paging.page_size(common_pb2.PageRequest(page_size=asked)) == given


def test_a_negative_page_size_is_invalid_argument_on_page_size() -> None:
    with pytest.raises(InvalidArgument) as caught:
        paging.page_size(common_pb2.PageRequest(page_size=-1))
    assert (caught.value.field, caught.value.description) == ("page.page_size", "must not be negative")
