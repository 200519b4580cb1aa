"""What the chaos tests read from nats-server's monitoring port: its connections and counters."""

from __future__ import annotations

import json
from typing import Any

from mesh.supervisor import http_get
from nats_transport.testing import NatsServer

# The name every `mesh serve` host gives its NATS connection (one per host unless targets
# connect as identities of their own).
HOST_CONNECTION = "mesh:shared"


async def monitor(server: NatsServer, path: str) -> dict[str, Any]:
    """nats-server's answer on ``path`` (``/varz``, ``/connz?...``)."""
    status, body = await http_get("127.0.0.1", server.monitor_port, path, limit=2.0)
    assert status == 200, f"{path}: HTTP {status}"
    answer = json.loads(body)
    assert isinstance(answer, dict)
    return answer


async def connections(server: NatsServer, name: str | None = None) -> list[dict[str, Any]]:
    """The server's open client connections (those named ``name``, if given)."""
    found = (await monitor(server, "/connz?limit=1024")).get("connections") or []
    return [c for c in found if name is None or c.get("name") == name]


async def slow_consumers(server: NatsServer) -> int:
    """Connections the server has closed or flagged as slow consumers since it started."""
    return int((await monitor(server, "/varz")).get("slow_consumers") or 0)
