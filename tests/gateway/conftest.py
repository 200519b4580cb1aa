"""Fixtures for ingress tests: real servicers as targets on the session's nats-server, an ingress
in front of them, and a grpc.aio client that reaches them only through the ingress."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from nats.aio.client import Client

from gateway.ingress import Ingress
from mesh.jetstream_event_log import JetStreamEventLog
from mesh.jetstream_storage import JetStreamStorage
from servicers import event_bus, npc_behavior, settings
from servicers.dependencies import Dependencies
from tests._waiting import wait_for
from tests.gateway._targets import Target, client_of, ingress_on, routed, serving

# JetStream reserves a bucket's size up front: keep the test buckets small.
SETTINGS = {"bucket_max_bytes": str(8 << 20)}


def no_channel(target: str) -> Any:
    raise AssertionError(f"this servicer calls no other service (asked for {target!r})")


@pytest.fixture
async def settings_target(nc: Client, storage: JetStreamStorage) -> AsyncIterator[Target]:
    servicer = await settings.create(Dependencies(storage=storage, channel=no_channel, settings=SETTINGS))
    async with serving(nc, settings.add_to_server, servicer, settings.SERVICE_NAMES) as target:
        yield target


@pytest.fixture
async def npc_target(nc: Client, storage: JetStreamStorage) -> AsyncIterator[Target]:
    servicer = await npc_behavior.create(Dependencies(storage=storage, channel=no_channel))
    async with serving(nc, npc_behavior.add_to_server, servicer, npc_behavior.SERVICE_NAMES) as target:
        yield target


@pytest.fixture
async def bus_target(nc: Client) -> AsyncIterator[Target]:
    tag = uuid.uuid4().hex[:10]
    log = JetStreamEventLog(nc, stream=f"EV_{tag}", subject_prefix=f"ev_{tag}", control_prefix=f"_EVLOG_{tag}",
                            max_bytes=8 << 20, pull_expires=1.0)
    servicer = await event_bus.create(Dependencies(storage=None, channel=no_channel, event_log=log))  # type: ignore[arg-type]
    async with serving(nc, event_bus.add_to_server, servicer, event_bus.SERVICE_NAMES) as target:
        yield target
    # Let cancelled Subscribes close their readers before the stream goes (the event log's
    # cleanup may wait out its 5 s NATS timeout).
    await wait_for(lambda: not servicer.open_subscriptions, timeout=12)
    with contextlib.suppress(Exception):
        await nc.jetstream(timeout=2).delete_stream(f"EV_{tag}")


@pytest.fixture
async def ingress(nc: Client) -> AsyncIterator[Ingress]:
    async with ingress_on(nc) as started:
        yield started


@pytest.fixture
async def client(ingress: Ingress) -> AsyncIterator[grpc.aio.Channel]:
    async with client_of(ingress) as channel:
        yield channel


@pytest.fixture
async def mesh(ingress: Ingress, settings_target: Target, npc_target: Target, bus_target: Target) -> Ingress:
    """The ingress once it routes all three targets by call type."""
    for target in (settings_target, npc_target, bus_target):
        await wait_for(lambda target=target: routed(ingress, target))
    return ingress
