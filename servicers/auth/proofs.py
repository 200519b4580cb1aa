"""How a mesh target proves who it is to get a service token (pure code, no I/O but file reads).

The proof is an Ed25519 signature by the target's NATS nkey (the identity it connects to NATS
with) over the UTF-8 text ``"<target>\\n<issued_at>"``, ``issued_at`` in whole Unix seconds.
Auth knows each target's public nkey (``U...``) from a JSON file ``{target: public nkey}``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from pathlib import Path

import nkeys  # type: ignore[import-untyped,unused-ignore]  # nkeys ships no type information
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

TARGET = re.compile(r"[a-z][a-z0-9_-]{0,63}")
# A proof older or newer than this is refused: it bounds how long a leaked proof is worth.
MAX_SKEW = 60.0
_USER_PREFIX = 20 << 3  # nkeys.PREFIX_BYTE_USER: public keys that start with "U"


def proof_text(target: str, issued_at: int) -> bytes:
    """The bytes a target signs to ask for a service token at ``issued_at`` (Unix seconds)."""
    return f"{target}\n{issued_at}".encode()


def sign_proof(seed: bytes, target: str, issued_at: int) -> bytes:
    """The proof signature of ``target`` at ``issued_at``, by the nkey of ``seed`` (``SU...``)."""
    signature: bytes = nkeys.from_seed(seed).sign(proof_text(target, issued_at))
    return signature


def decode_public_nkey(text: str) -> Ed25519PublicKey:
    """The Ed25519 key of a public user nkey (``U`` + base32 of prefix, key and CRC-16).

    Raises:
        ValueError: ``text`` is not a valid public user nkey.
    """
    try:
        raw = base64.b32decode(text + "=" * (-len(text) % 8))
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{text[:64]!r} is not a public nkey") from exc
    if len(raw) != 35 or raw[0] != _USER_PREFIX:
        raise ValueError(f"{text[:64]!r} is not a public user nkey")
    if nkeys.crc16_checksum(raw[:-2]) != raw[-2:]:
        raise ValueError(f"{text[:64]!r} fails its checksum")
    return Ed25519PublicKey.from_public_bytes(raw[1:33])


def load_service_keys(path: str | Path) -> dict[str, Ed25519PublicKey]:
    """The targets' public keys from a JSON file ``{target: "U..."}``.

    Raises:
        OSError: the file cannot be read.
        ValueError: it is not such a JSON object (the message says what is wrong).
    """
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of target -> public nkey")
    keys = {}
    for target, public in data.items():
        if not TARGET.fullmatch(target) or not isinstance(public, str):
            raise ValueError(f"{path}: {target!r} -> {public!r} is not a target and its public nkey")
        keys[target] = decode_public_nkey(public)
    return keys


def proof_holds(keys: Mapping[str, Ed25519PublicKey], target: str, issued_at: int, signature: bytes) -> bool:
    """Whether ``signature`` is ``target``'s proof at ``issued_at``; ``target`` must be in ``keys``."""
    try:
        keys[target].verify(signature, proof_text(target, issued_at))
    except InvalidSignature:
        return False
    return True
