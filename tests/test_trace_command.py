"""``mesh trace``: a waterfall of a trace kept in spans files (written here by the real span file
exporter from calls through real nats_transport servers), and one line with exit code 2 for a
missing or garbled file or a trace that is not there."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from gaming.quest.v1 import quest_pb2
from nats.aio.client import Client
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from health.span_file import SpanFile, read_spans, span_files
from health.trace_pipeline import Tracing
from mesh.cli import main
from tests.test_tracing import caller_stubs, chain, names


@pytest.fixture
def traces(tmp_path: Path) -> Path:
    return tmp_path / "traces"


@pytest.fixture
def tracing(traces: Path) -> Iterator[Tracing]:
    pipeline = Tracing([SpanFile(traces / "host-test.jsonl")])
    yield pipeline
    pipeline.shutdown()


def trace_of(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["trace", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def calls(nc: Client, tracing: Tracing, *quest_ids: str) -> list[str]:
    """One call per quest id into a chain of three targets; returns the targets."""
    a, b, c = names("wf")
    async with chain(nc, tracing, [a, b, c]), caller_stubs(nc, tracing, a) as (quests, _):
        for quest_id in quest_ids:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await quests.GetQuest(quest_pb2.GetQuestRequest(quest_id=quest_id), timeout=5)
    await asyncio.to_thread(tracing.flush)
    return [a, b, c]


async def test_the_last_trace_prints_as_a_waterfall_of_every_hop(
    nc: Client, tracing: Tracing, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b, c = await calls(nc, tracing, "first", "q")

    code, out, err = trace_of(capsys, "--last", "--data-dir", str(tmp_path))

    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert re.fullmatch(r"trace [0-9a-f]{32}: 6 spans, 4 services, [\d.]+ ms", lines[0]), lines[0]
    rows = lines[2:-1]
    assert len(rows) == 6
    # Indented by depth: the caller's client span, A's server span under it, and so on down to C.
    expected = [(0, f"test-caller -> {a}"), (1, a), (2, f"{a} -> {b}"), (3, b), (4, f"{b} -> {c}"), (5, c)]
    for row, (depth, who) in zip(rows, expected, strict=True):
        assert re.search(rf"\|[ █]+\| +[\d.]+ ms  OK +{'  ' * depth}{re.escape(who)}  ", row), row
        assert "gaming.quest.v1.QuestService/GetQuest" in row
    target = re.search(r"\[grpc\.([^.]+)\.gaming\.quest\.v1\.QuestService\.GetQuest\]$", rows[-1])
    assert target is not None
    assert target.group(1) == c
    assert lines[-1] == "no errors in 6 spans"


async def test_a_trace_chosen_by_id_ends_with_where_its_failure_began(
    nc: Client, tracing: Tracing, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, _, c = await calls(nc, tracing, "missing", "q")
    spans = list(read_spans(span_files(tmp_path / "traces")))
    failed = {s.trace_id for s in spans if s.attributes.get("rpc.grpc.status_code") == 5}
    (trace_id,) = failed

    code, out, _ = trace_of(capsys, trace_id.upper(), "--spans", str(tmp_path / "traces" / "host-test.jsonl"))

    assert code == 0
    assert out.splitlines()[0].startswith(f"trace {trace_id}: 6 spans")
    assert out.count("NOT_FOUND") == 7  # six rows and the last line
    assert out.splitlines()[-1] == (f"6 of 6 spans failed; it began at {c} gaming.quest.v1.QuestService/GetQuest "
                                    f"with NOT_FOUND: no quest on {c}")


def test_no_spans_folder_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = trace_of(capsys, "--data-dir", str(tmp_path / "nowhere"))
    assert (code, out) == (2, "")
    assert err == (f"mesh trace: error: {tmp_path / 'nowhere' / 'traces'}: no such folder: run the mesh with "
                   "'mesh up --trace' (and give both the same --data-dir)\n")
    code, out, err = trace_of(capsys, "--spans", str(tmp_path / "nowhere.jsonl"))
    assert (code, out) == (2, "")
    assert err == f"mesh trace: error: {tmp_path / 'nowhere.jsonl'}: no such file or folder\n"


def test_a_garbled_spans_file_is_one_line_naming_it_and_exit_2(
    traces: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    traces.mkdir()
    good = {"trace_id": "a" * 32, "span_id": "b" * 16, "parent_id": None, "name": "/s.S/M", "kind": "server",
            "service": "x", "start_ns": 1, "end_ns": 2, "status": "UNSET", "attributes": {}}
    (traces / "host-x.jsonl").write_text(json.dumps(good) + "\n{not json\n")
    code, out, err = trace_of(capsys, "--spans", str(traces))
    assert (code, out) == (2, "")
    assert err.startswith(f"mesh trace: error: {traces / 'host-x.jsonl'}:2: ")
    assert err.count("\n") == 1

    (traces / "host-x.jsonl").write_text(json.dumps({"trace_id": "a" * 32}) + "\n")
    code, _, err = trace_of(capsys, "--spans", str(traces))
    assert code == 2
    assert err.startswith(f"mesh trace: error: {traces / 'host-x.jsonl'}:1: not a span record")
    assert err.count("\n") == 1


def test_a_malformed_or_absent_trace_id_is_one_line_and_exit_2(
    traces: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    traces.mkdir()
    (traces / "host-x.jsonl").write_text("")
    for args, message in (
        (["nope"], "'nope' is not a trace id (32 hex digits)"),
        (["a" * 32, "--last"], "give a TRACE_ID or --last, not both"),
        (["--last"], f"{traces}: no spans yet (make a call to a 'mesh up --trace')"),
    ):
        code, out, err = trace_of(capsys, *args, "--spans", str(traces))
        assert (code, out, err) == (2, "", f"mesh trace: error: {message}\n"), args

    record = {"trace_id": "c" * 32, "span_id": "d" * 16, "parent_id": None, "name": "/s.S/M", "kind": "server",
              "service": "x", "start_ns": 1, "end_ns": 2, "status": "UNSET", "attributes": {}}
    (traces / "host-x.jsonl").write_text(json.dumps(record) + "\n")
    code, _, err = trace_of(capsys, "e" * 32, "--spans", str(traces))
    assert (code, err) == (2, f"mesh trace: error: no trace {'e' * 32} in {traces}\n")


def test_a_spans_file_is_rotated_at_its_bound_and_both_parts_are_read(traces: Path) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(SpanFile(traces / "host-r.jsonl", max_bytes=4096)))
    tracer = provider.get_tracer("test")
    for _ in range(30):  # about 15 KiB through a 4 KiB bound
        with tracer.start_as_current_span("/s.S/M", attributes={"padding": "p" * 300}):
            pass
    provider.shutdown()
    assert sorted(p.name for p in traces.iterdir()) == ["host-r.jsonl", "host-r.jsonl.1"]
    assert all(p.stat().st_size <= 4096 for p in traces.iterdir())
    assert 4 <= len(list(read_spans(span_files(traces)))) < 30
