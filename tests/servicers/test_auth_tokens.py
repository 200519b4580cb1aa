"""Ed25519 tokens: what verifies and what does not, key rotation, and service tokens over NATS."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from pathlib import Path
from typing import Any

import grpc
import nkeys
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from gaming.auth.v1 import auth_pb2
from google.protobuf import timestamp_pb2
from nats.aio.client import Client

from mesh.jetstream_storage import JetStreamStorage
from servicers.auth.proofs import decode_public_nkey, proof_text
from servicers.auth.records import KEY_SETS, KeySet, RetiredKey
from servicers.auth.tokens import Claims, InvalidToken, TokenKind, TokenSigner, UnknownKey, key_id_of, verify_token
from tests.servicers.test_auth import (
    Clock,
    auth_service,
    dependencies,
    failure,
    login,
    reason_of,
    register,
    validate,
)

NOW = 1_700_000_000.0
KEY = Ed25519PrivateKey.generate()
SIGNER = TokenSigner("k1", KEY)
KEYS = {"k1": KEY.public_key()}
CLAIMS = Claims(
    kind=TokenKind.ACCESS,
    subject="ab" * 16,
    session_id="cd" * 16,
    scopes=("player",),
    issue_time=NOW,
    expire_time=NOW + 900,
)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hand_made(header: dict[str, Any], payload: dict[str, Any], sign: Any) -> str:
    """A JWT built by hand, as an attacker would, signed by ``sign(signing_input)``."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{_b64(sign(signing_input.encode()))}"


def _payload() -> dict[str, Any]:
    return {
        "iss": "gaming.auth",
        "sub": CLAIMS.subject,
        "sid": CLAIMS.session_id,
        "scope": ["player"],
        "typ": "access",
        "gen": 0,
        "iat": int(NOW),
        "exp": int(NOW + 900),
    }


def _reason(token: str, kind: TokenKind = TokenKind.ACCESS, now: float = NOW) -> str:
    with pytest.raises(InvalidToken) as caught:
        verify_token(token, KEYS, kind, now)
    return caught.value.reason


# -- pure token checks -----------------------------------------------------------------------------


def test_a_token_carries_its_claims_and_its_key_id() -> None:
    token = SIGNER.issue(CLAIMS)
    assert key_id_of(token) == "k1"
    assert verify_token(token, KEYS, TokenKind.ACCESS, NOW) == CLAIMS


def test_a_token_signed_by_another_key_under_the_same_key_id_is_invalid() -> None:
    forged = TokenSigner("k1", Ed25519PrivateKey.generate()).issue(CLAIMS)
    assert _reason(forged) == "invalid"


def test_alg_none_is_refused() -> None:
    unsigned = _hand_made({"alg": "none", "typ": "JWT", "kid": "k1"}, _payload(), lambda _: b"")
    assert _reason(unsigned) == "invalid"


@pytest.mark.parametrize("encoding", ["raw", "pem"])
def test_hs256_with_the_public_key_as_the_hmac_secret_is_refused(encoding: str) -> None:
    public = KEY.public_key()
    secret = (
        public.public_bytes(Encoding.Raw, PublicFormat.Raw)
        if encoding == "raw"
        else public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    forged = _hand_made(
        {"alg": "HS256", "typ": "JWT", "kid": "k1"},
        _payload(),
        lambda data: hmac.new(secret, data, hashlib.sha256).digest(),
    )
    assert _reason(forged) == "invalid"


def test_expiry_kind_and_issuer_are_checked() -> None:
    token = SIGNER.issue(CLAIMS)
    assert _reason(token, now=NOW + 900) == "expired"
    verify_token(token, KEYS, TokenKind.ACCESS, NOW + 899)
    assert _reason(token, TokenKind.REFRESH) == "invalid"
    foreign = _hand_made({"alg": "EdDSA", "typ": "JWT", "kid": "k1"}, {**_payload(), "iss": "elsewhere"}, KEY.sign)
    assert _reason(foreign) == "invalid"
    incomplete = _hand_made({"alg": "EdDSA", "typ": "JWT", "kid": "k1"}, {**_payload(), "sid": None}, KEY.sign)
    assert _reason(incomplete) == "invalid"


@pytest.mark.parametrize("token", ["", "a.b", "garbage", "a.b.c", "=" * 106, "x" * 5000])
def test_tokens_of_the_wrong_shape_are_malformed(token: str) -> None:
    assert _reason(token) == "malformed"


def test_an_altered_payload_is_invalid_and_an_unknown_key_id_is_named() -> None:
    header, _, signature = SIGNER.issue(CLAIMS).split(".")
    altered = _b64(json.dumps({**_payload(), "scope": ["operator"]}).encode())
    assert _reason(f"{header}.{altered}.{signature}") == "invalid"
    with pytest.raises(UnknownKey) as caught:
        verify_token(TokenSigner("k2", KEY).issue(CLAIMS), KEYS, TokenKind.ACCESS, NOW)
    assert (caught.value.kid, caught.value.reason) == ("k2", "invalid")


def test_key_sets_round_trip_through_protobuf() -> None:
    key_set = KeySet(
        kid="a",
        private_key=b"k" * 32,
        create_time=1.5,
        retired=(RetiredKey(kid="b", public_key=b"p" * 32, valid_until=9.5),),
    )
    assert KEY_SETS.decode(KEY_SETS.encode(key_set)) == key_set
    assert KEY_SETS.decode(b"").retired == ()


def test_public_nkeys_decode_to_the_key_that_checks_their_signatures() -> None:
    seed = nkeys.encode_seed(bytes(32), nkeys.PREFIX_BYTE_USER)
    pair = nkeys.from_seed(seed)
    decode_public_nkey(pair.public_key.decode()).verify(pair.sign(b"data"), b"data")
    for bad in ("", "Unot-base32", pair.public_key.decode()[:-1] + "A", seed.decode()):
        with pytest.raises(ValueError, match=r"nkey|checksum"):
            decode_public_nkey(bad)


# -- rotation --------------------------------------------------------------------------------------


async def test_a_rotated_key_keeps_verifying_its_tokens_while_new_ones_carry_the_new_kid(
    nc: Client, storage: JetStreamStorage
) -> None:
    clock = Clock(NOW)
    # 0.005 days is 7.2 minutes: rotation falls inside one access token's life.
    async with auth_service(nc, dependencies(storage, clock, key_rotation_days="0.005")) as stub:
        await register(stub)
        before = await login(stub)
        old_kid = key_id_of(before.tokens.access_token)
        clock.now += 8 * 60
        after = await login(stub)
        new_kid = key_id_of(after.tokens.access_token)
        assert new_kid != old_kid
        await validate(stub, before.tokens.access_token)
        await validate(stub, after.tokens.access_token)
        refreshed = await stub.Refresh(auth_pb2.RefreshRequest(refresh_token=before.tokens.refresh_token), timeout=5)
        assert key_id_of(refreshed.tokens.refresh_token) == new_kid

        listed = await stub.GetVerificationKeys(auth_pb2.GetVerificationKeysRequest(), timeout=5)
        assert [(k.kid, k.active) for k in listed.keys] == [(new_kid, True), (old_kid, False)]
        assert listed.keys[1].valid_until.seconds == clock.now + 30 * 24 * 3600
        for key in listed.keys:
            Ed25519PublicKey.from_public_bytes(key.public_key)

        # A retired key is dropped once every token it signed has expired.
        clock.now += 31 * 24 * 3600
        await login(stub)
        latest = await stub.GetVerificationKeys(auth_pb2.GetVerificationKeysRequest(), timeout=5)
        assert old_kid not in {k.kid for k in latest.keys}


# -- service tokens --------------------------------------------------------------------------------


def _seed() -> bytes:
    return bytes(nkeys.encode_seed(uuid.uuid4().bytes * 2, nkeys.PREFIX_BYTE_USER))


def _request(target: str, seed: bytes, issued_at: int, *, signed_target: str | None = None) -> Any:
    signature = nkeys.from_seed(seed).sign(proof_text(signed_target or target, issued_at))
    return auth_pb2.IssueServiceTokenRequest(
        target=target, issued_at=timestamp_pb2.Timestamp(seconds=issued_at), signature=signature
    )


@pytest.fixture
def quest_seed() -> bytes:
    return _seed()


@pytest.fixture
async def keyed_stub(nc: Client, storage: JetStreamStorage, quest_seed: bytes, tmp_path: Path) -> Any:
    keys_file = tmp_path / "service_keys.json"
    keys_file.write_text(json.dumps({"quest": nkeys.from_seed(quest_seed).public_key.decode()}))
    async with auth_service(nc, dependencies(storage, Clock(NOW), service_keys=str(keys_file))) as stub:
        yield stub


async def test_a_target_with_a_valid_nkey_proof_gets_a_ten_minute_service_token(
    keyed_stub: Any, quest_seed: bytes
) -> None:
    reply = await keyed_stub.IssueServiceToken(_request("quest", quest_seed, int(NOW) - 30), timeout=5)
    assert reply.expire_time.seconds == NOW + 600
    valid = await validate(keyed_stub, reply.access_token)
    assert (valid.account_id, valid.session_id, list(valid.scopes)) == ("service:quest", "", ["service"])


@pytest.mark.parametrize(
    ("make", "code", "reason"),
    [
        (lambda seed: _request("quest", _seed(), int(NOW)), grpc.StatusCode.UNAUTHENTICATED, "BAD_PROOF"),
        (
            lambda seed: _request("quest", seed, int(NOW), signed_target="npc"),
            grpc.StatusCode.UNAUTHENTICATED,
            "BAD_PROOF",
        ),
        (lambda seed: _request("quest", seed, int(NOW) - 61), grpc.StatusCode.UNAUTHENTICATED, "STALE_PROOF"),
        (lambda seed: _request("quest", seed, int(NOW) + 61), grpc.StatusCode.UNAUTHENTICATED, "STALE_PROOF"),
        (lambda seed: _request("npc", seed, int(NOW)), grpc.StatusCode.PERMISSION_DENIED, "UNKNOWN_TARGET"),
    ],
    ids=["wrong-key", "other-text", "stale", "future", "unknown-target"],
)
async def test_a_service_token_needs_a_fresh_proof_by_a_configured_target(
    keyed_stub: Any, quest_seed: bytes, make: Any, code: grpc.StatusCode, reason: str
) -> None:
    err = await failure(keyed_stub.IssueServiceToken(make(quest_seed), timeout=5))
    assert (err.code(), reason_of(err)) == (code, reason)


async def test_without_service_keys_any_target_gets_a_token_without_proof(
    nc: Client, storage: JetStreamStorage, caplog: pytest.LogCaptureFixture
) -> None:
    async with auth_service(nc, dependencies(storage, Clock(NOW))) as stub:
        reply = await stub.IssueServiceToken(auth_pb2.IssueServiceTokenRequest(target="npc"), timeout=5)
        assert (await validate(stub, reply.access_token)).account_id == "service:npc"
        bad = await failure(stub.IssueServiceToken(auth_pb2.IssueServiceTokenRequest(target="Not A Target")))
        assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "without proof" in caplog.text
