"""What the event bus needs from a durable event log, as a protocol: the mesh injects a JetStream one.

A key/value bucket cannot give the event bus what it promises (an ordered log, deduplication by
message id, durable consumers with per-event acknowledgement and redelivery), so the event bus
sees this protocol instead, never a NATS client (the implementation lives in
``mesh.jetstream_event_log``).

Errors, all raised by the log and mapped to gRPC codes by the servicer::

    EventLogError
    ├── TopicNotCovered      no stream stores the topic (it was deleted)
    ├── LogFull              the log reached its size limit and refuses new events
    ├── EventTooLarge        the event does not fit in one log message
    ├── ConsumerNotFound     no durable consumer has that name
    ├── ConsumerMismatch     the consumer exists with another topic filter
    ├── ConsumerBusy         another reader already holds the consumer open
    ├── NotPending           the event is not delivered-and-unsettled for the consumer
    └── EventLogUnavailable  the log cannot be reached
"""

from __future__ import annotations

import enum
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import Protocol


class StartPosition(enum.Enum):
    """Where a new durable consumer starts reading (ignored when it already exists)."""

    NEW = "new"
    ALL = "all"
    FROM_SEQUENCE = "from_sequence"


class Settlement(enum.Enum):
    """How a delivered event is settled."""

    ACK = "ack"
    NAK = "nak"
    IN_PROGRESS = "in_progress"
    TERM = "term"


@dataclass(frozen=True, slots=True)
class Appended:
    """Where an appended event was stored: ``duplicate`` when its message id was already seen
    within the deduplication window (``sequence`` is then the original's)."""

    sequence: int
    duplicate: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class LoggedEvent:
    """One stored event as delivered to a consumer."""

    sequence: int
    topic: str
    data: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    message_id: str = ""
    time: float = 0.0  # seconds since the epoch, when the log stored it
    delivery_count: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsumerSpec:
    """A durable consumer to create, or to resume when it already exists.

    Attributes:
        name: durable name, ``[A-Za-z0-9_-]``.
        topic_filter: topics to receive; ``*`` matches one token, a final ``>`` the rest.
        start: where a new consumer starts.
        start_sequence: first sequence for ``StartPosition.FROM_SEQUENCE``.
        ack_wait: seconds an event may stay unsettled before it is redelivered.
        max_ack_pending: events delivered but unsettled before delivery pauses.
    """

    name: str
    topic_filter: str
    start: StartPosition
    start_sequence: int = 0
    ack_wait: float = 30.0
    max_ack_pending: int = 256


class EventLogError(Exception):
    """Base of the event log's errors."""


class TopicNotCovered(EventLogError):
    """No stream of the log stores this topic."""


class LogFull(EventLogError):
    """The log is at its size limit and refuses new events until old ones age out."""


class EventTooLarge(EventLogError):
    """The event (payload and headers) is larger than one log message may be."""


class ConsumerNotFound(EventLogError):
    """No durable consumer has this name."""


class ConsumerMismatch(EventLogError):
    """The consumer exists with another topic filter; ``current`` is that filter."""

    def __init__(self, name: str, current: str) -> None:
        super().__init__(f"consumer {name!r} exists with topic filter {current!r}")
        self.name = name
        self.current = current


class ConsumerBusy(EventLogError):
    """Another reader holds the consumer open."""


class NotPending(EventLogError):
    """The event is not delivered-and-unsettled for this consumer (settled, or never delivered)."""


class EventLogUnavailable(EventLogError):
    """The log cannot be reached (connection lost, storage down, timeout)."""


class EventLog(Protocol):
    """An append-only log of events on topics, read by named durable consumers."""

    async def append(
        self, topic: str, data: bytes, *, headers: Mapping[str, str] | None = None, message_id: str = ""
    ) -> Appended:
        """Store one event; a ``message_id`` seen within the deduplication window is not stored
        again.

        Raises:
            TopicNotCovered, LogFull, EventTooLarge, EventLogUnavailable.
        """
        ...

    def consume(self, spec: ConsumerSpec) -> AsyncGenerator[LoggedEvent, None]:
        """Create or resume the durable consumer and yield its events until closed (``aclose``).

        Each event must be settled (``settle``) within the consumer's ack wait, or it is yielded
        again with a higher ``delivery_count``, to this reader or the next one. Only one reader
        may hold a consumer at a time. Errors are raised by the first ``__anext__``.

        Raises:
            ConsumerMismatch, ConsumerBusy, TopicNotCovered, EventLogUnavailable.
        """
        ...

    async def settle(self, consumer: str, sequence: int, how: Settlement, *, delay: float = 0.0) -> float:
        """Settle one delivered event of ``consumer`` by its sequence; ``delay`` is the redelivery
        delay of a NAK. Returns the consumer's ack wait in seconds (the time an IN_PROGRESS event
        now has before it is redelivered).

        Raises:
            ConsumerNotFound, NotPending, EventLogUnavailable.
        """
        ...
