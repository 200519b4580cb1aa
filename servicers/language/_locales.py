"""BCP 47 locale tags: parsing to a canonical form, parents, and fallback chains. Pure code.

Accepted tags are the common subset of BCP 47: a 2- or 3-letter language, then optionally a
4-letter script, a 2-letter or 3-digit region, and variants (``en``, ``pt-BR``, ``zh-Hant-TW``,
``es-419``, ``de-CH-1996``). Extensions and private use (``-u-``, ``-x-``) and ``_`` separators
are refused as malformed. Matching is case-insensitive; the canonical form is BCP 47's usual
casing: language lower case, script title case, region upper case (``pt-br`` -> ``pt-BR``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["DEFAULT_LOCALE", "canonical", "chain", "language_of", "lineage"]

DEFAULT_LOCALE = "en"
_MAX_TAG = 35

_TAG = re.compile(
    r"(?P<language>[A-Za-z]{2,3})"
    r"(?:-(?P<script>[A-Za-z]{4}))?"
    r"(?:-(?P<region>[A-Za-z]{2}|[0-9]{3}))?"
    r"(?P<variants>(?:-(?:[A-Za-z0-9]{5,8}|[0-9][A-Za-z0-9]{3}))*)"
)


def canonical(tag: str) -> str | None:
    """The canonical form of ``tag``, or None if it is malformed."""
    if len(tag) > _MAX_TAG:
        return None
    match = _TAG.fullmatch(tag)
    if match is None:
        return None
    parts = [match["language"].lower()]
    if match["script"]:
        parts.append(match["script"].title())
    if match["region"]:
        parts.append(match["region"].upper())
    parts.extend(variant.lower() for variant in match["variants"].split("-") if variant)
    return "-".join(parts)


def language_of(tag: str) -> str:
    """The language subtag of a canonical tag (``pt-BR`` -> ``pt``)."""
    return tag.split("-", 1)[0]


def lineage(tag: str) -> list[str]:
    """A canonical tag and its parents, most specific first: subtags are dropped from the right
    (``zh-Hant-TW`` -> ``zh-Hant`` -> ``zh``)."""
    parts = tag.split("-")
    return ["-".join(parts[:size]) for size in range(len(parts), 0, -1)]


def chain(locale: str, fallbacks: Iterable[str] = (), default: str = DEFAULT_LOCALE) -> list[str]:
    """The locales Localize tries, in order, without repeats: ``locale`` and its parents, each
    fallback and its parents, then ``default``. All tags canonical."""
    ordered: dict[str, None] = {}
    for tag in (locale, *fallbacks, default):
        for member in lineage(tag):
            ordered.setdefault(member, None)
    return list(ordered)
