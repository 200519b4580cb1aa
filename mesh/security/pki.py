"""The mesh's certificate authority and the certificates it issues, as PEM files.

Keys are EC P-256: every TLS stack the mesh meets (nats-server, grpcio, Envoy's BoringSSL,
Python's ssl) accepts it, which Ed25519 certificates cannot claim. One CA signs one server
certificate (nats-server, the gRPC ingress and Envoy all present it) and one client certificate
per identity (mTLS to NATS).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "DEFAULT_SERVER_HOSTS",
    "Authority",
    "InvalidHost",
    "Issued",
    "authority_pems",
    "issue_client",
    "issue_route",
    "issue_server",
    "load_authority",
    "new_authority",
    "san_hosts",
    "server_hosts",
    "signed_by",
    "validate_host",
    "write_private",
]

CA_DAYS = 3650
LEAF_DAYS = 825
DEFAULT_SERVER_HOSTS = ("localhost", "127.0.0.1", "::1")

# A DNS name, optionally with one leading wildcard label (``*.nats.default.svc.cluster.local``).
_DNS = re.compile(r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\Z")


class InvalidHost(ValueError):
    """A ``--host`` that is neither an IP address nor a DNS name."""


@dataclass(frozen=True, slots=True)
class Authority:
    """The CA: its certificate and signing key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True, slots=True)
class Issued:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def cert_pem(self) -> bytes:
        """The certificate, PEM."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        """The private key, unencrypted PKCS#8 PEM (protected by its file mode)."""
        return _key_pem(self.key)


def validate_host(host: str) -> x509.GeneralName:
    """The subjectAltName entry for ``host`` (an IP address or a DNS name).

    Raises:
        InvalidHost: ``host`` is neither.
    """
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    name = host.lower()
    if len(name) > 253 or not _DNS.match(name):
        raise InvalidHost(f"--host {host!r} is neither an IP address nor a DNS name")
    return x509.DNSName(name)


def server_hosts(extra: Sequence[str]) -> tuple[str, ...]:
    """Every host the server certificate names: the loopback defaults, then ``extra`` (deduplicated)."""
    return tuple(dict.fromkeys((*DEFAULT_SERVER_HOSTS, *extra)))


def new_authority(common_name: str = "nats-grpc-mesh CA") -> Authority:
    """A fresh self-signed CA, valid for ten years, that may sign leaf certificates only."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate clock skew between hosts
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(cert, key)


def load_authority(cert_path: Path, key_path: Path) -> Authority:
    """The CA stored at ``cert_path`` and ``key_path``.

    Raises:
        ValueError: the files do not hold an EC CA certificate and its key.
    """
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise ValueError(f"{key_path} is not the EC key of {cert_path}")
    return Authority(cert, key)


def issue_server(ca: Authority, hosts: Sequence[str]) -> Issued:
    """A serverAuth certificate for ``hosts`` (IPs and DNS names, validated)."""
    names = [validate_host(h) for h in hosts]
    return _issue(ca, hosts[0], x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), names)


def issue_route(ca: Authority, hosts: Sequence[str]) -> Issued:
    """A certificate for both ends of a NATS cluster route (serverAuth and clientAuth: a node
    accepts routes from its peers and opens routes to them), for the names peers dial."""
    names = [validate_host(h) for h in hosts]
    usage = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
    return _issue(ca, "nats-grpc-mesh route", usage, names)


def issue_client(ca: Authority, identity: str) -> Issued:
    """A clientAuth certificate with CN=``identity``."""
    return _issue(ca, identity, x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), [])


def signed_by(cert_path: Path, ca: Authority) -> bool:
    """Whether the certificate at ``cert_path`` was issued by ``ca`` and is still valid."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        cert.verify_directly_issued_by(ca.cert)
    except (OSError, ValueError, TypeError, InvalidSignature):
        return False
    return cert.not_valid_after_utc > _now()


def san_hosts(cert_path: Path) -> set[str]:
    """The DNS names and IP addresses a certificate names (empty if it cannot be read)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return set()
    return {str(n) for n in san.get_values_for_type(x509.IPAddress)} | set(san.get_values_for_type(x509.DNSName))


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by its owner only (created 0600, never world-readable)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)


def _issue(ca: Authority, common_name: str, usage: x509.ExtendedKeyUsage, names: list[x509.GeneralName]) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + datetime.timedelta(days=LEAF_DAYS), ca.cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=True, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(usage, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def authority_pems(ca: Authority) -> tuple[bytes, bytes]:
    """The CA's certificate and key, PEM."""
    return ca.cert.public_bytes(serialization.Encoding.PEM), _key_pem(ca.key)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
