"""How many JetStream replicas the mesh's buckets and streams get, and bringing existing ones
up to that number.

``--replicas auto`` (the default) means R3 wherever JetStream runs on at least three servers and
R1 otherwise, so a mesh started against a production cluster survives the loss of a node without
anyone remembering a flag. An existing bucket or stream with fewer replicas than wanted is scaled
up in place (JetStream copies its data to the new peers); one with more is left alone, since
scaling down throws redundancy away and is an operator's decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StreamInfo

log = logging.getLogger("mesh.replication")

VALID_REPLICAS = (1, 3, 5)
NO_PLACEMENT = 10005  # JetStream's "no suitable peers for placement"


@dataclass(frozen=True, slots=True)
class ReplicaChoice:
    """The replica count buckets and streams are created with, and why, for the log."""

    replicas: int
    reason: str


def choose_replicas(nc: Client, asked: int | None) -> ReplicaChoice:
    """``asked`` when given; otherwise 3 if the connected server is part of a cluster, else 1.

    Whether it is comes from the server's INFO (``cluster``, its cluster's name). The number of
    servers it advertises (``connect_urls``) is not used: it is a snapshot of the routes up at
    connect time, so a host that starts while its cluster is still forming (the first deploy of
    a StatefulSet, two of three servers up) would pick R1 for good, and a cluster configured
    with ``no_advertise`` lists none. A cluster is run for redundancy, so R3 it is; where it
    really has fewer than three JetStream servers, creating a bucket fails with JetStream's own
    "insufficient resources", which the target reports as its storage outage (on ``/readyz``)
    until the servers are there or ``MESH_REPLICAS=1`` says otherwise.
    """
    if asked is not None:
        if asked not in VALID_REPLICAS:
            raise ValueError(f"replicas must be one of {VALID_REPLICAS}, got {asked}")
        return ReplicaChoice(asked, f"R{asked}, as configured")
    # nats-py keeps the server's INFO only in this attribute (no public accessor in 2.16).
    info = getattr(nc, "_server_info", None) or {}
    cluster = info.get("cluster")
    if not cluster:
        return ReplicaChoice(1, "R1: the NATS server is not part of a cluster")
    servers = len(set(info.get("connect_urls") or ()))
    seen = f"{servers} server(s) advertised so far" if servers else "servers not advertised"
    return ReplicaChoice(3, f"R3: the NATS server is part of cluster {cluster!r} ({seen}); "
                            "set MESH_REPLICAS=1 for a cluster of fewer than three JetStream servers")


def unplaceable(err: nats.js.errors.APIError, name: str, replicas: int) -> str | None:
    """What to tell an operator when JetStream cannot place ``name``'s ``replicas`` replicas
    (fewer JetStream servers up than replicas), or None for any other refusal."""
    if err.err_code != NO_PLACEMENT:
        return None
    return (f"JetStream cannot place {name} on {replicas} servers ({err.description}): waiting for "
            f"{replicas} JetStream servers; set MESH_REPLICAS=1 if the cluster has fewer")


async def ensure_replicas(js: JetStreamContext, info: StreamInfo, wanted: int, *, kind: str = "stream") -> int:
    """Scale the stream described by ``info`` up to ``wanted`` replicas if it has fewer; return
    the count it has afterwards. Never scales down (that is logged, once per open).

    Raises:
        nats.errors.Error: JetStream refused or did not answer the update (for example, fewer
            servers are up than the new count needs); the caller retries when it opens again.
    """
    config = info.config
    name = config.name or "?"
    current = config.num_replicas or 1
    if current == wanted:
        return current
    if current > wanted:
        log.info("keeping more replicas than asked", extra={kind: name, "replicas": current, "asked": wanted})
        return current
    config.num_replicas = wanted
    try:
        await js.update_stream(config)
    except nats.js.errors.APIError as err:
        log.error("cannot scale up", extra={kind: name, "from": current, "to": wanted, "error": str(err)})
        raise
    caught_up = await _wait_for_replicas(js, name, wanted)
    log.warning("scaled up", extra={kind: name, "from": current, "to": wanted, "caught_up": caught_up})
    return wanted


async def _wait_for_replicas(js: JetStreamContext, name: str, wanted: int, limit: float = 10.0) -> bool:
    # Right after a scale-up the stream moves to a new Raft group and drops writes sent in the
    # meantime (they time out unanswered); wait, bounded, until it has a leader and every new
    # peer is current, so the first calls after start do not pay for it.
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with contextlib.suppress(nats.errors.Error):
            cluster = (await js.stream_info(name)).cluster
            peers = (cluster.replicas or []) if cluster is not None else []
            if cluster is not None and cluster.leader and len(peers) + 1 >= wanted and all(p.current for p in peers):
                return True
        await asyncio.sleep(0.1)  # polling: JetStream announces no "caught up" event to clients
    return False
