"""Text normalisation and similarity for translation-memory matching. Pure code.

Normalised text (what exact matches compare, and fuzzy matches measure): Unicode NFKC, case
folded, every run of characters that are neither letters nor digits made one space, trimmed. So
"Where is the Inn?!" and "where is the inn" are the same text.

Similarity is ``1 - levenshtein(a, b) / max(len(a), len(b))`` over normalised texts: 1 for equal
texts, 0 for nothing in common.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["normalise", "similarity", "with_shape_of"]

_NOT_WORD = re.compile(r"[\W_]+")
_TERMINAL = ".!?…"


def normalise(text: str) -> str:
    """The normalised form of ``text`` (see the module docstring)."""
    return _NOT_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def similarity(a: str, b: str, minimum: float) -> float:
    """The similarity of two normalised texts if it is at least ``minimum``, else 0.0.

    Knowing the minimum bounds the work: texts whose lengths alone rule it out are not compared,
    and the edit distance is computed in a diagonal band and abandoned once it must exceed the
    edits the minimum allows.
    """
    longest = max(len(a), len(b))
    if longest == 0:
        return 1.0
    budget = int((1.0 - minimum) * longest + 1e-9)
    if abs(len(a) - len(b)) > budget:
        return 0.0
    distance = _bounded_distance(a, b, budget)
    return 0.0 if distance > budget else 1.0 - distance / longest


def _bounded_distance(a: str, b: str, budget: int) -> int:
    """Levenshtein distance of ``a`` and ``b``, or ``budget + 1`` if it exceeds ``budget``."""
    if len(a) > len(b):
        a, b = b, a
    over = budget + 1
    previous = [column if column <= budget else over for column in range(len(a) + 1)]
    for row, char in enumerate(b, start=1):
        current = [over] * (len(a) + 1)
        current[0] = row if row <= budget else over
        for column in range(max(1, row - budget), min(len(a), row + budget) + 1):
            current[column] = min(
                previous[column] + 1,
                current[column - 1] + 1,
                previous[column - 1] + (a[column - 1] != char),
                over,
            )
        if min(current) > budget:
            return over
        previous = current
    return previous[len(a)]


def with_shape_of(source: str, translation: str) -> str:
    """``translation`` with the source's initial capital and its terminal punctuation, where the
    translation lacks them (an entry stored as "bonjour" answers "Hello!" with "Bonjour!").

    A capital is only ever added, never removed: a lower-case source keeps a translation that
    starts with a capital (German nouns) as it is.
    """
    stripped = source.strip()
    result = translation
    # The first letter, past any leading punctuation ("¿dónde" -> "¿Dónde").
    source_letter = next((char for char in stripped if char.isalpha()), "")
    at = next((index for index, char in enumerate(result) if char.isalpha()), None)
    if source_letter.isupper() and at is not None and result[at].islower():
        result = result[:at] + result[at].upper() + result[at + 1 :]
    if stripped and stripped[-1] in _TERMINAL and result and result[-1] not in _TERMINAL:
        result += stripped[-1]
    return result
