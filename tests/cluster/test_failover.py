"""Nothing acknowledged is lost when a node of ``mesh up --cluster 3`` dies.

Under steady writes on payment (Charge) and state-manager (compare-and-set Update), the JetStream
meta leader, then the leader of payment's ledger stream, then a follower are killed with
SIGKILL, one at a time; between kills the node is restarted by ``mesh up`` and the cluster
recovers. Afterwards every acknowledged write is read back. Calls may fail only with
UNAVAILABLE, only between a kill and the recovery that follows it, and each writer succeeds
again afterwards. The figures (failure window, calls failed by code, writes) are printed per kill;
``MESH_FAILOVER_REPORT=<file>`` also writes them as JSON, and ``MESH_FAILOVER_ROUNDS=<n>`` repeats
the three kills n times, ``MESH_FAILOVER_DEADLINE=<s>`` sets each call's deadline (8 s).
"""

from __future__ import annotations

import collections
import json
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import nats
import pytest
from gaming.auth.v1 import auth_pb2, auth_pb2_grpc
from nats.aio.client import Client

from tests._waiting import wait_for
from tests.cluster._load import Load, Watcher
from tests.cluster._monitoring import ClusterView, Node, get_json, look
from tests.cluster.conftest import ClusterMesh, stop_cluster_mesh

pytestmark = pytest.mark.cluster

ROUNDS = int(os.environ.get("MESH_FAILOVER_ROUNDS", "1"))
# Each call's deadline, in seconds: above the transport's keepalive timeout (5 s), the time a
# caller waits on a replica that went silent (its NATS connection died with the killed node)
# before UNAVAILABLE. A shorter deadline turns those calls into DEADLINE_EXCEEDED, correctly.
DEADLINE = float(os.environ.get("MESH_FAILOVER_DEADLINE", "8"))
KINDS = ("meta leader", "stream leader", "follower")
# The buckets under load; the stream-leader kill takes the ledger's leader.
STREAMS = ("KV_payment_accounts", "KV_payment_ledger", "KV_state_manager")
LEADER_STREAM = "KV_payment_ledger"
RECOVERY_TIMEOUT = 60.0
# Successful writes each writer makes after a restart before the cluster counts as recovered.
PROGRESS = 5


@dataclass
class Segment:
    """One kill: what was killed and the instants (monotonic) of its phases."""

    kind: str
    victim: str
    start: float  # leaders were arranged from here (step-downs), then the kill
    kill: float = 0.0
    restarted: float = 0.0
    recovered: float = 0.0
    also_led: list[str] = field(default_factory=list)
    stepdowns: list[str] = field(default_factory=list)
    clients: list[str] = field(default_factory=list)  # connections the victim served when killed


@pytest.mark.timeout(150 + 120 * (ROUNDS - 1))
async def test_no_acknowledged_write_is_lost_when_nodes_are_killed(cluster_mesh: ClusterMesh) -> None:
    mesh = cluster_mesh
    view = await _until_healthy(mesh.nodes)
    replicas = {name: stream.replicas for name, stream in view.streams.items()}
    assert set(replicas.values()) == {len(mesh.nodes)}, f"the buckets under load are not R3: {replicas}"
    # For leader step-downs (the JetStream API); named so it reads as ours in the report.
    nc = await nats.connect(servers=[node.url for node in mesh.nodes], connect_timeout=2, name="failover-test")
    segments: list[Segment] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{mesh.grpc_port}") as channel:
        load = Load(channel, await _operator_token(channel), deadline=DEADLINE)
        watcher = Watcher(channel, mesh.admin_port)
        await load.prepare()
        began = time.monotonic()
        load.start()
        watcher.start()
        try:
            await _progress(load, since=began)
            for _ in range(ROUNDS):
                for kind in KINDS:
                    segments.append(await _kill(kind, mesh, load, nc))
        finally:
            await load.stop()
            await watcher.stop()
            await nc.close()
        checked = await load.verify()
    report = _report(segments, load, watcher, checked, began)
    _publish(report)

    assert load.violations == [], load.violations
    failures = [o for o in load.outcomes if o.failed]
    assert {o.code for o in failures} <= {grpc.StatusCode.UNAVAILABLE}, collections.Counter(
        (o.code.name, o.method, o.detail) for o in failures if o.code != grpc.StatusCode.UNAVAILABLE)
    outside = [o for o in failures if not any(s.start <= o.at <= s.recovered for s in segments)]
    assert outside == [], f"failures outside any kill's window: {outside[:5]}"
    for segment in segments:
        failed_writers = {o.writer for o in failures if segment.start <= o.at <= segment.recovered}
        for writer in failed_writers:
            last_failure = max(o.at for o in failures if o.writer == writer and o.at <= segment.recovered)
            assert load.successes_since(writer, last_failure) > 0, f"{writer} never succeeded after {segment.kind}"
        assert f"nats-server {segment.victim} was killed by SIGKILL" in mesh.output()
    # Every acknowledged write was read back, and so were those that landed unanswered.
    assert checked == load.acknowledged() + load.landed_unacknowledged > 0
    assert mesh.process.returncode is None, mesh.errors()
    assert await stop_cluster_mesh(mesh) == 0, mesh.errors()
    assert mesh.output().rstrip().endswith("mesh up: stopped")
    assert "Traceback" not in mesh.errors(), mesh.errors()


async def _kill(kind: str, mesh: ClusterMesh, load: Load, nc: Client) -> Segment:
    """Arrange the leaders so ``kind`` names one node, kill it, and wait for the recovery."""
    segment = Segment(kind, "", start=time.monotonic())
    view = await _until_healthy(mesh.nodes)
    victim = await _choose(kind, view, mesh.nodes, nc, segment)
    view = await _until_healthy(mesh.nodes)
    segment.also_led = sorted(
        ["meta"] * (view.meta_leader == victim.name)
        + [name for name, stream in view.streams.items() if stream.leader == victim.name])
    await _progress(load, since=time.monotonic())
    connz = await get_json(victim, "/connz?limit=1024") or {}
    segment.clients = sorted(str(c.get("name") or "?") for c in connz.get("connections") or [])
    segment.kill = time.monotonic()
    old_pid = victim.kill()

    async def restarted() -> bool:
        pid = victim.pid()
        return pid is not None and pid != old_pid and await get_json(victim, "/varz") is not None

    await wait_for(restarted, timeout=RECOVERY_TIMEOUT)
    segment.restarted = time.monotonic()
    await _until_healthy(mesh.nodes)
    await _progress(load, since=segment.restarted)
    segment.recovered = time.monotonic()
    return segment


async def _choose(kind: str, view: ClusterView, nodes: list[Node], nc: Client, segment: Segment) -> Node:
    by_name = {node.name: node for node in nodes}
    meta = view.meta_leader
    if kind == "meta leader":
        name = meta
    elif kind == "stream leader":
        # A stream leader that is not also the meta leader, so the two kinds stay apart.
        await _step_down_while(nodes, nc, segment, lambda v: [LEADER_STREAM] if v.streams[LEADER_STREAM].leader
                               == v.meta_leader else [])
        name = (await _until_healthy(nodes)).streams[LEADER_STREAM].leader
    else:
        # The node (not the meta leader) leading fewest of the streams under load, made to lead
        # none; of two, the one serving more clients, so that clients fail over too.
        clients = {n.name: len((await get_json(n, "/connz?limit=1024") or {}).get("connections") or [])
                   for n in nodes}
        name = min((n.name for n in nodes if n.name != meta),
                   key=lambda n: (sum(s.leader == n for s in view.streams.values()), -clients[n]))
        await _step_down_while(nodes, nc, segment, lambda v: [s for s in STREAMS if v.streams[s].leader == name])
        assert (await _until_healthy(nodes)).meta_leader != name, "the meta leader moved onto the follower"
    segment.victim = name
    return by_name[name]


async def _step_down_while(nodes: list[Node], nc: Client, segment: Segment,
                           leading: Callable[[ClusterView], list[str]]) -> None:
    """Ask the leaders of the streams ``leading(view)`` names to step down, until it names none."""
    for _ in range(5):
        view = await _until_healthy(nodes)
        streams = leading(view)
        if not streams:
            return
        for stream in streams:
            segment.stepdowns.append(f"{stream} from {view.streams[stream].leader}")
            reply = await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", b"", timeout=5)
            assert json.loads(reply.data).get("success"), reply.data
            await wait_for(_leader_moved(nodes, stream, view.streams[stream].leader), timeout=RECOVERY_TIMEOUT)
    raise AssertionError(f"leaders would not move off: {leading(await _until_healthy(nodes))}")


def _leader_moved(nodes: list[Node], stream: str, old: str) -> Callable[[], Awaitable[bool]]:
    async def moved() -> bool:
        seen = await look(nodes, (stream,))
        return stream in seen.streams and seen.streams[stream].leader != old

    return moved


async def _until_healthy(nodes: list[Node]) -> ClusterView:
    views: list[ClusterView] = []

    async def healthy() -> bool:
        views.append(await look(nodes, STREAMS))
        return views[-1].healthy

    try:
        await wait_for(healthy, timeout=RECOVERY_TIMEOUT)
    except AssertionError as error:
        raise AssertionError(f"cluster not healthy: {views[-1].problems if views else '?'}") from error
    return views[-1]


async def _progress(load: Load, since: float) -> None:
    async def every_writer_wrote() -> bool:
        return all(load.successes_since(writer, since) >= PROGRESS for writer in load.writers)

    await wait_for(every_writer_wrote, timeout=RECOVERY_TIMEOUT)


async def _operator_token(channel: grpc.aio.Channel) -> str:
    stub = auth_pb2_grpc.AuthServiceStub(channel)
    username = f"failover{uuid.uuid4().hex[:8]}"
    await stub.Register(auth_pb2.RegisterRequest(username=username, password="correct horse", display_name="F"),
                        timeout=10)
    login = await stub.Login(auth_pb2.LoginRequest(username=username, password="correct horse", scopes=["operator"]),
                             timeout=10)
    return str(login.tokens.access_token)


def _publish(report: dict[str, object]) -> None:
    text = json.dumps(report, indent=2)
    print(text)  # shown with -s, or -rP
    if os.environ.get("MESH_FAILOVER_REPORT"):
        Path(os.environ["MESH_FAILOVER_REPORT"]).write_text(text + "\n")


def _report(segments: list[Segment], load: Load, watcher: Watcher, checked: int, began: float) -> dict[str, object]:
    rows = []
    for segment in segments:
        inside = [o for o in load.outcomes if segment.start <= o.at <= segment.recovered]
        failed = [o for o in inside if o.failed and o.at >= segment.kill]
        arranging = [o for o in inside if o.failed and o.at < segment.kill]
        seen = sorted({f"{what}: {answer}" for at, what, answer in watcher.seen
                       if segment.kill <= at <= segment.recovered})
        rows.append({
            **{k: v for k, v in asdict(segment).items() if k in ("kind", "victim", "also_led", "stepdowns", "clients")},
            "failure_window_s": [round(min(o.at for o in failed) - segment.kill, 2),
                                 round(max(o.at for o in failed) - segment.kill, 2)] if failed else None,
            "failed_by_code": dict(collections.Counter(f"{o.method} {o.code.name}" for o in failed)),
            "failure_details": sorted({f"{o.method} {o.code.name}: {o.detail[:160]}" for o in failed})[:8],
            "failed_while_stepping_down": dict(collections.Counter(f"{o.method} {o.code.name}" for o in arranging)),
            "acknowledged_writes": load.acknowledged(segment.start, segment.recovered),
            "restarted_after_s": round(segment.restarted - segment.kill, 2),
            "recovered_after_s": round(segment.recovered - segment.kill, 2),
            "seen_by_probes": seen[:12],
        })
    return {"kills": rows, "writes_acknowledged": load.acknowledged(), "writes_checked": checked,
            "landed_without_acknowledgement": load.landed_unacknowledged,
            "load_seconds": round(time.monotonic() - began, 1), "violations": load.violations}
