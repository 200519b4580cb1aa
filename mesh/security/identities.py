"""Identity folders: one NATS nkey user and one mTLS client certificate per identity.

``<data-dir>/secrets/<identity>/`` holds ``cert.pem`` and ``key.pem`` (clientAuth, CN=identity),
``ca.pem``, ``nkey.seed`` (the nkey user seed) and ``identity.json``
(``{"name", "nkey", "inbox_prefix"}``); hosts read exactly this layout.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import nkeys

from mesh.security import pki
from mesh.security.permissions import inbox_prefix

__all__ = ["Identity", "ensure_identity", "read_identity"]

_FILES = ("cert.pem", "key.pem", "ca.pem", "nkey.seed", "identity.json")


@dataclass(frozen=True, slots=True)
class Identity:
    """One identity's public facts (its secrets stay in its folder)."""

    name: str
    nkey: str
    inbox_prefix: str
    folder: Path


def read_identity(folder: Path) -> Identity:
    """The identity stored in ``folder`` (its ``identity.json``)."""
    data = json.loads((folder / "identity.json").read_text())
    return Identity(str(data["name"]), str(data["nkey"]), str(data["inbox_prefix"]), folder)


def ensure_identity(folder: Path, name: str, ca: pki.Authority, *, force: bool = False) -> tuple[Identity, bool]:
    """The identity ``name`` in ``folder``, created unless a complete one issued by ``ca`` is there.

    Returns:
        the identity, and whether it was kept as found.
    """
    if not force and _complete(folder, name, ca):
        return read_identity(folder), True
    make_private_dir(folder)
    seed = _seed_of(folder / "nkey.seed") if not force else None
    if seed is None:
        seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
        pki.write_private(folder / "nkey.seed", seed + b"\n")
    public = nkeys.from_seed(seed).public_key.decode()
    issued = pki.issue_client(ca, name)
    pki.write_private(folder / "key.pem", issued.key_pem())
    (folder / "cert.pem").write_bytes(issued.cert_pem())
    (folder / "ca.pem").write_bytes(pki.authority_pems(ca)[0])
    record = {"name": name, "nkey": public, "inbox_prefix": inbox_prefix(name)}
    (folder / "identity.json").write_text(json.dumps(record, indent=2) + "\n")
    return Identity(name, public, inbox_prefix(name), folder), False


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and parents) as a directory only its owner may enter (0700)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)  # mkdir's mode is filtered by the umask, and an existing dir keeps its own


def _complete(folder: Path, name: str, ca: pki.Authority) -> bool:
    if not all((folder / f).is_file() for f in _FILES):
        return False
    try:
        found = read_identity(folder)
        seed = _seed_of(folder / "nkey.seed")
    except (OSError, ValueError, KeyError):
        return False
    return (
        found.name == name
        and seed is not None
        and nkeys.from_seed(seed).public_key.decode() == found.nkey
        and pki.signed_by(folder / "cert.pem", ca)
    )


def _seed_of(path: Path) -> bytes | None:
    # A seed that exists and decodes is kept even when the certificate is reissued (a new CA):
    # the nkey is the identity NATS knows, the certificate only proves membership of the CA.
    try:
        seed = path.read_bytes().strip()
        nkeys.from_seed(seed)
    except (OSError, ValueError, nkeys.NkeysError):
        return None
    return seed if seed.startswith(b"SU") else None
