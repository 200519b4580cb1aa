"""The ingress forwards every call type over NATS to real servicers: a grpc.aio client speaks
HTTP/2 to the ingress only, with generated stubs, as it would to any gRPC server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from gaming.common.v1 import common_pb2
from gaming.event_bus.v1 import event_bus_pb2 as eb
from gaming.event_bus.v1 import event_bus_pb2_grpc
from gaming.npc_behavior.v1 import npc_behavior_pb2 as npc
from gaming.npc_behavior.v1 import npc_behavior_pb2_grpc
from gaming.settings.v1 import settings_pb2 as st
from gaming.settings.v1 import settings_pb2_grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nats.aio.client import Client

from gateway.ingress import Ingress
from mesh.jetstream_storage import JetStreamStorage
from servicers import settings
from servicers.dependencies import Dependencies
from tests._waiting import wait_for
from tests.gateway._targets import Target, client_of, routed, serving
from tests.gateway.conftest import SETTINGS, no_channel

PLAYER = st.Scope(kind=st.SCOPE_KIND_PLAYER, id="p1")
# How long a cancelled Subscribe may take to let go of its JetStream reader at the target.
CLEANUP = 12.0


def number(value: int) -> st.SettingValue:
    return st.SettingValue(int_value=value)


def update(revision: int, **values: st.SettingValue) -> st.UpdateRequest:
    return st.UpdateRequest(scope=PLAYER, expected_revision=common_pb2.Revision(value=revision), set=values)


# -- the four call types -------------------------------------------------------------------------


async def test_a_unary_call_reaches_the_target_and_its_answer_comes_back(mesh: Ingress, client: grpc.aio.Channel):
    stub = settings_pb2_grpc.SettingsServiceStub(client)

    written = (await stub.Update(update(0, volume=number(7)), timeout=5)).settings
    read = (await stub.Get(st.GetRequest(scope=PLAYER), timeout=5)).settings

    assert dict(read.values) == {"volume": number(7)}
    assert read.revision == written.revision


async def test_a_server_stream_delivers_each_event_as_it_is_published(mesh: Ingress, client: grpc.aio.Channel):
    stub = event_bus_pb2_grpc.EventBusServiceStub(client)
    call = stub.Subscribe(eb.SubscribeRequest(consumer_name="reader", topic_filter=">",
                                              start_position=eb.START_POSITION_ALL), timeout=10)

    for index in range(3):
        await stub.Publish(eb.PublishRequest(topic=f"match.{index}", payload=bytes([index])), timeout=5)
        event = (await asyncio.wait_for(call.read(), 5)).event
        assert (event.topic, event.payload) == (f"match.{index}", bytes([index]))
    call.cancel()


async def test_a_client_stream_is_relayed_message_by_message_until_half_close(
    mesh: Ingress, client: grpc.aio.Channel
):
    stub = event_bus_pb2_grpc.EventBusServiceStub(client)

    async def batch() -> AsyncIterator[eb.PublishBatchRequest]:
        for index in range(5):
            yield eb.PublishBatchRequest(topic=f"batch.{index}", message_id=f"m-{index}")
        yield eb.PublishBatchRequest(topic="batch.0", message_id="m-0")  # a resend: a duplicate

    answer = await stub.PublishBatch(batch(), timeout=10)

    assert (answer.accepted_count, answer.duplicate_count) == (6, 1)


async def test_a_bidi_stream_answers_each_request_in_order(mesh: Ingress, client: grpc.aio.Channel):
    stub = npc_behavior_pb2_grpc.NpcBehaviorServiceStub(client)
    call = stub.DecisionStream(timeout=10)

    # Interleaved: each answer is read before the next request is written.
    for sequence in range(5):
        state = npc.NpcState(npc_id=f"npc-{sequence}", health=1.0, energy=1.0, hunger=sequence / 5)
        await call.write(npc.DecisionStreamRequest(client_sequence=sequence, state=state))
        reply = await asyncio.wait_for(call.read(), 5)
        assert (reply.client_sequence, reply.npc_id) == (sequence, f"npc-{sequence}")
    await call.done_writing()

    assert await call.read() is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK


async def test_a_service_whose_descriptors_are_not_loaded_yet_is_still_forwarded(
    nc: Client, storage: JetStreamStorage, ingress: Ingress, client: grpc.aio.Channel
):
    # Started after the ingress, and called at once: discovery has not seen it, so the call
    # resolves the service first and goes over a NATS stream, whatever its call type.
    servicer = await settings.create(Dependencies(storage=storage, channel=no_channel, settings=SETTINGS))
    async with serving(nc, settings.add_to_server, servicer, settings.SERVICE_NAMES):
        reply = await settings_pb2_grpc.SettingsServiceStub(client).Get(st.GetRequest(scope=PLAYER), timeout=5)

    assert reply.settings.scope == PLAYER


async def test_a_service_started_after_the_ingress_is_routed_by_its_call_type_without_a_restart(
    nc: Client, storage: JetStreamStorage, ingress: Ingress, client: grpc.aio.Channel
):
    servicer = await settings.create(Dependencies(storage=storage, channel=no_channel, settings=SETTINGS))
    async with serving(nc, settings.add_to_server, servicer, settings.SERVICE_NAMES) as target:
        await wait_for(lambda: routed(ingress, target))
        stub = settings_pb2_grpc.SettingsServiceStub(client)
        await stub.Update(update(0, volume=number(1)), timeout=5)

        watch = stub.Watch(st.WatchRequest(scope=PLAYER), timeout=10)
        first = await asyncio.wait_for(watch.read(), 5)
        watch.cancel()

    assert first.settings.values["volume"] == number(1)


# -- status, details and metadata ----------------------------------------------------------------


async def test_a_cas_conflict_keeps_its_code_message_and_rich_details(mesh: Ingress, client: grpc.aio.Channel):
    stub = settings_pb2_grpc.SettingsServiceStub(client)
    first = (await stub.Update(update(0, volume=number(1)), timeout=5)).settings
    current = (await stub.Update(update(first.revision.value, volume=number(2)), timeout=5)).settings

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Update(update(first.revision.value, volume=number(3)), timeout=5)

    assert caught.value.code() == grpc.StatusCode.ABORTED
    assert caught.value.details()
    status = rpc_status.from_call(caught.value)
    assert status is not None
    assert status.code == grpc.StatusCode.ABORTED.value[0]
    conflict, info = st.RevisionConflict(), error_details_pb2.ErrorInfo()
    assert any(detail.Unpack(conflict) for detail in status.details)
    assert any(detail.Unpack(info) for detail in status.details)
    assert conflict.current_revision == current.revision
    assert info.reason == "REVISION_CONFLICT"


async def test_an_invalid_argument_keeps_its_bad_request_detail(mesh: Ingress, client: grpc.aio.Channel):
    stub = settings_pb2_grpc.SettingsServiceStub(client)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Get(st.GetRequest(), timeout=5)  # no scope

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(caught.value)
    assert status is not None
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    assert bad.field_violations[0].field.startswith("scope")


class _Echo(settings_pb2_grpc.SettingsServiceServicer):  # type: ignore[misc]
    """Shows what arrived: the metadata and the deadline left, echoed back in metadata."""

    def __init__(self) -> None:
        self.metadata: tuple[tuple[str, Any], ...] = ()
        self.time_remaining: float | None = None

    async def Get(self, request: st.GetRequest, context: Any) -> st.GetResponse:
        self.metadata = tuple((key, value) for key, value in context.invocation_metadata())
        self.time_remaining = context.time_remaining()
        await context.send_initial_metadata((("x-initial", "from-target"), ("x-blob-bin", b"\x00\xff")))
        context.set_trailing_metadata((("x-trailing", "bye"),))
        return st.GetResponse(settings=st.Settings(scope=request.scope))

    async def Update(self, request: st.UpdateRequest, context: Any) -> st.UpdateResponse:
        context.set_trailing_metadata((("x-why", "refused"),))
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not today")


@pytest.fixture
async def echo(nc: Client, ingress: Ingress) -> AsyncIterator[_Echo]:
    servicer = _Echo()
    async with serving(nc, settings_pb2_grpc.add_SettingsServiceServicer_to_server, servicer,
                       settings.SERVICE_NAMES) as target:
        await wait_for(lambda: routed(ingress, target))
        yield servicer


async def test_metadata_crosses_both_ways_without_the_http2_transport_headers(
    echo: _Echo, client: grpc.aio.Channel
):
    call = settings_pb2_grpc.SettingsServiceStub(client).Get(
        st.GetRequest(scope=PLAYER), timeout=5,
        metadata=(("x-player", "p1"), ("x-player", "p2"), ("x-token-bin", b"\x01\x02"), ("authorization", "Bearer t")),
    )
    await call

    sent = dict(echo.metadata)
    # Repeated text values arrive folded, as the NATS hop carries them (wire-protocol.md).
    assert sent["x-player"] == "p1,p2"
    assert sent["x-token-bin"] == b"\x01\x02"
    assert sent["authorization"] == "Bearer t"
    assert not {":authority", "user-agent", "te", "content-type", "grpc-accept-encoding"} & sent.keys()
    initial = dict(await call.initial_metadata())
    assert (initial["x-initial"], initial["x-blob-bin"]) == ("from-target", b"\x00\xff")
    assert dict(await call.trailing_metadata())["x-trailing"] == "bye"


async def test_a_failure_keeps_its_trailing_metadata(echo: _Echo, client: grpc.aio.Channel):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await settings_pb2_grpc.SettingsServiceStub(client).Update(st.UpdateRequest(), timeout=5)

    assert (caught.value.code(), caught.value.details()) == (grpc.StatusCode.FAILED_PRECONDITION, "not today")
    assert dict(caught.value.trailing_metadata())["x-why"] == "refused"


async def test_the_target_sees_the_deadline_the_client_has_left(echo: _Echo, client: grpc.aio.Channel):
    await settings_pb2_grpc.SettingsServiceStub(client).Get(st.GetRequest(scope=PLAYER), timeout=2.0)

    assert echo.time_remaining is not None
    # grpc-timeout carries whole milliseconds, rounded up at each hop: allow that, not more.
    assert 0 < echo.time_remaining <= 2.0 + 0.02


async def test_a_call_without_a_deadline_reaches_the_target_without_one(echo: _Echo, client: grpc.aio.Channel):
    await settings_pb2_grpc.SettingsServiceStub(client).Get(st.GetRequest(scope=PLAYER))

    assert echo.time_remaining is None


# -- cancellation ---------------------------------------------------------------------------------


async def test_cancelling_a_server_stream_at_the_client_ends_it_at_the_target(
    mesh: Ingress, bus_target: Target, client: grpc.aio.Channel
):
    servicer = bus_target.servicer
    call = event_bus_pb2_grpc.EventBusServiceStub(client).Subscribe(
        eb.SubscribeRequest(consumer_name="leaver", topic_filter=">", start_position=eb.START_POSITION_ALL), timeout=30)
    await wait_for(lambda: "leaver" in servicer.open_subscriptions)
    await wait_for(lambda: bus_target.server.in_flight == 1)

    call.cancel()

    # The bound covers the event log's own cleanup, which may wait out its 5 s NATS timeout.
    await wait_for(lambda: "leaver" not in servicer.open_subscriptions, timeout=CLEANUP)
    await wait_for(lambda: bus_target.server.in_flight == 0)
    assert await call.code() == grpc.StatusCode.CANCELLED


async def test_cancelling_a_bidi_stream_at_the_client_ends_it_at_the_target(
    mesh: Ingress, npc_target: Target, client: grpc.aio.Channel
):
    call = npc_behavior_pb2_grpc.NpcBehaviorServiceStub(client).DecisionStream(timeout=30)
    await call.write(npc.DecisionStreamRequest(client_sequence=1, state=npc.NpcState(npc_id="n", health=1.0)))
    await call.read()
    assert npc_target.server.in_flight == 1

    call.cancel()

    await wait_for(lambda: npc_target.server.in_flight == 0)


async def test_a_client_deadline_ends_a_stream_at_the_target(
    mesh: Ingress, bus_target: Target, client: grpc.aio.Channel
):
    servicer = bus_target.servicer
    call = event_bus_pb2_grpc.EventBusServiceStub(client).Subscribe(
        eb.SubscribeRequest(consumer_name="short", topic_filter=">", start_position=eb.START_POSITION_ALL), timeout=0.5)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()

    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await wait_for(lambda: "short" not in servicer.open_subscriptions, timeout=CLEANUP)
    await wait_for(lambda: bus_target.server.in_flight == 0)


# -- services that are not there -------------------------------------------------------------------


async def test_an_unknown_service_is_unimplemented(ingress: Ingress, client: grpc.aio.Channel):
    call = client.unary_unary("/no.such.v1.NothingService/Do")(b"", timeout=5)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call

    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "no.such.v1.NothingService" in (caught.value.details() or "")


async def test_an_unknown_method_of_a_known_service_is_unimplemented(mesh: Ingress, client: grpc.aio.Channel):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.unary_unary("/gaming.settings.v1.SettingsService/Nope")(b"", timeout=5)

    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_a_stopped_target_makes_its_service_unavailable(
    ingress: Ingress, settings_target: Target, client: grpc.aio.Channel
):
    await wait_for(lambda: routed(ingress, settings_target))
    stub = settings_pb2_grpc.SettingsServiceStub(client)
    await stub.Get(st.GetRequest(scope=PLAYER), timeout=5)

    await settings_target.stop()

    # At once (NATS has no responders) and after discovery has dropped the target alike.
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Get(st.GetRequest(scope=PLAYER), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        await wait_for(lambda: ingress.discovery.target_of(settings.SERVICE_NAMES[0]) is None)


async def test_two_ingresses_on_one_mesh_each_forward(nc: Client, mesh: Ingress):
    # Discovery is per ingress: a second one (a replica) finds the same targets on its own.
    from tests.gateway._targets import ingress_on

    async with ingress_on(nc) as second, client_of(second) as channel:
        reply = await settings_pb2_grpc.SettingsServiceStub(channel).Get(st.GetRequest(scope=PLAYER), timeout=5)

    assert reply.settings.scope == PLAYER
