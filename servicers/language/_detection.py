"""Language detection from character 1- to 3-gram profiles. Pure code.

A text is lower-cased, every character that is not a letter becomes a space, and each word is
padded with one space on each side (`` dragon ``); its n-grams (n = 1, 2, 3; the lone space is
not one) are counted. Each language's profile is the same count over its sample text
(``samples.SAMPLES``). A language scores the text by a multinomial naive-Bayes log-likelihood
with additive smoothing (``SMOOTHING``) over the vocabulary all profiles share, per n-gram order.

An n-gram model counts each character three times (once per order) and treats overlapping grams
as independent, which makes raw likelihoods wildly overconfident, so the log-likelihoods are
averaged per counted n-gram and multiplied by the evidence: the number of letters, capped at
``EVIDENCE_CAP``. The scores are the softmax of that: they sum to 1 over the supported languages,
short texts get soft answers, and no text gets certainty from length alone.
"""

from __future__ import annotations

import math
import unicodedata
from collections import Counter
from dataclasses import dataclass

from servicers.language.samples import SAMPLES

__all__ = ["EVIDENCE_CAP", "LANGUAGES", "SMOOTHING", "Detection", "detect"]

ORDERS = (1, 2, 3)
SMOOTHING = 0.5
EVIDENCE_CAP = 40
# A best candidate is reliable with at least this score and this many times the runner-up's.
RELIABLE_SCORE = 0.5
RELIABLE_RATIO = 2.0


def _grams(text: str) -> Counter[tuple[int, str]]:
    """(order, n-gram) counts of a text."""
    letters = "".join(char if char.isalpha() else " " for char in unicodedata.normalize("NFKC", text.lower()))
    counts: Counter[tuple[int, str]] = Counter()
    for word in letters.split():
        padded = f" {word} "
        for order in ORDERS:
            for start in range(len(padded) - order + 1):
                gram = padded[start : start + order]
                if gram != " ":
                    counts[order, gram] += 1
    return counts


@dataclass(frozen=True, slots=True)
class _Profile:
    counts: Counter[tuple[int, str]]
    totals: dict[int, int]


def _profiles() -> dict[str, _Profile]:
    profiles = {}
    for language, sample in SAMPLES.items():
        counts = _grams(sample)
        totals = {order: sum(c for (o, _), c in counts.items() if o == order) for order in ORDERS}
        profiles[language] = _Profile(counts, totals)
    return profiles


_PROFILES = _profiles()
LANGUAGES = tuple(sorted(_PROFILES))
# Vocabulary per order: every gram any profile has, plus one slot for the unseen.
_VOCABULARY = {
    order: len({gram for profile in _PROFILES.values() for (o, gram) in profile.counts if o == order}) + 1
    for order in ORDERS
}


@dataclass(frozen=True, slots=True)
class Detection:
    """Every supported language with its score, best first (ties by language), and whether the
    best one is reliable."""

    candidates: tuple[tuple[str, float], ...]
    reliable: bool

    @property
    def best(self) -> str:
        """The best-scoring language."""
        return self.candidates[0][0]


def detect(text: str) -> Detection:
    """Score ``text`` against every supported language (a text without letters scores them all
    the same, and is never reliable)."""
    counts = _grams(text)
    letters = sum(count for (order, _), count in counts.items() if order == 1)
    if not letters:
        even = 1.0 / len(LANGUAGES)
        return Detection(tuple((language, even) for language in LANGUAGES), reliable=False)
    observed = sum(counts.values())
    evidence = min(letters, EVIDENCE_CAP)
    logits = {}
    for language, profile in _PROFILES.items():
        total = 0.0
        for (order, gram), count in counts.items():
            seen = profile.counts.get((order, gram), 0)
            denominator = profile.totals[order] + SMOOTHING * _VOCABULARY[order]
            total += count * math.log((seen + SMOOTHING) / denominator)
        logits[language] = total / observed * evidence
    peak = max(logits.values())
    weights = {language: math.exp(logit - peak) for language, logit in logits.items()}
    norm = sum(weights.values())
    ranked = sorted(((language, weight / norm) for language, weight in weights.items()), key=lambda c: (-c[1], c[0]))
    best_score = ranked[0][1]
    runner_up = ranked[1][1] if len(ranked) > 1 else 0.0
    reliable = best_score >= RELIABLE_SCORE and best_score >= RELIABLE_RATIO * runner_up
    return Detection(tuple(ranked), reliable)
