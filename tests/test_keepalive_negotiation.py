"""Keepalive negotiation (wire protocol 1.1, docs/wire-protocol.md §5 and §6.8): each side times
a call out only on PINGs the peer announced, so a server or a client with keepalives off no longer
sees idle calls fail, while a server that really died is still found out."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import nats
import pytest
from gaming.event_bus.v1 import event_bus_pb2 as eb
from gaming.event_bus.v1 import event_bus_pb2_grpc as eb_grpc
from nats.aio.client import Client

import nats_transport.aio
from nats_transport import ChannelOptions, ServerOptions, _envelope, _framing, _keepalive
from nats_transport._envelope import Kind
from nats_transport._status import SERVER_SILENT
from nats_transport.testing import NatsServer
from tests._waiting import wait_for

FAST = {"keepalive_interval": 0.2, "keepalive_timeout": 1.0}
# PINGs as often as FAST, but three times its patience: a dead server is found out later.
PATIENT = {"keepalive_interval": 0.2, "keepalive_timeout": 3.0}
IDLE = 2.0  # twice the fast timeout: a call this idle failed before 1.1 when one side was off
PUBLISH = "gaming.event_bus.v1.EventBusService.Publish"
SUBSCRIBE = "gaming.event_bus.v1.EventBusService.Subscribe"


@pytest.fixture
def target() -> str:
    return f"keepalive-{uuid.uuid4().hex[:12]}"


class Idle(eb_grpc.EventBusServiceServicer):
    """Every method goes quiet for ``idle`` seconds in the middle of the call (pacing, like a slow
    handler or a quiet stream, not a wait for a condition). ``hang`` makes the server side wait
    for ``release`` instead."""

    def __init__(self, idle: float, hang: bool = False) -> None:
        self.idle = idle
        self.hang = hang
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def _pause(self) -> None:
        self.started.set()
        if self.hang:
            await self.release.wait()
        else:
            await asyncio.sleep(self.idle)

    async def Publish(self, request: eb.PublishRequest, context: Any) -> eb.PublishResponse:
        await self._pause()
        return eb.PublishResponse(sequence=1)

    async def Subscribe(self, request: eb.SubscribeRequest, context: Any) -> AsyncIterator[eb.SubscribeResponse]:
        yield eb.SubscribeResponse(event=eb.Event(sequence=1))
        await self._pause()
        yield eb.SubscribeResponse(event=eb.Event(sequence=2))

    async def PublishBatch(self, request_iterator: Any, context: Any) -> eb.PublishBatchResponse:
        count = 0
        async for _ in request_iterator:
            count += 1
        return eb.PublishBatchResponse(accepted_count=count)


@contextlib.asynccontextmanager
async def served(nc: Client, target: str, servicer: Idle, options: ServerOptions) -> AsyncIterator[Any]:
    server = nats_transport.aio.server(nc, target, options=options)
    eb_grpc.add_EventBusServiceServicer_to_server(servicer, server)
    await server.start()
    try:
        yield server
    finally:
        servicer.release.set()
        await server.stop(0)


async def idle_calls_of_every_kind(stub: eb_grpc.EventBusServiceStub, idle: float) -> None:
    """A unary call, a server stream and a client stream, each idle for ``idle`` s, at once."""

    async def unary() -> None:
        assert (await stub.Publish(eb.PublishRequest(topic="t"), timeout=30)).sequence == 1

    async def server_stream() -> None:
        events = [r.event.sequence async for r in stub.Subscribe(eb.SubscribeRequest(), timeout=30)]
        assert events == [1, 2]

    async def client_stream() -> None:
        call = stub.PublishBatch(timeout=30)
        await call.write(eb.PublishBatchRequest(message_id="1"))
        await asyncio.sleep(idle)  # the client goes quiet: pacing, not a wait for a condition
        await call.write(eb.PublishBatchRequest(message_id="2"))
        await call.done_writing()
        assert (await call).accepted_count == 2

    await asyncio.gather(unary(), server_stream(), client_stream())


# -- the issue: one side with keepalives off -------------------------------------------------------


@pytest.mark.parametrize(
    ("server_options", "channel_options"),
    [
        (ServerOptions(keepalive_interval=None, keepalive_timeout=1.0), ChannelOptions(**FAST)),
        (ServerOptions(**FAST), ChannelOptions(keepalive_interval=None, keepalive_timeout=1.0)),
    ],
    ids=["server-keepalives-off", "client-keepalives-off"],
)
async def test_calls_idle_longer_than_the_keepalive_timeout_succeed_when_one_side_has_keepalives_off(
    nc: Client, target: str, server_options: ServerOptions, channel_options: ChannelOptions
) -> None:
    async with (
        served(nc, target, Idle(IDLE), server_options),
        nats_transport.aio.channel(nc, target, options=channel_options) as channel,
    ):
        await idle_calls_of_every_kind(eb_grpc.EventBusServiceStub(channel), IDLE)


async def test_a_unary_call_idle_past_the_default_keepalive_timeout_succeeds_on_a_server_without_keepalives(
    nc: Client, target: str
) -> None:
    # The report, with the real defaults: 1 s interval and 5 s timeout on the client.
    async with (
        served(nc, target, Idle(5.5), ServerOptions(keepalive_interval=None)),
        nats_transport.aio.channel(nc, target, options=ChannelOptions()) as channel,
    ):
        response = await eb_grpc.EventBusServiceStub(channel).Publish(eb.PublishRequest(topic="t"), timeout=30)
    assert response.sequence == 1


# -- a server that really died is still found out ----------------------------------------------------


@pytest.mark.parametrize("kind", ["unary", "server-stream"])
async def test_a_server_that_dies_during_a_call_fails_it_unavailable_after_the_agreed_timeout(
    nats_server: NatsServer, nc: Client, target: str, kind: str
) -> None:
    servicer = Idle(0.0, hang=True)
    server_nc = await nats.connect(nats_server.url, max_reconnect_attempts=0)
    try:
        # Keepalives off on the server: its PINGs come only because these clients asked for them.
        async with (
            served(server_nc, target, servicer, ServerOptions(keepalive_interval=None)) as server,
            nats_transport.aio.channel(nc, target, options=ChannelOptions(**FAST)) as watchful,
            nats_transport.aio.channel(nc, target, options=ChannelOptions(**PATIENT)) as patient,
        ):
            # The deadlines are far off (30 s): only the keepalive timeouts can end these calls.
            calls = [await started_call(eb_grpc.EventBusServiceStub(channel), kind) for channel in (watchful, patient)]
            await wait_for(lambda: server.in_flight == 2)
            await server_nc.close()  # gone without a word: no answer, no PING, no subscription
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await ended(calls[0], kind)
            # Found out by the silence, at the 1 s timeout this call agreed on: the call that
            # agreed on 3 s with the same server is still waiting (an order, not a clock reading).
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            details = caught.value.details() or ""
            if kind == "unary":
                assert details == SERVER_SILENT[1]
            else:  # a stream's own words for the silence
                assert details.endswith("assuming it is gone"), details
            assert not calls[1].done()
            calls[1].cancel()
    finally:
        await server_nc.close()


async def started_call(stub: eb_grpc.EventBusServiceStub, kind: str) -> Any:
    """A call of ``kind`` the server is now handling (for a stream: its first event read)."""
    if kind == "unary":
        return stub.Publish(eb.PublishRequest(topic="t"), timeout=30)
    call = stub.Subscribe(eb.SubscribeRequest(), timeout=30)
    assert (await call.read()).event.sequence == 1
    return call


async def ended(call: Any, kind: str) -> None:
    """Wait for ``call`` to end; raises its error."""
    if kind == "unary":
        await call
    else:
        while True:
            await call.read()


# -- on the wire -------------------------------------------------------------------------------------


async def test_a_default_client_adds_no_header_to_the_fast_path_and_others_ask_for_their_interval(
    nc: Client, target: str
) -> None:
    seen: list[dict[str, str] | None] = []

    async def spy(msg: Any) -> None:
        seen.append(msg.headers)

    sub = await nc.subscribe(f"grpc.{target}.>", cb=spy)
    async with served(nc, target, Idle(0.0), ServerOptions()):
        for options in (ChannelOptions(), ChannelOptions(**FAST), ChannelOptions(keepalive_interval=None)):
            async with nats_transport.aio.channel(nc, target, options=options) as channel:
                await eb_grpc.EventBusServiceStub(channel).Publish(eb.PublishRequest(topic="t"))
    await sub.unsubscribe()
    assert seen == [None, {"nats-grpc-keepalive": "200"}, None]


async def test_a_server_without_keepalives_pings_a_unary_call_at_the_interval_its_client_asks(
    nc: Client, target: str
) -> None:
    pings: dict[str, int] = {"100": 0, "1000": 0}  # PINGs received by the call that asked for each interval
    subscriptions = []
    servicer = Idle(0.0, hang=True)
    async with served(nc, target, servicer, ServerOptions(keepalive_interval=None)):
        body = _framing.encode_message(eb.PublishRequest(topic="t").SerializeToString())
        for interval in pings:
            reply = nc.new_inbox()

            async def count(msg: Any, interval: str = interval) -> None:
                if msg.data[:1] == bytes([Kind.PING]):
                    pings[interval] += 1

            subscriptions.append(await nc.subscribe(reply, cb=count))
            await nc.publish(f"grpc.{target}.{PUBLISH}", body, reply=reply, headers={"nats-grpc-keepalive": interval})
        await wait_for(lambda: pings["100"] >= 4, timeout=2)  # at its own 1 s default this takes 4 s
        # Meanwhile the call that asked for 1 s has had its first PING at most: each call is
        # pinged at its own interval (compared by count, not by the clock).
        assert pings["1000"] <= 1, pings
        servicer.release.set()
    for subscription in subscriptions:
        await subscription.unsubscribe()


@pytest.mark.parametrize(
    ("offered", "answer"),
    [(None, None), ("300", "300"), ("5000", "1000"), ("10", "50"), ("0", "0"), ("soon", None)],
    ids=["1.0-client", "asks-300ms", "capped-by-own-1s", "floored-at-50ms", "wants-none", "malformed"],
)
async def test_accept_says_at_which_interval_the_server_will_ping_a_stream(
    nc: Client, target: str, offered: str | None, answer: str | None
) -> None:
    accepts: list[dict[str, str] | None] = []

    async def on_reply(msg: Any) -> None:
        if msg.data[:1] == bytes([Kind.ACCEPT]):
            accepts.append(msg.headers)

    reply = nc.new_inbox()
    sub = await nc.subscribe(reply, cb=on_reply)
    headers = {"nats-grpc-stream": "1", "nats-grpc-window": "65536"}
    if offered is not None:
        headers["nats-grpc-keepalive"] = offered
    opening = _envelope.pack(Kind.DATA, 0, _framing.encode_message(eb.SubscribeRequest().SerializeToString()))
    async with served(nc, target, Idle(0.0, hang=True), ServerOptions()):
        await nc.publish(f"grpc.{target}.{SUBSCRIBE}", opening, reply=reply, headers=headers)
        await wait_for(lambda: accepts)
    await sub.unsubscribe()
    assert accepts == [None if answer is None else {"nats-grpc-keepalive": answer}]


# -- the rules, as pure functions -----------------------------------------------------------------------


def test_the_negotiated_terms_follow_the_wire_spec() -> None:
    fast, default, off = ChannelOptions(**FAST), ChannelOptions(), ChannelOptions(keepalive_interval=None)
    assert [_keepalive.fast_path_ask(o) for o in (fast, default, off)] == ["200", None, None]
    assert [_keepalive.fast_path_timeout(o) for o in (fast, default, off)] == [1.0, 5.0, None]
    assert _keepalive.fast_path_timeout(ChannelOptions(keepalive_interval=1.0, keepalive_timeout=1.5)) == 3.0
    assert [_keepalive.stream_offer(o) for o in (fast, default, off)] == ["200", "1000", "0"]
    assert _keepalive.stream_timeout_after_accept(fast, 0.2) == 1.0
    assert _keepalive.stream_timeout_after_accept(fast, 2.0) == 6.0  # never before three intervals
    assert _keepalive.stream_timeout_after_accept(fast, 0.0) is None  # the server sends no PINGs
    assert _keepalive.stream_timeout_after_accept(fast, None) == 1.0  # a 1.0 server: the 1.0 rule
    assert _keepalive.stream_timeout_after_accept(off, 0.2) is None
    assert _keepalive.server_ping(None, None) == 1.0  # a client that did not say: the 1.0 default
    assert _keepalive.server_ping(0.02, None) == 0.02
    assert _keepalive.server_ping(None, 0.001) == _keepalive.FLOOR
    assert _keepalive.server_ping(1.0, 0.0) is None
    on, server_off = ServerOptions(**FAST), ServerOptions(keepalive_interval=None)
    assert _keepalive.server_stream_terms(on, None) == _keepalive.StreamTerms(0.2, 1.0, None)
    assert _keepalive.server_stream_terms(server_off, None) == _keepalive.StreamTerms(1.0, None, None)
    assert _keepalive.server_stream_terms(server_off, 0.2) == _keepalive.StreamTerms(0.2, 5.0, "200")
    assert _keepalive.server_stream_terms(on, 3.0) == _keepalive.StreamTerms(0.2, 9.0, "200")
    assert _keepalive.server_stream_terms(on, 0.0) == _keepalive.StreamTerms(None, None, "0")
    assert [_keepalive.parse_interval(v) for v in (None, "", "250", "0", "-1", "1e3", "1234567890", "٣")] == [
        None, None, 0.25, 0.0, None, None, None, None,
    ]
