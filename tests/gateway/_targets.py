"""Targets for ingress tests: real servicers served over NATS the way ``mesh.host`` serves them
(grpc.health.v1 and reflection beside the servicer, behind the ErrorBoundary that turns what they
raise into statuses), an ingress in front, and a client to it."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from nats.aio.client import Client

import nats_transport.aio
from gateway.ingress import Ingress, IngressOptions, run_ingress
from servicers.error_boundary import ErrorBoundary

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
HEALTH = "grpc.health.v1.Health"

# Quick polls, so tests that wait for discovery wait little; no grace, so stopping is instant.
FAST = IngressOptions(poll_interval=0.2, poll_window=0.1, grace=0)


@dataclass
class Target:
    """A servicer served on NATS as one target, with its health servicer."""

    name: str
    server: Any
    health: Any
    services: tuple[str, ...]
    servicer: Any = None

    async def stop(self) -> None:
        await self.server.stop(0)


@contextlib.asynccontextmanager
async def serving(
    nc: Client, add_to_server: Any, servicer: Any, services: tuple[str, ...], *, name: str | None = None
) -> AsyncIterator[Target]:
    """Serve ``servicer`` as a fresh target with health (all SERVING) and reflection."""
    target = name or f"svc-{uuid.uuid4().hex[:10]}"
    server = nats_transport.aio.server(nc, target, interceptors=[ErrorBoundary()])
    health = health_aio.HealthServicer()
    for service in ("", *services):
        await health.set(service, SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection((*services, reflection.SERVICE_NAME, HEALTH), server)
    add_to_server(servicer, server)
    await server.start()
    try:
        yield Target(target, server, health, services, servicer)
    finally:
        await server.stop(0)


@contextlib.asynccontextmanager
async def ingress_on(nc: Client, options: IngressOptions = FAST) -> AsyncIterator[Ingress]:
    """An ingress on a free loopback port, stopped afterwards."""
    ingress = await run_ingress(nc, "127.0.0.1", 0, options=options)
    try:
        yield ingress
    finally:
        await ingress.stop(0)


@contextlib.asynccontextmanager
async def client_of(ingress: Ingress) -> AsyncIterator[grpc.aio.Channel]:
    """A plain grpc.aio channel (HTTP/2) to the ingress."""
    async with grpc.aio.insecure_channel(ingress.address) as channel:
        yield channel


def routed(ingress: Ingress, target: Target) -> bool:
    """Whether the ingress routes the target's services and has loaded its descriptors (a
    wait_for predicate: forwarding by call type needs both)."""
    if any(ingress.discovery.target_of(s) != target.name for s in target.services):
        return False
    index = ingress.schemas.index(target.name)
    return index is not None and all(s in index.services for s in target.services)
