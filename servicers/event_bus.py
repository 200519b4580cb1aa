"""The event-bus target: durable publish/subscribe over an injected event log (JetStream in the mesh).

Publish and PublishBatch append events to the log, deduplicated by message id. Subscribe reads a
named durable consumer of the log and streams its events; each must be settled with Ack (by
consumer name and stream sequence) within the consumer's ack wait, or it comes again with a
higher delivery count, to this subscriber or to the next one that opens the same consumer.

Content type and attributes travel with the event in one header of the log (``Event-Meta``, a
JSON object), so they round-trip exactly whatever characters they hold.
"""

from __future__ import annotations

import collections
import json
import logging
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

import grpc
from gaming.common.v1 import common_pb2
from gaming.event_bus.v1 import event_bus_pb2, event_bus_pb2_grpc
from google.protobuf import duration_pb2, timestamp_pb2

from servicers.dependencies import Dependencies
from servicers.errors import RpcError, invalid_argument, not_found, rpc_error
from servicers.event_log import (
    ConsumerBusy,
    ConsumerMismatch,
    ConsumerNotFound,
    ConsumerSpec,
    EventLog,
    EventLogError,
    EventLogUnavailable,
    EventTooLarge,
    LogFull,
    LoggedEvent,
    NotPending,
    Settlement,
    StartPosition,
    TopicNotCovered,
)

TARGET = "event-bus"
SERVICE_NAMES = ("gaming.event_bus.v1.EventBusService",)

log = logging.getLogger(__name__)

MAX_PAYLOAD = 1 << 20
MAX_ATTRIBUTES = 32
MAX_TOPIC = 255
MAX_MESSAGE_ID = 128
MAX_CONTENT_TYPE = 128
DEFAULT_ACK_WAIT = 30.0
ACK_WAIT_RANGE = (1.0, 600.0)
DEFAULT_MAX_ACK_PENDING = 256
MAX_ACK_PENDING = 10_000
META_HEADER = "Event-Meta"

# Topic tokens are a safe subset of NATS subject tokens: no wildcard, space or control character.
_TOKEN = r"[A-Za-z0-9_-]+"
_TOPIC = re.compile(rf"{_TOKEN}(?:\.{_TOKEN})*")
_FILTER = re.compile(rf"(?:{_TOKEN}|\*)(?:\.(?:{_TOKEN}|\*))*(?:\.>)?|>")
_CONSUMER = re.compile(r"[A-Za-z0-9_-]{1,64}")
_PRINTABLE = re.compile(r"[\x20-\x7e]*")

_START = {
    event_bus_pb2.START_POSITION_NEW: StartPosition.NEW,
    event_bus_pb2.START_POSITION_ALL: StartPosition.ALL,
    event_bus_pb2.START_POSITION_FROM_SEQUENCE: StartPosition.FROM_SEQUENCE,
}
_SETTLEMENT = {
    event_bus_pb2.ACK_KIND_UNSPECIFIED: Settlement.ACK,
    event_bus_pb2.ACK_KIND_ACK: Settlement.ACK,
    event_bus_pb2.ACK_KIND_NAK: Settlement.NAK,
    event_bus_pb2.ACK_KIND_IN_PROGRESS: Settlement.IN_PROGRESS,
    event_bus_pb2.ACK_KIND_TERM: Settlement.TERM,
}
# How each failure of the log is answered: (code, ErrorInfo reason). Policy as data.
_LOG_ERRORS: dict[type[EventLogError], tuple[grpc.StatusCode, str]] = {
    TopicNotCovered: (grpc.StatusCode.NOT_FOUND, "TOPIC_NOT_COVERED"),
    LogFull: (grpc.StatusCode.RESOURCE_EXHAUSTED, "EVENT_LOG_FULL"),
    ConsumerNotFound: (grpc.StatusCode.NOT_FOUND, "CONSUMER_NOT_FOUND"),
    ConsumerMismatch: (grpc.StatusCode.FAILED_PRECONDITION, "CONSUMER_FILTER_MISMATCH"),
    ConsumerBusy: (grpc.StatusCode.ALREADY_EXISTS, "CONSUMER_BUSY"),
    NotPending: (grpc.StatusCode.NOT_FOUND, "EVENT_NOT_PENDING"),
    EventLogUnavailable: (grpc.StatusCode.UNAVAILABLE, "EVENT_LOG_UNAVAILABLE"),
}


class _EventFields(Protocol):
    """What PublishRequest and PublishBatchRequest share."""

    topic: str
    payload: bytes
    content_type: str
    message_id: str

    @property
    def attributes(self) -> Sequence[common_pb2.Attribute]: ...


def topic_problem(topic: str) -> str | None:
    """Why ``topic`` is not a valid topic, or None."""
    if not topic:
        return "is required"
    if len(topic) > MAX_TOPIC:
        return f"must be at most {MAX_TOPIC} characters"
    if "*" in topic or ">" in topic:
        return "must not contain wildcards"
    if not _TOPIC.fullmatch(topic):
        return "must be dot-separated tokens of [A-Za-z0-9_-]"
    return None


def filter_problem(topic_filter: str) -> str | None:
    """Why ``topic_filter`` is not a valid topic filter, or None."""
    if not topic_filter:
        return "is required"
    if len(topic_filter) > MAX_TOPIC:
        return f"must be at most {MAX_TOPIC} characters"
    if not _FILTER.fullmatch(topic_filter):
        return "must be dot-separated tokens of [A-Za-z0-9_-] or '*', with '>' only as the last token"
    return None


def event_problem(event: _EventFields) -> tuple[str, str] | None:
    """The first invalid field of an event to publish, as (field path, what is wrong), or None."""
    problem = topic_problem(event.topic)
    if problem:
        return "topic", problem
    if len(event.payload) > MAX_PAYLOAD:
        return "payload", f"must be at most {MAX_PAYLOAD} bytes, got {len(event.payload)}"
    if len(event.content_type) > MAX_CONTENT_TYPE or not _PRINTABLE.fullmatch(event.content_type):
        return "content_type", f"must be at most {MAX_CONTENT_TYPE} printable ASCII characters"
    if len(event.message_id) > MAX_MESSAGE_ID or not _PRINTABLE.fullmatch(event.message_id):
        return "message_id", f"must be at most {MAX_MESSAGE_ID} printable ASCII characters"
    if len(event.attributes) > MAX_ATTRIBUTES:
        return "attributes", f"must have at most {MAX_ATTRIBUTES} entries, got {len(event.attributes)}"
    seen: set[str] = set()
    for index, attribute in enumerate(event.attributes):
        if not attribute.key:
            return f"attributes[{index}].key", "is required"
        if attribute.key in seen:
            return f"attributes[{index}].key", f"duplicates key {attribute.key!r}"
        seen.add(attribute.key)
    return None


def _seconds(duration: duration_pb2.Duration) -> float:
    return duration.seconds + duration.nanos / 1e9


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(round(seconds * 1e9))
    return stamp


def _meta_headers(event: _EventFields) -> dict[str, str]:
    meta: dict[str, Any] = {}
    if event.content_type:
        meta["content_type"] = event.content_type
    if event.attributes:
        meta["attributes"] = [[a.key, a.value] for a in event.attributes]
    # ensure_ascii: a header value may hold no newline; JSON escapes every control character.
    return {META_HEADER: json.dumps(meta, separators=(",", ":"))} if meta else {}


def event_message(event: LoggedEvent) -> event_bus_pb2.Event:
    """The wire form of a delivered event."""
    meta: dict[str, Any] = {}
    raw = event.headers.get(META_HEADER)
    if raw:
        try:
            meta = json.loads(raw)
        except ValueError:
            log.warning("event %d has an unreadable %s header", event.sequence, META_HEADER)
    return event_bus_pb2.Event(
        sequence=event.sequence,
        topic=event.topic,
        payload=event.data,
        content_type=str(meta.get("content_type", "")),
        attributes=[common_pb2.Attribute(key=str(k), value=str(v)) for k, v in meta.get("attributes", [])],
        message_id=event.message_id,
        publish_time=_timestamp(event.time),
        delivery_count=event.delivery_count,
    )


def _log_error(err: EventLogError) -> RpcError:
    """How a failure of the log is answered (``_LOG_ERRORS``)."""
    if isinstance(err, EventTooLarge):
        return invalid_argument("payload", str(err))
    code, reason = _LOG_ERRORS.get(type(err), (grpc.StatusCode.UNAVAILABLE, "EVENT_LOG_UNAVAILABLE"))
    if code is grpc.StatusCode.UNAVAILABLE:
        log.warning("event log unavailable: %r", err)
    return rpc_error(code, str(err), reason)


class EventBusServicer(event_bus_pb2_grpc.EventBusServiceServicer):
    """Publishes events to the log and delivers them to durable consumers."""

    def __init__(self, event_log: EventLog, deps: Dependencies) -> None:
        self._log = event_log
        self._clock = deps.clock
        self._open: collections.Counter[str] = collections.Counter()

    def __repr__(self) -> str:
        return f"<EventBusServicer open_subscriptions={sorted(self.open_subscriptions)}>"

    @property
    def open_subscriptions(self) -> frozenset[str]:
        """Consumer names with a Subscribe open on this servicer."""
        return frozenset(name for name, count in self._open.items() if count > 0)

    async def _append(self, event: _EventFields) -> tuple[int, bool]:
        try:
            appended = await self._log.append(
                event.topic, event.payload, headers=_meta_headers(event), message_id=event.message_id
            )
        except EventLogError as err:
            raise _log_error(err) from err
        return appended.sequence, appended.duplicate

    async def Publish(
        self,
        request: event_bus_pb2.PublishRequest,
        context: grpc.aio.ServicerContext[event_bus_pb2.PublishRequest, event_bus_pb2.PublishResponse],
    ) -> event_bus_pb2.PublishResponse:
        """Stores one event; a repeated message id answers the original sequence, ``duplicate``."""
        problem = event_problem(request)
        if problem:
            raise invalid_argument(*problem)
        sequence, duplicate = await self._append(request)
        return event_bus_pb2.PublishResponse(sequence=sequence, duplicate=duplicate)

    async def PublishBatch(
        self,
        request_iterator: AsyncIterator[event_bus_pb2.PublishBatchRequest],
        context: grpc.aio.ServicerContext[event_bus_pb2.PublishBatchRequest, event_bus_pb2.PublishBatchResponse],
    ) -> event_bus_pb2.PublishBatchResponse:
        """Stores each streamed event in order; counts them once the client half-closes."""
        accepted = duplicates = last = 0
        async for event in request_iterator:
            problem = event_problem(event)
            if problem:
                # Events before this one stay stored: the batch is not atomic (see the proto).
                raise invalid_argument(problem[0], f"event {accepted}: {problem[1]}")
            sequence, duplicate = await self._append(event)
            accepted += 1
            duplicates += duplicate
            last = sequence
        return event_bus_pb2.PublishBatchResponse(
            accepted_count=accepted, duplicate_count=duplicates, last_sequence=last
        )

    def _consumer_spec(self, request: event_bus_pb2.SubscribeRequest) -> ConsumerSpec:
        if not _CONSUMER.fullmatch(request.consumer_name):
            raise invalid_argument("consumer_name", "must be 1 to 64 characters of [A-Za-z0-9_-]")
        problem = filter_problem(request.topic_filter)
        if problem:
            raise invalid_argument("topic_filter", problem)
        start = _START.get(request.start_position)
        if start is None:
            raise invalid_argument("start_position", "is required")
        if start is StartPosition.FROM_SEQUENCE and request.start_sequence == 0:
            raise invalid_argument("start_sequence", "must be above 0 with START_POSITION_FROM_SEQUENCE")
        ack_wait = DEFAULT_ACK_WAIT
        if request.HasField("ack_wait"):
            ack_wait = _seconds(request.ack_wait)
            if not ACK_WAIT_RANGE[0] <= ack_wait <= ACK_WAIT_RANGE[1]:
                raise invalid_argument("ack_wait", "must be from 1 s to 10 min")
        max_ack_pending = request.max_ack_pending or DEFAULT_MAX_ACK_PENDING
        if max_ack_pending > MAX_ACK_PENDING:
            raise invalid_argument("max_ack_pending", f"must be from 1 to {MAX_ACK_PENDING}")
        return ConsumerSpec(
            name=request.consumer_name,
            topic_filter=request.topic_filter,
            start=start,
            start_sequence=request.start_sequence,
            ack_wait=ack_wait,
            max_ack_pending=max_ack_pending,
        )

    async def Subscribe(
        self,
        request: event_bus_pb2.SubscribeRequest,
        context: grpc.aio.ServicerContext[event_bus_pb2.SubscribeRequest, event_bus_pb2.SubscribeResponse],
    ) -> AsyncIterator[event_bus_pb2.SubscribeResponse]:
        """Streams a durable consumer's events until the client cancels; each needs an Ack."""
        spec = self._consumer_spec(request)
        self._open[spec.name] += 1
        events = self._log.consume(spec)
        try:
            async for event in events:
                yield event_bus_pb2.SubscribeResponse(event=event_message(event))
        except EventLogError as err:
            raise _log_error(err) from err
        finally:
            # Closing the reader leaves unsettled events pending: they come again after the ack wait.
            await events.aclose()
            self._open[spec.name] -= 1
            if self._open[spec.name] <= 0:
                del self._open[spec.name]

    async def Ack(
        self,
        request: event_bus_pb2.AckRequest,
        context: grpc.aio.ServicerContext[event_bus_pb2.AckRequest, event_bus_pb2.AckResponse],
    ) -> event_bus_pb2.AckResponse:
        """Settles one delivered event: ACK, NAK (redeliver after a delay), IN_PROGRESS or TERM."""
        if not request.consumer_name:
            raise invalid_argument("consumer_name", "is required")
        if not _CONSUMER.fullmatch(request.consumer_name):
            # No consumer can have such a name: say so as the proto says for unknown consumers.
            raise not_found(f"no consumer {request.consumer_name!r}", "CONSUMER_NOT_FOUND")
        if request.sequence == 0:
            raise invalid_argument("sequence", "is required (above 0)")
        how = _SETTLEMENT.get(request.kind)
        if how is None:
            raise invalid_argument("kind", f"unknown ack kind {request.kind}")
        delay = _seconds(request.redeliver_delay) if request.HasField("redeliver_delay") else 0.0
        if delay < 0:
            raise invalid_argument("redeliver_delay", "must not be negative")
        try:
            ack_wait = await self._log.settle(request.consumer_name, request.sequence, how, delay=delay)
        except EventLogError as err:
            raise _log_error(err) from err
        response = event_bus_pb2.AckResponse()
        if how is Settlement.IN_PROGRESS:
            response.ack_deadline_time.CopyFrom(_timestamp(self._clock() + ack_wait))
        return response


async def create(deps: Dependencies) -> EventBusServicer:
    """The event-bus servicer on ``deps.event_log`` (its stream is created on first use)."""
    if deps.event_log is None:
        raise ValueError("event-bus needs Dependencies.event_log")
    return EventBusServicer(deps.event_log, deps)


add_to_server = event_bus_pb2_grpc.add_EventBusServiceServicer_to_server
