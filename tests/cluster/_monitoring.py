"""What a test learns from the nodes' monitoring endpoints: who leads the meta layer and each
stream, whether every replica is current, and whether a node answers at all."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh.supervisor import http_get


@dataclass(frozen=True)
class Node:
    """One nats-server of the cluster ``mesh up --cluster`` runs."""

    name: str
    client_port: int
    monitor_port: int
    data_dir: Path

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    def pid(self) -> int | None:
        """The pid in the node's pid file (nats-server rewrites it on each start)."""
        with contextlib.suppress(OSError, ValueError):
            return int((self.data_dir / "nats-server.pid").read_text().strip())
        return None

    def kill(self) -> int:
        """SIGKILL the node; its pid."""
        pid = self.pid()
        assert pid is not None, f"{self.name} has no pid file"
        os.kill(pid, signal.SIGKILL)
        return pid


async def get_json(node: Node, path: str) -> dict[str, Any] | None:
    """The node's answer on ``path``, or None if it does not answer (dead, starting, busy)."""
    try:
        status, body = await http_get("127.0.0.1", node.monitor_port, path, limit=2.0)
        answer = json.loads(body) if status == 200 else None
    except (OSError, TimeoutError, ValueError):
        return None
    return answer if isinstance(answer, dict) else None


@dataclass(frozen=True)
class StreamView:
    """One stream as its leader sees it."""

    name: str
    leader: str
    replicas: int
    current: bool  # every follower current, as the leader reports


@dataclass(frozen=True)
class ClusterView:
    """The cluster as its nodes report it; ``healthy`` only if every part is in order."""

    answering: tuple[str, ...]
    meta_leaders: tuple[str, ...]
    streams: dict[str, StreamView]
    problems: tuple[str, ...]

    @property
    def meta_leader(self) -> str:
        return self.meta_leaders[0] if len(set(self.meta_leaders)) == 1 else ""

    @property
    def healthy(self) -> bool:
        return not self.problems


async def look(nodes: list[Node], streams: tuple[str, ...]) -> ClusterView:
    """Ask every node for /healthz, /routez and /jsz and put the answers together."""
    problems: list[str] = []
    answering: list[str] = []
    meta_leaders: list[str] = []
    details: dict[str, dict[str, dict[str, Any]]] = {}
    for node in nodes:
        health = await get_json(node, "/healthz")
        if health is None or health.get("status") != "ok":
            problems.append(f"{node.name}: /healthz {health.get('error') if health else 'no answer'}")
            continue
        answering.append(node.name)
        routez = await get_json(node, "/routez") or {}
        peers = {r.get("remote_name") for r in routez.get("routes") or []}
        if len(peers) < len(nodes) - 1:
            problems.append(f"{node.name}: routes to {sorted(p for p in peers if p)}")
        jsz = await get_json(node, "/jsz?accounts=true&streams=true&config=true") or {}
        meta_leaders.append(str((jsz.get("meta_cluster") or {}).get("leader") or ""))
        details[node.name] = {s["name"]: s for a in jsz.get("account_details") or []
                              for s in a.get("stream_detail") or []}
    if not meta_leaders or len(set(meta_leaders)) != 1 or not meta_leaders[0]:
        problems.append(f"meta leaders seen: {meta_leaders}")
    views: dict[str, StreamView] = {}
    for stream in streams:
        view = _stream_view(stream, details, len(nodes))
        if view is None:
            problems.append(f"{stream}: no leader reports it")
            continue
        views[stream] = view
        if not view.current or view.replicas != len(nodes):
            problems.append(f"{stream}: {view}")
    return ClusterView(tuple(answering), tuple(meta_leaders), views, tuple(problems))


def _stream_view(stream: str, details: dict[str, dict[str, dict[str, Any]]], size: int) -> StreamView | None:
    # Only the leader knows whether the followers are current; a follower reports itself alone.
    for node, found in details.items():
        detail = found.get(stream)
        if detail is None:
            continue
        cluster = detail.get("cluster") or {}
        if cluster.get("leader") != node:
            continue
        followers = cluster.get("replicas") or []
        return StreamView(stream, node, int((detail.get("config") or {}).get("num_replicas") or 0),
                          all(f.get("current") and not f.get("offline") for f in followers)
                          and len(followers) == size - 1)
    return None
