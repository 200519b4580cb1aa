"""Page sizes and page tokens, per ``gaming.common.v1.PageRequest``.

A token is base64url JSON ``{"q": <query fingerprint>, "after": <last key of the page>}``: the
next page starts after that key (keyset pagination, stable while items come and go), and the
fingerprint lets a token given to another query be refused rather than silently misread.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json

from gaming.common.v1 import common_pb2

from servicers.world_state._rules import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def page_size(page: common_pb2.PageRequest) -> int:
    """The number of items to return: 0 means the default, above the cap means the cap."""
    if page.page_size < 0:
        raise InvalidArgument("page.page_size", "must not be negative")
    return min(page.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _fingerprint(*query: str) -> str:
    return hashlib.sha256("\x00".join(query).encode()).hexdigest()[:16]


def encode_token(after: str, *query: str) -> str:
    """A token for the page that follows the key ``after`` in the query ``query``."""
    body = json.dumps({"q": _fingerprint(*query), "after": after}, separators=(",", ":"))
    return base64.urlsafe_b64encode(body.encode()).rstrip(b"=").decode()


def decode_token(token: str, *query: str) -> str | None:
    """The key the page starts after, or None for the first page."""
    if not token:
        return None
    try:
        body = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError) as err:
        raise InvalidArgument("page.page_token", "is not a token this server issued") from err
    if not isinstance(body, dict) or not isinstance(body.get("after"), str) or not isinstance(body.get("q"), str):
        raise InvalidArgument("page.page_token", "is not a token this server issued")
    if body["q"] != _fingerprint(*query):
        raise InvalidArgument("page.page_token", "was issued for another query")
    after: str = body["after"]
    return after
