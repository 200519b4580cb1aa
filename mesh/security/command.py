"""``mesh security init``: the CA, the server certificate, the cluster route certificate, one
identity per target and client, and the nats-server configuration that locks the mesh down to
them."""

from __future__ import annotations

import argparse
import ipaddress
import sys
from collections.abc import Sequence
from pathlib import Path

from mesh.security import pki
from mesh.security.identities import ensure_identity, make_private_dir
from mesh.security.permissions import identities, permissions_for
from mesh.security.routes import ensure_route_tls
from mesh.security.server_config import render_security, render_server

__all__ = ["SecurityInitError", "add_arguments", "initialise", "run"]

EXIT_OK = 0
EXIT_USAGE = 2


class SecurityInitError(Exception):
    """Bad input or a data directory that cannot be written; nothing is half-explained."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``mesh security init``."""
    parser.add_argument("--data-dir", type=Path, required=True, metavar="DIR",
                        help="where secrets/, nats-security.conf and nats-server.conf go")
    parser.add_argument("--host", action="append", default=[], metavar="NAME",
                        help="another DNS name or IP address for the server certificate (repeatable), "
                        "e.g. nats or *.nats.default.svc.cluster.local; localhost, 127.0.0.1 and ::1 "
                        "are always included")
    parser.add_argument("--force", action="store_true",
                        help="regenerate everything, the CA and every identity included")


def run(args: argparse.Namespace) -> int:
    """Run ``mesh security init`` with parsed ``args``; the exit code."""
    try:
        for line in initialise(args.data_dir, hosts=args.host, force=args.force):
            print(line)
    except SecurityInitError as error:
        print(f"mesh security init: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def initialise(data_dir: Path, *, hosts: Sequence[str] = (), force: bool = False) -> list[str]:
    """Create (or keep) everything under ``data_dir``; one line per file group, for the user.

    Raises:
        SecurityInitError: a host is invalid, or ``data_dir`` cannot be written.
    """
    try:
        wanted = pki.server_hosts([str(ipaddress.ip_address(h)) if _is_ip(h) else h.lower() for h in hosts])
        for host in wanted:
            pki.validate_host(host)
    except pki.InvalidHost as error:
        raise SecurityInitError(str(error)) from None
    try:
        return _initialise(data_dir.resolve(), wanted, force)
    except OSError as error:
        raise SecurityInitError(f"cannot write {error.filename or data_dir}: {error.strerror or error}") from None


def _initialise(data_dir: Path, hosts: tuple[str, ...], force: bool) -> list[str]:
    secrets = data_dir / "secrets"
    make_private_dir(secrets)
    report = []
    ca, kept = _authority(secrets / "ca", force)
    report.append(f"{'kept' if kept else 'created'} CA: {secrets / 'ca'}/ca.pem, ca.key")
    server = secrets / "server"
    report.append(_server_certificate(server, ca, hosts, force))
    _, kept = ensure_route_tls(secrets / "routes", hosts, force=force)
    report.append(f"{'kept' if kept else 'created'} route certificate (own CA, key discarded): {secrets / 'routes'}")
    users = {}
    for name in identities():
        identity, kept = ensure_identity(secrets / name, name, ca, force=force)
        users[name] = (identity.nkey, permissions_for(name))
        report.append(f"{'kept' if kept else 'created'} identity {name}: {identity.folder} (nkey {identity.nkey})")
    security = data_dir / "nats-security.conf"
    security.write_text(render_security(server / "cert.pem", server / "key.pem", server / "ca.pem", users))
    report.append(f"wrote {security} (mTLS and {len(users)} users)")
    config = data_dir / "nats-server.conf"
    if config.exists() and not force:
        report.append(f"kept {config}")
    else:
        config.write_text(render_server(data_dir))
        report.append(f"wrote {config} (run: nats-server -c {config})")
    return report


def _authority(folder: Path, force: bool) -> tuple[pki.Authority, bool]:
    cert, key = folder / "ca.pem", folder / "ca.key"
    if not force and cert.is_file() and key.is_file():
        try:
            return pki.load_authority(cert, key), True
        except ValueError as error:
            raise SecurityInitError(f"{folder} holds no usable CA ({error}); use --force to replace it") from None
    make_private_dir(folder)
    ca = pki.new_authority()
    cert_pem, key_pem = pki.authority_pems(ca)
    pki.write_private(key, key_pem)
    cert.write_bytes(cert_pem)
    return ca, False


def _server_certificate(folder: Path, ca: pki.Authority, hosts: tuple[str, ...], force: bool) -> str:
    cert = folder / "cert.pem"
    names = ", ".join(hosts)
    if (not force and (folder / "key.pem").is_file() and (folder / "ca.pem").is_file()
            and pki.signed_by(cert, ca) and pki.san_hosts(cert) == set(hosts)):
        return f"kept server certificate: {folder} ({names})"
    make_private_dir(folder)
    issued = pki.issue_server(ca, hosts)
    pki.write_private(folder / "key.pem", issued.key_pem())
    cert.write_bytes(issued.cert_pem())
    (folder / "ca.pem").write_bytes(pki.authority_pems(ca)[0])
    return f"created server certificate: {folder} ({names})"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
