"""``mesh up --cluster N``: N embedded nats-servers routed into one JetStream cluster on loopback.

Node i is ``nats-<i>``: client port ``--nats-port`` + i, monitoring port ``--nats-monitor-port``
+ i, route port ``--nats-cluster-port`` + i, its store, config, log and pid file under
``<data-dir>/nats-<i>/``. Every node lists the others' routes, so any two of three can form the
cluster. While ``mesh up`` runs, :meth:`EmbeddedCluster.supervise` restarts a node that dies on
the same ports and store after a short pause, as a StatefulSet would, and gives up on a node
that keeps dying.

In secure mode the routes are mutual TLS with a certificate of the cluster's own: nats-server
requires a route certificate to be valid for both server and client use, which the mesh's
server certificate is not, and a separate CA (whose key is not kept) means no client identity's
certificate can join the cluster as a route.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mesh.embedded_nats import ClusterSettings, EmbeddedNats, EmbeddedNatsError, RouteTls
from mesh.supervisor import http_get

__all__ = ["CLUSTER_NAME", "DEFAULT_REPLICAS", "EmbeddedCluster"]

CLUSTER_NAME = "mesh"
# What hosts choose on a cluster (``mesh serve --replicas auto``).
DEFAULT_REPLICAS = 3
# A node that exits is started again after this pause; one that exits more than RESTART_LIMIT
# times within RESTART_WINDOW seconds ends ``mesh up``.
RESTART_PAUSE = 1.0
RESTART_LIMIT = 5
RESTART_WINDOW = 60.0
# Polling the children and the monitoring endpoints: neither offers an event to wait on.
_POLL_INTERVAL = 0.1


class EmbeddedCluster:
    """N :class:`EmbeddedNats` nodes joined by routes: :meth:`start`, :meth:`supervise`, :meth:`stop`."""

    def __init__(
        self,
        *,
        size: int,
        port: int,
        monitor_port: int,
        cluster_port: int,
        data_dir: Path,
        host: str = "127.0.0.1",
        include: Path | None = None,
        route_tls: RouteTls | None = None,
        form_timeout: float = 30.0,
        restart_pause: float = RESTART_PAUSE,
        restart_limit: int = RESTART_LIMIT,
        restart_window: float = RESTART_WINDOW,
    ) -> None:
        if size < 2:
            raise ValueError("a cluster has at least two nodes")
        routes = [f"nats-route://{host}:{cluster_port + i}" for i in range(size)]
        self.nodes = [
            EmbeddedNats(
                port=port + i, monitor_port=monitor_port + i, data_dir=data_dir / f"nats-{i}", host=host,
                server_name=f"nats-{i}", include=include,
                cluster=ClusterSettings(CLUSTER_NAME, cluster_port + i, [r for j, r in enumerate(routes) if j != i],
                                        route_tls),
            )
            for i in range(size)
        ]
        self.form_timeout = form_timeout
        self.restart_pause = restart_pause
        self.restart_limit = restart_limit
        self.restart_window = restart_window
        self.restarts = 0

    def __repr__(self) -> str:
        return f"<EmbeddedCluster {CLUSTER_NAME!r} nodes={[n.server_name for n in self.nodes]}>"

    @property
    def urls(self) -> list[str]:
        """Every node's client URL; clients given all of them fail over between nodes."""
        return [node.url for node in self.nodes]

    async def start(self) -> None:
        """Start every node, then wait until each has routes to all the others and sees a
        JetStream meta leader (before that, JetStream API calls time out).

        Raises:
            mesh.embedded_nats.PortUnavailableError: a node's port is taken (nothing started).
            EmbeddedNatsError: a node did not start, or the cluster did not form in time.
        """
        # Every port first, so a taken one fails before any node has started.
        for node in self.nodes:
            node.check_ports()
        try:
            for node in self.nodes:
                # Blocking on the child process: a thread keeps the loop's signal handlers live.
                await asyncio.to_thread(node.start)
            await self._wait_until_formed()
        except BaseException:
            await asyncio.to_thread(self.stop)
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every node at once (one by one would make the rest elect leaders in turn),
        then wait for each, SIGKILL after ``timeout``."""
        for node in self.nodes:
            node.terminate()
        for node in self.nodes:
            node.stop(timeout)

    async def supervise(self, report: Callable[[str], None]) -> None:
        """Restart each node that exits, reporting one line per exit; run until cancelled.

        Raises:
            EmbeddedNatsError: a node exited more than ``restart_limit`` times within
                ``restart_window`` seconds.
        """
        exits: dict[str, collections.deque[float]] = {n.server_name: collections.deque() for n in self.nodes}
        while True:
            down = [node for node in self.nodes if not node.running]
            for node in down:
                code = node.exit_code()
                recent = exits[node.server_name]
                now = time.monotonic()
                recent.append(now)
                while recent and recent[0] < now - self.restart_window:
                    recent.popleft()
                how = describe_exit(code) if code is not None else "failed to start"
                if len(recent) > self.restart_limit:
                    raise EmbeddedNatsError(
                        f"nats-server {node.server_name} keeps dying ({len(recent)} times within "
                        f"{self.restart_window:g} s, last {how}; log: {node.log_path})")
                report(f"nats-server {node.server_name} {how}; restarting it on the same ports and store "
                       f"in {self.restart_pause:g} s (log: {node.log_path})")
            if down:
                await asyncio.sleep(self.restart_pause)
                for node in down:
                    await self._restart(node, report)
            await asyncio.sleep(_POLL_INTERVAL)

    async def _restart(self, node: EmbeddedNats, report: Callable[[str], None]) -> None:
        starting = asyncio.ensure_future(asyncio.to_thread(node.start))
        try:
            await asyncio.shield(starting)
        except asyncio.CancelledError:
            # The thread cannot be interrupted; let it finish so stop() finds the process.
            with contextlib.suppress(Exception):
                await starting
            raise
        except EmbeddedNatsError as error:
            # Counted as another exit on the next pass, which retries or gives up.
            report(f"nats-server {node.server_name} did not restart: {error}")
            return
        self.restarts += 1

    async def _wait_until_formed(self) -> None:
        deadline = time.monotonic() + self.form_timeout
        while True:
            states = await asyncio.gather(*(self._node_state(node) for node in self.nodes))
            if all(routes >= len(self.nodes) - 1 and leader for routes, leader in states):
                return
            for node in self.nodes:
                code = node.exit_code()
                if code is not None:
                    raise EmbeddedNatsError(
                        f"nats-server {node.server_name} {describe_exit(code)} while the cluster formed "
                        f"(log: {node.log_path})")
            if time.monotonic() >= deadline:
                seen = ", ".join(f"{n.server_name}: {r} routes, meta leader {leader or 'none'}"
                                 for n, (r, leader) in zip(self.nodes, states, strict=True))
                raise EmbeddedNatsError(
                    f"the NATS cluster did not form within {self.form_timeout:g} s ({seen}; logs: "
                    f"{self.nodes[0].log_path.parent.parent}/nats-*/nats-server.log)")
            await asyncio.sleep(_POLL_INTERVAL)

    @staticmethod
    async def _node_state(node: EmbeddedNats) -> tuple[int, str]:
        """(distinct peers routed to, the meta leader's name or ""), from the node's monitoring."""
        try:
            routez = await _monitoring(node, "/routez")
            jsz = await _monitoring(node, "/jsz")
        except (OSError, TimeoutError, ValueError):
            return 0, ""
        # Pooled routes open several connections per peer; count distinct peers.
        peers = {r.get("remote_name") or r.get("remote_id") for r in routez.get("routes") or []}
        return len(peers), str((jsz.get("meta_cluster") or {}).get("leader") or "")


async def _monitoring(node: EmbeddedNats, path: str) -> dict[str, Any]:
    status, body = await http_get(node.host, node.monitor_port, path, limit=2.0)
    if status != 200:
        raise ValueError(f"{path} answered {status}")
    answer = json.loads(body)
    if not isinstance(answer, dict):
        raise ValueError(f"{path} answered {type(answer).__name__}")
    return answer


def describe_exit(code: int) -> str:
    """``exited with code 1`` or ``was killed by SIGKILL``, for a child's return code."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


