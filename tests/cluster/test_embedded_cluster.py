"""The embedded cluster on its own: flags checked before anything starts, a node that dies
restarted on its ports and store, a node that keeps dying given up on, routes that admit only the
cluster's own certificate."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.js.api import StreamConfig

from mesh.cli import main
from mesh.embedded_cluster import EmbeddedCluster
from mesh.embedded_nats import EmbeddedNatsError
from mesh.security import pki
from mesh.security.routes import ensure_route_tls
from tests._waiting import wait_for
from tests.cluster._monitoring import Node, get_json
from tests.cluster._ports import disjoint_runs

pytestmark = pytest.mark.cluster


@pytest.mark.parametrize(
    ("arguments", "flag"),
    [
        (["--cluster", "3", "--nats-url", "nats://127.0.0.1:4222"], "--cluster"),
        (["--cluster", "2"], "--cluster"),
        (["--cluster", "3", "--nats-port", "4222", "--nats-monitor-port", "4224"], "--nats-monitor-port"),
        (["--cluster", "3", "--nats-port", "65534"], "--nats-port"),
        (["--cluster", "3", "--nats-cluster-port", "50050", "--grpc-port", "50052"], "--grpc-port"),
        (["--cluster", "5", "--nats-cluster-port", "65532"], "--nats-cluster-port"),
    ],
)
def test_a_bad_cluster_setting_exits_2_naming_the_flag(
    arguments: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["up", *arguments])

    error = capsys.readouterr().err
    assert code == 2
    assert error.startswith(f"mesh up: error: {flag}:"), error
    assert len(error.strip().splitlines()) == 1, error


def test_a_taken_route_port_exits_2_naming_the_flag_before_any_node_starts(tmp_path: Path) -> None:
    nats_port, monitor, routes = disjoint_runs(3, 3, 3)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", routes + 2))
        holder.listen()
        result = subprocess.run(
            [sys.executable, "-m", "mesh", "up", "--cluster", "3", "--data-dir", str(tmp_path),
             "--nats-port", str(nats_port), "--nats-monitor-port", str(monitor), "--nats-cluster-port", str(routes)],
            capture_output=True, text=True, timeout=30,
        )
    assert result.returncode == 2
    assert result.stderr.startswith(f"mesh up: error: --nats-cluster-port + 2: cannot listen on 127.0.0.1:{routes + 2}")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not list(tmp_path.glob("nats-*/nats-server.log"))


def _cluster(data_dir: Path, **options: object) -> tuple[EmbeddedCluster, list[Node]]:
    port, monitor, routes = disjoint_runs(3, 3, 3)
    cluster = EmbeddedCluster(size=3, port=port, monitor_port=monitor, cluster_port=routes, data_dir=data_dir,
                              **options)  # type: ignore[arg-type]
    nodes = [Node(n.server_name, n.port, n.monitor_port, n.data_dir) for n in cluster.nodes]
    return cluster, nodes


@contextlib.asynccontextmanager
async def _running(cluster: EmbeddedCluster) -> AsyncIterator[None]:
    await cluster.start()
    try:
        yield
    finally:
        await asyncio.to_thread(cluster.stop)


async def test_a_killed_node_comes_back_on_its_ports_and_store_and_one_that_keeps_dying_ends_it(
    tmp_path: Path,
) -> None:
    cluster, nodes = _cluster(tmp_path, restart_pause=0.1, restart_limit=2)
    lines: list[str] = []
    async with _running(cluster):
        nc = await nats.connect(servers=cluster.urls, connect_timeout=2)
        try:
            js = nc.jetstream(timeout=10)
            await js.add_stream(StreamConfig(name="kept", subjects=["kept.>"], num_replicas=3))
            await js.publish("kept.one", b"acknowledged", timeout=10)
        finally:
            await nc.close()
        supervision = asyncio.create_task(cluster.supervise(lines.append))
        try:
            victim = nodes[1]
            old = victim.kill()

            async def back_with_the_stream() -> bool:
                jsz = await get_json(victim, "/jsz?streams=true&accounts=true")
                streams = [s for a in (jsz or {}).get("account_details") or [] for s in a.get("stream_detail") or []]
                return victim.pid() != old and any(s["name"] == "kept" and s["state"]["messages"] == 1 for s in streams)

            await wait_for(back_with_the_stream, timeout=30)
            assert lines == [f"nats-server nats-1 was killed by SIGKILL; restarting it on the same ports and store "
                             f"in 0.1 s (log: {cluster.nodes[1].log_path})"]
            await wait_for(lambda: cluster.restarts == 1, timeout=10)  # counted once start() has returned

            # The third exit of one node within the window is one too many with restart_limit=2.
            for restarts in (1, 2, None):
                pid = cluster.nodes[2].pid
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
                if restarts is not None:
                    await wait_for(lambda r=restarts: cluster.restarts == 1 + r, timeout=30)  # type: ignore[misc]
            with pytest.raises(EmbeddedNatsError, match=r"nats-server nats-2 keeps dying \(3 times within 60 s"):
                await asyncio.wait_for(supervision, 30)
        finally:
            supervision.cancel()
            await asyncio.gather(supervision, return_exceptions=True)


async def test_routes_are_mutual_tls_that_admits_only_the_clusters_own_certificate(tmp_path: Path) -> None:
    tls, kept = ensure_route_tls(tmp_path / "routes")
    assert not kept
    first = tls.cert.read_bytes()
    assert ensure_route_tls(tmp_path / "routes")[0].cert.read_bytes() == first  # kept while valid
    cluster, _ = _cluster(tmp_path / "data", route_tls=tls)
    async with _running(cluster):  # formed: the three nodes routed to each other over TLS
        port = cluster.nodes[0].cluster.port if cluster.nodes[0].cluster else 0
        assert await asyncio.to_thread(_route_handshake, port, tls.cert, tls.key, tls.ca)
        # A certificate of another CA (as every client identity has) is refused.
        other = pki.new_authority()
        stranger = pki.issue_client(other, "payment")
        (tmp_path / "stranger.pem").write_bytes(stranger.cert_pem())
        pki.write_private(tmp_path / "stranger.key", stranger.key_pem())
        assert not await asyncio.to_thread(_route_handshake, port, tmp_path / "stranger.pem",
                                           tmp_path / "stranger.key", tls.ca)


def _route_handshake(port: int, cert: Path, key: Path, ca: Path) -> bool:
    """Whether a route port completes mutual TLS with this certificate and then says INFO."""
    context = ssl.create_default_context(cafile=str(ca))
    context.load_cert_chain(str(cert), str(key))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            # Routes start with the TLS handshake; the INFO line comes inside it. TLS 1.3 ends the
            # client's side before the server has checked the client's certificate, so only the
            # INFO shows that the server kept the connection.
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as secured:
                return secured.recv(5) == b"INFO "
        except (ssl.SSLError, ConnectionError, TimeoutError):
            return False
