"""The built-in model: a word-level trigram model with backoff, trained at start-up on a corpus.

It is not a neural network, and does not pretend to follow instructions: it continues the prompt
in the voice of its corpus (a fantasy setting), which is what the mesh needs to run end to end
with no outside system, quickly and reproducibly.

- Tokens are words (with inner apostrophes and hyphens), numbers, and single punctuation marks.
  A paragraph of the corpus is one training sequence, opened by two ``<s>`` and closed by
  ``</s>``; generating ``</s>`` ends the answer (FINISH_REASON_STOP).
- Next-token statistics come from the last two tokens, matched case-insensitively; an unseen
  pair backs off to the last token alone, and an unseen token to the start of a paragraph.
- Sampling: counts raised to ``1/temperature`` (temperature 0 picks the most frequent token,
  ties going to the one seen first), drawn by ``random.Random(seed)``: the same seed, prompt and
  parameters give the same text in any process (nothing depends on hash randomisation).
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from gaming.ai_integration.v1 import ai_integration_pb2

from servicers.ai_integration.backends import BackendKind, Completion, Finish, Generation, StopScanner, closing
from servicers.ai_integration.corpus.fantasy import TEXT as CORPUS

LOCAL_MODEL_NAME = "local-tiny"
"""The name callers use for the built-in model (and its entry in model-management)."""
LOCAL_BACKEND_MODEL = "trigram-fantasy-v1"
"""The built-in model's own name, as model-management's ``backend_model``."""
LOCAL_CONTEXT_TOKENS = 8192
"""Its context window. The model only ever looks at two tokens back; the window bounds work."""

START = "<s>"
END = "</s>"
_TOKEN = re.compile(r"[A-Za-z]+(?:['-][A-Za-z]+)*|\d+|[^\sA-Za-z\d]")
# Marks written straight after the previous word, without a space.
_ATTACHED = frozenset(".,!?;:")
# Hand the event loop back this often when no pacing is set, so one long generation does not
# hold up other calls (and a cancel can land).
_YIELD_EVERY = 32


def tokenize(text: str) -> list[str]:
    """The model's tokens of ``text``."""
    return _TOKEN.findall(text)


def _spaced(token: str, first: bool) -> str:
    return token if first or token in _ATTACHED else " " + token


@dataclass(frozen=True, slots=True)
class _Choices:
    tokens: tuple[str, ...]
    counts: tuple[int, ...]


@dataclass(slots=True)
class TrigramModel:
    """Next-token counts after two tokens, after one, and at the start of a paragraph."""

    trigrams: dict[tuple[str, str], _Choices] = field(default_factory=dict)
    bigrams: dict[str, _Choices] = field(default_factory=dict)

    @classmethod
    def train(cls, corpus: str) -> TrigramModel:
        """Count the corpus: paragraphs are separated by blank lines."""
        tri: dict[tuple[str, str], dict[str, int]] = {}
        bi: dict[str, dict[str, int]] = {}
        for paragraph in re.split(r"\n\s*\n", corpus):
            tokens = tokenize(paragraph)
            if not tokens:
                continue
            sequence = [START, START, *tokens, END]
            for first, second, following in zip(sequence, sequence[1:], sequence[2:], strict=False):
                counts = tri.setdefault((first.lower(), second.lower()), {})
                counts[following] = counts.get(following, 0) + 1
                counts = bi.setdefault(second.lower(), {})
                counts[following] = counts.get(following, 0) + 1
        return cls(
            trigrams={key: _Choices(tuple(c), tuple(c.values())) for key, c in tri.items()},
            bigrams={key: _Choices(tuple(c), tuple(c.values())) for key, c in bi.items()},
        )

    def choices(self, previous: str, last: str) -> _Choices:
        """The candidates after ``previous last``, backing off as the module docstring says."""
        found = self.trigrams.get((previous.lower(), last.lower()))
        if found is None:
            found = self.bigrams.get(last.lower())
        return found if found is not None else self.trigrams[(START, START)]

    def sample(self, choices: _Choices, rng: random.Random, temperature: float, *, allow_end: bool) -> str:
        """One token from ``choices``; ``END`` only when ``allow_end`` (unless it is all there is)."""
        tokens, counts = choices.tokens, choices.counts
        if not allow_end and END in tokens and len(tokens) > 1:
            kept = [(token, count) for token, count in zip(tokens, counts, strict=True) if token != END]
            tokens, counts = tuple(t for t, _ in kept), tuple(c for _, c in kept)
        if temperature == 0 or len(tokens) == 1:
            return tokens[counts.index(max(counts))]
        # Scale by the largest count first: count ** (1 / 0.01) would overflow a float.
        top = max(counts)
        weights = [(count / top) ** (1.0 / temperature) for count in counts]
        return rng.choices(tokens, weights)[0]


class LocalBackend:
    """The built-in model behind the ``Backend`` interface.

    ``token_interval`` paces generation (seconds per token, 0 = as fast as possible) to behave
    like a real model in demos, and so tests can watch a long stream being produced.

    The counters show what the model is doing, for operators and tests: ``active`` generations
    now, ``tokens_generated`` in total, and ``interrupted`` generations, stopped early because
    their reader went away (a cancelled call, a missed deadline).
    """

    def __init__(self, model: TrigramModel, *, token_interval: float = 0.0) -> None:
        self._model = model
        self._token_interval = token_interval
        self.active = 0
        self.tokens_generated = 0
        self.interrupted = 0

    def __repr__(self) -> str:
        return (
            f"<LocalBackend model={LOCAL_BACKEND_MODEL!r} active={self.active} "
            f"tokens_generated={self.tokens_generated} interrupted={self.interrupted}>"
        )

    @property
    def kind(self) -> BackendKind:
        """``BACKEND_LOCAL``."""
        return ai_integration_pb2.BACKEND_LOCAL

    @property
    def context_tokens(self) -> int:
        """``LOCAL_CONTEXT_TOKENS``."""
        return LOCAL_CONTEXT_TOKENS

    def count_tokens(self, text: str) -> int:
        """Tokens as ``tokenize`` cuts them."""
        return len(tokenize(text))

    async def generate(self, generation: Generation) -> Completion:
        """The whole completion (the stream, collected)."""
        parts: list[str] = []
        async with closing(self.stream(generation)) as pieces:
            async for piece in pieces:
                if isinstance(piece, Finish):
                    return Completion("".join(parts), piece)
                parts.append(piece)
        raise AssertionError("the local stream ended without a Finish")  # pragma: no cover

    async def stream(self, generation: Generation) -> AsyncIterator[str | Finish]:
        """One piece per generated token (fewer while a possible stop sequence is held back)."""
        context = tokenize(f"{generation.system_prompt or ''} {generation.prompt}")
        previous, last = ([START, START, *context])[-2:]
        rng = random.Random(generation.seed)  # None: seeded from the OS
        stops = StopScanner(generation.stop_sequences)
        produced = 0
        finished = False
        self.active += 1
        try:
            reason = ai_integration_pb2.FINISH_REASON_LENGTH
            while produced < generation.max_tokens:
                if self._token_interval:
                    await asyncio.sleep(self._token_interval)
                elif produced % _YIELD_EVERY == _YIELD_EVERY - 1:
                    await asyncio.sleep(0)
                token = self._model.sample(
                    self._model.choices(previous, last), rng, generation.temperature, allow_end=produced > 0
                )
                if token == END:
                    reason = ai_integration_pb2.FINISH_REASON_STOP
                    break
                produced += 1
                self.tokens_generated += 1
                previous, last = last, token
                text = stops.feed(_spaced(token, first=produced == 1))
                if text:
                    yield text
                if stops.matched:
                    reason = ai_integration_pb2.FINISH_REASON_STOP_SEQUENCE
                    break
            rest = stops.flush()
            if rest:
                yield rest
            finished = True
            yield Finish(reason, len(context), produced)
        finally:
            self.active -= 1
            if not finished:
                self.interrupted += 1


def load_local_backend(*, token_interval: float = 0.0) -> LocalBackend:
    """The built-in model, trained on the shipped corpus (a few milliseconds)."""
    return LocalBackend(TrigramModel.train(CORPUS), token_interval=token_interval)
