"""The ADS control plane against a scripted Envoy: a grpc.aio client that speaks the
state-of-the-world protocol (requests, ACKs, NACKs) and records what it was sent."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import duration_pb2
from google.rpc import status_pb2

from gateway.xds import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, ConfigRejected, ControlPlane
from tests._waiting import wait_for

TYPES = (CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE)
NAMES = {CLUSTER_TYPE: [], ENDPOINT_TYPE: ["c1"], LISTENER_TYPE: [], ROUTE_TYPE: ["r1"]}


def config(timeout: int = 1, listener: str = "l1") -> dict[str, Any]:
    return {
        CLUSTER_TYPE: [cluster_pb2.Cluster(name="c1", connect_timeout=duration_pb2.Duration(seconds=timeout))],
        ENDPOINT_TYPE: [endpoint_pb2.ClusterLoadAssignment(cluster_name="c1")],
        LISTENER_TYPE: [listener_pb2.Listener(name=listener)],
        ROUTE_TYPE: [route_pb2.RouteConfiguration(name="r1")],
    }


@dataclass
class ScriptedEnvoy:
    """Subscribes to all four types at once (the worst case for ordering), then ACKs each
    response unless ``reject`` names a reason or its type is held."""

    reject: Callable[[discovery_pb2.DiscoveryResponse], str | None] = lambda response: None
    held: set[str] = field(default_factory=set)
    received: list[discovery_pb2.DiscoveryResponse] = field(default_factory=list)
    accepted: dict[str, str] = field(default_factory=dict)
    _queue: asyncio.Queue[discovery_pb2.DiscoveryRequest | None] = field(default_factory=asyncio.Queue)
    _waiting: list[discovery_pb2.DiscoveryResponse] = field(default_factory=list)

    def types_received(self) -> list[str]:
        return [response.type_url for response in self.received]

    async def requests(self) -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        for type_url in TYPES:
            yield discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=NAMES[type_url])
        while (request := await self._queue.get()) is not None:
            yield request

    def answer(self, response: discovery_pb2.DiscoveryResponse) -> None:
        reason = self.reject(response)
        request = discovery_pb2.DiscoveryRequest(
            type_url=response.type_url, resource_names=NAMES[response.type_url], response_nonce=response.nonce,
            version_info=self.accepted.get(response.type_url, "") if reason else response.version_info,
        )
        if reason:
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message=reason))
        else:
            self.accepted[response.type_url] = response.version_info
        self._queue.put_nowait(request)

    def release(self, type_url: str) -> None:
        self.held.discard(type_url)
        for response in [r for r in self._waiting if r.type_url == type_url]:
            self._waiting.remove(response)
            self.answer(response)

    async def run(self, port: int) -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(self.requests())
            with contextlib.suppress(asyncio.CancelledError):
                async for response in call:
                    self.received.append(response)
                    if response.type_url in self.held:
                        self._waiting.append(response)
                    else:
                        self.answer(response)


@pytest.fixture
async def plane() -> AsyncIterator[ControlPlane]:
    started = ControlPlane()
    await started.start()
    yield started
    await started.stop()


@contextlib.asynccontextmanager
async def connected(plane: ControlPlane, envoy: ScriptedEnvoy) -> AsyncIterator[ScriptedEnvoy]:
    task = asyncio.get_running_loop().create_task(envoy.run(plane.port))
    try:
        await wait_for(lambda: plane.connected == 1)
        yield envoy
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_clusters_and_endpoints_are_accepted_before_listeners_and_routes_are_sent(plane: ControlPlane) -> None:
    async with connected(plane, ScriptedEnvoy(held={CLUSTER_TYPE})) as envoy:
        applying = asyncio.get_running_loop().create_task(plane.apply(config()))
        # The plane has seen the EDS ACK (but no CDS ACK, which the scripted Envoy holds back).
        await wait_for(lambda: plane.version(ENDPOINT_TYPE) is not None
                       and plane.acked_versions(ENDPOINT_TYPE) == [plane.version(ENDPOINT_TYPE)])
        assert envoy.types_received() == [CLUSTER_TYPE, ENDPOINT_TYPE]  # LDS waits for the CDS ACK
        assert not applying.done()
        envoy.release(CLUSTER_TYPE)
        await applying
        assert envoy.types_received() == [CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE]
        assert plane.acked_versions(ROUTE_TYPE) == [plane.version(ROUTE_TYPE)]


async def test_only_changed_types_are_sent_again(plane: ControlPlane) -> None:
    async with connected(plane, ScriptedEnvoy()) as envoy:
        await plane.apply(config())
        await plane.apply(config())
        assert len(envoy.received) == 4
        await plane.apply(config(timeout=2))
        assert envoy.types_received()[4:] == [CLUSTER_TYPE]


async def test_a_rejected_listener_is_reported_and_the_previous_one_published_again(plane: ControlPlane) -> None:
    def refuse_bad_listener(response: discovery_pb2.DiscoveryResponse) -> str | None:
        names = [listener_pb2.Listener.FromString(r.value).name for r in response.resources]
        return "listener 'bad' is invalid" if response.type_url == LISTENER_TYPE and "bad" in names else None

    async with connected(plane, ScriptedEnvoy(reject=refuse_bad_listener)) as envoy:
        await plane.apply(config())
        good_version = plane.version(LISTENER_TYPE)
        with pytest.raises(ConfigRejected) as caught:
            await plane.apply(config(timeout=2, listener="bad"))
        assert caught.value.type_url == LISTENER_TYPE
        assert caught.value.message == "listener 'bad' is invalid"
        # Everything the failed apply changed (the cluster too) is back, and accepted again.
        restored = envoy.received[-2:]
        assert {r.type_url for r in restored} == {CLUSTER_TYPE, LISTENER_TYPE}
        assert listener_pb2.Listener.FromString(envoy.received[-1].resources[0].value).name == "l1"
        assert plane.version(LISTENER_TYPE) not in (good_version, caught.value.version)
        assert plane.acked_versions(LISTENER_TYPE) == [plane.version(LISTENER_TYPE)]
        assert plane.acked_versions(CLUSTER_TYPE) == [plane.version(CLUSTER_TYPE)]


async def test_without_envoy_apply_times_out_and_a_later_envoy_gets_the_whole_config(plane: ControlPlane) -> None:
    with pytest.raises(TimeoutError):
        await plane.apply(config(), ack_timeout=0.1)
    async with connected(plane, ScriptedEnvoy()) as envoy:
        await wait_for(lambda: len(envoy.accepted) == 4)
        assert sorted(envoy.types_received()) == sorted(TYPES)
