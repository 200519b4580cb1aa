"""grpc.health.v1 at the ingress: "" is the ingress itself, any other name is asked of the
target serving it, and unknown names behave as grpc.health.v1 says."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nats.aio.client import Client

from gateway.ingress import Ingress, IngressOptions
from mesh.jetstream_storage import JetStreamStorage
from servicers import settings
from servicers.dependencies import Dependencies
from tests._waiting import wait_for
from tests.gateway._targets import (
    FAST,
    NOT_SERVING,
    SERVICE_UNKNOWN,
    SERVING,
    Target,
    client_of,
    ingress_on,
    routed,
    serving,
)
from tests.gateway.conftest import SETTINGS as BUCKET_SETTINGS
from tests.gateway.conftest import no_channel

SETTINGS = "gaming.settings.v1.SettingsService"


def health(channel: grpc.aio.Channel) -> Any:
    return health_pb2_grpc.HealthStub(channel)


async def check(channel: grpc.aio.Channel, service: str) -> int:
    reply = await health(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(reply.status)


async def next_status(call: Any) -> int:
    reply = await asyncio.wait_for(call.read(), 5)
    assert reply is not grpc.aio.EOF
    return int(reply.status)


@pytest.fixture
async def settings_routed(ingress: Ingress, settings_target: Target) -> Target:
    await wait_for(lambda: routed(ingress, settings_target))
    return settings_target


async def test_the_ingress_itself_is_serving(client: grpc.aio.Channel):
    assert await check(client, "") == SERVING
    assert await check(client, "grpc.health.v1.Health") == SERVING


async def test_a_mesh_service_reports_what_its_target_says(settings_routed: Target, client: grpc.aio.Channel):
    assert await check(client, SETTINGS) == SERVING

    await settings_routed.health.set(SETTINGS, NOT_SERVING)

    assert await check(client, SETTINGS) == NOT_SERVING


async def test_an_unknown_service_fails_check_with_not_found(client: grpc.aio.Channel):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await check(client, "no.such.v1.NothingService")

    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_service_whose_target_stopped_is_not_serving(
    ingress: Ingress, settings_routed: Target, client: grpc.aio.Channel
):
    await settings_routed.stop()
    await wait_for(lambda: ingress.discovery.target_of(SETTINGS) is None)

    assert await check(client, SETTINGS) == NOT_SERVING


async def test_watching_a_mesh_service_relays_each_change_of_its_target(
    settings_routed: Target, client: grpc.aio.Channel
):
    call = health(client).Watch(health_pb2.HealthCheckRequest(service=SETTINGS), timeout=20)
    assert await next_status(call) == SERVING

    await settings_routed.health.set(SETTINGS, NOT_SERVING)
    assert await next_status(call) == NOT_SERVING
    await settings_routed.health.set(SETTINGS, SERVING)
    assert await next_status(call) == SERVING

    # The target going away is a change too.
    await settings_routed.stop()
    assert await next_status(call) == NOT_SERVING
    call.cancel()


async def test_cancelling_a_watch_ends_the_watch_on_the_target(settings_routed: Target, client: grpc.aio.Channel):
    call = health(client).Watch(health_pb2.HealthCheckRequest(service=SETTINGS), timeout=20)
    await next_status(call)
    await wait_for(lambda: settings_routed.server.in_flight == 1)

    call.cancel()

    await wait_for(lambda: settings_routed.server.in_flight == 0)


async def test_watching_an_unknown_service_says_so_and_reports_it_once_it_is_deployed(
    nc: Client, storage: JetStreamStorage, client: grpc.aio.Channel
):
    call = health(client).Watch(health_pb2.HealthCheckRequest(service=SETTINGS), timeout=20)
    assert await next_status(call) == SERVICE_UNKNOWN
    assert not call.done()

    # Deployed later: the same stream reports it, with no restart of anything.
    servicer = await settings.create(Dependencies(storage=storage, channel=no_channel, settings=BUCKET_SETTINGS))
    async with serving(nc, settings.add_to_server, servicer, settings.SERVICE_NAMES):
        assert await next_status(call) == SERVING
    call.cancel()


async def test_watching_the_ingress_reports_not_serving_when_it_stops(nc: Client):
    async with ingress_on(nc, IngressOptions(poll_interval=FAST.poll_interval, poll_window=FAST.poll_window,
                                             grace=5)) as ingress, client_of(ingress) as channel:
        call = health(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=20)
        assert await next_status(call) == SERVING

        stopping = asyncio.ensure_future(ingress.stop(grace=5))
        assert await next_status(call) == NOT_SERVING
        call.cancel()
        await stopping
