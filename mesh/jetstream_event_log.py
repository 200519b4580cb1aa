"""``servicers.event_log.EventLog`` on one NATS JetStream stream with durable pull consumers.

Events on topic ``t`` are stored on subject ``{subject_prefix}.t`` of one stream (created on
first use, with explicit limits, discarding NEW events when full so that publishers see the
stream is full instead of old events vanishing). Each durable consumer is read by one pull loop.

Settling by (consumer, sequence) from any replica: JetStream settles an event by a message to the
ack subject it was delivered with, which only the reader holds. So the reader answers requests
on a control subject ``{control_prefix}.{stream}.{consumer}`` (ping, settle), and ``settle`` on
another replica goes there. When no reader is open (it stopped or died before settling), the
ack subject is rebuilt from the consumer's state: JetStream reads only the stream sequence from
it for ACK, TERM and IN_PROGRESS, and for NAK only checks that the delivery sequence is in range.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Iterator, Mapping
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    ConsumerInfo,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from mesh.replication import VALID_REPLICAS, ensure_replicas, unplaceable
from mesh.storage_health import StorageHealth
from servicers.event_log import (
    Appended,
    ConsumerBusy,
    ConsumerMismatch,
    ConsumerNotFound,
    ConsumerSpec,
    EventLogUnavailable,
    EventTooLarge,
    LogFull,
    LoggedEvent,
    NotPending,
    Settlement,
    StartPosition,
    TopicNotCovered,
)

log = logging.getLogger(__name__)

# JetStream API error codes (nats-server errors.json).
_CONSUMER_NOT_FOUND = 10014
_STREAM_NOT_FOUND = 10059
_STORE_LIMIT = 10077  # "maximum bytes/messages exceeded" with DiscardPolicy.NEW
_CONSUMER_EXISTS = 10148  # create action: exists with another configuration

_SETTLE_PAYLOAD = {
    Settlement.ACK: b"+ACK",
    Settlement.NAK: b"-NAK",
    Settlement.IN_PROGRESS: b"+WPI",
    Settlement.TERM: b"+TERM",
}
_DELIVER = {StartPosition.NEW: DeliverPolicy.NEW, StartPosition.ALL: DeliverPolicy.ALL,
            StartPosition.FROM_SEQUENCE: DeliverPolicy.BY_START_SEQUENCE}
_MSG_ID = "Nats-Msg-Id"
_HEADER_OVERHEAD = len(b"NATS/1.0\r\n\r\n")


@contextlib.contextmanager
def _unavailable_on_nats_errors() -> Iterator[None]:
    """Connection, timeout and server-side failures of NATS become EventLogUnavailable."""
    try:
        yield
    except nats.errors.Error as err:
        raise EventLogUnavailable(str(err) or type(err).__name__) from err


def _settle_payload(how: Settlement, delay: float) -> bytes:
    if how is Settlement.NAK and delay > 0:
        return b"-NAK " + json.dumps({"delay": int(delay * 1e9)}).encode()
    return _SETTLE_PAYLOAD[how]


def _stop_if_cancelled() -> None:
    """Raise CancelledError if the reading task was asked to cancel and is still here.

    Python 3.11's ``asyncio.wait_for``, under nats-py's ``request`` and ``next_msg``, can swallow
    a cancellation that arrives as its result does (a no-responders answer, a heartbeat): the
    task then reads on, cancelled in name only, until the process ends. Checking each turn of
    the read loop ends it at the next message instead (cleanup runs as for any cancel)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError()


class _Reader:
    """The one open reader of a consumer in this process: what it delivered and has not seen settled."""

    def __init__(self, log: JetStreamEventLog, name: str) -> None:
        self.log = log
        self.name = name
        self.ack_wait = 30.0
        self.pending: dict[int, Msg] = {}  # stream sequence -> the delivery (its ack subject)
        self.outstanding = 0  # messages the current pull request may still bring

    async def settle(self, sequence: int, how: Settlement, delay: float) -> float:
        msg = self.pending.get(sequence)
        if msg is None or not msg.reply:
            raise NotPending(f"event {sequence} is not pending for consumer {self.name!r}")
        with _unavailable_on_nats_errors():
            # A request, not a publish: JetStream answers once it has applied the settlement.
            await self.log.nc.request(msg.reply, _settle_payload(how, delay), timeout=self.log.timeout)
        if how is not Settlement.IN_PROGRESS and self.pending.get(sequence) is msg:
            del self.pending[sequence]
        return self.ack_wait

    async def on_control(self, msg: Msg) -> None:
        """Answers pings (the consumer is held) and settlements from other replicas."""
        answer: dict[str, Any] = {"ok": True}
        try:
            request = json.loads(msg.data)
            if request.get("op") == "settle":
                how = Settlement(request["how"])
                answer["ack_wait"] = await self.settle(int(request["sequence"]), how, float(request.get("delay", 0)))
        except NotPending:
            answer = {"error": "not_pending"}
        except (EventLogUnavailable, ValueError, KeyError, TypeError) as err:
            answer = {"error": "unavailable", "detail": str(err)}
        if msg.reply:
            await self.log.nc.publish(msg.reply, json.dumps(answer).encode())


class JetStreamEventLog:
    """The event log on one JetStream stream; 1 replica locally, 3 on a cluster.

    Args:
        nc: a connected NATS client.
        stream: the stream's name.
        subject_prefix: events on topic ``t`` are stored on ``{subject_prefix}.t``.
        replicas: the stream's replica count.
        max_age: seconds an event is kept.
        max_bytes: the stream's size limit; beyond it new events are refused.
        max_event_bytes: the largest stored message (payload and headers).
        duplicate_window: seconds a message id is remembered for deduplication.
        control_prefix: subject prefix readers answer settlements on.
        pull_expires: seconds one pull request waits for events before it is renewed.
        pull_batch: events one pull request may bring; they count as delivered (their ack wait
            runs) from then on, so keep it small.
        timeout: seconds to wait for a JetStream answer.
        health: where the stream is probed and its failures reported (``mesh.storage_health``).

    A stream that exists with fewer replicas than ``replicas`` is scaled up (``mesh.replication``).
    """

    def __init__(
        self,
        nc: Client,
        *,
        stream: str = "EVENTS",
        subject_prefix: str = "events",
        replicas: int = 1,
        max_age: float = 7 * 24 * 3600.0,
        max_bytes: int = 1 << 30,
        max_event_bytes: int = (1 << 20) + (64 << 10),
        duplicate_window: float = 120.0,
        control_prefix: str = "_EVLOG",
        pull_expires: float = 5.0,
        pull_batch: int = 16,
        timeout: float = 5.0,
        health: StorageHealth | None = None,
    ) -> None:
        if replicas not in VALID_REPLICAS:
            raise ValueError("replicas must be 1, 3 or 5")
        self.nc = nc
        self.timeout = timeout
        self._js = nc.jetstream(timeout=timeout)
        self._stream = stream
        self._prefix = subject_prefix
        self._config = StreamConfig(
            name=stream,
            subjects=[f"{subject_prefix}.>"],
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.NEW,
            max_age=max_age,
            max_bytes=max_bytes,
            max_msg_size=max_event_bytes,
            duplicate_window=duplicate_window,
            num_replicas=replicas,
            storage=StorageType.FILE,
        )
        self._control_prefix = control_prefix
        self._pull_expires = pull_expires
        self._pull_batch = pull_batch
        self._stream_ready = False
        self._readers: dict[str, _Reader] = {}
        self._health = health

    def __repr__(self) -> str:
        return f"<JetStreamEventLog stream={self._stream!r} readers={sorted(self._readers)}>"

    async def _ensure_stream(self) -> None:
        with _unavailable_on_nats_errors():
            try:
                info = await self._js.stream_info(self._stream)
                await ensure_replicas(self._js, info, self._config.num_replicas or 1)
            except nats.js.errors.NotFoundError:
                # Creating with an identical config is idempotent, so racing replicas both succeed.
                try:
                    await self._js.add_stream(self._config)
                except nats.js.errors.APIError as err:
                    reason = unplaceable(err, f"stream {self._stream}", self._config.num_replicas or 1)
                    if reason is None:
                        raise
                    raise EventLogUnavailable(reason) from err
        if self._health is not None:
            self._health.track(self._stream)
        self._stream_ready = True

    # -- append -----------------------------------------------------------------------------

    async def append(
        self, topic: str, data: bytes, *, headers: Mapping[str, str] | None = None, message_id: str = ""
    ) -> Appended:
        if not self._stream_ready:
            await self._ensure_stream()
        sent = dict(headers or {})
        if message_id:
            sent[_MSG_ID] = message_id
        size = len(data) + (
            _HEADER_OVERHEAD + sum(len(k) + len(v.encode()) + 4 for k, v in sent.items()) if sent else 0
        )
        limit = min(self.nc.max_payload, self._config.max_msg_size or self.nc.max_payload)
        if size > limit:
            # Never send it: a message over max_payload makes nats-server drop the connection.
            raise EventTooLarge(f"event of {size} bytes is over the log's {limit}-byte limit")
        try:
            ack = await self._js.publish(f"{self._prefix}.{topic}", data, headers=sent or None)
        except nats.js.errors.NoStreamResponseError as err:
            # Nobody stored it: the stream is gone, or (on a cluster) it has no leader right now.
            if await self._stream_missing():
                raise TopicNotCovered(f"no stream stores topic {topic!r}") from err
            self._failed("append", err)
            raise EventLogUnavailable(f"stream {self._stream!r} has no leader") from err
        except nats.js.errors.APIError as err:
            if err.err_code == _STORE_LIMIT:
                raise LogFull(err.description or "the event log is full") from err
            self._failed("append", err)
            raise EventLogUnavailable(str(err)) from err
        except nats.errors.Error as err:
            self._failed("append", err)
            raise EventLogUnavailable(str(err) or type(err).__name__) from err
        return Appended(sequence=ack.seq, duplicate=bool(ack.duplicate))

    async def _stream_missing(self) -> bool:
        try:
            await self._js.stream_info(self._stream)
        except nats.js.errors.NotFoundError:
            return True
        except nats.errors.Error:
            return False
        return False

    def _failed(self, what: str, error: BaseException) -> None:
        if self._health is not None:
            self._health.failed(f"stream {self._stream} {what}", error)

    # -- consume ----------------------------------------------------------------------------

    def _control_subject(self, consumer: str) -> str:
        return f"{self._control_prefix}.{self._stream}.{consumer}"

    async def consume(self, spec: ConsumerSpec) -> AsyncGenerator[LoggedEvent, None]:
        if spec.name in self._readers:
            raise ConsumerBusy(f"consumer {spec.name!r} is already being read")
        reader = _Reader(self, spec.name)
        self._readers[spec.name] = reader  # before any await: closes the race within this process
        subscriptions: list[Subscription] = []
        try:
            await self._ensure_stream()
            await self._check_not_held_elsewhere(spec.name)
            reader.ack_wait = await self._open_consumer(spec)
            with _unavailable_on_nats_errors():
                subscriptions.append(await self.nc.subscribe(self._control_subject(spec.name), cb=reader.on_control))
                inbox = self.nc.new_inbox()
                deliveries = await self.nc.subscribe(inbox)
                subscriptions.append(deliveries)
            while True:
                msg = await self._next_delivery(reader, deliveries, inbox)
                meta = msg.metadata
                reader.pending[meta.sequence.stream] = msg
                yield self._event(msg, meta)
        finally:
            del self._readers[spec.name]
            with contextlib.suppress(nats.errors.Error):
                for subscription in subscriptions:
                    await subscription.unsubscribe()
                if len(subscriptions) == 2:
                    await self._return_unread(subscriptions[1])

    async def _return_unread(self, deliveries: Subscription) -> None:
        """NAKs events JetStream delivered to the reader that it never handed on, so the next
        reader gets them at once instead of after their ack wait.

        Only once the reader's inbox has no interest left: JetStream would otherwise hand the
        NAKed events straight back to the reader's still-open pull request. The server reads a
        connection in order, so the UNSUB sent before these NAKs is applied first. (No flush()
        for that here: this runs while the call is being cancelled, and a flush cancelled while
        waiting leaves nats-py's PING/PONG bookkeeping broken, which stalls the connection's
        requests.)
        """
        while deliveries.pending_msgs:
            msg = await deliveries.next_msg(timeout=self.timeout)
            if msg.reply and not (msg.headers or {}).get("Status"):
                await self.nc.publish(msg.reply, b"-NAK")

    async def _check_not_held_elsewhere(self, name: str) -> None:
        with _unavailable_on_nats_errors():
            try:
                await self.nc.request(self._control_subject(name), b'{"op":"ping"}', timeout=self.timeout)
            except nats.errors.NoRespondersError:
                return
        raise ConsumerBusy(f"consumer {name!r} is already being read")

    async def _open_consumer(self, spec: ConsumerSpec) -> float:
        """Creates the durable consumer, or checks and updates the existing one; its ack wait."""
        wanted = f"{self._prefix}.{spec.topic_filter}"
        config = ConsumerConfig(
            durable_name=spec.name,
            filter_subject=wanted,
            deliver_policy=_DELIVER[spec.start],
            opt_start_seq=spec.start_sequence if spec.start is StartPosition.FROM_SEQUENCE else None,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=spec.ack_wait,
            max_ack_pending=spec.max_ack_pending,
            max_deliver=-1,
        )
        info = await self._consumer_info(spec.name)
        if info is None:
            try:
                info = await self._consumer_request(config, "create")
            except nats.js.errors.APIError as err:
                if err.err_code != _CONSUMER_EXISTS:
                    raise EventLogUnavailable(str(err)) from err
                # Another replica created it meanwhile, perhaps differently: check it as found.
                info = await self._consumer_info(spec.name)
                if info is None:
                    raise EventLogUnavailable(str(err)) from err
        current = info.config
        if current.filter_subject != wanted:
            raise ConsumerMismatch(spec.name, self._topic(current.filter_subject or ""))
        if current.ack_wait != spec.ack_wait or current.max_ack_pending != spec.max_ack_pending:
            # Both are editable on a durable consumer; its position is kept.
            current.ack_wait, current.max_ack_pending = spec.ack_wait, spec.max_ack_pending
            try:
                await self._consumer_request(current, "update")
            except nats.js.errors.APIError as err:
                raise EventLogUnavailable(str(err)) from err
        return spec.ack_wait

    async def _consumer_info(self, name: str) -> ConsumerInfo | None:
        with _unavailable_on_nats_errors():
            try:
                info: ConsumerInfo = await self._js.consumer_info(self._stream, name)
                return info
            except nats.js.errors.NotFoundError as err:
                if err.err_code == _STREAM_NOT_FOUND:
                    raise TopicNotCovered(f"stream {self._stream!r} does not exist") from err
                return None

    async def _consumer_request(self, config: ConsumerConfig, action: str) -> ConsumerInfo:
        # nats-py's add_consumer sends no action, and JetStream then silently UPDATES an existing
        # consumer's filter: "create" makes a differing existing consumer an error instead.
        body = {"stream_name": self._stream, "config": config.as_dict(), "action": action}
        subject = f"$JS.API.CONSUMER.CREATE.{self._stream}.{config.durable_name}"
        with _unavailable_on_nats_errors():
            reply = await self.nc.request(subject, json.dumps(body).encode(), timeout=self.timeout)
        answer = json.loads(reply.data)
        if "error" in answer:
            raise nats.js.errors.APIError.from_error(answer["error"])
        info: ConsumerInfo = ConsumerInfo.from_response(answer)
        return info

    async def _next_delivery(self, reader: _Reader, deliveries: Subscription, inbox: str) -> Msg:
        """The next event for the reader, renewing pull requests as they end or expire."""
        with _unavailable_on_nats_errors():
            while True:
                _stop_if_cancelled()
                if reader.outstanding <= 0:
                    request = {"batch": self._pull_batch, "expires": int(self._pull_expires * 1e9)}
                    await self.nc.publish(
                        f"$JS.API.CONSUMER.MSG.NEXT.{self._stream}.{reader.name}",
                        json.dumps(request).encode(),
                        reply=inbox,
                    )
                    reader.outstanding = self._pull_batch
                try:
                    msg = await deliveries.next_msg(timeout=self._pull_expires + 1.0)
                except nats.errors.TimeoutError:
                    reader.outstanding = 0  # the request was lost (server restart): ask again
                    continue
                status = (msg.headers or {}).get("Status")
                if status is None and msg.reply:
                    reader.outstanding -= 1
                    return msg
                if status == "409" and "Consumer Deleted" in (msg.headers or {}).get("Description", ""):
                    raise ConsumerNotFound(f"consumer {reader.name!r} was deleted")
                if status != "100":  # not a heartbeat: 404/408/409 end the request
                    reader.outstanding = 0

    def _topic(self, subject: str) -> str:
        return subject.removeprefix(f"{self._prefix}.")

    def _event(self, msg: Msg, meta: Msg.Metadata) -> LoggedEvent:
        headers = {k: v for k, v in (msg.headers or {}).items() if not k.startswith("Nats-")}
        return LoggedEvent(
            sequence=meta.sequence.stream,
            topic=self._topic(msg.subject),
            data=msg.data,
            headers=headers,
            message_id=(msg.headers or {}).get(_MSG_ID, ""),
            time=meta.timestamp.timestamp(),
            delivery_count=meta.num_delivered,
        )

    # -- settle -----------------------------------------------------------------------------

    async def settle(self, consumer: str, sequence: int, how: Settlement, *, delay: float = 0.0) -> float:
        reader = self._readers.get(consumer)
        if reader is not None:
            return await reader.settle(sequence, how, delay)
        request = {"op": "settle", "sequence": sequence, "how": how.value, "delay": delay}
        with _unavailable_on_nats_errors():
            try:
                reply = await self.nc.request(
                    self._control_subject(consumer), json.dumps(request).encode(), timeout=self.timeout
                )
            except nats.errors.NoRespondersError:
                return await self._settle_unread(consumer, sequence, how, delay)
        answer = json.loads(reply.data)
        if answer.get("error") == "not_pending":
            raise NotPending(f"event {sequence} is not pending for consumer {consumer!r}")
        if "error" in answer:
            raise EventLogUnavailable(str(answer.get("detail", answer["error"])))
        return float(answer["ack_wait"])

    async def _settle_unread(self, consumer: str, sequence: int, how: Settlement, delay: float) -> float:
        """Settles an event of a consumer no reader holds, by its rebuilt ack subject.

        Pending is judged from the consumer's floors, so an event acknowledged out of order
        above the ack floor is settled again harmlessly instead of being NOT_FOUND.
        """
        info = await self._consumer_info(consumer)
        if info is None:
            raise ConsumerNotFound(f"consumer {consumer!r} does not exist")
        ack_floor = info.ack_floor.stream_seq if info.ack_floor else 0
        delivered = info.delivered.stream_seq if info.delivered else 0
        if not info.num_ack_pending or sequence <= ack_floor or sequence > delivered:
            raise NotPending(f"event {sequence} is not pending for consumer {consumer!r}")
        delivery = info.delivered.consumer_seq if info.delivered else 0
        subject = f"$JS.ACK.{self._stream}.{consumer}.1.{sequence}.{delivery}.0.0"
        with _unavailable_on_nats_errors():
            await self.nc.request(subject, _settle_payload(how, delay), timeout=self.timeout)
        return float(info.config.ack_wait or 30.0)
