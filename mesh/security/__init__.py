"""Locking a mesh down: a CA, mTLS certificates and one least-privilege NATS user per identity.

``mesh security init --data-dir D`` (``command``) writes ``D/secrets/`` (the CA, the server
certificate, one folder per identity) and the nats-server configuration that admits only those
identities, each with the permissions ``permissions`` derives from the catalogue.
"""

from __future__ import annotations

from mesh.security.command import SecurityInitError, initialise
from mesh.security.identities import Identity, read_identity
from mesh.security.permissions import CLIENTS, Permissions, identities, inbox_prefix, permissions_for

__all__ = [
    "CLIENTS",
    "Identity",
    "Permissions",
    "SecurityInitError",
    "identities",
    "inbox_prefix",
    "initialise",
    "permissions_for",
    "read_identity",
]
