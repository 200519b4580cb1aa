"""Page sizes and keyset page tokens, per ``gaming.common.v1.PageRequest``, for every List.

A token is unpadded base64url of the JSON ``{"q": <query fingerprint>, "after": <last key of the
page>}``: the next page starts after that key (keyset pagination, stable while items come and
go), and the fingerprint (the first 16 hex digits of the SHA-256 of the query's parts joined by
NUL) lets a token given to another query be refused rather than silently misread. Tokens are
handed to clients, so this format must stay readable: a change needs a new field, not a new
meaning for these.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json

from gaming.common.v1 import common_pb2

from servicers.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000

NOT_OURS = "is not a token this server issued"
OTHER_QUERY = "was issued for another query"


def page_size(page: common_pb2.PageRequest) -> int:
    """The number of items to return: 0 means the default, above the cap means the cap.

    Raises:
        InvalidArgument: ``page.page_size`` is negative.
    """
    if page.page_size < 0:
        raise InvalidArgument("page.page_size", "must not be negative")
    return min(page.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def fingerprint(*query: str) -> str:
    """What ties a token to its query: any change to a part (or to their number) changes it."""
    return hashlib.sha256("\x00".join(query).encode()).hexdigest()[:16]


def encode_token(after: str, *query: str) -> str:
    """A token for the page that follows the key ``after`` in the query ``query``."""
    body = json.dumps({"q": fingerprint(*query), "after": after}, separators=(",", ":"))
    return base64.urlsafe_b64encode(body.encode()).rstrip(b"=").decode()


def decode_token(token: str, *query: str, other_query: str = OTHER_QUERY) -> str | None:
    """The key the page starts after, or None for the first page (an empty token).

    Args:
        token: ``page.page_token`` as the client sent it.
        query: the parts of the query it must have been issued for.
        other_query: how to say that it was issued for another query (a service may word it
            for its own filters).

    Raises:
        InvalidArgument: (``page.page_token``) the token is not one of ours, or was issued for
            another query.
    """
    if not token:
        return None
    try:
        body = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError) as err:
        raise InvalidArgument("page.page_token", NOT_OURS) from err
    if not isinstance(body, dict) or not isinstance(body.get("after"), str) or not isinstance(body.get("q"), str):
        raise InvalidArgument("page.page_token", NOT_OURS)
    if body["q"] != fingerprint(*query):
        raise InvalidArgument("page.page_token", other_query)
    after: str = body["after"]
    return after
