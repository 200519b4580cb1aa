"""Metrics exist at zero from the start (every method, every code), with buckets for
sub-millisecond calls and trace-id exemplars when the process traces; and a ``mesh serve`` told
to keep spans (``MESH_TRACE_DIR``) writes them, its call log naming the same trace."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
from gaming.quest.v1 import quest_pb2, quest_pb2_grpc
from gaming.time_manager.v1 import time_manager_pb2
from nats.aio.client import Client
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

import nats_transport
from health.metrics import BUCKETS, Reporter, ServerMetrics, initialize
from health.span_file import read_spans, span_files
from health.trace_pipeline import Tracing
from mesh.host import Host, HostConfig
from mesh.supervisor import http_get
from nats_transport.testing import NatsServer
from tests._waiting import wait_for
from tests.test_host import SERVICE, TARGET, Serve, _call_ok

QUESTS = "gaming.quest.v1.QuestService"


def test_initialize_creates_every_series_of_every_method_at_zero() -> None:
    registry = CollectorRegistry()
    server, client = Reporter("server", registry), Reporter("client", registry)
    initialize(server, [QUESTS, "grpc.health.v1.Health"])
    initialize(client, [QUESTS])

    methods = [m.name for m in quest_pb2.DESCRIPTOR.services_by_name["QuestService"].methods]
    assert methods
    for side in ("server", "client"):
        for method in methods:
            labels = {"grpc_type": "unary", "grpc_service": QUESTS, "grpc_method": method}
            assert registry.get_sample_value(f"grpc_{side}_started_total", labels) == 0
            assert registry.get_sample_value(f"grpc_{side}_msg_received_total", labels) == 0
            assert registry.get_sample_value(f"grpc_{side}_msg_sent_total", labels) == 0
            assert registry.get_sample_value(f"grpc_{side}_handling_seconds_count", labels) == 0
            for code in grpc.StatusCode:
                handled = registry.get_sample_value(f"grpc_{side}_handled_total", {**labels, "grpc_code": code.name})
                assert handled == 0, (side, method, code)
    assert 'grpc_service="grpc.health.v1.Health"' not in generate_latest(registry).decode()


def test_the_histogram_resolves_sub_millisecond_calls() -> None:
    assert BUCKETS[0] == 0.0001
    assert sum(1 for bound in BUCKETS if bound < 0.001) >= 3
    registry = CollectorRegistry()
    reporter = Reporter("server", registry)
    initialize(reporter, [QUESTS])
    text = generate_latest(registry).decode()
    assert 'grpc_server_handling_seconds_bucket{grpc_method="GetQuest",grpc_service="gaming.quest.v1.QuestService",' \
           'grpc_type="unary",le="0.0001"} 0.0' in text


class Quests(quest_pb2_grpc.QuestServiceServicer):
    async def GetQuest(self, request: Any, context: Any) -> quest_pb2.GetQuestResponse:
        return quest_pb2.GetQuestResponse(quest=quest_pb2.Quest(quest_id=request.quest_id))


async def test_a_traced_server_puts_the_trace_id_on_its_metrics_as_an_exemplar(nc: Client) -> None:
    registry = CollectorRegistry()
    exporter = InMemorySpanExporter()
    tracing = Tracing([exporter])
    target = f"exemplar-{uuid.uuid4().hex[:8]}"
    reporter = Reporter("server", registry)
    server = nats_transport.aio.server(
        nc, target, interceptors=[*tracing.server_interceptors(target), ServerMetrics(reporter, exemplars=True)])
    quest_pb2_grpc.add_QuestServiceServicer_to_server(Quests(), server)
    await server.start()
    try:
        async with nats_transport.aio.channel(nc, target) as channel:
            await quest_pb2_grpc.QuestServiceStub(channel).GetQuest(quest_pb2.GetQuestRequest(quest_id="q"), timeout=5)
    finally:
        await server.stop(0)
    await asyncio.to_thread(tracing.flush)
    (span,) = exporter.get_finished_spans()
    assert span.context is not None
    trace_id = f"{span.context.trace_id:032x}"

    exposition = openmetrics_latest(registry).decode()
    assert f'grpc_server_handled_total{{grpc_code="OK",grpc_method="GetQuest",grpc_service="{QUESTS}",' \
           f'grpc_type="unary"}} 1.0 # {{trace_id="{trace_id}"}} 1.0' in exposition
    assert f'# {{trace_id="{trace_id}"}}' in exposition.split("grpc_server_handling_seconds_bucket", 1)[1]
    assert "trace_id" not in generate_latest(registry).decode(), "the text format has no exemplars"
    tracing.shutdown()


# -- a real `mesh serve` ------------------------------------------------------------------------------


@pytest.fixture
async def client(private_nats_server: NatsServer) -> AsyncIterator[Client]:
    nc = await nats.connect(private_nats_server.url)
    yield nc
    await nc.close()


@pytest.fixture
def serving(private_nats_server: NatsServer, tmp_path: Path) -> Iterator[Serve]:
    # A short batch delay: the test waits for the spans file, not for the default 5 s batch.
    env = {"MESH_TRACE_DIR": str(tmp_path / "traces"), "OTEL_BSP_SCHEDULE_DELAY": "50"}
    serve = Serve(private_nats_server.url, TARGET, env=env)
    yield serve
    serve.close()


async def test_a_host_starts_with_its_series_at_zero_and_keeps_spans_its_call_log_agrees_with(
    client: Client, serving: Serve, tmp_path: Path
) -> None:
    await wait_for(serving.ready, timeout=20)
    status, before = await http_get("127.0.0.1", serving.admin_port, "/metrics")
    assert status == 200
    methods = [m.name for m in time_manager_pb2.DESCRIPTOR.services_by_name["TimeManagerService"].methods]
    for method in methods:
        assert any(line.startswith("grpc_server_started_total{") and f'grpc_method="{method}"' in line
                   and f'grpc_service="{SERVICE}"' in line and line.endswith(" 0.0") for line in before.splitlines())
    # Time-manager calls auth (for its keys): its client series exist before any call too.
    assert any(line.startswith("grpc_client_handled_total{") and 'grpc_service="gaming.auth.v1.AuthService"' in line
               and 'grpc_code="UNAVAILABLE"' in line for line in before.splitlines())

    code = await _call_ok(client, f"world-{uuid.uuid4().hex[:6]}")
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND)

    traces = tmp_path / "traces"

    def server_spans() -> list[Any]:
        if not traces.is_dir() or not any(traces.iterdir()):
            return []
        return [s for s in read_spans(span_files(traces)) if s.kind == "server" and s.service == TARGET]

    await wait_for(lambda: bool(server_spans()), timeout=10)
    (span,) = server_spans()
    assert span.attributes["rpc.method"] == "GetTime"
    assert span.attributes["messaging.destination.name"] == f"grpc.{TARGET}.{SERVICE}.GetTime"
    assert (traces / f"host-{TARGET}.jsonl").is_file()
    # As Prometheus scrapes: it asks for OpenMetrics, the format that carries exemplars.
    scraped = await _scrape_openmetrics(serving.admin_port)
    assert any(line.startswith("grpc_server_handled_total{") and 'grpc_method="GetTime"' in line
               and f'# {{trace_id="{span.trace_id}"}}' in line for line in scraped.splitlines()), \
        "the handled counter's exemplar names the call's trace"
    assert serving.terminate() == 0

    serving.log.seek(0)
    calls = [json.loads(line) for line in serving.log.read().decode().splitlines()
             if line.startswith("{") and '"call finished"' in line]
    (logged,) = [c for c in calls if c.get("method") == f"/{SERVICE}/GetTime"]
    assert logged["trace_id"] == span.trace_id, "the call log names the trace its server span started"


def test_a_host_answers_in_openmetrics_when_the_scraper_asks_and_in_text_otherwise() -> None:
    registry = CollectorRegistry()
    host = Host(HostConfig(targets=(TARGET,), admin_port=None), registry=registry)
    initialize(Reporter("server", registry), [QUESTS])
    body, content_type = host.metrics_text("application/openmetrics-text; version=1.0.0,text/plain;q=0.5")
    assert content_type.startswith("application/openmetrics-text")
    assert body.decode().endswith("# EOF\n")
    body, content_type = host.metrics_text()
    assert content_type.startswith("text/plain")
    assert "# EOF" not in body.decode()


async def _scrape_openmetrics(port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"
                 b"Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n\r\n")
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"application/openmetrics-text" in head, head
    return body.decode()
