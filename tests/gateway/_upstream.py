"""Upstreams for edge tests: a plain HTTP/2 grpc.aio server on a free port, hosting servicers
(real ones, or the status-echoing one below) with health and reflection, as an ingress would,
behind the ErrorBoundary the host installs (servicers raise their errors)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from gaming.settings.v1 import settings_pb2 as st
from gaming.settings.v1 import settings_pb2_grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from nats_transport.testing import free_port
from servicers.error_boundary import ErrorBoundary

Adder = Callable[[Any, Any], None]


@contextlib.asynccontextmanager
async def grpc_upstream(
    servicers: Sequence[tuple[Adder, Any]], service_names: Sequence[str]
) -> AsyncIterator[int]:
    """Serve ``servicers`` (``(add_to_server, servicer)`` pairs) on a free loopback port, with
    health and reflection; yield the port."""
    server = grpc.aio.server(interceptors=[ErrorBoundary()])
    for add, servicer in servicers:
        add(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_aio.HealthServicer(), server)
    reflection.enable_server_reflection((*service_names, reflection.SERVICE_NAME, "grpc.health.v1.Health"), server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        yield port
    finally:
        await server.stop(0)


@dataclass
class StatusSettings(settings_pb2_grpc.SettingsServiceServicer):  # type: ignore[misc]
    """A SettingsService whose Get fails with the status named by ``scope.id`` (``ABORTED``),
    with an ErrorInfo detail; ``OK`` answers. It records the metadata each call arrived with."""

    metadata: list[dict[str, str]] = field(default_factory=list)

    async def Get(self, request: st.GetRequest, context: Any) -> st.GetResponse:
        self.metadata.append({key: value for key, value in context.invocation_metadata()})
        code = grpc.StatusCode[request.scope.id]
        if code is grpc.StatusCode.OK:
            return st.GetResponse(settings=st.Settings(scope=request.scope))
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.ErrorInfo(reason=code.name, domain="test.gateway"))
        status = status_pb2.Status(code=code.value[0], message=f"failed with {code.name}", details=[detail])
        await context.abort_with_status(rpc_status.to_status(status))
        raise AssertionError("abort_with_status returned")
