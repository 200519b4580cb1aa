"""The certificate nats-servers present to each other on their cluster routes.

nats-server makes routes mutual TLS and wants one certificate valid for both server and client
use (a node accepts routes from its peers and opens routes to them); the mesh's server
certificate is for server use only. The route certificate comes from a CA of its own whose key
is discarded once it has signed: nothing else can ever join the routes, and no client
identity's certificate (from the mesh CA) is accepted as a route.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from mesh.embedded_nats import RouteTls
from mesh.security import pki
from mesh.security.identities import make_private_dir

__all__ = ["ensure_route_tls", "route_tls_in"]


def ensure_route_tls(folder: Path, hosts: Sequence[str] = pki.DEFAULT_SERVER_HOSTS, *,
                     force: bool = False) -> tuple[RouteTls, bool]:
    """The route certificate in ``folder`` (``cert.pem``, ``key.pem``, ``ca.pem``) for the names
    peers dial (``hosts``), and whether it was kept; issued now by a fresh CA of its own unless
    a valid one for those names is there (or ``force``)."""
    tls = route_tls_in(folder)
    if not force and _still_valid(tls, hosts):
        return tls, True
    make_private_dir(folder)
    ca = pki.new_authority("nats-grpc-mesh cluster routes CA")
    issued = pki.issue_route(ca, hosts)  # the CA's key goes out of scope here, never written
    pki.write_private(tls.key, issued.key_pem())
    tls.cert.write_bytes(issued.cert_pem())
    tls.ca.write_bytes(pki.authority_pems(ca)[0])
    return tls, False


def route_tls_in(folder: Path) -> RouteTls:
    """The route certificate files ``mesh security init`` wrote to ``folder``."""
    return RouteTls(cert=folder / "cert.pem", key=folder / "key.pem", ca=folder / "ca.pem")


def _still_valid(tls: RouteTls, hosts: Sequence[str]) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(tls.cert.read_bytes())
        ca = x509.load_pem_x509_certificate(tls.ca.read_bytes())
        cert.verify_directly_issued_by(ca)
        usable = tls.key.is_file() and pki.san_hosts(tls.cert) == set(hosts)
    except (OSError, ValueError, TypeError, InvalidSignature):
        return False
    # A day's margin, so a certificate does not expire under a running cluster.
    return usable and cert.not_valid_after_utc > datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
