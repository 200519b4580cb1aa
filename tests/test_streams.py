"""Streaming calls over the asyncio channel: the three streaming kinds, their ends, and flow control.

Generated stubs of our own protos carry the calls: EventBusService.Subscribe (server-streaming),
EventBusService.PublishBatch (client-streaming) and NpcBehaviorService.DecisionStream (bidi),
served by small servicers defined here.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from gaming.event_bus.v1 import event_bus_pb2 as eb
from gaming.event_bus.v1 import event_bus_pb2_grpc as eb_grpc
from gaming.npc_behavior.v1 import npc_behavior_pb2 as npc
from gaming.npc_behavior.v1 import npc_behavior_pb2_grpc as npc_grpc
from nats.aio.client import Client

import nats_transport
from tests._waiting import wait_for

MiB = 1024 * 1024


def _event(sequence: int, payload: bytes = b"") -> eb.SubscribeResponse:
    return eb.SubscribeResponse(event=eb.Event(sequence=sequence, topic="t", payload=payload))


def _subscribe(count: int) -> eb.SubscribeRequest:
    """A Subscribe request; the test servicers read ``max_ack_pending`` as how many events to send."""
    return eb.SubscribeRequest(consumer_name="c", topic_filter="t", max_ack_pending=count)


def _batch(i: int) -> eb.PublishBatchRequest:
    return eb.PublishBatchRequest(topic="t", message_id=str(i))


def _decision(i: int, npc_id: str = "npc") -> npc.DecisionStreamRequest:
    return npc.DecisionStreamRequest(client_sequence=i, state=npc.NpcState(npc_id=npc_id))


class Harness:
    """A server for a fresh target with the given servicers, and an asyncio channel to it."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.target = f"streams-{uuid.uuid4().hex[:12]}"
        self.server: nats_transport.aio.Server | None = None
        self.channels: list[nats_transport.aio.Channel] = []

    async def serve(self, *, events=None, npcs=None) -> None:
        self.server = nats_transport.aio.server(self.nc, self.target)
        if events is not None:
            eb_grpc.add_EventBusServiceServicer_to_server(events, self.server)
        if npcs is not None:
            npc_grpc.add_NpcBehaviorServiceServicer_to_server(npcs, self.server)
        await self.server.start()

    def channel(self, options: nats_transport.ChannelOptions | None = None) -> nats_transport.aio.Channel:
        channel = nats_transport.aio.channel(self.nc, self.target, options=options)
        self.channels.append(channel)
        return channel

    def events(self, **kwargs) -> eb_grpc.EventBusServiceStub:
        return eb_grpc.EventBusServiceStub(self.channel(**kwargs))

    def npcs(self) -> npc_grpc.NpcBehaviorServiceStub:
        return npc_grpc.NpcBehaviorServiceStub(self.channel())

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()
        if self.server is not None:
            await self.server.stop(grace=None)


@pytest.fixture
async def harness(nc: Client) -> AsyncIterator[Harness]:
    h = Harness(nc)
    yield h
    await h.close()


# -- test servicers -----------------------------------------------------------------------------


class GeneratorEvents(eb_grpc.EventBusServiceServicer):
    """Subscribe as an async generator; PublishBatch counts what it receives."""

    def __init__(self) -> None:
        self.received: list[str] = []

    async def Subscribe(self, request, context):
        for i in range(1, request.max_ack_pending + 1):
            yield _event(i)

    async def PublishBatch(self, request_iterator, context):
        async for request in request_iterator:
            self.received.append(request.message_id)
        last = int(self.received[-1]) if self.received else 0
        return eb.PublishBatchResponse(accepted_count=len(self.received), last_sequence=last)


class WritingEvents(eb_grpc.EventBusServiceServicer):
    """Subscribe through ``await context.write()``, returning None at the end."""

    async def Subscribe(self, request, context):
        for i in range(1, request.max_ack_pending + 1):
            await context.write(_event(i))


class PlainEvents(eb_grpc.EventBusServiceServicer):
    """Plain functions, run in the server's thread pool: a generator and an iterator consumer."""

    def Subscribe(self, request, context):
        for i in range(1, request.max_ack_pending + 1):
            yield _event(i)

    def PublishBatch(self, request_iterator, context):
        ids = [request.message_id for request in request_iterator]
        return eb.PublishBatchResponse(accepted_count=len(ids), last_sequence=int(ids[-1]) if ids else 0)


class EchoNpcs(npc_grpc.NpcBehaviorServiceServicer):
    """DecisionStream answers each request with its client_sequence and npc_id."""

    async def DecisionStream(self, request_iterator, context):
        async for request in request_iterator:
            yield npc.DecisionStreamResponse(client_sequence=request.client_sequence, npc_id=request.state.npc_id)


# -- server streaming ---------------------------------------------------------------------------


@pytest.mark.parametrize("servicer", [GeneratorEvents, WritingEvents, PlainEvents])
async def test_server_stream_delivers_every_message_in_order(harness, servicer):
    await harness.serve(events=servicer())

    call = harness.events().Subscribe(_subscribe(50), timeout=5)
    sequences = [response.event.sequence async for response in call]

    assert sequences == list(range(1, 51))
    assert await call.code() == grpc.StatusCode.OK


@pytest.mark.parametrize("servicer", [GeneratorEvents, WritingEvents, PlainEvents])
async def test_server_stream_with_no_messages_ends_ok(harness, servicer):
    await harness.serve(events=servicer())

    call = harness.events().Subscribe(_subscribe(0), timeout=5)

    assert await call.read() is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK


async def test_server_stream_read_and_iteration_agree(harness):
    await harness.serve(events=GeneratorEvents())

    call = harness.events().Subscribe(_subscribe(3), timeout=5)
    first = await call.read()
    rest = [response.event.sequence async for response in call]

    assert first.event.sequence == 1
    assert rest == [2, 3]


# -- client streaming ---------------------------------------------------------------------------


async def test_client_stream_of_ten_thousand_messages_from_an_async_iterator(harness):
    servicer = GeneratorEvents()
    await harness.serve(events=servicer)

    async def requests():
        for i in range(1, 10_001):
            yield _batch(i)

    reply = await harness.events().PublishBatch(requests(), timeout=10)

    assert reply.accepted_count == 10_000
    assert reply.last_sequence == 10_000
    assert servicer.received == [str(i) for i in range(1, 10_001)]


async def test_client_stream_of_ten_thousand_messages_by_write_and_done_writing(harness):
    servicer = GeneratorEvents()
    await harness.serve(events=servicer)

    call = harness.events().PublishBatch(timeout=10)
    for i in range(1, 10_001):
        await call.write(_batch(i))
    await call.done_writing()
    reply = await call

    assert reply.accepted_count == 10_000
    assert servicer.received == [str(i) for i in range(1, 10_001)]
    assert await call.code() == grpc.StatusCode.OK


async def test_client_stream_to_a_plain_function_handler(harness):
    await harness.serve(events=PlainEvents())

    reply = await harness.events().PublishBatch(iter([_batch(i) for i in range(1, 101)]), timeout=5)

    assert reply.accepted_count == 100
    assert reply.last_sequence == 100


async def test_empty_request_stream_gets_a_response(harness):
    servicer = GeneratorEvents()
    await harness.serve(events=servicer)

    async def nothing():
        return
        yield

    reply = await harness.events().PublishBatch(nothing(), timeout=5)

    assert reply.accepted_count == 0
    assert servicer.received == []


async def test_half_close_without_writing_gets_a_response(harness):
    await harness.serve(events=GeneratorEvents())

    call = harness.events().PublishBatch(timeout=5)
    await call.done_writing()

    assert (await call).accepted_count == 0


class RejectingEvents(eb_grpc.EventBusServiceServicer):
    """PublishBatch fails after three requests, while the client is still sending."""

    def __init__(self) -> None:
        self.read = 0

    async def PublishBatch(self, request_iterator, context):
        async for _ in request_iterator:
            self.read += 1
            if self.read == 3:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "third event is bad")
        return eb.PublishBatchResponse()


async def test_server_failing_early_ends_a_request_iterator_with_its_status(harness):
    await harness.serve(events=RejectingEvents())

    async def endless():
        i = 0
        while True:
            i += 1
            yield _batch(i)

    call = harness.events().PublishBatch(endless(), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "third event is bad"
    assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_server_failing_early_makes_later_writes_raise_its_status(harness):
    servicer = RejectingEvents()
    await harness.serve(events=servicer)

    call = harness.events().PublishBatch(timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        for i in range(1_000_000):
            await call.write(_batch(i))

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert servicer.read == 3
    assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await call.details() == "third event is bad"


# -- bidi ---------------------------------------------------------------------------------------


async def test_bidi_ping_pong_for_a_hundred_rounds_stays_in_order(harness):
    await harness.serve(npcs=EchoNpcs())

    call = harness.npcs().DecisionStream(timeout=10)
    answered = []
    for i in range(100):
        await call.write(_decision(i))
        answered.append((await call.read()).client_sequence)
    await call.done_writing()

    assert answered == list(range(100))
    assert await call.read() is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK


async def test_bidi_with_an_empty_request_stream_ends_ok(harness):
    await harness.serve(npcs=EchoNpcs())

    call = harness.npcs().DecisionStream(timeout=5)
    await call.done_writing()

    assert await call.read() is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK


async def test_bidi_carries_three_mib_messages_both_ways(harness):
    await harness.serve(npcs=EchoNpcs())
    big = [(str(i) * 3 * MiB)[: 3 * MiB] for i in range(3)]

    call = harness.npcs().DecisionStream(timeout=20)
    echoed = []
    for i, npc_id in enumerate(big):
        await call.write(_decision(i, npc_id))
        echoed.append(await call.read())
    await call.done_writing()

    assert [r.client_sequence for r in echoed] == [0, 1, 2]
    assert [r.npc_id == sent for r, sent in zip(echoed, big, strict=True)] == [True, True, True]
    assert await call.code() == grpc.StatusCode.OK


async def test_bidi_request_iterator_and_response_iteration_together(harness):
    await harness.serve(npcs=EchoNpcs())

    async def requests():
        for i in range(200):
            yield _decision(i)

    call = harness.npcs().DecisionStream(requests(), timeout=10)
    answered = [response.client_sequence async for response in call]

    assert answered == list(range(200))


async def test_server_ending_ok_while_the_client_still_sends_ends_the_call_ok(harness):
    class FirstOnly(npc_grpc.NpcBehaviorServiceServicer):
        async def DecisionStream(self, request_iterator, context):
            async for request in request_iterator:
                yield npc.DecisionStreamResponse(client_sequence=request.client_sequence)
                return

    await harness.serve(npcs=FirstOnly())

    async def endless():
        i = 0
        while True:
            yield _decision(i)
            i += 1

    call = harness.npcs().DecisionStream(endless(), timeout=5)
    answered = [response.client_sequence async for response in call]

    assert answered == [0]
    assert await call.code() == grpc.StatusCode.OK


async def test_a_request_over_the_size_limit_fails_the_stream_with_resource_exhausted(harness):
    await harness.serve(npcs=EchoNpcs())
    call = harness.npcs().DecisionStream(timeout=5)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.write(_decision(0, "x" * (5 * MiB)))
        await call.read()

    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    await wait_for(lambda: harness.server.in_flight == 0)


async def test_a_response_over_the_size_limit_fails_the_stream_with_resource_exhausted(harness):
    class Huge(npc_grpc.NpcBehaviorServiceServicer):
        async def DecisionStream(self, request_iterator, context):
            async for _ in request_iterator:
                yield npc.DecisionStreamResponse(npc_id="y" * (5 * MiB))

    await harness.serve(npcs=Huge())
    call = harness.npcs().DecisionStream(timeout=5)
    await call.write(_decision(0))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()

    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    await wait_for(lambda: harness.server.in_flight == 0)


# -- cancellation and deadlines ----------------------------------------------------------------


class Watched(eb_grpc.EventBusServiceServicer):
    """Subscribe sends one event then waits forever, recording how it ended."""

    def __init__(self, first_events: int = 1) -> None:
        self.first_events = first_events
        self.context = None
        self.cancelled = False
        self.finished = False

    async def Subscribe(self, request, context):
        self.context = context
        try:
            for i in range(1, self.first_events + 1):
                await context.write(_event(i))
            await asyncio.Event().wait()  # a server that stalls mid-stream
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        finally:
            self.finished = True


async def test_client_cancel_reaches_the_server_handler(harness):
    servicer = Watched()
    await harness.serve(events=servicer)

    call = harness.events().Subscribe(_subscribe(0))
    assert (await call.read()).event.sequence == 1
    assert servicer.context.is_active()

    assert call.cancel()

    await wait_for(lambda: servicer.finished)
    assert servicer.cancelled
    assert servicer.context.cancelled()
    assert not servicer.context.is_active()
    await wait_for(lambda: harness.server.in_flight == 0)
    assert await call.code() == grpc.StatusCode.CANCELLED
    assert call.cancelled()


async def test_reading_a_cancelled_call_raises_cancelled_error_as_grpc_aio_does(harness):
    await harness.serve(events=Watched())

    call = harness.events().Subscribe(_subscribe(0), timeout=5)
    await call.read()
    call.cancel()

    # grpc.aio raises asyncio.CancelledError (not AioRpcError) once the caller cancelled.
    with pytest.raises(asyncio.CancelledError):
        await call.read()
    assert await call.code() == grpc.StatusCode.CANCELLED


async def test_cancel_right_after_starting_a_stream_call_ends_it(harness):
    await harness.serve(events=GeneratorEvents())

    call = harness.events().PublishBatch(timeout=5)
    assert call.cancel()

    assert call.cancelled()
    assert await call.code() == grpc.StatusCode.CANCELLED
    # Awaiting the response must end (grpc.aio raises CancelledError), never hang.
    with pytest.raises((asyncio.CancelledError, grpc.aio.AioRpcError)):
        await asyncio.wait_for(asyncio.ensure_future(_response_of(call)), 2)


async def _response_of(call):
    return await call


async def test_cancelling_a_client_stream_before_it_ends_reaches_the_server(harness):
    reading = asyncio.Event()
    outcome: list[str] = []

    class Reader(eb_grpc.EventBusServiceServicer):
        async def PublishBatch(self, request_iterator, context):
            try:
                async for _ in request_iterator:
                    reading.set()
            except asyncio.CancelledError:
                outcome.append("cancelled")
                raise
            outcome.append("ended")
            return eb.PublishBatchResponse()

    await harness.serve(events=Reader())
    call = harness.events().PublishBatch()
    await call.write(_batch(1))
    await asyncio.wait_for(reading.wait(), 5)

    call.cancel()

    await wait_for(lambda: outcome == ["cancelled"])
    await wait_for(lambda: harness.server.in_flight == 0)
    assert await call.code() == grpc.StatusCode.CANCELLED


async def test_deadline_during_a_stalled_server_stream_is_deadline_exceeded(harness):
    servicer = Watched(first_events=2)
    await harness.serve(events=servicer)

    call = harness.events().Subscribe(_subscribe(0), timeout=0.5)
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for response in call:
            received.append(response.event.sequence)

    assert received == [1, 2]
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert await call.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The server enforces the deadline too: its handler is cancelled.
    await wait_for(lambda: servicer.finished)
    assert servicer.cancelled
    await wait_for(lambda: harness.server.in_flight == 0)


async def test_deadline_before_the_first_message_is_deadline_exceeded(harness):
    servicer = Watched(first_events=0)
    await harness.serve(events=servicer)

    call = harness.events().Subscribe(_subscribe(0), timeout=0.2)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()

    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await wait_for(lambda: servicer.finished)


# -- metadata -----------------------------------------------------------------------------------


async def test_initial_metadata_is_readable_before_the_first_message(harness):
    release = asyncio.Event()

    class Greeting(eb_grpc.EventBusServiceServicer):
        async def Subscribe(self, request, context):
            await context.send_initial_metadata((("x-greeting", "hello"), ("x-raw-bin", b"\x00\xff")))
            await release.wait()  # the first message waits until the client has read the metadata
            yield _event(1)

    await harness.serve(events=Greeting())
    call = harness.events().Subscribe(_subscribe(0), timeout=5)

    initial = await asyncio.wait_for(call.initial_metadata(), 2)
    release.set()
    first = await call.read()

    assert initial["x-greeting"] == "hello"
    assert initial["x-raw-bin"] == b"\x00\xff"
    assert first.event.sequence == 1
    assert await call.code() == grpc.StatusCode.OK


async def test_initial_metadata_set_by_a_generator_goes_with_the_first_message(harness):
    class Greeting(eb_grpc.EventBusServiceServicer):
        async def Subscribe(self, request, context):
            await context.send_initial_metadata((("x-greeting", "hi"),))
            yield _event(1)
            yield _event(2)

    await harness.serve(events=Greeting())
    call = harness.events().Subscribe(_subscribe(0), timeout=5)
    sequences = [r.event.sequence async for r in call]

    assert sequences == [1, 2]
    assert (await call.initial_metadata())["x-greeting"] == "hi"


async def test_initial_metadata_is_known_once_the_first_message_arrived_even_if_empty(harness):
    await harness.serve(events=Watched())  # sends no initial metadata, one event, then stalls

    call = harness.events().Subscribe(_subscribe(0), timeout=5)
    await call.read()

    # As with grpc.aio, the (empty) initial metadata came before the first message.
    initial = await asyncio.wait_for(call.initial_metadata(), 1)
    call.cancel()

    assert list(initial) == []


async def test_invocation_metadata_reaches_a_stream_handler(harness):
    seen = []

    class Recorder(npc_grpc.NpcBehaviorServiceServicer):
        async def DecisionStream(self, request_iterator, context):
            seen.extend(context.invocation_metadata())
            async for request in request_iterator:
                yield npc.DecisionStreamResponse(client_sequence=request.client_sequence)

    await harness.serve(npcs=Recorder())
    call = harness.npcs().DecisionStream(metadata=(("x-player", "p1"), ("x-token-bin", b"\x01\x02")), timeout=5)
    await call.done_writing()
    await call.code()

    assert ("x-player", "p1") in seen
    assert ("x-token-bin", b"\x01\x02") in seen


async def test_trailing_metadata_arrives_after_the_last_message(harness):
    class Counting(eb_grpc.EventBusServiceServicer):
        async def Subscribe(self, request, context):
            for i in range(1, 4):
                yield _event(i)
            context.set_trailing_metadata((("x-sent", "3"), ("x-digest-bin", b"\x00\x01\x02")))

    await harness.serve(events=Counting())
    call = harness.events().Subscribe(_subscribe(0), timeout=5)
    sequences = [r.event.sequence async for r in call]
    trailing = await call.trailing_metadata()

    assert sequences == [1, 2, 3]
    assert trailing["x-sent"] == "3"
    assert trailing["x-digest-bin"] == b"\x00\x01\x02"
    assert await call.code() == grpc.StatusCode.OK


async def test_trailing_metadata_comes_with_an_error_status(harness):
    class Failing(eb_grpc.EventBusServiceServicer):
        async def Subscribe(self, request, context):
            yield _event(1)
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "stream closed", (("x-why", "closed"),))

    await harness.serve(events=Failing())
    call = harness.events().Subscribe(_subscribe(0), timeout=5)
    assert (await call.read()).event.sequence == 1
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()

    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.details() == "stream closed"
    assert caught.value.trailing_metadata()["x-why"] == "closed"


# -- flow control -------------------------------------------------------------------------------


class PaddedEvents(eb_grpc.EventBusServiceServicer):
    """Subscribe sends ``max_ack_pending`` events of a fixed size, numbered from 1."""

    async def Subscribe(self, request, context):
        for i in range(1, request.max_ack_pending + 1):
            yield _padded(i)


def _padded(i: int) -> eb.SubscribeResponse:
    return eb.SubscribeResponse(event=eb.Event(sequence=i, payload=i.to_bytes(4, "big") * 4))


async def test_slow_reader_of_a_hundred_thousand_messages_gets_all_in_order_with_bounded_buffer(harness):
    window = 32 * 1024
    count = 100_000
    await harness.serve(events=PaddedEvents())
    stub = harness.events(options=nats_transport.ChannelOptions(stream_window=window))
    largest = 5 + _padded(count).ByteSize()  # a frame: 5 header bytes + the biggest message

    call = stub.Subscribe(_subscribe(count), timeout=60)
    endpoint_of: Callable[[], object] = lambda: call._stream.endpoint  # noqa: E731
    expected = 1
    most_buffered = 0
    async for response in call:
        assert response.event.sequence == expected
        assert response.event.payload == expected.to_bytes(4, "big") * 4
        expected += 1
        if expected % 64 == 0:
            most_buffered = max(most_buffered, endpoint_of().inbound.qsize() * largest)
            await asyncio.sleep(0)  # a slow consumer: let the transport run, and buffer

    assert expected == count + 1
    assert await call.code() == grpc.StatusCode.OK
    assert most_buffered > 0
    assert most_buffered <= window + largest
