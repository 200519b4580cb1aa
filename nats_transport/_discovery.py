"""The NATS Services API (ADR-32): ``$SRV.PING|INFO|STATS``, so stock NATS tooling lists the mesh.

Every server answers as a service named after its target, with one endpoint per gRPC method and
the gRPC service names in its metadata (``grpc.services``).
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.nuid import NUID

log = logging.getLogger("nats_transport.discovery")

SERVICES_METADATA_KEY = "grpc.services"
TARGET_METADATA_KEY = "grpc.target"


@dataclass(frozen=True, slots=True)
class ServiceEndpointInfo:
    """One gRPC method as a Services API endpoint."""

    name: str
    subject: str
    queue_group: str
    service: str


@dataclass(slots=True)
class EndpointStats:
    """Counters kept per endpoint for ``$SRV.STATS``."""

    num_requests: int = 0
    num_errors: int = 0
    last_error: str = ""
    processing_time_ns: int = 0


class ServicesApi:
    """Answers ``$SRV`` requests for one server."""

    def __init__(
        self,
        nc: Client,
        *,
        name: str,
        version: str,
        endpoints: Callable[[], list[ServiceEndpointInfo]],
        stats: Callable[[], dict[str, EndpointStats]],
        description: str = "gRPC over NATS",
    ) -> None:
        self._nc = nc
        self.name = name
        self.id = NUID().next().decode()
        self._version = version
        self._endpoints = endpoints
        self._stats = stats
        self._description = description
        self._started = datetime.datetime.now(datetime.UTC)
        self._subs: list[Subscription] = []


    async def start(self) -> None:
        """Subscribe to the nine ``$SRV`` subjects that can address this instance."""
        for verb, handler in (("PING", self._ping), ("INFO", self._info), ("STATS", self._stats_reply)):
            for subject in (f"$SRV.{verb}", f"$SRV.{verb}.{self.name}", f"$SRV.{verb}.{self.name}.{self.id}"):
                self._subs.append(await self._nc.subscribe(subject, cb=handler))

    async def stop(self) -> None:
        """Stop answering (the instance disappears from listings)."""
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except Exception as exc:  # connection already closed
                log.debug("unsubscribe failed: %s", exc)
        self._subs.clear()

    def _metadata(self) -> dict[str, str]:
        # Computed per request: services may be added after start (the host adds a servicer
        # once its storage is ready).
        services = sorted({e.service for e in self._endpoints()})
        return {SERVICES_METADATA_KEY: ",".join(services), TARGET_METADATA_KEY: self.name}

    def _base(self, kind: str) -> dict[str, object]:
        return {
            "type": f"io.nats.micro.v1.{kind}",
            "name": self.name,
            "id": self.id,
            "version": self._version,
            "metadata": self._metadata(),
        }

    async def _respond(self, msg: Msg, payload: dict[str, object]) -> None:
        if msg.reply:
            await self._nc.publish(msg.reply, json.dumps(payload).encode())

    async def _ping(self, msg: Msg) -> None:
        await self._respond(msg, self._base("ping_response"))

    async def _info(self, msg: Msg) -> None:
        info = self._base("info_response")
        info["description"] = self._description
        info["endpoints"] = [
            {
                "name": e.name,
                "subject": e.subject,
                "queue_group": e.queue_group,
                "metadata": {"grpc.service": e.service},
            }
            for e in self._endpoints()
        ]
        await self._respond(msg, info)

    async def _stats_reply(self, msg: Msg) -> None:
        stats = self._stats()
        reply = self._base("stats_response")
        reply["started"] = self._started.isoformat().replace("+00:00", "Z")
        endpoints = []
        for e in self._endpoints():
            s = stats.get(e.name, EndpointStats())
            endpoints.append(
                {
                    "name": e.name,
                    "subject": e.subject,
                    "queue_group": e.queue_group,
                    "num_requests": s.num_requests,
                    "num_errors": s.num_errors,
                    "last_error": s.last_error,
                    "processing_time": s.processing_time_ns,
                    "average_processing_time": s.processing_time_ns // s.num_requests if s.num_requests else 0,
                }
            )
        reply["endpoints"] = endpoints
        await self._respond(msg, reply)
