"""LocalVerifier and ServiceTokenSource against a real auth service over NATS."""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import nkeys
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from gaming.auth.v1 import auth_pb2
from nats.aio.client import Client

import nats_transport.aio
from mesh.jetstream_storage import JetStreamStorage
from servicers.auth.identity import TokenRejected, VerifierUnavailable
from servicers.auth.tokens import Claims, TokenKind, TokenSigner, key_id_of
from servicers.auth.verifier import LocalVerifier, ServiceTokenSource
from tests.servicers.test_auth import Clock, auth_service, dependencies, login, register

NOW = 1_700_000_000.0


class CountingStub:
    """An AuthService stub that counts the calls made through it, by method."""

    def __init__(self, stub: Any) -> None:
        self.stub = stub
        self.calls: collections.Counter[str] = collections.Counter()

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        method = getattr(self.stub, name)

        def call(*args: Any, **kwargs: Any) -> Awaitable[Any]:
            self.calls[name] += 1
            return method(*args, **kwargs)  # type: ignore[no-any-return]

        return call


async def rejection(verifier: LocalVerifier, token: str) -> str:
    with pytest.raises(TokenRejected) as caught:
        await verifier.verify(token)
    return caught.value.reason


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
async def stub(nc: Client, storage: JetStreamStorage, clock: Clock) -> AsyncIterator[Any]:
    async with auth_service(nc, dependencies(storage, clock, key_rotation_days="0.005")) as service:
        yield service


@pytest.fixture
async def verifier(stub: Any, clock: Clock) -> AsyncIterator[LocalVerifier]:
    local = LocalVerifier(CountingStub(stub), revocation_poll=0.1, call_timeout=1.0, clock=clock)
    await local.start()
    yield local
    await local.aclose()


async def test_a_player_token_verifies_locally_without_a_validate_call(
    nc: Client, storage: JetStreamStorage, clock: Clock
) -> None:
    async with auth_service(nc, dependencies(storage, clock)) as stub:
        await register(stub)
        session = await login(stub, client_description="pc")
        counting = CountingStub(stub)
        local = LocalVerifier(counting, revocation_poll=0.1, clock=clock)
        await local.start()
    try:
        # auth is stopped now: keys already fetched keep verifying.
        for _ in range(3):
            identity = await local.verify(session.tokens.access_token)
        assert (identity.subject, identity.session_id, identity.scopes) == (
            session.account_id,
            session.session_id,
            ("player",),
        )
        assert identity.expire_time == session.tokens.access_token_expire_time.seconds
        assert counting.calls["Validate"] == 0
        assert counting.calls["GetVerificationKeys"] == 1
    finally:
        await local.aclose()


async def test_forged_expired_malformed_and_refresh_tokens_are_rejected(
    stub: Any, verifier: LocalVerifier, clock: Clock
) -> None:
    await register(stub)
    session = await login(stub)
    forged = TokenSigner(key_id_of(session.tokens.access_token), Ed25519PrivateKey.generate()).issue(
        Claims(kind=TokenKind.ACCESS, subject=session.account_id, session_id=session.session_id, expire_time=2e9)
    )
    assert await rejection(verifier, forged) == "invalid"
    assert await rejection(verifier, "garbage") == "malformed"
    assert await rejection(verifier, session.tokens.refresh_token) == "invalid"
    clock.now += 15 * 60
    assert await rejection(verifier, session.tokens.access_token) == "expired"


async def test_a_logout_is_refused_everywhere_within_the_poll_interval_and_a_call_deadline(
    stub: Any, verifier: LocalVerifier
) -> None:
    await register(stub)
    ended, kept = await login(stub), await login(stub)
    await verifier.verify(ended.tokens.access_token)
    await stub.Logout(auth_pb2.LogoutRequest(access_token=ended.tokens.access_token), timeout=5)

    # The bound: the next poll starts within revocation_poll and ends within its call deadline.
    async with asyncio.timeout(0.1 + 1.0 + 0.5):
        await verifier.next_poll()
    assert await rejection(verifier, ended.tokens.access_token) == "revoked"
    await verifier.verify(kept.tokens.access_token)


async def test_a_reused_refresh_token_revokes_the_session_for_local_verifiers_too(
    stub: Any, verifier: LocalVerifier
) -> None:
    await register(stub)
    session = await login(stub)
    request = auth_pb2.RefreshRequest(refresh_token=session.tokens.refresh_token)
    fresh = await stub.Refresh(request, timeout=5)
    with pytest.raises(Exception, match="already used"):
        await stub.Refresh(request, timeout=5)
    listed = await stub.ListRevocations(auth_pb2.ListRevocationsRequest(), timeout=5)
    assert list(listed.session_ids) == [session.session_id]

    async with asyncio.timeout(0.1 + 1.0 + 0.5):
        await verifier.next_poll()
    assert await rejection(verifier, fresh.tokens.access_token) == "revoked"


async def test_revocations_are_listed_for_one_access_token_lifetime(stub: Any, clock: Clock) -> None:
    await register(stub)
    session = await login(stub)
    await stub.Logout(auth_pb2.LogoutRequest(access_token=session.tokens.access_token), timeout=5)
    clock.now += 15 * 60 - 1
    assert list((await stub.ListRevocations(auth_pb2.ListRevocationsRequest(), timeout=5)).session_ids) == [
        session.session_id
    ]
    clock.now += 2
    assert list((await stub.ListRevocations(auth_pb2.ListRevocationsRequest(), timeout=5)).session_ids) == []


async def test_tokens_of_a_new_key_verify_after_a_rotation_and_old_ones_still_do(
    stub: Any, verifier: LocalVerifier, clock: Clock
) -> None:
    await register(stub)
    before = await login(stub)
    await verifier.verify(before.tokens.access_token)
    clock.now += 8 * 60  # past the 7.2-minute rotation period of the fixture
    after = await login(stub)
    assert key_id_of(after.tokens.access_token) != key_id_of(before.tokens.access_token)
    assert (await verifier.verify(after.tokens.access_token)).session_id == after.session_id
    assert (await verifier.verify(before.tokens.access_token)).session_id == before.session_id


async def test_a_verifier_that_never_got_keys_is_unavailable(nc: Client) -> None:
    local = LocalVerifier(nats_transport.aio.channel(nc, "nobody-serves-this"), call_timeout=0.2)
    await local.start()
    try:
        token = TokenSigner("k", Ed25519PrivateKey.generate()).issue(
            Claims(kind=TokenKind.ACCESS, subject="a", session_id="s", expire_time=2e9)
        )
        with pytest.raises(VerifierUnavailable):
            await local.verify(token)
    finally:
        await local.aclose()


async def test_a_service_token_source_proves_its_nkey_caches_and_renews_the_token(
    nc: Client, storage: JetStreamStorage, clock: Clock, tmp_path: Path
) -> None:
    seed = nkeys.encode_seed(bytes(range(32)), nkeys.PREFIX_BYTE_USER)
    (tmp_path / "quest.seed").write_bytes(seed + b"\n")
    keys_file = tmp_path / "service_keys.json"
    keys_file.write_text(json.dumps({"quest": nkeys.from_seed(seed).public_key.decode()}))
    async with auth_service(nc, dependencies(storage, clock, service_keys=str(keys_file))) as stub:
        counting = CountingStub(stub)
        source = ServiceTokenSource(counting, "quest", tmp_path / "quest.seed", renew_before=120, clock=clock)
        local = LocalVerifier(stub, clock=clock)
        await local.start()
        try:
            token = await source.token()
            identity = await local.verify(token)
            assert (identity.subject, identity.session_id, identity.scopes) == ("service:quest", "", ("service",))
            assert identity.expire_time == NOW + 600
            assert await source.token() == token
            clock.now += 600 - 120  # within renew_before of expiry: a new token
            renewed = await source.token()
            assert counting.calls["IssueServiceToken"] == 2
            assert (await local.verify(renewed)).expire_time == clock.now + 600

            unproven = ServiceTokenSource(stub, "quest", None, clock=clock)
            with pytest.raises(Exception, match="bad proof"):
                await unproven.token()
        finally:
            await local.aclose()
