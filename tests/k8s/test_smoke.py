"""The manifests, run: the NATS StatefulSet's three pods, a handful of target Deployments and
the gateway, each from its rendered command, args, environment and volumes (see _pods.py); then
a call chain across the targets over NATS, calls through the gateway, and the drain the
manifests rely on.

The dev overlay runs open; the prod overlay runs with mTLS to NATS, per-pod identities, the
generated users, and TLS from clients to the gateway, from files made by the documented commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from gaming.auth.v1 import auth_pb2, auth_pb2_grpc
from gaming.common.v1 import common_pb2
from gaming.quest.v1 import quest_pb2, quest_pb2_grpc
from gaming.world_state.v1 import world_state_pb2, world_state_pb2_grpc
from nats.aio.client import Client

import nats_transport.aio
from mesh.connection import NatsAccess, connect
from mesh.k8s.common import GATEWAY, NATS, NATS_CLIENT_PORT, NATS_CLUSTER_PORT
from nats_transport.testing import free_port
from tests._waiting import wait_for
from tests.k8s._kustomize import Built, build
from tests.k8s._pods import Network, Pod, pod_of

# What GenerateQuest needs: quest-system calls world-state, npc-behavior and story-teller
# (which calls ai-integration); every host verifies tokens with auth's keys; payment and
# state-manager are there because a quest can pay out and a player has state.
TARGETS = ("auth", "world-state", "npc-behavior", "ai-integration", "story-teller", "payment",
           "state-manager", "quest-system")
READY_WITHIN = 60.0
STOP_WITHIN = 30.0


def _nats_pods(built: Built, root: Path) -> list[Pod]:
    statefulset = built.find("StatefulSet", NATS)
    names = [f"{NATS}-{i}" for i in range(statefulset["spec"]["replicas"])]
    ports = {name: {"client": free_port(), "cluster": free_port(), "monitor": free_port()} for name in names}
    network = Network({
        **{(f"{name}.{NATS}", NATS_CLIENT_PORT): ports[name]["client"] for name in names},
        **{(f"{name}.{NATS}", NATS_CLUSTER_PORT): ports[name]["cluster"] for name in names},
    })
    return [pod_of(statefulset, built, name, root / name, network, ports[name]) for name in names]


def _mesh_pods(built: Built, root: Path, nats: list[Pod]) -> list[Pod]:
    """The targets, then the gateway."""
    network = Network({(f"{pod.name}.{NATS}", NATS_CLIENT_PORT): pod.ports["client"] for pod in nats})
    pods = [pod_of(built.find("Deployment", target), built, f"{target}-0", root / target, network,
                   {"admin": free_port()})
            for target in TARGETS]
    gateway = {"grpc": free_port(), "http": free_port(), "admin": free_port()}
    pods.append(pod_of(built.find("Deployment", GATEWAY), built, f"{GATEWAY}-0", root / GATEWAY, network, gateway))
    return pods


async def _all_ready(pods: list[Pod]) -> None:
    """Every probe of every pod answers 200 (the startup probe first, as the kubelet asks)."""
    async def ready() -> bool:
        for pod in pods:
            if not pod.running():
                raise AssertionError(f"{pod.name} exited with {pod.process.returncode if pod.process else None}:\n"
                                     f"{pod.tail()}")
        statuses = await asyncio.gather(*(asyncio.to_thread(pod.probe, kind) for pod in pods for kind in pod.probes))
        return all(status == 200 for status in statuses)

    try:
        await wait_for(ready, timeout=READY_WITHIN)
    except AssertionError:
        for pod in pods:
            print(f"--- {pod.name}: {[(kind, pod.probe(kind)) for kind in pod.probes]}\n{pod.tail()}")
        raise


def _stop(pods: list[Pod]) -> None:
    deadline = time.monotonic() + STOP_WITHIN
    for pod in pods:
        pod.terminate()
    for pod in pods:
        if pod.process is not None:
            with contextlib.suppress(Exception):
                pod.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        pod.kill()


@contextlib.asynccontextmanager
async def _running(built: Built, root: Path) -> AsyncIterator[tuple[list[Pod], list[Pod]]]:
    nats = _nats_pods(built, root)
    hosts: list[Pod] = []
    try:
        for pod in nats:
            pod.start()
        await _all_ready(nats)
        hosts = _mesh_pods(built, root, nats)
        for pod in hosts:
            pod.start()
        await _all_ready(hosts)
        yield nats, hosts
    finally:
        # Whatever the test got to: SIGTERM, then SIGKILL after a bound.
        await asyncio.to_thread(_stop, hosts)
        await asyncio.to_thread(_stop, nats)


@contextlib.asynccontextmanager
async def _client(urls: tuple[str, ...], identity: Path | None) -> AsyncIterator[Client]:
    access = NatsAccess(urls=urls)
    if identity is not None:
        access = access.as_identity(identity)
    nc = await connect(access, name="k8s-smoke", connect_timeout=5, max_reconnect_attempts=0)
    try:
        yield nc
    finally:
        await nc.close()


def _bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


async def _call_chain(nc: Client) -> None:
    """Log in (auth's public methods), then GenerateQuest with the player's token: quest-system
    calls world-state, npc-behavior and story-teller (which calls ai-integration), forwarding it."""
    auth = auth_pb2_grpc.AuthServiceStub(nats_transport.aio.channel(nc, "auth"))
    username = f"k{uuid.uuid4().hex[:10]}"
    password = "correct horse battery"
    await auth.Register(auth_pb2.RegisterRequest(username=username, password=password, display_name="K"),
                        timeout=15)
    login = await auth.Login(auth_pb2.LoginRequest(username=username, password=password, scopes=["player"]),
                             timeout=15)
    quests = quest_pb2_grpc.QuestServiceStub(nats_transport.aio.channel(nc, "quest-system"))
    request = quest_pb2.GenerateQuestRequest(
        player_id=login.account_id, region_id="overworld", difficulty=quest_pb2.DIFFICULTY_NORMAL,
        idempotency_key=common_pb2.IdempotencyKey(key=uuid.uuid4().hex))
    reply: Any = await quests.GenerateQuest(request, timeout=30, metadata=_bearer(login.tokens.access_token))
    assert reply.quest.quest_id
    assert reply.quest.title
    # The same method without a token: the access policy of the protos holds in these pods too.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await quests.GenerateQuest(request, timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def _through_the_gateway(gateway: Pod, ca: Path | None) -> None:
    """A public method over gRPC to the ingress, and over HTTP/JSON through Envoy (TLS to clients
    in prod, by the name localhost the server certificate carries)."""
    target = f"localhost:{gateway.ports['grpc']}"
    if ca is None:
        channel = grpc.aio.insecure_channel(target)
        context = None
    else:
        root = await asyncio.to_thread(ca.read_bytes)
        channel = grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=root))
        context = ssl.create_default_context(cafile=str(ca))
    async with channel:
        stub = world_state_pb2_grpc.WorldStateServiceStub(channel)
        reply = await stub.GetRegion(world_state_pb2.GetRegionRequest(region_id="overworld"), timeout=15)
    assert reply.region.region_id == "overworld"
    url = f"{'https' if ca else 'http'}://localhost:{gateway.ports['http']}/v1/world-state/regions/overworld"

    def fetch() -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(url, timeout=5, context=context) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as error:
            return error.code, {}

    # Envoy routes a service once the ingress has discovered it (a poll of $SRV).
    found: list[dict[str, Any]] = []

    async def routed() -> bool:
        status, body = await asyncio.to_thread(fetch)
        found[:] = [body]
        return status == 200

    await wait_for(routed, timeout=READY_WITHIN)
    assert found[0]["region"]["regionId"] == "overworld"


async def _drain(nats: list[Pod], hosts: list[Pod]) -> None:
    """The shutdown the manifests rely on: targets and the gateway exit 0 on SIGTERM (their
    drain), and each NATS server's preStop command puts it in lame duck mode, which ends it once
    no client is left."""
    for pod in hosts:
        pod.terminate()
    for pod in hosts:
        assert pod.process is not None
        code = await asyncio.to_thread(pod.process.wait, STOP_WITHIN)
        assert code == 0, f"{pod.name} exited with {code}:\n{pod.tail()}"
    for pod in nats:
        await asyncio.to_thread(pod.run_pre_stop)
    for pod in nats:
        assert pod.process is not None
        await asyncio.to_thread(pod.process.wait, STOP_WITHIN)
        assert "Entering lame duck mode" in pod.tail()


@pytest.mark.parametrize("overlay", ["dev", "prod"])
async def test_the_rendered_pods_start_serve_a_call_chain_and_drain(tree: Path, overlay: str, tmp_path: Path) -> None:
    built = build(tree / "overlays" / overlay)
    security = tree / "overlays" / "prod" / "security"
    async with _running(built, tmp_path) as (nats, hosts):
        urls = tuple(f"nats://127.0.0.1:{pod.ports['client']}" for pod in nats)
        if overlay == "prod":
            with pytest.raises(Exception):  # noqa: B017, PT011 - refused at TLS or authorization
                async with _client(urls, None):
                    pass
        async with _client(urls, security / "secrets" / "operator" if overlay == "prod" else None) as nc:
            # The servers advertise each other's client URLs: how the mesh tells it runs on a
            # cluster of three and creates its buckets with three replicas.
            assert len(nc._server_info.get("connect_urls", [])) == len(nats)
            await _call_chain(nc)
            if overlay == "dev":  # the operator identity of prod may not read stream configurations
                info = await nc.jetstream(timeout=5).stream_info("KV_auth_accounts")
                assert info.config.num_replicas == len(nats)
        gateway = next(pod for pod in hosts if pod.name.startswith(GATEWAY))
        await _through_the_gateway(gateway, security / "secrets" / "server" / "ca.pem" if overlay == "prod" else None)
        await _drain(nats, hosts)


async def test_a_nats_server_without_its_cluster_is_alive_but_neither_started_nor_ready(
    tree: Path, tmp_path: Path,
) -> None:
    # Why startup and readiness use the full /healthz: alone, a server of a three-node JetStream
    # cluster has no meta leader; it must not count as available (PodDisruptionBudget, rollouts).
    (alone, *_) = _nats_pods(build(tree / "overlays" / "dev"), tmp_path)
    alone.start()
    try:
        await wait_for(lambda: alone.probe("livenessProbe") == 200, timeout=READY_WITHIN)
        assert alone.probe("startupProbe") == 503
        assert alone.probe("readinessProbe") == 503
    finally:
        await asyncio.to_thread(_stop, [alone])
