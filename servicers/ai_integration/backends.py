"""The inference backend interface, and what every backend shares: requests, results, errors, stops.

A backend serves one model. The servicer validates a request, turns it into a ``Generation``
and asks the model's backend either for the whole ``Completion`` or for a stream of text
pieces that ends with one ``Finish``. Backends report failures as ``BackendError`` carrying the
gRPC code the caller should see, so the mapping from a backend's own failures (HTTP statuses,
timeouts, refused connections) to gRPC codes lives inside each backend, next to its cause.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, TypeAlias, TypeVar

import grpc
from gaming.ai_integration.v1 import ai_integration_pb2

_T = TypeVar("_T")

FinishReason: TypeAlias = ai_integration_pb2.FinishReason.ValueType
BackendKind: TypeAlias = ai_integration_pb2.Backend.ValueType


@dataclass(frozen=True, slots=True, kw_only=True)
class Generation:
    """One validated generation request, as every backend receives it.

    Attributes:
        prompt: the user prompt (non-empty).
        system_prompt: instructions framing the prompt, or None.
        max_tokens: the most tokens to generate (already defaulted, 1 to 4096).
        temperature: sampling temperature in [0, 2]; 0 is greedy.
        seed: the random seed, or None for a random one.
        stop_sequences: strings at which generation stops; never part of the output.
        timeout: seconds left before the caller's deadline, or None when it set none.
    """

    prompt: str
    system_prompt: str | None = None
    max_tokens: int = 256
    temperature: float = 0.7
    seed: int | None = None
    stop_sequences: tuple[str, ...] = ()
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class Finish:
    """The end of a generation: why it stopped and the tokens it used."""

    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class Completion:
    """A whole generation: the text (without any stop sequence) and how it ended."""

    text: str
    finish: Finish


class BackendError(Exception):
    """A generation failed; ``code`` is the gRPC status the caller gets.

    Attributes:
        code: the status code (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ...).
        message: a message safe to show the caller (never credentials or raw bodies).
        reason: a machine-readable ErrorInfo reason, e.g. ``BACKEND_UNAVAILABLE``.
        retry_after: seconds the backend asked us to wait before retrying, if it said.
    """

    def __init__(
        self, code: grpc.StatusCode, message: str, *, reason: str, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.retry_after = retry_after


class Backend(Protocol):
    """An inference engine serving one model."""

    @property
    def kind(self) -> BackendKind:
        """Which kind of backend this is (``BACKEND_LOCAL``, ``BACKEND_OPENAI_COMPATIBLE``)."""
        ...

    @property
    def context_tokens(self) -> int | None:
        """The model's context window in tokens (prompt plus completion), None if unknown."""
        ...

    def count_tokens(self, text: str) -> int:
        """How many tokens ``text`` is, as this backend counts them (an estimate if remote)."""
        ...

    async def generate(self, generation: Generation) -> Completion:
        """The whole completion.

        Raises:
            BackendError: the backend failed; its ``code`` is what the caller sees.
        """
        ...

    def stream(self, generation: Generation) -> AsyncIterator[str | Finish]:
        """Text pieces as they are produced, then exactly one ``Finish``.

        Closing the iterator early (``aclose``, or cancelling the task reading it) stops the
        generation: a backend must not keep producing for a reader that has gone.

        Raises:
            BackendError: the backend failed, possibly after some pieces.
        """
        ...


class StopScanner:
    """Cuts a stream of text at the first stop sequence, holding back what might begin one.

    Text that could be the start of a stop sequence is held until the next piece shows whether
    it is, so a stop sequence split across pieces is still never sent to the caller.
    """

    def __init__(self, stop_sequences: tuple[str, ...]) -> None:
        self._stops = tuple(stop for stop in stop_sequences if stop)
        self._held = ""
        self.matched = False

    def feed(self, text: str) -> str:
        """The part of ``held + text`` that is safe to emit; sets ``matched`` on a stop."""
        if self.matched:
            return ""
        buffer = self._held + text
        hits = [index for index in (buffer.find(stop) for stop in self._stops) if index >= 0]
        if hits:
            self.matched = True
            self._held = ""
            return buffer[: min(hits)]
        keep = self._longest_stop_prefix_suffix(buffer)
        self._held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        """What is still held back, once the text has ended without a stop."""
        held, self._held = self._held, ""
        return "" if self.matched else held

    def _longest_stop_prefix_suffix(self, buffer: str) -> int:
        longest = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(buffer)), longest, -1):
                if buffer.endswith(stop[:size]):
                    longest = size
                    break
        return longest


@contextlib.asynccontextmanager
async def closing(stream: AsyncIterator[_T]) -> AsyncIterator[AsyncIterator[_T]]:
    """Use ``stream`` and close it on the way out, however the block ends.

    ``contextlib.aclosing`` wants an object typed with ``aclose``; a backend's stream is typed
    as a plain ``AsyncIterator`` (it is an async generator in practice), so close it if it can be.
    Closing is what stops a backend that is still producing.
    """
    try:
        yield stream
    finally:
        close = getattr(stream, "aclose", None)
        if close is not None:
            await close()
