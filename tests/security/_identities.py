"""Connecting to a secured nats-server as one identity of a ``mesh security init`` data dir."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path

import nats
from nats.aio.client import Client

from mesh.security import inbox_prefix


def tls_context(folder: Path, *, client_cert: bool = True) -> ssl.SSLContext:
    """TLS trusting the mesh CA, presenting the identity's certificate unless told not to."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(folder / "ca.pem"))
    if client_cert:
        context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    return context


@dataclass
class Errors:
    """What a connection's error_cb received (nats-py reports denied subjects only there)."""

    seen: list[str] = field(default_factory=list)

    async def record(self, error: Exception) -> None:
        self.seen.append(str(error))

    def violations(self) -> list[str]:
        return [e for e in self.seen if "permissions violation" in e.lower()]


async def connect(url: str, secrets: Path, name: str, errors: Errors | None = None) -> Client:
    """A client as identity ``name``: its certificate, its nkey seed and its inbox prefix."""
    folder = secrets / name
    return await nats.connect(
        servers=[url], tls=tls_context(folder), nkeys_seed=str(folder / "nkey.seed"),
        inbox_prefix=inbox_prefix(name), error_cb=(errors or Errors()).record,
        allow_reconnect=False, connect_timeout=3,
    )
