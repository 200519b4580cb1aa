"""event-bus over NATS: publishing with deduplication, batches, durable consumers that resume, and
at-least-once delivery with explicit acks and redelivery, on a real JetStream stream."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, cast

import grpc
import nats
import nats.js.errors
import pytest
from gaming.common.v1 import common_pb2
from gaming.event_bus.v1 import event_bus_pb2 as eb
from gaming.event_bus.v1 import event_bus_pb2_grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nats.aio.client import Client

from mesh.jetstream_event_log import JetStreamEventLog
from nats_transport.testing import NatsServer
from servicers import event_bus
from servicers.dependencies import Dependencies
from servicers.event_log import ConsumerSpec, StartPosition
from tests._serving import served
from tests._waiting import wait_for

NOW = 1_700_000_000.5


def no_channel(target: str) -> Any:
    raise AssertionError(f"event-bus calls no other service (asked for {target!r})")


@dataclass
class Names:
    """One test's private stream, subjects and control subjects on the shared nats-server."""

    stream: str
    prefix: str
    control: str

    def log(self, nc: Client, **limits: Any) -> JetStreamEventLog:
        return JetStreamEventLog(
            nc, stream=self.stream, subject_prefix=self.prefix, control_prefix=self.control,
            max_bytes=limits.pop("max_bytes", 8 << 20), pull_expires=1.0, **limits,
        )


@pytest.fixture
async def names(nc: Client) -> AsyncIterator[Names]:
    tag = uuid.uuid4().hex[:10]
    found = Names(stream=f"EV_{tag}", prefix=f"ev_{tag}", control=f"_EVLOG_{tag}")
    yield found
    with contextlib.suppress(Exception):
        await nc.jetstream(timeout=2).delete_stream(found.stream)


@dataclass
class Bus:
    stub: event_bus_pb2_grpc.EventBusServiceAsyncStub
    servicer: event_bus.EventBusServicer
    log: JetStreamEventLog


@contextlib.asynccontextmanager
async def bus(nc: Client, event_log: JetStreamEventLog) -> AsyncIterator[Bus]:
    deps = Dependencies(storage=None, channel=no_channel, clock=lambda: NOW, event_log=event_log)  # type: ignore[arg-type]
    servicer = await event_bus.create(deps)
    async with served(nc, event_bus.add_to_server, servicer) as channel:
        stub = cast("event_bus_pb2_grpc.EventBusServiceAsyncStub", event_bus_pb2_grpc.EventBusServiceStub(channel))
        yield Bus(stub, servicer, event_log)
    # Let cancelled Subscribes finish closing their readers before the stream may be deleted.
    await wait_for(lambda: not servicer.open_subscriptions)


@pytest.fixture
async def b(nc: Client, names: Names) -> AsyncIterator[Bus]:
    async with bus(nc, names.log(nc)) as found:
        yield found


def seconds(value: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(value * 1e9))
    return duration


def subscription(
    name: str = "worker", topic_filter: str = ">", start: eb.StartPosition.ValueType = eb.START_POSITION_ALL,
    **fields: Any,
) -> eb.SubscribeRequest:
    return eb.SubscribeRequest(consumer_name=name, topic_filter=topic_filter, start_position=start, **fields)


async def next_event(call: Any, timeout: float = 5.0) -> eb.Event:
    """The next delivery of a Subscribe call, failing the test if none comes within ``timeout``."""
    response = await asyncio.wait_for(call.read(), timeout)
    assert response is not grpc.aio.EOF
    event: eb.Event = response.event
    return event


async def publish(b: Bus, topic: str = "game.match.ended", payload: bytes = b"{}", **fields: Any) -> eb.PublishResponse:
    response: eb.PublishResponse = await b.stub.Publish(eb.PublishRequest(topic=topic, payload=payload, **fields))
    return response


async def closed(b: Bus, call: Any, name: str = "worker") -> None:
    """Cancel a Subscribe call and wait until the servicer has let go of its consumer."""
    call.cancel()
    await wait_for(lambda: name not in b.servicer.open_subscriptions)


@contextlib.contextmanager
def rpc_error(code: grpc.StatusCode, field: str | None = None, reason: str | None = None) -> Iterator[None]:
    """Expect an RPC error with ``code``; with ``field``, a BadRequest naming it; with ``reason``, an
    ErrorInfo with it."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        yield
    assert caught.value.code() == code, caught.value.details()
    status = rpc_status.from_call(caught.value)
    if field is not None:
        assert status is not None
        bad = error_details_pb2.BadRequest()
        assert status.details[0].Unpack(bad)
        assert bad.field_violations[0].field == field
    if reason is not None:
        assert status is not None
        info = error_details_pb2.ErrorInfo()
        assert status.details[0].Unpack(info)
        assert info.reason == reason


async def test_a_published_event_is_delivered_with_everything_the_publisher_set(b: Bus) -> None:
    attributes = [common_pb2.Attribute(key="match_id", value="m-1"), common_pb2.Attribute(key="note", value="a\nb: c")]
    first = await publish(b, payload=b'{"winner": "red"}', content_type="application/json",
                          attributes=attributes, message_id="end-1")
    second = await publish(b, topic="game.match.started")
    assert second.sequence == first.sequence + 1
    assert not first.duplicate

    call = b.stub.Subscribe(subscription())
    event = await next_event(call)
    assert event.sequence == first.sequence
    assert event.topic == "game.match.ended"
    assert event.payload == b'{"winner": "red"}'
    assert event.content_type == "application/json"
    assert list(event.attributes) == attributes
    assert event.message_id == "end-1"
    assert event.delivery_count == 1
    assert event.publish_time.seconds > 0
    later = await next_event(call)
    assert (later.sequence, later.topic, later.content_type, list(later.attributes)) == (
        second.sequence, "game.match.started", "", [])
    call.cancel()


async def test_a_repeated_message_id_is_stored_once_and_reports_the_original_sequence(b: Bus) -> None:
    original = await publish(b, message_id="retry-me")
    repeat = await publish(b, payload=b"different", message_id="retry-me")
    other = await publish(b, message_id="another")
    assert (repeat.sequence, repeat.duplicate) == (original.sequence, True)
    assert other.sequence == original.sequence + 1

    call = b.stub.Subscribe(subscription())
    assert [(await next_event(call)).message_id for _ in range(2)] == ["retry-me", "another"]
    call.cancel()


async def test_a_batch_reports_accepted_and_duplicate_counts_and_the_last_sequence(b: Bus) -> None:
    before = await publish(b)

    async def events() -> AsyncIterator[eb.PublishBatchRequest]:
        for index in range(5):
            yield eb.PublishBatchRequest(topic=f"batch.item{index}", payload=bytes([index]), message_id=f"b-{index}")
        yield eb.PublishBatchRequest(topic="batch.item0", message_id="b-0")  # a resend: duplicate

    answer = await b.stub.PublishBatch(events())
    assert (answer.accepted_count, answer.duplicate_count, answer.last_sequence) == (6, 1, before.sequence + 1)
    resent = await b.stub.PublishBatch(events())
    assert (resent.accepted_count, resent.duplicate_count, resent.last_sequence) == (6, 6, before.sequence + 1)


async def test_an_empty_batch_accepts_nothing(b: Bus) -> None:
    async def nothing() -> AsyncIterator[eb.PublishBatchRequest]:
        return
        yield

    answer = await b.stub.PublishBatch(nothing())
    assert (answer.accepted_count, answer.duplicate_count, answer.last_sequence) == (0, 0, 0)


async def test_a_bad_event_fails_the_batch_and_keeps_the_events_before_it(b: Bus) -> None:
    async def events() -> AsyncIterator[eb.PublishBatchRequest]:
        yield eb.PublishBatchRequest(topic="ok.one")
        yield eb.PublishBatchRequest(topic="ok.two")
        yield eb.PublishBatchRequest(topic="not ok")
        yield eb.PublishBatchRequest(topic="ok.three")

    with rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "topic"):
        await b.stub.PublishBatch(events())
    call = b.stub.Subscribe(subscription())
    assert [(await next_event(call)).topic for _ in range(2)] == ["ok.one", "ok.two"]
    assert (await publish(b)).sequence == 3  # "ok.three" was never stored
    call.cancel()


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"topic": ""}, "topic"),
        ({"topic": "game.*"}, "topic"),
        ({"topic": "game.>"}, "topic"),
        ({"topic": "game..ended"}, "topic"),
        ({"topic": "x" * 256}, "topic"),
        ({"payload": b"x" * ((1 << 20) + 1)}, "payload"),
        ({"content_type": "text/plain\r\nX-Evil: 1"}, "content_type"),
        ({"message_id": "m" * 129}, "message_id"),
        ({"attributes": [common_pb2.Attribute(key=f"k{i}") for i in range(33)]}, "attributes"),
        ({"attributes": [common_pb2.Attribute(key="k"), common_pb2.Attribute(key="k")]}, "attributes[1].key"),
        ({"attributes": [common_pb2.Attribute(key="", value="v")]}, "attributes[0].key"),
    ],
)
async def test_a_malformed_event_is_rejected_naming_the_field(b: Bus, fields: dict[str, Any], field: str) -> None:
    request = eb.PublishRequest(topic="game.ok", payload=b"x")
    for name, value in fields.items():
        if name == "attributes":
            request.attributes.extend(value)
        else:
            setattr(request, name, value)
    with rpc_error(grpc.StatusCode.INVALID_ARGUMENT, field):
        await b.stub.Publish(request)


async def test_an_event_of_exactly_one_mebibyte_is_refused_cleanly_when_nats_cannot_carry_it(b: Bus) -> None:
    # The test server's max_payload is 1 MiB, headers included: the log refuses before sending,
    # and the connection survives (nats-server would drop it for an oversized message).
    with rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "payload"):
        await publish(b, payload=b"x" * (1 << 20), message_id="big")
    assert not (await publish(b)).duplicate


async def test_a_full_stream_refuses_new_events_with_resource_exhausted(nc: Client, names: Names) -> None:
    async with bus(nc, names.log(nc, max_bytes=4096)) as small:
        with rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, reason="EVENT_LOG_FULL"):
            for _ in range(100):
                await publish(small, payload=b"x" * 500)


async def test_publishing_after_the_stream_was_deleted_is_not_found(nc: Client, b: Bus, names: Names) -> None:
    await publish(b)
    await nc.jetstream().delete_stream(names.stream)
    with rpc_error(grpc.StatusCode.NOT_FOUND, reason="TOPIC_NOT_COVERED"):
        await publish(b)


async def test_every_call_is_unavailable_when_jetstream_is_down(nc: Client, names: Names) -> None:
    with NatsServer(name="event-log") as own:
        log_nc = await nats.connect(own.url, allow_reconnect=False)
        async with bus(nc, names.log(log_nc, timeout=1.0)) as down:
            await publish(down)
            own.stop()
            await wait_for(lambda: log_nc.is_closed)
            with rpc_error(grpc.StatusCode.UNAVAILABLE, reason="EVENT_LOG_UNAVAILABLE"):
                await publish(down)
            with rpc_error(grpc.StatusCode.UNAVAILABLE):
                await next_event(down.stub.Subscribe(subscription()))
            with rpc_error(grpc.StatusCode.UNAVAILABLE):
                await down.stub.Ack(eb.AckRequest(consumer_name="worker", sequence=1))


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"consumer_name": ""}, "consumer_name"),
        ({"consumer_name": "has.dot"}, "consumer_name"),
        ({"consumer_name": "x" * 65}, "consumer_name"),
        ({"topic_filter": ""}, "topic_filter"),
        ({"topic_filter": "game.>.x"}, "topic_filter"),
        ({"topic_filter": "game.ma*"}, "topic_filter"),
        ({"start_position": eb.START_POSITION_UNSPECIFIED}, "start_position"),
        ({"start_position": eb.START_POSITION_FROM_SEQUENCE}, "start_sequence"),
        ({"ack_wait": seconds(0.5)}, "ack_wait"),
        ({"ack_wait": seconds(601)}, "ack_wait"),
        ({"max_ack_pending": 10_001}, "max_ack_pending"),
    ],
)
async def test_a_malformed_subscription_is_rejected_naming_the_field(
    b: Bus, fields: dict[str, Any], field: str
) -> None:
    request = subscription()
    for name, value in fields.items():
        if name == "ack_wait":
            request.ack_wait.CopyFrom(value)
        else:
            setattr(request, name, value)
    with rpc_error(grpc.StatusCode.INVALID_ARGUMENT, field):
        await next_event(b.stub.Subscribe(request))


async def test_an_unacked_event_comes_again_with_a_higher_delivery_count_after_its_subscriber_dies(b: Bus) -> None:
    sent = await publish(b, message_id="once")
    first = b.stub.Subscribe(subscription(ack_wait=seconds(1)))
    event = await next_event(first)
    assert (event.sequence, event.delivery_count) == (sent.sequence, 1)
    await closed(b, first)  # the subscriber dies before acking

    again = b.stub.Subscribe(subscription(ack_wait=seconds(1)))
    redelivered = await next_event(again)
    assert (redelivered.sequence, redelivered.message_id, redelivered.delivery_count) == (sent.sequence, "once", 2)
    await b.stub.Ack(eb.AckRequest(consumer_name="worker", sequence=redelivered.sequence))
    again.cancel()


async def test_a_new_subscribe_resumes_after_the_events_the_last_one_acked(b: Bus) -> None:
    sent = [await publish(b, topic=f"t.n{i}") for i in range(3)]
    first = b.stub.Subscribe(subscription())
    for expected in sent:
        event = await next_event(first)
        assert event.sequence == expected.sequence
        await b.stub.Ack(eb.AckRequest(consumer_name="worker", sequence=event.sequence, kind=eb.ACK_KIND_ACK))
    await closed(b, first)

    later = [await publish(b, topic=f"t.n{i}") for i in range(3, 5)]
    resumed = b.stub.Subscribe(subscription(start=eb.START_POSITION_FROM_SEQUENCE, start_sequence=1))
    assert [(await next_event(resumed)).sequence for _ in later] == [p.sequence for p in later]
    resumed.cancel()


async def test_start_positions_apply_to_a_new_consumer(nc: Client, b: Bus, names: Names) -> None:
    sent = [await publish(b, topic=f"t.n{i}") for i in range(3)]
    from_second = b.stub.Subscribe(subscription("from-2", start=eb.START_POSITION_FROM_SEQUENCE,
                                                start_sequence=sent[1].sequence))
    assert (await next_event(from_second)).sequence == sent[1].sequence

    only_new = b.stub.Subscribe(subscription("only-new", start=eb.START_POSITION_NEW))
    # An event published once the consumer exists is its first.
    await wait_for(lambda: _consumer_exists(nc, names, "only-new"))
    fresh = await publish(b, topic="t.fresh")
    assert (await next_event(only_new)).sequence == fresh.sequence
    from_second.cancel()
    only_new.cancel()


async def test_a_topic_filter_delivers_only_matching_topics(b: Bus) -> None:
    for topic in ("game.match.ended", "game.lobby.opened", "game.match.started", "chat.sent"):
        await publish(b, topic=topic)
    matches = b.stub.Subscribe(subscription("matches", topic_filter="game.match.*"))
    assert [(await next_event(matches)).topic for _ in range(2)] == ["game.match.ended", "game.match.started"]
    everything_game = b.stub.Subscribe(subscription("games", topic_filter="game.>"))
    assert [(await next_event(everything_game)).topic for _ in range(3)] == [
        "game.match.ended", "game.lobby.opened", "game.match.started"]
    matches.cancel()
    everything_game.cancel()


async def test_delivery_pauses_at_max_ack_pending_until_an_event_is_settled(nc: Client, b: Bus, names: Names) -> None:
    sent = [await publish(b, topic=f"t.n{i}") for i in range(3)]
    call = b.stub.Subscribe(subscription(max_ack_pending=2))
    first, second = await next_event(call), await next_event(call)
    assert [first.sequence, second.sequence] == [sent[0].sequence, sent[1].sequence]

    async def third_is_held_back() -> bool:
        info = await nc.jetstream().consumer_info(names.stream, "worker")
        return bool(info.num_ack_pending == 2 and info.num_pending == 1)

    await wait_for(third_is_held_back)
    await b.stub.Ack(eb.AckRequest(consumer_name="worker", sequence=first.sequence))
    assert (await next_event(call)).sequence == sent[2].sequence
    call.cancel()


async def test_a_consumer_cannot_be_reopened_with_another_topic_filter(b: Bus) -> None:
    call = b.stub.Subscribe(subscription(topic_filter="game.>"))
    await publish(b)
    await next_event(call)
    await closed(b, call)
    with rpc_error(grpc.StatusCode.FAILED_PRECONDITION, reason="CONSUMER_FILTER_MISMATCH"):
        await next_event(b.stub.Subscribe(subscription(topic_filter="chat.>")))


async def test_only_one_subscribe_may_hold_a_consumer(nc: Client, b: Bus, names: Names) -> None:
    await publish(b)
    holder = b.stub.Subscribe(subscription())
    await next_event(holder)
    with rpc_error(grpc.StatusCode.ALREADY_EXISTS, reason="CONSUMER_BUSY"):
        await next_event(b.stub.Subscribe(subscription()))
    # Also when the second Subscribe lands on another replica, with its own log and connection.
    other_nc = await nats.connect(nc.connected_url.geturl())  # type: ignore[union-attr]
    try:
        async with bus(nc, names.log(other_nc)) as replica:
            with rpc_error(grpc.StatusCode.ALREADY_EXISTS):
                await next_event(replica.stub.Subscribe(subscription()))
    finally:
        await other_nc.close()
    holder.cancel()


async def test_a_nak_redelivers_at_once_and_term_gives_up_on_the_event(b: Bus) -> None:
    sent = await publish(b)
    call = b.stub.Subscribe(subscription())
    event = await next_event(call)
    await b.stub.Ack(eb.AckRequest(consumer_name="worker", sequence=event.sequence, kind=eb.ACK_KIND_NAK))
    again = await next_event(call)
    assert (again.sequence, again.delivery_count) == (sent.sequence, 2)

    await b.stub.Ack(eb.AckRequest(consumer_name="worker", sequence=again.sequence, kind=eb.ACK_KIND_TERM))
    with rpc_error(grpc.StatusCode.NOT_FOUND, reason="EVENT_NOT_PENDING"):
        await b.stub.Ack(eb.AckRequest(consumer_name="worker", sequence=again.sequence))
    call.cancel()


async def test_a_nak_with_a_delay_redelivers_later(b: Bus) -> None:
    await publish(b, topic="slow.one")
    call = b.stub.Subscribe(subscription())
    event = await next_event(call)
    await b.stub.Ack(eb.AckRequest(consumer_name="worker", sequence=event.sequence, kind=eb.ACK_KIND_NAK,
                                   redeliver_delay=seconds(0.3)))
    fresh = await publish(b, topic="slow.two")
    # The delayed event waits its turn: the fresh one overtakes it.
    assert (await next_event(call)).sequence == fresh.sequence
    delayed = await next_event(call)
    assert (delayed.sequence, delayed.delivery_count) == (event.sequence, 2)
    call.cancel()


async def test_in_progress_extends_the_ack_wait_and_reports_the_new_deadline(b: Bus) -> None:
    await publish(b)
    call = b.stub.Subscribe(subscription(ack_wait=seconds(20)))
    event = await next_event(call)
    answer = await b.stub.Ack(eb.AckRequest(consumer_name="worker", sequence=event.sequence,
                                            kind=eb.ACK_KIND_IN_PROGRESS))
    assert answer.ack_deadline_time.ToNanoseconds() == int((NOW + 20) * 1e9)
    # Still pending: it can be acked afterwards, once.
    plain = await b.stub.Ack(eb.AckRequest(consumer_name="worker", sequence=event.sequence))
    assert not plain.HasField("ack_deadline_time")
    call.cancel()


async def test_ack_errors_follow_the_contract(b: Bus) -> None:
    await publish(b)
    with rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "consumer_name"):
        await b.stub.Ack(eb.AckRequest(sequence=1))
    with rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "sequence"):
        await b.stub.Ack(eb.AckRequest(consumer_name="worker"))
    with rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "kind"):
        await b.stub.Ack(eb.AckRequest(consumer_name="worker", sequence=1, kind=99))  # type: ignore[arg-type]
    with rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "redeliver_delay"):
        await b.stub.Ack(eb.AckRequest(consumer_name="worker", sequence=1, redeliver_delay=seconds(-1)))
    with rpc_error(grpc.StatusCode.NOT_FOUND, reason="CONSUMER_NOT_FOUND"):
        await b.stub.Ack(eb.AckRequest(consumer_name="nobody", sequence=1))
    with rpc_error(grpc.StatusCode.NOT_FOUND, reason="CONSUMER_NOT_FOUND"):
        await b.stub.Ack(eb.AckRequest(consumer_name="no.such>name", sequence=1))  # no consumer can have it
    call = b.stub.Subscribe(subscription())
    event = await next_event(call)
    with rpc_error(grpc.StatusCode.NOT_FOUND, reason="EVENT_NOT_PENDING"):
        await b.stub.Ack(eb.AckRequest(consumer_name="worker", sequence=event.sequence + 5))  # never delivered
    await b.stub.Ack(eb.AckRequest(consumer_name="worker", sequence=event.sequence))
    with rpc_error(grpc.StatusCode.NOT_FOUND, reason="EVENT_NOT_PENDING"):
        await b.stub.Ack(eb.AckRequest(consumer_name="worker", sequence=event.sequence))  # already settled
    call.cancel()


async def test_an_ack_on_another_replica_settles_the_event(nc: Client, b: Bus, names: Names) -> None:
    await publish(b)
    call = b.stub.Subscribe(subscription())
    event = await next_event(call)
    other_nc = await nats.connect(nc.connected_url.geturl())  # type: ignore[union-attr]
    try:
        async with bus(nc, names.log(other_nc)) as replica:
            await replica.stub.Ack(eb.AckRequest(consumer_name="worker", sequence=event.sequence))
            with rpc_error(grpc.StatusCode.NOT_FOUND, reason="EVENT_NOT_PENDING"):
                await replica.stub.Ack(eb.AckRequest(consumer_name="worker", sequence=event.sequence))
    finally:
        await other_nc.close()
    info = await nc.jetstream().consumer_info(names.stream, "worker")
    assert info.num_ack_pending == 0
    call.cancel()


async def test_an_ack_after_the_subscriber_left_still_settles_the_event(nc: Client, b: Bus, names: Names) -> None:
    await publish(b)
    call = b.stub.Subscribe(subscription())
    event = await next_event(call)
    await closed(b, call)
    await b.stub.Ack(eb.AckRequest(consumer_name="worker", sequence=event.sequence))
    await wait_for(lambda: _no_ack_pending(nc, names))
    with rpc_error(grpc.StatusCode.NOT_FOUND, reason="EVENT_NOT_PENDING"):
        await b.stub.Ack(eb.AckRequest(consumer_name="worker", sequence=event.sequence))


async def _consumer_exists(nc: Client, names: Names, name: str) -> bool:
    try:
        await nc.jetstream().consumer_info(names.stream, name)
    except nats.js.errors.NotFoundError:
        return False
    return True


async def _no_ack_pending(nc: Client, names: Names) -> bool:
    info = await nc.jetstream().consumer_info(names.stream, "worker")
    return bool(info.num_ack_pending == 0)


async def test_a_restart_keeps_published_events_and_acknowledged_positions(
    nats_server: NatsServer, nc: Client, names: Names
) -> None:
    async with bus(nc, names.log(nc)) as before:
        await publish(before, topic="t.n0", message_id="m0")
        await publish(before, topic="t.n1", message_id="m1")
        call = before.stub.Subscribe(subscription())
        for _ in range(2):
            event = await next_event(call)
            await before.stub.Ack(eb.AckRequest(consumer_name="worker", sequence=event.sequence))
        await closed(before, call)
        unread = await publish(before, topic="t.n2", message_id="m2")

    nc2 = await nats.connect(nats_server.url)
    try:
        async with bus(nc2, names.log(nc2)) as after:
            # The dedup window survived too: a resend of an old event is not stored again.
            assert (await publish(after, topic="t.n0", message_id="m0")).duplicate
            resumed = after.stub.Subscribe(subscription())
            event = await next_event(resumed)
            assert (event.sequence, event.message_id, event.delivery_count) == (unread.sequence, "m2", 1)
            resumed.cancel()
    finally:
        await nc2.close()


async def test_events_the_log_pulled_but_never_handed_on_come_again_at_once(nc: Client, names: Names) -> None:
    event_log = names.log(nc)
    sent = [await event_log.append(f"t.n{i}", b"x") for i in range(5)]
    spec = ConsumerSpec(name="reader", topic_filter=">", start=StartPosition.ALL, ack_wait=600.0)
    first = event_log.consume(spec)
    assert (await anext(first)).sequence == sent[0].sequence
    await first.aclose()  # the reader had pulled a batch: the four it never yielded are NAKed
    again = event_log.consume(spec)
    # All four come before any ack wait could pass; redeliveries keep no particular order.
    events = [await asyncio.wait_for(anext(again), 5.0) for _ in range(4)]
    assert sorted((e.sequence, e.delivery_count) for e in events) == [(p.sequence, 2) for p in sent[1:]]
    await again.aclose()
