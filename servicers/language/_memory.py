"""The translation memory and the lookup order Translate follows. Pure code.

The memory is two layers of entries, each keyed by (source language, target tag, normalised
source text): the entries stored in KV, and under them the built-in phrasebook (every phrase of a
row, from each of its languages into each other). A stored entry wins over a built-in one for
the same key, and on equal similarity in a fuzzy match.

Lookup order, for a text, its candidate source languages, and a target tag:

1. EXACT: an entry for the target matches the normalised text exactly; confidence 1.
2. FUZZY: the most similar entry for the target, if similarity >= ``FUZZY_MINIMUM`` (0.75);
   confidence = similarity. Texts longer than ``FUZZY_MAX_CHARS`` normalised characters skip
   this step (and the fuzzy half of step 3): game lines are short, and long texts would make the
   edit distance expensive for a result that would rarely pass the bar.
3. FALLBACK from a parent of the target (``pt`` for ``pt-BR``): exact, then fuzzy, as above, with
   confidence times ``PARENT_FACTOR`` (0.9).
4. FALLBACK, same language: the source is already in the target's language (``en`` into
   ``en-GB``): the text itself, for the target's language, with confidence ``SAME_LANGUAGE``.
   Only when the source language is known (given, or reliably detected).
5. FALLBACK, phrase by phrase: the longest phrases (up to ``MAX_PHRASE_WORDS`` words, never across
   ``.,;:!?``) with an exact entry for the target or a parent replace their words; other words
   stay as they are. Used if phrases cover at least ``MIN_COVERAGE`` (half) of the words;
   confidence ``PHRASE_FACTOR`` (0.6) times the share covered.
6. NONE: the text unchanged, confidence 0.

With several candidate source languages (the text's language was not given and could not be
detected reliably), each step tries them all, best-detected first, and the first that matches
names the source.

Matches keep the text's shape: a capital at the start and terminal punctuation are carried over
to the translation when it lacks them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from gaming.language.v1 import language_pb2

from servicers.language._locales import language_of, lineage
from servicers.language._records import StoredTranslation
from servicers.language._text import normalise, similarity, with_shape_of

__all__ = [
    "FUZZY_MAX_CHARS",
    "FUZZY_MINIMUM",
    "MAX_PHRASE_WORDS",
    "MIN_COVERAGE",
    "PARENT_FACTOR",
    "PHRASE_FACTOR",
    "SAME_LANGUAGE",
    "Translation",
    "TranslationMemory",
]

FUZZY_MINIMUM = 0.75
FUZZY_MAX_CHARS = 500
PARENT_FACTOR = 0.9
SAME_LANGUAGE = 0.9
PHRASE_FACTOR = 0.6
MIN_COVERAGE = 0.5
MAX_PHRASE_WORDS = 6

_WORD = re.compile(r"\w+")
_PHRASE_BREAK = re.compile(r"[.,;:!?¿¡…]")
_PHRASE_TRIM = " .,;:!?¿¡…"

_Table = dict[tuple[str, str], dict[str, StoredTranslation]]


@dataclass(frozen=True, slots=True)
class Translation:
    """How a text was translated: ``source_language`` None when no source could be named,
    ``target_locale`` None for NONE."""

    text: str
    source_language: str | None
    target_locale: str | None
    match_kind: language_pb2.MatchKind.ValueType
    confidence: float


def _add(table: _Table, entry: StoredTranslation) -> None:
    key = normalise(entry.source_text)
    table.setdefault((entry.source_language, entry.target_locale), {}).setdefault(key, entry)


class TranslationMemory:
    """Stored entries over built-in ones; ``put``/``remove`` apply the KV bucket's changes."""

    def __init__(self, builtin: Iterable[StoredTranslation] = ()) -> None:
        self._builtin: _Table = {}
        for entry in builtin:
            _add(self._builtin, entry)
        self._stored: _Table = {}
        self._keys: dict[str, tuple[tuple[str, str], str]] = {}  # bucket key -> table slot

    @classmethod
    def from_phrasebook(cls, rows: Iterable[Mapping[str, str]]) -> TranslationMemory:
        """A memory whose built-in layer holds every row's phrases between all its languages
        (the first row wins where one language's phrase appears in several)."""
        return cls(
            StoredTranslation(source, target, source_text, target_text)
            for row in rows
            for source, source_text in row.items()
            for target, target_text in row.items()
            if source != target
        )

    def __repr__(self) -> str:
        return f"<TranslationMemory builtin_pairs={len(self._builtin)} stored={len(self._keys)}>"

    def clear_stored(self) -> None:
        """Forget every stored entry (before the bucket is read again)."""
        self._stored = {}
        self._keys = {}

    def put(self, key: str, entry: StoredTranslation) -> None:
        """Store the entry a bucket key holds (replacing what that key held)."""
        self.remove(key)
        pair = (entry.source_language, entry.target_locale)
        text = normalise(entry.source_text)
        self._stored.setdefault(pair, {})[text] = entry
        self._keys[key] = (pair, text)

    def remove(self, key: str) -> None:
        """Forget the entry a bucket key held."""
        slot = self._keys.pop(key, None)
        if slot is None:
            return
        pair, text = slot
        entries = self._stored.get(pair, {})
        entries.pop(text, None)
        if not entries:
            self._stored.pop(pair, None)

    def languages(self) -> set[str]:
        """Every language some entry translates from or into."""
        pairs = set(self._builtin) | set(self._stored)
        return {language for source, target in pairs for language in (source, language_of(target))}

    def exact(self, source: str, target: str, text: str) -> StoredTranslation | None:
        """The entry for a normalised text, stored first."""
        for table in (self._stored, self._builtin):
            found = table.get((source, target), {}).get(text)
            if found is not None:
                return found
        return None

    def fuzzy(self, source: str, target: str, text: str) -> tuple[StoredTranslation, float] | None:
        """The most similar entry with similarity >= FUZZY_MINIMUM (stored first on ties)."""
        if len(text) > FUZZY_MAX_CHARS:
            return None
        best: tuple[StoredTranslation, float] | None = None
        for table in (self._stored, self._builtin):
            for candidate, entry in table.get((source, target), {}).items():
                score = similarity(text, candidate, FUZZY_MINIMUM)
                if score >= FUZZY_MINIMUM and (best is None or score > best[1]):
                    best = (entry, score)
        return best

    def translate(self, text: str, sources: Sequence[str], target: str, *, source_known: bool) -> Translation:
        """Translate ``text`` from one of ``sources`` (language subtags, best first) into
        ``target`` (a canonical tag), following the module's lookup order."""
        normalised = normalise(text)
        targets = lineage(target)
        for index, locale in enumerate(targets):
            kind, factor = (language_pb2.MATCH_KIND_EXACT, 1.0) if index == 0 else (
                language_pb2.MATCH_KIND_FALLBACK, PARENT_FACTOR)
            for source in sources:
                entry = self.exact(source, locale, normalised)
                if entry is not None:
                    return Translation(with_shape_of(text, entry.target_text), source, locale, kind, factor)
            matches = [(found, source) for source in sources if (found := self.fuzzy(source, locale, normalised))]
            if matches:
                (entry, score), source = max(matches, key=lambda match: match[0][1])  # first on ties
                kind = language_pb2.MATCH_KIND_FUZZY if index == 0 else language_pb2.MATCH_KIND_FALLBACK
                return Translation(with_shape_of(text, entry.target_text), source, locale, kind, factor * score)
        language = language_of(target)
        if source_known and sources[0] == language:
            return Translation(text, language, language, language_pb2.MATCH_KIND_FALLBACK, SAME_LANGUAGE)
        phrased = self._phrase_by_phrase(text, sources, targets)
        if phrased is not None:
            return phrased
        return Translation(text, sources[0] if source_known else None, None, language_pb2.MATCH_KIND_NONE, 0.0)

    def _phrase_by_phrase(self, text: str, sources: Sequence[str], targets: Sequence[str]) -> Translation | None:
        words = list(_WORD.finditer(text))
        if not words:
            return None
        normalised = [normalise(word.group()) for word in words]
        # breaks[i]: punctuation between word i and word i + 1, which no phrase may span.
        breaks = [bool(_PHRASE_BREAK.search(text, words[i].end(), words[i + 1].start())) for i in range(len(words) - 1)]
        best: tuple[float, Translation] | None = None
        for source in sources:
            pieces: list[str] = []
            covered = 0
            used: set[str] = set()
            position = 0  # of text copied so far
            start = 0
            while start < len(words):
                found = self._longest_phrase(source, targets, normalised, breaks, start)
                if found is None:
                    start += 1
                    continue
                end, entry, locale = found
                original = text[words[start].start() : words[end - 1].end()]
                pieces.append(text[position : words[start].start()])
                pieces.append(with_shape_of(original, entry.target_text.strip(_PHRASE_TRIM)))
                position = words[end - 1].end()
                covered += end - start
                used.add(locale)
                start = end
            coverage = covered / len(words)
            if coverage >= MIN_COVERAGE and (best is None or coverage > best[0]):
                pieces.append(text[position:])
                locale = next(tag for tag in targets if tag in used)
                translation = Translation(
                    "".join(pieces), source, locale, language_pb2.MATCH_KIND_FALLBACK, PHRASE_FACTOR * coverage
                )
                best = (coverage, translation)
        return None if best is None else best[1]

    def _longest_phrase(
        self, source: str, targets: Sequence[str], normalised: Sequence[str], breaks: Sequence[bool], start: int
    ) -> tuple[int, StoredTranslation, str] | None:
        """(end word, entry, target locale) of the longest phrase starting at word ``start``."""
        end = start + 1
        while end < len(normalised) and end - start < MAX_PHRASE_WORDS and not breaks[end - 1]:
            end += 1
        for stop in range(end, start, -1):
            phrase = " ".join(normalised[start:stop])
            for locale in targets:
                entry = self.exact(source, locale, phrase)
                if entry is not None:
                    return stop, entry, locale
        return None
