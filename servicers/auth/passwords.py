"""Password hashing with scrypt, in a self-describing string (pure code, no I/O).

A hash reads ``scrypt$ln=15,r=8,p=1$<salt>$<key>`` (salt and key base64url without padding), in
the spirit of the PHC string format: each hash keeps the parameters it was made with, so raising
the cost later leaves stored passwords verifiable. Defaults follow auth.proto: N=2^15, r=8, p=1,
a 16-byte random salt, a 32-byte key.

scrypt is meant to be slow (~70 ms and 32 MiB per call at the defaults): callers run it off the
event loop and bound how many run at once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

_FORMAT = re.compile(r"scrypt\$ln=(\d{1,2}),r=(\d{1,2}),p=(\d{1,2})\$([A-Za-z0-9_-]+)\$([A-Za-z0-9_-]+)")
# Parameters a stored hash may name: within them one verification stays under ~1 GiB and a
# few seconds, so a tampered record cannot make Login exhaust the host.
_MAX_LOG2_N, _MAX_R, _MAX_P = 20, 16, 4


@dataclass(frozen=True, slots=True, kw_only=True)
class ScryptParams:
    """scrypt cost parameters for new hashes.

    Attributes:
        log2_n: CPU/memory cost as a power of two (N = 2**log2_n); 15 in production, lower
            only to make tests fast.
        r: block size.
        p: parallelism.
        salt_bytes: length of the random salt.
        key_bytes: length of the derived key.
    """

    log2_n: int = 15
    r: int = 8
    p: int = 1
    salt_bytes: int = 16
    key_bytes: int = 32

    def __post_init__(self) -> None:
        if not 1 <= self.log2_n <= _MAX_LOG2_N:
            raise ValueError(f"log2_n must be within 1..{_MAX_LOG2_N}")
        if not 1 <= self.r <= _MAX_R or not 1 <= self.p <= _MAX_P:
            raise ValueError(f"r must be within 1..{_MAX_R} and p within 1..{_MAX_P}")
        if self.salt_bytes < 16 or self.key_bytes < 16:
            raise ValueError("salt and key must be at least 16 bytes")


def _derive(password: str, salt: bytes, log2_n: int, r: int, p: int, length: int) -> bytes:
    n = 1 << log2_n
    # OpenSSL refuses to use more than maxmem (32 MiB by default, exactly what N=2^15, r=8
    # needs, plus overhead): allow what the parameters need, with room.
    maxmem = 128 * r * (n + p + 2) + (1 << 20)
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=length)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, params: ScryptParams) -> str:
    """A new scrypt hash of ``password`` with a fresh random salt."""
    salt = secrets.token_bytes(params.salt_bytes)
    key = _derive(password, salt, params.log2_n, params.r, params.p, params.key_bytes)
    return f"scrypt$ln={params.log2_n},r={params.r},p={params.p}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches the hash ``encoded`` (False for a malformed hash).

    The comparison takes the same time wherever the keys differ.
    """
    parsed = _FORMAT.fullmatch(encoded)
    if parsed is None:
        return False
    log2_n, r, p = (int(parsed.group(i)) for i in (1, 2, 3))
    if not (1 <= log2_n <= _MAX_LOG2_N and 1 <= r <= _MAX_R and 1 <= p <= _MAX_P):
        return False
    try:
        salt, expected = _unb64(parsed.group(4)), _unb64(parsed.group(5))
    except ValueError:  # binascii.Error: a base64 length no encoder produces
        return False
    if not salt or not expected:
        return False
    return hmac.compare_digest(_derive(password, salt, log2_n, r, p, len(expected)), expected)
