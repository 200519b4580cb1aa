"""The ingress traces: a traced grpc.aio client calls over HTTP/2 through an ingress given the
tracing interceptors, to a traced target on a real nats-server that calls a second one, and
every hop is one trace (client -> ingress server span -> ingress client span -> front target ->
back target) with the RPC and NATS attributes, error statuses and stream spans that end with
their stream; forwarding is unchanged with the stock interceptors for the four call types, the
bidi fallback and a cancelled stream. Then ``mesh gateway``'s wiring: its spans file beside the
hosts' in ``MESH_TRACE_DIR`` (what ``mesh trace`` shows), and a bad ``OTEL_*`` value."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from gaming.event_bus.v1 import event_bus_pb2, event_bus_pb2_grpc
from gaming.npc_behavior.v1 import npc_behavior_pb2_grpc
from gaming.quest.v1 import quest_pb2, quest_pb2_grpc
from gaming.settings.v1 import settings_pb2 as st
from gaming.settings.v1 import settings_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from nats.aio.client import Client
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry

import nats_transport.aio
from gateway.ingress import Ingress, IngressOptions
from health.span_file import SpanFile
from health.trace_pipeline import Tracing
from mesh.cli import main
from mesh.connection import NatsAccess
from mesh.gateway_command import Gateway, GatewayConfig
from nats_transport.testing import NatsServer, free_port
from tests._waiting import wait_for
from tests.gateway._targets import FAST, HEALTH, SERVING, Target, ingress_on, routed
from tests.test_interceptors import EventBus, Npcs, Seen, Stubs, one_call_of_each_kind

INGRESS = "ingress"
CLIENT = "test-client"
GET_QUEST = "/gaming.quest.v1.QuestService/GetQuest"
SETTINGS_GET = "/gaming.settings.v1.SettingsService/Get"
SUBSCRIBE = "/gaming.event_bus.v1.EventBusService/Subscribe"
PUBLISH_BATCH = "/gaming.event_bus.v1.EventBusService/PublishBatch"
DECISION_STREAM = "/gaming.npc_behavior.v1.NpcBehaviorService/DecisionStream"
FRONT_SERVICES = ("gaming.quest.v1.QuestService", "gaming.event_bus.v1.EventBusService",
                  "gaming.npc_behavior.v1.NpcBehaviorService")
BACK_SERVICES = ("gaming.settings.v1.SettingsService",)
NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]
REPO = Path(__file__).resolve().parents[2]


# -- two traced targets: the front one serves the calls, its GetQuest asks the back one ------------


class Front(quest_pb2_grpc.QuestServiceServicer):
    """GetQuest: asks the back target for the quest's settings first (``missing``: NOT_FOUND
    there, passed on), and records the metadata it was called with."""

    def __init__(self, back: settings_pb2_grpc.SettingsServiceStub) -> None:
        self.back = back
        self.metadata: dict[str, Any] = {}

    async def GetQuest(self, request: Any, context: Any) -> quest_pb2.GetQuestResponse:
        self.metadata = dict(context.invocation_metadata())
        scope = st.Scope(kind=st.SCOPE_KIND_PLAYER, id=request.quest_id)
        try:
            await self.back.Get(st.GetRequest(scope=scope), timeout=5)
        except grpc.aio.AioRpcError as error:
            await context.abort(error.code(), error.details() or "")
        return quest_pb2.GetQuestResponse(quest=quest_pb2.Quest(quest_id=request.quest_id))


class Back(settings_pb2_grpc.SettingsServiceServicer):
    async def Get(self, request: st.GetRequest, context: Any) -> st.GetResponse:
        if request.scope.id == "missing":
            await context.abort(grpc.StatusCode.NOT_FOUND, "no settings for missing")
        return st.GetResponse(settings=st.Settings(scope=request.scope))


class EndlessBus(EventBus):
    """Subscribe sends one event, then nothing until the caller goes away."""

    async def Subscribe(self, request: Any, context: Any) -> AsyncIterator[event_bus_pb2.SubscribeResponse]:
        yield event_bus_pb2.SubscribeResponse(event=event_bus_pb2.Event(sequence=1))
        await asyncio.Event().wait()


@dataclass
class Mesh:
    """The two targets, what the front one saw, and its server (in_flight)."""

    front: Target
    back: str
    servicer: Front
    seen: Seen


@contextlib.asynccontextmanager
async def traced_server(nc: Client, tracing: Tracing, name: str, services: Sequence[str],
                        add: Sequence[Any]) -> AsyncIterator[Any]:
    """A target as a host serves one: traced, with health (SERVING) and reflection."""
    server = nats_transport.aio.server(nc, name, interceptors=tracing.server_interceptors(name))
    health = health_aio.HealthServicer()
    for service in ("", *services):
        await health.set(service, SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection((*services, reflection.SERVICE_NAME, HEALTH), server)
    for add_to_server in add:
        add_to_server(server)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(0)


@contextlib.asynccontextmanager
async def two_targets(nc: Client, tracing: Tracing, bus: EventBus | None = None) -> AsyncIterator[Mesh]:
    run = uuid.uuid4().hex[:8]
    front, back = f"front-{run}", f"back-{run}"
    seen = Seen()
    bus = bus or EventBus(seen)
    async with traced_server(nc, tracing, back, BACK_SERVICES,
                             [functools.partial(settings_pb2_grpc.add_SettingsServiceServicer_to_server, Back())]), \
            nats_transport.aio.channel(nc, back, interceptors=tracing.client_interceptors(front, back)) as channel:
        servicer = Front(settings_pb2_grpc.SettingsServiceStub(channel))
        add = [functools.partial(quest_pb2_grpc.add_QuestServiceServicer_to_server, servicer),
               functools.partial(event_bus_pb2_grpc.add_EventBusServiceServicer_to_server, bus),
               functools.partial(npc_behavior_pb2_grpc.add_NpcBehaviorServiceServicer_to_server, Npcs(seen))]
        async with traced_server(nc, tracing, front, FRONT_SERVICES, add) as server:
            yield Mesh(Target(front, server, None, FRONT_SERVICES), back, servicer, seen)


def traced_options(tracing: Tracing, base: IngressOptions = FAST) -> IngressOptions:
    """What ``mesh gateway`` gives an ingress when it traces."""
    return replace(base, server_interceptors=tracing.server_interceptors(INGRESS, over_nats=False),
                   channel_interceptors=functools.partial(tracing.client_interceptors, INGRESS))


@contextlib.asynccontextmanager
async def traced_client(ingress: Ingress, tracing: Tracing) -> AsyncIterator[Stubs]:
    """Stubs on an HTTP/2 channel to the ingress whose calls make client spans (so they carry
    a traceparent, which the ingress continues)."""
    interceptors = aio_client_interceptors(tracer_provider=tracing.provider(CLIENT))  # type: ignore[no-untyped-call]
    async with grpc.aio.insecure_channel(ingress.address, interceptors=interceptors) as channel:
        yield Stubs(quest_pb2_grpc.QuestServiceStub(channel), event_bus_pb2_grpc.EventBusServiceStub(channel),
                    npc_behavior_pb2_grpc.NpcBehaviorServiceStub(channel))


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracing(exporter: InMemorySpanExporter) -> Iterator[Tracing]:
    pipeline = Tracing([exporter], environ={})
    yield pipeline
    pipeline.shutdown()


@pytest.fixture
async def mesh(nc: Client, tracing: Tracing) -> AsyncIterator[Mesh]:
    async with two_targets(nc, tracing) as started:
        yield started


@pytest.fixture
async def ingress(nc: Client, tracing: Tracing, mesh: Mesh) -> AsyncIterator[Ingress]:
    async with ingress_on(nc, traced_options(tracing)) as started:
        await wait_for(lambda: routed(started, mesh.front))
        yield started


@pytest.fixture
async def stubs(ingress: Ingress, tracing: Tracing) -> AsyncIterator[Stubs]:
    async with traced_client(ingress, tracing) as made:
        yield made


# -- reading the spans ------------------------------------------------------------------------------


def service_of(span: ReadableSpan) -> str:
    return str(span.resource.attributes.get("service.name"))


def named(exporter: InMemorySpanExporter, method: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == method]


def one(spans: Sequence[ReadableSpan], service: str, kind: SpanKind) -> ReadableSpan:
    (span,) = [s for s in spans if service_of(s) == service and s.kind is kind]
    return span


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.trace_id


def attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


async def spans_arrived(tracing: Tracing, exporter: InMemorySpanExporter, counts: dict[str, int]) -> None:
    """Wait until ``counts[method]`` spans of each method have ended and been exported (a
    server span ends a moment after its caller has the answer)."""
    async def arrived() -> bool:
        await asyncio.to_thread(tracing.flush)
        return all(len(named(exporter, method)) == count for method, count in counts.items())

    await wait_for(arrived, timeout=10)


def subject(target: str, method: str) -> str:
    return f"grpc.{target}.{method.lstrip('/').replace('/', '.')}"


# -- one trace across the ingress -------------------------------------------------------------------


async def test_a_unary_call_is_one_trace_from_the_client_through_the_ingress_to_the_target_it_calls(
    mesh: Mesh, stubs: Stubs, tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    answer = await stubs.quests.GetQuest(quest_pb2.GetQuestRequest(quest_id="q"), timeout=5)
    assert answer.quest.quest_id == "q"
    await spans_arrived(tracing, exporter, {GET_QUEST: 4, SETTINGS_GET: 2})

    quests, settings = named(exporter, GET_QUEST), named(exporter, SETTINGS_GET)
    client = one(quests, CLIENT, SpanKind.CLIENT)
    ingress_server = one(quests, INGRESS, SpanKind.SERVER)
    ingress_client = one(quests, INGRESS, SpanKind.CLIENT)
    front_server = one(quests, mesh.front.name, SpanKind.SERVER)
    front_client = one(settings, mesh.front.name, SpanKind.CLIENT)
    back_server = one(settings, mesh.back, SpanKind.SERVER)
    chain = [client, ingress_server, ingress_client, front_server, front_client, back_server]
    assert len({trace_id(s) for s in chain}) == 1, "one trace for every hop"
    # Each span the child of the one before it: the ingress continues the client's traceparent
    # over HTTP/2 and sends its own client span's over NATS.
    assert parent_of(client) is None
    for parent, child in itertools.pairwise(chain):
        assert parent_of(child) == span_id(parent), (service_of(child), child.kind)
    traceparent = f"00-{trace_id(client):032x}-{span_id(ingress_client):016x}-"  # then the flags
    assert mesh.servicer.metadata["traceparent"].startswith(traceparent)
    for span in quests:
        assert attributes(span)["rpc.system"] == "grpc"
        assert attributes(span)["rpc.service"] == "gaming.quest.v1.QuestService"
        assert attributes(span)["rpc.method"] == "GetQuest"
        assert attributes(span)["rpc.grpc.status_code"] == 0
    # The ingress's client span says where over NATS the call went, and to which target.
    hop = attributes(ingress_client)
    assert hop["messaging.system"] == "nats"
    assert hop["messaging.destination.name"] == subject(mesh.front.name, GET_QUEST)
    assert hop["peer.service"] == mesh.front.name
    # Its server span took the call over HTTP/2: no NATS subject carried it there.
    assert "messaging.system" not in attributes(ingress_server)
    assert "messaging.destination.name" not in attributes(ingress_server)
    # Each span lies within its parent's.
    for parent, child in itertools.pairwise(chain):
        assert (parent.start_time or 0) <= (child.start_time or 0)
        assert (child.end_time or 0) <= (parent.end_time or 0)


async def test_a_server_stream_is_one_trace_whose_ingress_spans_end_with_the_stream(
    mesh: Mesh, stubs: Stubs, tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    events = [m async for m in stubs.events.Subscribe(event_bus_pb2.SubscribeRequest(consumer_name="c"), timeout=5)]
    assert [e.event.sequence for e in events] == [1, 2]
    await spans_arrived(tracing, exporter, {SUBSCRIBE: 4})

    spans = named(exporter, SUBSCRIBE)
    client = one(spans, CLIENT, SpanKind.CLIENT)
    ingress_server = one(spans, INGRESS, SpanKind.SERVER)
    ingress_client = one(spans, INGRESS, SpanKind.CLIENT)
    front_server = one(spans, mesh.front.name, SpanKind.SERVER)
    chain = [client, ingress_server, ingress_client, front_server]
    assert len({trace_id(s) for s in chain}) == 1
    for parent, child in itertools.pairwise(chain):
        assert parent_of(child) == span_id(parent), (service_of(child), child.kind)
    for span in spans:
        assert attributes(span)["rpc.method"] == "Subscribe"
        assert attributes(span)["rpc.grpc.status_code"] == 0
    assert attributes(ingress_client)["messaging.system"] == "nats"
    assert attributes(ingress_client)["messaging.destination.name"] == subject(mesh.front.name, SUBSCRIBE)
    # A stream's spans end when it has ended at the target, not when it began.
    assert 0 < (front_server.end_time or 0) <= (ingress_client.end_time or 0) <= (ingress_server.end_time or 0)


async def test_an_error_at_the_last_target_carries_its_status_on_every_span_to_the_client(
    mesh: Mesh, stubs: Stubs, tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stubs.quests.GetQuest(quest_pb2.GetQuestRequest(quest_id="missing"), timeout=5)
    assert (caught.value.code(), caught.value.details()) == (grpc.StatusCode.NOT_FOUND, "no settings for missing")
    await spans_arrived(tracing, exporter, {GET_QUEST: 4, SETTINGS_GET: 2})

    spans = [*named(exporter, GET_QUEST), *named(exporter, SETTINGS_GET)]
    assert len({trace_id(s) for s in spans}) == 1
    for span in spans:
        assert attributes(span)["rpc.grpc.status_code"] == NOT_FOUND, (service_of(span), span.kind)
    for span in (s for s in spans if s.kind is SpanKind.CLIENT):
        assert span.status.status_code is StatusCode.ERROR, ("a client span of a failed call is an error",
                                                             service_of(span))
    ingress_client = one(named(exporter, GET_QUEST), INGRESS, SpanKind.CLIENT)
    assert attributes(ingress_client)["messaging.destination.name"] == subject(mesh.front.name, GET_QUEST)


async def test_the_ingress_own_health_and_reflection_make_no_spans(
    ingress: Ingress, tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    async with grpc.aio.insecure_channel(ingress.address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert reply.status == SERVING
        listing = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        listed = {s.name for answer in [a async for a in listing] for s in answer.list_services_response.service}
        assert FRONT_SERVICES[0] in listed
        methods = channel.unary_unary("/gaming.quest.v1.QuestService/GetQuest")
        await methods(quest_pb2.GetQuestRequest(quest_id="q").SerializeToString(), timeout=5)
    await spans_arrived(tracing, exporter, {GET_QUEST: 3})  # no client span: this channel does not trace

    ingress_spans = [s for s in exporter.get_finished_spans() if service_of(s) == INGRESS]
    assert {s.name for s in ingress_spans} == {GET_QUEST}


# -- forwarding unchanged with the stock interceptors -----------------------------------------------


async def test_every_call_type_is_forwarded_unchanged_and_traced(
    mesh: Mesh, stubs: Stubs, tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    outcomes = await one_call_of_each_kind(stubs)
    failures = await one_call_of_each_kind(stubs, fail=True)

    assert outcomes["unary_unary"].quest.quest_id == "q"
    assert [m.event.sequence for m in outcomes["unary_stream"]] == [1, 2]
    assert outcomes["stream_unary"].accepted_count == 2
    assert [m.client_sequence for m in outcomes["stream_stream"]] == [1, 2]
    codes = {kind: (failure.code(), failure.details()) for kind, failure in failures.items()}
    assert codes == {
        "unary_unary": (grpc.StatusCode.NOT_FOUND, "no settings for missing"),
        "unary_stream": (grpc.StatusCode.NOT_FOUND, "no such consumer"),
        "stream_unary": (grpc.StatusCode.INVALID_ARGUMENT, "bad topic"),
        "stream_stream": (grpc.StatusCode.FAILED_PRECONDITION, "npc is dead"),
    }
    methods = {"unary_unary": GET_QUEST, "unary_stream": SUBSCRIBE, "stream_unary": PUBLISH_BATCH,
               "stream_stream": DECISION_STREAM}
    await spans_arrived(tracing, exporter, dict.fromkeys(methods.values(), 8))  # 2 calls x 4 spans

    for kind, method in methods.items():
        spans = named(exporter, method)
        servers = [s for s in spans if service_of(s) == INGRESS and s.kind is SpanKind.SERVER]
        clients = [s for s in spans if service_of(s) == INGRESS and s.kind is SpanKind.CLIENT]
        targets = [s for s in spans if service_of(s) == mesh.front.name]
        assert (len(servers), len(clients), len(targets)) == (2, 2, 2), kind
        for target in targets:
            (client,) = [c for c in clients if span_id(c) == parent_of(target)]
            (server,) = [s for s in servers if span_id(s) == parent_of(client)]
            assert trace_id(server) == trace_id(client) == trace_id(target)
            assert attributes(client)["messaging.destination.name"] == subject(mesh.front.name, method)
        for group in (servers, clients, targets):
            assert sorted(attributes(s)["rpc.grpc.status_code"] for s in group) == \
                [0, codes[kind][0].value[0]], kind


async def test_every_call_type_is_forwarded_with_the_stock_interceptors_alone(
    nc: Client, tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    # The stock server interceptor iterates a streaming handler: the forwarder's must be async
    # generators (ours, installed behind it, would hide a coroutine handler by wrapping it).
    provider = tracing.provider(INGRESS)
    options = replace(FAST, server_interceptors=[aio_server_interceptor(tracer_provider=provider)],  # type: ignore[no-untyped-call]
                      channel_interceptors=lambda _: aio_client_interceptors(tracer_provider=provider))  # type: ignore[no-untyped-call]
    async with two_targets(nc, tracing) as mesh, ingress_on(nc, options) as ingress, \
            traced_client(ingress, tracing) as stubs:
        await wait_for(lambda: routed(ingress, mesh.front))
        outcomes = await one_call_of_each_kind(stubs)

    assert outcomes["unary_unary"].quest.quest_id == "q"
    assert [m.event.sequence for m in outcomes["unary_stream"]] == [1, 2]
    assert outcomes["stream_unary"].accepted_count == 2
    assert [m.client_sequence for m in outcomes["stream_stream"]] == [1, 2]
    await spans_arrived(tracing, exporter, dict.fromkeys((GET_QUEST, SUBSCRIBE, PUBLISH_BATCH, DECISION_STREAM), 4))


async def test_a_service_discovery_has_not_seen_yet_goes_over_the_traced_bidi_relay(
    nc: Client, tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    # No poll after the first, which finds nothing: the call resolves the service itself and is
    # relayed as a bidi stream, whatever its type.
    options = traced_options(tracing, replace(FAST, poll_interval=600))
    async with ingress_on(nc, options) as ingress, two_targets(nc, tracing) as mesh, \
            traced_client(ingress, tracing) as stubs:
        assert ingress.discovery.target_of(FRONT_SERVICES[0]) is None
        answer = await stubs.quests.GetQuest(quest_pb2.GetQuestRequest(quest_id="late"), timeout=5)
    assert answer.quest.quest_id == "late"
    await spans_arrived(tracing, exporter, {GET_QUEST: 4})

    spans = named(exporter, GET_QUEST)
    ingress_server = one(spans, INGRESS, SpanKind.SERVER)
    ingress_client = one(spans, INGRESS, SpanKind.CLIENT)
    assert parent_of(ingress_client) == span_id(ingress_server)
    assert parent_of(one(spans, mesh.front.name, SpanKind.SERVER)) == span_id(ingress_client)


async def test_cancelling_a_traced_stream_at_the_client_ends_it_at_the_target_and_its_spans(
    nc: Client, tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    async with two_targets(nc, tracing, EndlessBus(Seen())) as mesh, \
            ingress_on(nc, traced_options(tracing)) as ingress, traced_client(ingress, tracing) as stubs:
        await wait_for(lambda: routed(ingress, mesh.front))
        call = stubs.events.Subscribe(event_bus_pb2.SubscribeRequest(consumer_name="c"), timeout=30)
        messages = aiter(call)
        assert (await anext(messages)).event.sequence == 1
        assert mesh.front.server.in_flight == 1

        call.cancel()

        await wait_for(lambda: mesh.front.server.in_flight == 0)

        # The client's own span ends only when its abandoned iterator is collected: not counted.
        async def ended() -> bool:
            await asyncio.to_thread(tracing.flush)
            kinds = {(service_of(s), s.kind) for s in named(exporter, SUBSCRIBE)}
            return {(INGRESS, SpanKind.SERVER), (INGRESS, SpanKind.CLIENT), (mesh.front.name, SpanKind.SERVER)} <= kinds

        await wait_for(ended, timeout=10)


# -- mesh gateway ----------------------------------------------------------------------------------


async def test_mesh_gateway_keeps_its_spans_beside_the_hosts_and_mesh_trace_shows_the_ingress_hop(
    nc: Client, nats_server: NatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    traces = tmp_path / "traces"
    host_tracing = Tracing([SpanFile(traces / "host-test.jsonl")], environ={})
    monkeypatch.setenv("MESH_TRACE_DIR", str(traces))  # as mesh up --trace sets it
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    config = GatewayConfig(access=NatsAccess(urls=(nats_server.url,)), listen_host="127.0.0.1",
                           grpc_port=free_port(), admin_port=None, edge=False, grace=0)
    gateway = Gateway(config, CollectorRegistry())
    try:
        async with two_targets(nc, host_tracing) as mesh:
            await gateway.start()
            assert gateway.ingress is not None
            ingress = gateway.ingress
            await wait_for(lambda: routed(ingress, mesh.front), timeout=10)
            async with grpc.aio.insecure_channel(ingress.address) as channel:
                await quest_pb2_grpc.QuestServiceStub(channel).GetQuest(quest_pb2.GetQuestRequest(quest_id="q"),
                                                                        timeout=5)
    finally:
        await gateway.stop()  # flushes the ingress's spans
        host_tracing.shutdown()
    assert (traces / "ingress.jsonl").is_file()

    assert main(["trace", "--spans", str(traces), "--last"]) == 0
    waterfall = capsys.readouterr().out
    assert "5 spans, 3 services" in waterfall, waterfall
    assert "  ingress  gaming.quest.v1.QuestService/GetQuest" in waterfall
    assert f"ingress -> {mesh.front.name}  gaming.quest.v1.QuestService/GetQuest  " \
           f"[{subject(mesh.front.name, GET_QUEST)}]" in waterfall
    assert "no errors in 5 spans" in waterfall


def test_mesh_gateway_with_a_bad_otel_value_exits_2_with_one_line_naming_it() -> None:
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "zipkin"}
    args = ["--nats-url", "nats://127.0.0.1:1", "--listen-host", "127.0.0.1", "--no-edge",
            "--grpc-port", str(free_port()), "--admin-port", str(free_port())]
    done = subprocess.run([sys.executable, "-m", "mesh", "gateway", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("mesh gateway: error: OTEL_TRACES_EXPORTER: unknown exporter 'zipkin'"), lines
