"""Traces across NATS hops with the stock OpenTelemetry gRPC instrumentation, exported over OTLP
to a real collector in this process: one trace for a call chain through three targets, with
parent/child links, the RPC and messaging attributes, error statuses and stream spans that end
with their stream. Also: the stock interceptors (aio and sync) work unchanged on nats_transport."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from gaming.event_bus.v1 import event_bus_pb2, event_bus_pb2_grpc
from gaming.quest.v1 import quest_pb2, quest_pb2_grpc
from google.rpc import status_pb2
from grpc_status import rpc_status
from nats.aio.client import Client
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.grpc import (
    aio_client_interceptors,
    aio_server_interceptor,
    client_interceptor,
    server_interceptor,
)
from opentelemetry.instrumentation.grpc.grpcext import intercept_channel
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import nats_transport
from health.trace_pipeline import Tracing
from health.tracing import TracingConfigError, from_environment
from nats_transport.testing import NatsServer
from tests._waiting import wait_for
from tests.test_interceptors import Seen, one_call_of_each_kind, serving, stubs_for

GET_QUEST = "/gaming.quest.v1.QuestService/GetQuest"
SUBSCRIBE = "/gaming.event_bus.v1.EventBusService/Subscribe"
SERVER, CLIENT = 2, 3  # opentelemetry.proto.trace.v1.Span.SpanKind


# -- a real OTLP/HTTP collector ---------------------------------------------------------------------


@dataclass(frozen=True)
class Exported:
    """One span as the collector received it, with the service.name of its resource."""

    service: str
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int
    attributes: dict[str, Any]
    status_code: int  # 0 unset, 1 ok, 2 error
    start_ns: int
    end_ns: int


class Collector:
    """Accepts OTLP ``/v1/traces`` protobuf posts on a free loopback port and keeps the spans."""

    def __init__(self) -> None:
        self.spans: list[Exported] = []
        self._lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                collector.receive(ExportTraceServiceRequest.FromString(body))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep the test output to what fails

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}/v1/traces"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def receive(self, request: ExportTraceServiceRequest) -> None:
        spans = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans.append(Exported(
                        service=resource.get("service.name", ""),
                        trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
                        parent_id=span.parent_span_id.hex(), name=span.name, kind=span.kind,
                        attributes={a.key: _value(a.value) for a in span.attributes},
                        status_code=span.status.code,
                        start_ns=span.start_time_unix_nano, end_ns=span.end_time_unix_nano,
                    ))
        with self._lock:
            self.spans.extend(spans)

    def named(self, name: str, kind: int) -> list[Exported]:
        with self._lock:
            return [s for s in self.spans if s.name == name and s.kind == kind]

    def count(self, name: str) -> tuple[int, int]:
        """How many server and client spans of ``name`` arrived."""
        return len(self.named(name, SERVER)), len(self.named(name, CLIENT))

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def _value(value: Any) -> Any:
    return getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None


@pytest.fixture
def collector() -> Iterator[Collector]:
    running = Collector()
    yield running
    running.close()


@pytest.fixture
def tracing(collector: Collector) -> Iterator[Tracing]:
    pipeline = Tracing([OTLPSpanExporter(endpoint=collector.endpoint)])
    yield pipeline
    pipeline.shutdown()


def names(prefix: str) -> list[str]:
    run = uuid.uuid4().hex[:8]
    return [f"{prefix}-{n}-{run}" for n in ("a", "b", "c")]


# -- a chain of three targets: A calls B, B calls C -------------------------------------------------


class Hop(quest_pb2_grpc.QuestServiceServicer):
    """GetQuest: answers itself at the end of the chain, else asks the next target first."""

    def __init__(self, name: str, next_stub: quest_pb2_grpc.QuestServiceStub | None) -> None:
        self.name = name
        self.next_stub = next_stub

    async def GetQuest(self, request: Any, context: Any) -> quest_pb2.GetQuestResponse:
        if self.next_stub is None:
            if request.quest_id == "missing":
                await context.abort(grpc.StatusCode.NOT_FOUND, f"no quest on {self.name}")
            return quest_pb2.GetQuestResponse(quest=quest_pb2.Quest(quest_id=f"{request.quest_id}@{self.name}"))
        try:
            answer = await self.next_stub.GetQuest(request, timeout=5)
        except grpc.aio.AioRpcError as error:
            await context.abort(error.code(), error.details() or "")
        return quest_pb2.GetQuestResponse(quest=quest_pb2.Quest(quest_id=f"{answer.quest.quest_id}<{self.name}"))


class Events(event_bus_pb2_grpc.EventBusServiceServicer):
    """Subscribe: one event, then a second once released, then the stream ends."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.ended_ns = 0

    async def Subscribe(self, request: Any, context: Any) -> AsyncIterator[event_bus_pb2.SubscribeResponse]:
        yield event_bus_pb2.SubscribeResponse(event=event_bus_pb2.Event(sequence=1))
        await self.release.wait()
        yield event_bus_pb2.SubscribeResponse(event=event_bus_pb2.Event(sequence=2))
        self.ended_ns = time.time_ns()


@contextlib.asynccontextmanager
async def chain(nc: Client, tracing: Tracing, targets: list[str]) -> AsyncIterator[Events]:
    """Servers for ``targets`` in a chain (each calls the next over a traced channel); the last
    also serves the event bus."""
    events = Events()
    servers, channels = [], []
    for index, target in enumerate(targets):
        following = targets[index + 1] if index + 1 < len(targets) else None
        stub = None
        if following is not None:
            interceptors = tracing.client_interceptors(target, following)
            channel = nats_transport.aio.channel(nc, following, interceptors=interceptors)
            channels.append(channel)
            stub = quest_pb2_grpc.QuestServiceStub(channel)
        server = nats_transport.aio.server(nc, target, interceptors=tracing.server_interceptors(target))
        quest_pb2_grpc.add_QuestServiceServicer_to_server(Hop(target, stub), server)
        if following is None:
            event_bus_pb2_grpc.add_EventBusServiceServicer_to_server(events, server)
        await server.start()
        servers.append(server)
    try:
        yield events
    finally:
        for server in servers:
            await server.stop(0)
        for channel in channels:
            await channel.close()


@contextlib.asynccontextmanager
async def caller_stubs(nc: Client, tracing: Tracing, target: str) -> AsyncIterator[Any]:
    interceptors = tracing.client_interceptors("test-caller", target)
    async with nats_transport.aio.channel(nc, target, interceptors=interceptors) as channel:
        yield quest_pb2_grpc.QuestServiceStub(channel), event_bus_pb2_grpc.EventBusServiceStub(channel)


async def test_a_call_through_three_targets_is_one_trace_with_parent_links_and_attributes(
    nc: Client, tracing: Tracing, collector: Collector
) -> None:
    a, b, c = names("trace")
    async with chain(nc, tracing, [a, b, c]), caller_stubs(nc, tracing, a) as (quests, _):
        answer = await quests.GetQuest(quest_pb2.GetQuestRequest(quest_id="q"), timeout=5)
    assert answer.quest.quest_id == f"q@{c}<{b}<{a}"
    await asyncio.to_thread(tracing.flush)
    await wait_for(lambda: collector.count(GET_QUEST) == (3, 3), timeout=15)

    servers = {s.service: s for s in collector.named(GET_QUEST, SERVER)}
    clients = {s.attributes["peer.service"]: s for s in collector.named(GET_QUEST, CLIENT)}
    assert set(servers) == {a, b, c}
    assert set(clients) == {a, b, c}
    assert len({s.trace_id for s in [*servers.values(), *clients.values()]}) == 1, "one trace for every hop"
    # caller -> A -> B -> C, each server span a child of the client span that called it.
    assert clients[a].service == "test-caller"
    assert clients[a].parent_id == ""
    assert servers[a].parent_id == clients[a].span_id
    assert clients[b].service == a
    assert clients[b].parent_id == servers[a].span_id
    assert servers[b].parent_id == clients[b].span_id
    assert clients[c].service == b
    assert clients[c].parent_id == servers[b].span_id
    assert servers[c].parent_id == clients[c].span_id
    for target in (a, b, c):
        for span in (servers[target], clients[target]):
            assert span.attributes["rpc.system"] == "grpc"
            assert span.attributes["rpc.service"] == "gaming.quest.v1.QuestService"
            assert span.attributes["rpc.method"] == "GetQuest"
            assert span.attributes["rpc.grpc.status_code"] == 0
            assert span.attributes["messaging.system"] == "nats"
            subject = f"grpc.{target}.gaming.quest.v1.QuestService.GetQuest"
            assert span.attributes["messaging.destination.name"] == subject
    # Each span lies within its parent's.
    assert clients[a].start_ns <= servers[a].start_ns <= clients[b].start_ns <= servers[c].start_ns
    assert servers[c].end_ns <= clients[c].end_ns <= servers[b].end_ns <= clients[a].end_ns


async def test_an_error_hop_carries_its_status_on_every_span_it_reaches(
    nc: Client, tracing: Tracing, collector: Collector
) -> None:
    a, b, c = names("error")
    async with chain(nc, tracing, [a, b, c]), caller_stubs(nc, tracing, a) as (quests, _):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await quests.GetQuest(quest_pb2.GetQuestRequest(quest_id="missing"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    await asyncio.to_thread(tracing.flush)
    await wait_for(lambda: collector.count(GET_QUEST) == (3, 3), timeout=15)

    not_found = grpc.StatusCode.NOT_FOUND.value[0]
    for span in [*collector.named(GET_QUEST, SERVER), *collector.named(GET_QUEST, CLIENT)]:
        assert span.attributes["rpc.grpc.status_code"] == not_found, (span.service, span.kind)
    for span in collector.named(GET_QUEST, CLIENT):
        assert span.status_code == 2, "a client span of a failed call is an error"
    assert len({s.trace_id for s in collector.spans}) == 1


async def test_a_server_stream_span_ends_when_the_stream_ends(
    nc: Client, tracing: Tracing, collector: Collector
) -> None:
    (target,) = names("stream")[:1]
    async with chain(nc, tracing, [target]) as events, caller_stubs(nc, tracing, target) as (_, bus):
        # One iterator throughout: the stock client interceptor hands back an async generator.
        messages = aiter(bus.Subscribe(event_bus_pb2.SubscribeRequest(consumer_name="c"), timeout=5))
        first = await anext(messages)
        assert first.event.sequence == 1
        await asyncio.to_thread(tracing.provider(target).force_flush)
        assert collector.named(SUBSCRIBE, SERVER) == [], "the stream is still open: its span has not ended"
        events.release.set()
        rest = [message async for message in messages]
        assert [m.event.sequence for m in rest] == [2]
    await asyncio.to_thread(tracing.flush)
    await wait_for(lambda: collector.count(SUBSCRIBE) == (1, 1), timeout=15)
    (server_span,) = collector.named(SUBSCRIBE, SERVER)
    (client_span,) = collector.named(SUBSCRIBE, CLIENT)
    assert server_span.end_ns >= events.ended_ns, "the server span ended with the stream, not before"
    assert server_span.parent_id == client_span.span_id
    assert client_span.end_ns >= server_span.end_ns
    assert server_span.attributes["messaging.destination.name"] == \
        f"grpc.{target}.gaming.event_bus.v1.EventBusService.Subscribe"


# -- the stock interceptors, unchanged, on nats_transport servers and channels ----------------------


@pytest.fixture
def memory() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


async def test_the_stock_aio_interceptors_trace_every_call_kind(
    nc: Client, memory: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = memory
    target = f"otel-aio-{uuid.uuid4().hex[:8]}"
    server_side = [aio_server_interceptor(tracer_provider=provider)]
    async with serving(nc, target, Seen(), server_side), \
            stubs_for(nc, target, aio_client_interceptors(tracer_provider=provider)) as stubs:
        outcomes = await one_call_of_each_kind(stubs)
        failures = await one_call_of_each_kind(stubs, fail=True)
    assert not any(isinstance(o, grpc.aio.AioRpcError) for o in outcomes.values()), outcomes
    assert all(isinstance(o, grpc.aio.AioRpcError) for o in failures.values()), failures
    await wait_for(lambda: len(exporter.get_finished_spans()) == 16)

    spans = exporter.get_finished_spans()
    for method in ("GetQuest", "Subscribe", "PublishBatch", "DecisionStream"):
        mine = [s for s in spans if s.attributes and s.attributes.get("rpc.method") == method]
        kinds = sorted(s.kind.name for s in mine)
        assert kinds == ["CLIENT", "CLIENT", "SERVER", "SERVER"], method
        codes = sorted(s.attributes["rpc.grpc.status_code"] for s in mine if s.attributes)
        assert codes[0] == 0, (method, codes)
        assert codes[-1] != 0, (method, codes)
        for client in (s for s in mine if s.kind is trace.SpanKind.CLIENT):
            server = next(s for s in mine if s.parent is not None and s.parent.span_id == client.context.span_id)
            assert server.context.trace_id == client.context.trace_id


async def test_the_stock_sync_interceptors_trace_calls_of_the_sync_channel_and_plain_handlers(
    nc: Client, nats_server: NatsServer, memory: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = memory
    target = f"otel-sync-{uuid.uuid4().hex[:8]}"

    def get_quest(request: quest_pb2.GetQuestRequest, context: Any) -> quest_pb2.GetQuestResponse:
        if request.quest_id == "missing":
            context.abort(grpc.StatusCode.NOT_FOUND, "no such quest")
        return quest_pb2.GetQuestResponse(quest=quest_pb2.Quest(quest_id=request.quest_id))

    handler = grpc.method_handlers_generic_handler("gaming.quest.v1.QuestService", {
        "GetQuest": grpc.unary_unary_rpc_method_handler(
            get_quest, quest_pb2.GetQuestRequest.FromString, quest_pb2.GetQuestResponse.SerializeToString),
    })
    server = nats_transport.aio.server(nc, target, interceptors=[server_interceptor(tracer_provider=provider)])
    server.add_generic_rpc_handlers((handler,))
    await server.start()

    def call_twice() -> tuple[str, grpc.StatusCode]:
        with nats_transport.channel(nats_server.url, target) as plain:
            traced = intercept_channel(plain, client_interceptor(tracer_provider=provider))
            stub = quest_pb2_grpc.QuestServiceStub(traced)
            found = stub.GetQuest(quest_pb2.GetQuestRequest(quest_id="q"), timeout=5)
            try:
                stub.GetQuest(quest_pb2.GetQuestRequest(quest_id="missing"), timeout=5)
            except grpc.RpcError as error:
                return found.quest.quest_id, error.code()
        raise AssertionError("the second call should have failed")

    try:
        quest_id, code = await asyncio.to_thread(call_twice)
    finally:
        await server.stop(0)
    assert (quest_id, code) == ("q", grpc.StatusCode.NOT_FOUND)
    await wait_for(lambda: len(exporter.get_finished_spans()) == 4)

    spans = exporter.get_finished_spans()
    clients = [s for s in spans if s.kind is trace.SpanKind.CLIENT]
    servers = [s for s in spans if s.kind is trace.SpanKind.SERVER]
    assert len(clients) == len(servers) == 2
    for client in clients:
        (server,) = [s for s in servers if s.parent is not None and s.parent.span_id == client.context.span_id]
        assert server.context.trace_id == client.context.trace_id
        assert server.attributes is not None
        assert server.attributes["rpc.method"] == "GetQuest"
    assert sorted(s.attributes["rpc.grpc.status_code"] for s in servers if s.attributes) == [0, 5]


async def test_handlers_get_metadata_entries_with_key_and_value_as_grpc_gives_them(nc: Client) -> None:
    target = f"otel-md-{uuid.uuid4().hex[:8]}"
    seen: list[Any] = []

    async def get_quest(request: Any, context: Any) -> quest_pb2.GetQuestResponse:
        seen.extend(context.invocation_metadata())
        return quest_pb2.GetQuestResponse()

    handler = grpc.method_handlers_generic_handler("gaming.quest.v1.QuestService", {
        "GetQuest": grpc.unary_unary_rpc_method_handler(
            get_quest, quest_pb2.GetQuestRequest.FromString, quest_pb2.GetQuestResponse.SerializeToString),
    })
    server = nats_transport.aio.server(nc, target)
    server.add_generic_rpc_handlers((handler,))
    await server.start()
    try:
        async with nats_transport.aio.channel(nc, target) as channel:
            await quest_pb2_grpc.QuestServiceStub(channel).GetQuest(
                quest_pb2.GetQuestRequest(), metadata=(("x-player", "p1"), ("x-blob-bin", b"\x00\x01")), timeout=5)
    finally:
        await server.stop(0)
    by_key = {entry.key: entry.value for entry in seen}
    assert by_key == {"x-player": "p1", "x-blob-bin": b"\x00\x01"}
    assert all(isinstance(entry, tuple) and entry == (entry.key, entry.value) for entry in seen)
    assert {type(entry).__name__ for entry in seen} == {"_Metadatum"}


async def test_a_server_span_reads_the_status_of_abort_with_status_and_of_an_exception(nc: Client) -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing([exporter])
    target = f"otel-status-{uuid.uuid4().hex[:8]}"

    async def get_quest(request: quest_pb2.GetQuestRequest, context: Any) -> quest_pb2.GetQuestResponse:
        if request.quest_id == "rich":  # how the servicers fail calls (servicers.errors)
            await context.abort_with_status(rpc_status.to_status(status_pb2.Status(code=5, message="no such quest")))
        raise RuntimeError("a bug")

    handler = grpc.method_handlers_generic_handler("gaming.quest.v1.QuestService", {
        "GetQuest": grpc.unary_unary_rpc_method_handler(
            get_quest, quest_pb2.GetQuestRequest.FromString, quest_pb2.GetQuestResponse.SerializeToString),
    })
    server = nats_transport.aio.server(nc, target, interceptors=tracing.server_interceptors(target))
    server.add_generic_rpc_handlers((handler,))
    await server.start()
    codes = []
    try:
        async with nats_transport.aio.channel(nc, target) as channel:
            stub = quest_pb2_grpc.QuestServiceStub(channel)
            for quest_id in ("rich", "bug"):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.GetQuest(quest_pb2.GetQuestRequest(quest_id=quest_id), timeout=5)
                codes.append(caught.value.code())
    finally:
        await server.stop(0)
    await asyncio.to_thread(tracing.flush)
    tracing.shutdown()

    assert codes == [grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNKNOWN]
    spans = sorted(exporter.get_finished_spans(), key=lambda s: s.start_time or 0)
    assert [s.attributes["rpc.grpc.status_code"] for s in spans if s.attributes] == [5, 2]
    # NOT_FOUND is the caller's doing: the server span stays unset; an exception is an error.
    assert [s.status.status_code.name for s in spans] == ["UNSET", "ERROR"]
    assert all(s.attributes and s.attributes["messaging.system"] == "nats" for s in spans)


# -- configured by the standard variables ----------------------------------------------------------


def test_tracing_is_off_unless_an_exporter_or_a_trace_folder_is_asked_for(tmp_path: Path) -> None:
    assert from_environment("p", {}) is None
    assert from_environment("p", {"OTEL_TRACES_EXPORTER": "none"}) is None
    assert from_environment("p", {"OTEL_TRACES_EXPORTER": " none , "}) is None
    kept = from_environment("p", {"MESH_TRACE_DIR": str(tmp_path)})
    assert kept is not None
    kept.shutdown()
    console = from_environment("p", {"OTEL_TRACES_EXPORTER": "console"})
    assert console is not None
    console.shutdown()


@pytest.mark.parametrize(("environ", "message"), [
    ({"OTEL_TRACES_EXPORTER": "zipkin"},
     "OTEL_TRACES_EXPORTER: unknown exporter 'zipkin'; known: console, none, otlp, "),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
     "OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc': only http/protobuf is supported"),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"},
     "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: 'http/json': only http/protobuf is supported"),
])
def test_an_exporter_that_cannot_be_had_is_one_error_naming_the_variable(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(TracingConfigError) as caught:
        from_environment("p", environ)
    assert str(caught.value).startswith(message)  # the known list goes on with what is installed


def test_spans_name_their_target_unless_the_service_name_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    exporter = InMemorySpanExporter()
    by_target = Tracing([exporter], environ={})
    assert by_target.provider("quest-system").resource.attributes["service.name"] == "quest-system"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "game-backend")
    named = Tracing([exporter], environ={"OTEL_SERVICE_NAME": "game-backend"})
    assert named.provider("quest-system").resource.attributes["service.name"] == "game-backend"
    by_target.shutdown()
    named.shutdown()
