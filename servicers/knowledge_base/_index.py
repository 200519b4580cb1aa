"""The in-memory search index: tokenizer, Okapi BM25 ranking and snippets. Pure code, no I/O.

Tokenizer (documents, titles and queries alike): the text is lower-cased (``str.lower``) and
split into maximal runs of Unicode word characters (``\\w+``: letters, digits and ``_`` of any
script), and the tokens in ``STOP_WORDS`` (a short English list) are dropped. A document's
length is its number of remaining tokens.

Ranking is Okapi BM25 with k1 = 1.2 and b = 0.75 over one collection. The title counts twice: a
document's term frequency is ``2 * tf(title) + tf(body)`` and its length
``2 * len(title) + len(body)``. The inverse document frequency is the non-negative variant
``ln(1 + (N - n + 0.5) / (n + 0.5))`` (as Lucene uses), so that every matching document scores
above 0, as the API promises. A query term counts once however often the query repeats it.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = [
    "B",
    "K1",
    "STOP_WORDS",
    "TITLE_WEIGHT",
    "CollectionIndex",
    "Hit",
    "IndexedDocument",
    "snippet",
    "tokens",
]

K1 = 1.2
B = 0.75
TITLE_WEIGHT = 2

STOP_WORDS = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "from", "has", "have", "in", "into",
    "is", "it", "its", "of", "on", "or", "that", "the", "their", "then", "there", "these", "they", "this",
    "to", "was", "were", "will", "with",
})

_WORD = re.compile(r"\w+")
_ELLIPSIS = "..."


def tokens(text: str) -> list[str]:
    """The indexed tokens of ``text``, in order (stop words removed)."""
    return [word for word in _WORD.findall(text.lower()) if word not in STOP_WORDS]


@dataclass(frozen=True, slots=True)
class IndexedDocument:
    """What the index keeps of one document: enough to rank, filter and build a snippet."""

    document_id: str
    title: str
    body: str
    attributes: tuple[tuple[str, str], ...]
    term_counts: Mapping[str, int]
    length: int

    @classmethod
    def of(cls, document_id: str, title: str, body: str, attributes: Iterable[tuple[str, str]]) -> IndexedDocument:
        """Tokenise a document; the title's tokens count ``TITLE_WEIGHT`` times."""
        title_tokens = tokens(title)
        body_tokens = tokens(body)
        counts: Counter[str] = Counter(body_tokens)
        for token in title_tokens:
            counts[token] += TITLE_WEIGHT
        return cls(
            document_id=document_id,
            title=title,
            body=body,
            attributes=tuple(attributes),
            term_counts=dict(counts),
            length=TITLE_WEIGHT * len(title_tokens) + len(body_tokens),
        )

    def has_attributes(self, filters: Iterable[tuple[str, str]]) -> bool:
        """True if the document has every (key, value) of ``filters``."""
        mine = set(self.attributes)
        return all(pair in mine for pair in filters)


@dataclass(frozen=True, slots=True)
class Hit:
    """One ranked document."""

    document: IndexedDocument
    score: float


@dataclass(slots=True)
class CollectionIndex:
    """The inverted index of one collection."""

    documents: dict[str, IndexedDocument] = field(default_factory=dict)
    postings: dict[str, dict[str, int]] = field(default_factory=dict)  # term -> document id -> tf
    total_length: int = 0

    def __len__(self) -> int:
        return len(self.documents)

    def put(self, document: IndexedDocument) -> None:
        """Add a document, replacing the one with its id."""
        self.remove(document.document_id)
        self.documents[document.document_id] = document
        self.total_length += document.length
        for term, count in document.term_counts.items():
            self.postings.setdefault(term, {})[document.document_id] = count

    def remove(self, document_id: str) -> None:
        """Remove a document if present."""
        old = self.documents.pop(document_id, None)
        if old is None:
            return
        self.total_length -= old.length
        for term in old.term_counts:
            posting = self.postings[term]
            del posting[document_id]
            if not posting:
                del self.postings[term]

    def search(self, query: str, filters: Iterable[tuple[str, str]] = ()) -> list[Hit]:
        """Every document that contains a query term and has every filter, best first (score
        descending, then document id ascending)."""
        wanted = tuple(filters)
        terms = dict.fromkeys(tokens(query))  # unique, in query order
        count = len(self.documents)
        if not terms or not count:
            return []
        average_length = self.total_length / count or 1.0
        scores: dict[str, float] = {}
        for term in terms:
            posting = self.postings.get(term)
            if not posting:
                continue
            idf = math.log(1.0 + (count - len(posting) + 0.5) / (len(posting) + 0.5))
            for document_id, frequency in posting.items():
                length = self.documents[document_id].length
                norm = K1 * (1.0 - B + B * length / average_length)
                scores[document_id] = scores.get(document_id, 0.0) + idf * frequency * (K1 + 1.0) / (frequency + norm)
        hits = [
            Hit(self.documents[document_id], score)
            for document_id, score in scores.items()
            if self.documents[document_id].has_attributes(wanted)
        ]
        hits.sort(key=lambda hit: (-hit.score, hit.document.document_id))
        return hits


def snippet(body: str, query: str, limit: int) -> str:
    """An excerpt of ``body`` of at most ``limit`` characters around its densest cluster of query
    terms, with "..." where it was cut.

    The window chosen holds the most distinct query terms, then the most occurrences; it is
    centred on that cluster and moved off word boundaries where it can be, and whitespace inside
    it is collapsed to single spaces. A body without query terms (a title-only match) gives its
    beginning. A limit too small for a word and its ellipses cuts through words.
    """
    if limit <= 0:
        return ""
    terms = set(tokens(query))
    if len(body) <= limit:
        return _collapse(body)
    occurrences = [
        (match.start(), match.end(), word)
        for match in _WORD.finditer(body)
        if (word := match.group().lower()) in terms
    ]
    room = limit - 2 * len(_ELLIPSIS)
    if room < 1:
        # Too short for ellipses: a bare cut at the first occurrence.
        start = occurrences[0][0] if occurrences else 0
        return body[start : start + limit]
    first, last = _densest(occurrences, room) if occurrences else (0, 0)
    start = max(0, first - (room - (last - first)) // 2)
    end = min(len(body), start + room)
    start = max(0, end - room)
    # A window at either end of the body needs one ellipsis only: give the other's room to text.
    if start == 0:
        end = min(len(body), room + len(_ELLIPSIS))
    elif end == len(body):
        start = max(0, end - room - len(_ELLIPSIS))
    start, end = _off_word_edges(body, start, end, first, last)
    text = _collapse(body[start:end])
    return (_ELLIPSIS if start > 0 else "") + text + (_ELLIPSIS if end < len(body) else "")


def _densest(occurrences: list[tuple[int, int, str]], room: int) -> tuple[int, int]:
    """Start and end offsets of the window of at most ``room`` characters holding the most
    distinct query terms, then the most occurrences (a sliding window over the occurrences)."""
    best = (0, 0)
    best_span = (occurrences[0][0], occurrences[0][1])
    inside: Counter[str] = Counter()
    left = 0
    for right, (_, end, word) in enumerate(occurrences):
        inside[word] += 1
        while left <= right and end - occurrences[left][0] > room:
            leaving = occurrences[left][2]
            inside[leaving] -= 1
            if not inside[leaving]:
                del inside[leaving]
            left += 1
        quality = (len(inside), right - left + 1)
        if left <= right and quality > best:
            best, best_span = quality, (occurrences[left][0], end)
    return best_span


def _off_word_edges(body: str, start: int, end: int, first: int, last: int) -> tuple[int, int]:
    """Shrink [start, end) so that it does not cut a word in two, without losing [first, last).

    ``first`` starts a token and ``last`` ends one, so stopping there still cuts between words.
    """
    new_start, new_end = start, end
    if start > 0 and _is_word(body, start - 1):
        while new_start < first and _is_word(body, new_start):
            new_start += 1
    if end < len(body) and _is_word(body, end):
        while new_end > last and _is_word(body, new_end - 1):
            new_end -= 1
    # A window that is one long word is cut as it is rather than emptied.
    return (new_start, new_end) if new_start < new_end else (start, end)


def _is_word(text: str, index: int) -> bool:
    return _WORD.match(text, index) is not None


def _collapse(text: str) -> str:
    return " ".join(text.split())
