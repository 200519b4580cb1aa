"""CLDR plural categories for whole numbers (the API's ``plural_count`` is an int64). Pure code.

The rules are CLDR's (release 46, ``plurals.xml``) restricted to integers, where the operands
are ``n = i = |count|`` and ``v = 0``. A locale uses the rule of its most specific tag that has
one (``pt-PT`` has its own; ``pt-BR`` uses ``pt``'s); a language without a rule here has only
"other", as CLDR's root locale.
"""

from __future__ import annotations

from collections.abc import Callable

from servicers.language._locales import lineage

__all__ = ["CATEGORIES", "plural_category"]

CATEGORIES = ("zero", "one", "two", "few", "many", "other")


def _one_if_1(n: int) -> str:
    # one: i = 1 and v = 0
    return "one" if n == 1 else "other"


def _one_if_0_or_1(n: int) -> str:
    # one: i = 0,1
    return "one" if n in (0, 1) else "other"


def _romance(one: Callable[[int], str]) -> Callable[[int], str]:
    # many: e = 0 and i != 0 and i % 1000000 = 0 and v = 0 (fr, es, it, pt, ca): "un million de"
    def rule(n: int) -> str:
        if n != 0 and n % 1_000_000 == 0:
            return "many"
        return one(n)

    return rule


def _east_slavic(n: int) -> str:
    # ru, uk: one: i % 10 = 1 and i % 100 != 11; few: i % 10 = 2..4 and i % 100 != 12..14;
    # many: i % 10 = 0 or i % 10 = 5..9 or i % 100 = 11..14 (v = 0 throughout)
    if n % 10 == 1 and n % 100 != 11:
        return "one"
    if 2 <= n % 10 <= 4 and not 12 <= n % 100 <= 14:
        return "few"
    return "many"


def _polish(n: int) -> str:
    # one: i = 1; few: i % 10 = 2..4 and i % 100 != 12..14; many: every other integer
    if n == 1:
        return "one"
    if 2 <= n % 10 <= 4 and not 12 <= n % 100 <= 14:
        return "few"
    return "many"


def _czech(n: int) -> str:
    # cs, sk: one: i = 1; few: i = 2..4; many: v != 0 (fractions only); other
    if n == 1:
        return "one"
    return "few" if 2 <= n <= 4 else "other"


def _arabic(n: int) -> str:
    # zero: n = 0; one: n = 1; two: n = 2; few: n % 100 = 3..10; many: n % 100 = 11..99
    if n in (0, 1, 2):
        return ("zero", "one", "two")[n]
    if 3 <= n % 100 <= 10:
        return "few"
    return "many" if 11 <= n % 100 <= 99 else "other"


def _welsh(n: int) -> str:
    # zero: n = 0; one: n = 1; two: n = 2; few: n = 3; many: n = 6
    return {0: "zero", 1: "one", 2: "two", 3: "few", 6: "many"}.get(n, "other")


def _other(n: int) -> str:
    return "other"


_RULES: dict[str, Callable[[int], str]] = {
    **dict.fromkeys(
        ["en", "de", "nl", "sv", "da", "nb", "nn", "no", "fi", "et", "el", "hu", "tr", "bg", "sw", "ur"],
        _one_if_1,
    ),
    **dict.fromkeys(["hi", "bn", "fa", "gu", "kn", "zu"], _one_if_0_or_1),
    "fr": _romance(_one_if_0_or_1),
    "pt": _romance(_one_if_0_or_1),
    "pt-PT": _romance(_one_if_1),
    "es": _romance(_one_if_1),
    "it": _romance(_one_if_1),
    "ca": _romance(_one_if_1),
    "ru": _east_slavic,
    "uk": _east_slavic,
    "pl": _polish,
    "cs": _czech,
    "sk": _czech,
    "ar": _arabic,
    "cy": _welsh,
    **dict.fromkeys(["ja", "zh", "ko", "vi", "th", "id", "ms"], _other),
}


def plural_category(locale: str, count: int) -> str:
    """The CLDR plural category of ``count`` in ``locale`` (a canonical tag)."""
    for tag in lineage(locale):
        rule = _RULES.get(tag)
        if rule is not None:
            return rule(abs(count))
    return "other"
