"""The auth service over NATS: accounts, logins, tokens, refresh rotation, revocation across
replicas, lockout, restarts and an unreachable store."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import nats
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from gaming.auth.v1 import auth_pb2, auth_pb2_grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nats.aio.client import Client

import servicers.auth.service
from mesh.jetstream_storage import JetStreamStorage
from nats_transport.testing import NatsServer
from servicers import auth
from servicers.auth.passwords import ScryptParams, hash_password, verify_password
from servicers.auth.records import ACCOUNTS, SESSIONS, Session
from servicers.auth.tokens import Claims, TokenKind, TokenSigner, key_id_of, verify_token
from servicers.dependencies import Dependencies
from tests._serving import served

PASSWORD = "correct horse battery"
FAST = {"scrypt_log2_n": "10"}  # a cheap scrypt for tests; the defaults are tested once below


class Clock:
    """A settable wall clock."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}_"


@pytest.fixture
def storage(nc: Client, prefix: str) -> JetStreamStorage:
    return JetStreamStorage(nc, prefix=prefix)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def dependencies(storage: Any, clock: Clock, **settings: str) -> Dependencies:
    return Dependencies(storage=storage, channel=_no_channel, settings={**FAST, **settings}, clock=clock)


def _no_channel(target: str) -> Any:
    raise AssertionError(f"auth calls no other service, yet asked for {target!r}")


@contextlib.asynccontextmanager
async def auth_service(nc: Client, deps: Dependencies) -> AsyncIterator[Any]:
    async with served(nc, auth.add_to_server, await auth.create(deps)) as channel:
        yield auth_pb2_grpc.AuthServiceStub(channel)


@pytest.fixture
async def stub(nc: Client, storage: JetStreamStorage, clock: Clock) -> AsyncIterator[Any]:
    async with auth_service(nc, dependencies(storage, clock)) as service:
        yield service


async def register(stub: Any, username: str = "alice", password: str = PASSWORD) -> str:
    reply = await stub.Register(
        auth_pb2.RegisterRequest(username=username, password=password, display_name=username.title()), timeout=5
    )
    return str(reply.account_id)


async def login(stub: Any, username: str = "alice", password: str = PASSWORD, **fields: Any) -> auth_pb2.LoginResponse:
    reply: auth_pb2.LoginResponse = await stub.Login(
        auth_pb2.LoginRequest(username=username, password=password, **fields), timeout=5
    )
    return reply


async def failure(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def reason_of(err: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason in the error's rich status."""
    status = rpc_status.from_call(err)
    assert status is not None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    raise AssertionError("no ErrorInfo in the status")


def bad_field_of(err: grpc.aio.AioRpcError) -> str:
    """The field a BadRequest detail names."""
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    status = rpc_status.from_call(err)
    assert status is not None
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    return str(bad.field_violations[0].field)


async def validate(stub: Any, token: str) -> auth_pb2.ValidateResponse:
    reply: auth_pb2.ValidateResponse = await stub.Validate(auth_pb2.ValidateRequest(access_token=token), timeout=5)
    return reply


# -- register and login ----------------------------------------------------------------------------


async def test_a_registered_player_logs_in_and_the_access_token_validates(stub: Any, clock: Clock) -> None:
    account_id = await register(stub)
    session = await login(stub, client_description="pc-launcher/1.4")

    assert session.account_id == account_id
    assert list(session.scopes) == ["player"]
    tokens = session.tokens
    assert tokens.access_token_expire_time.seconds == clock.now + 15 * 60
    assert tokens.refresh_token_expire_time.seconds == clock.now + 30 * 24 * 3600
    valid = await validate(stub, tokens.access_token)
    assert (valid.account_id, valid.session_id) == (account_id, session.session_id)
    assert valid.expire_time == tokens.access_token_expire_time
    assert list(valid.scopes) == ["player"]


async def test_usernames_are_unique_whatever_their_case(stub: Any) -> None:
    await register(stub, "alice")
    err = await failure(register(stub, "ALICE"))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    assert reason_of(err) == "USERNAME_TAKEN"
    await login(stub, "Alice")  # logins fold case too


@pytest.mark.parametrize(
    ("username", "password", "display_name", "field"),
    [
        ("al", PASSWORD, "Al", "username"),
        ("a" * 33, PASSWORD, "Al", "username"),
        ("al ice", PASSWORD, "Al", "username"),
        ("alïce", PASSWORD, "Al", "username"),
        ("alice", "7-chars", "Al", "password"),
        ("alice", "x" * 129, "Al", "password"),
        ("alice", PASSWORD, "", "display_name"),
        ("alice", PASSWORD, "   ", "display_name"),
        ("alice", PASSWORD, "x" * 65, "display_name"),
        ("alice", PASSWORD, "bell\a", "display_name"),
    ],
)
async def test_register_rejects_bad_input_naming_the_field(
    stub: Any, username: str, password: str, display_name: str, field: str
) -> None:
    request = auth_pb2.RegisterRequest(username=username, password=password, display_name=display_name)
    assert bad_field_of(await failure(stub.Register(request, timeout=5))) == field


async def test_passwords_are_stored_only_as_salted_scrypt_hashes_with_the_documented_cost(
    nc: Client, storage: JetStreamStorage, clock: Clock
) -> None:
    async with auth_service(nc, dependencies(storage, clock, scrypt_log2_n="15")) as stub:
        await register(stub, "alice")
        await register(stub, "bob")
        await login(stub, "bob")
    accounts = await storage.key_value("auth_accounts")
    stored = {name: await accounts.get(name) for name in ("alice", "bob")}
    hashes = {}
    for name, entry in stored.items():
        assert entry is not None
        assert PASSWORD.encode() not in entry.value
        hashes[name] = ACCOUNTS.decode(entry.value).password_hash
    for encoded in hashes.values():
        scheme, parameters, salt, key = encoded.split("$")
        assert (scheme, parameters) == ("scrypt", "ln=15,r=8,p=1")
        assert (len(salt), len(key)) == (22, 43)  # 16 and 32 bytes, base64url without padding
    assert hashes["alice"] != hashes["bob"]  # same password, different salts


async def test_a_wrong_password_and_an_unknown_username_get_the_same_reply(stub: Any) -> None:
    await register(stub)
    wrong = await failure(login(stub, "alice", "not the password"))
    unknown = await failure(login(stub, "mallory", PASSWORD))
    malformed = await failure(login(stub, "no such user!", PASSWORD))
    for err in (wrong, unknown, malformed):
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert err.details() == "invalid username or password"
        assert reason_of(err) == "INVALID_CREDENTIALS"


async def test_an_unknown_username_costs_a_scrypt_like_a_wrong_password(
    stub: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    await register(stub)
    checked: list[str] = []

    def counting(password: str, encoded: str) -> bool:
        checked.append(encoded)
        return verify_password(password, encoded)

    monkeypatch.setattr(servicers.auth.service, "verify_password", counting)
    await failure(login(stub, "alice", "not the password"))
    await failure(login(stub, "mallory", PASSWORD))
    assert len(checked) == 2
    assert all(encoded.startswith("scrypt$ln=10,r=8,p=1$") for encoded in checked)
    assert checked[0] != checked[1]  # the second is the dummy hash


@pytest.mark.parametrize(
    ("fields", "bad_field"),
    [
        ({"username": ""}, "username"),
        ({"password": ""}, "password"),
        ({"scopes": ["player", "Not A Scope"]}, "scopes[1]"),
        ({"scopes": ["admin"]}, "scopes[0]"),  # well-formed, but not the account's
        ({"client_description": "x" * 129}, "client_description"),
    ],
)
async def test_login_rejects_bad_input_naming_the_field(stub: Any, fields: dict[str, Any], bad_field: str) -> None:
    await register(stub)
    request = {"username": "alice", "password": PASSWORD, **fields}
    assert bad_field_of(await failure(stub.Login(auth_pb2.LoginRequest(**request), timeout=5))) == bad_field


async def test_login_grants_the_requested_scopes_or_else_all_the_account_holds(
    nc: Client, storage: JetStreamStorage, clock: Clock
) -> None:
    async with auth_service(nc, dependencies(storage, clock, account_scopes="player, payment:charge")) as stub:
        await register(stub)
        narrow = await login(stub, scopes=["payment:charge", "payment:charge"])
        assert list(narrow.scopes) == ["payment:charge"]
        assert list((await validate(stub, narrow.tokens.access_token)).scopes) == ["payment:charge"]
        assert list((await login(stub)).scopes) == ["player", "payment:charge"]


async def test_repeated_failed_logins_lock_the_username_for_the_delay_in_the_status(stub: Any, clock: Clock) -> None:
    await register(stub)
    for _ in range(5):
        assert (await failure(login(stub, "alice", "guess"))).code() == grpc.StatusCode.UNAUTHENTICATED

    locked = await failure(login(stub, "alice", PASSWORD))  # even the right password waits
    assert locked.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rpc_status.from_call(locked)
    assert status is not None
    retry = error_details_pb2.RetryInfo()
    assert any(detail.Unpack(retry) for detail in status.details)
    assert retry.retry_delay.seconds == 30

    clock.now += 31
    await login(stub)  # the lock has passed, and a success clears the count
    assert (await failure(login(stub, "alice", "guess"))).code() == grpc.StatusCode.UNAUTHENTICATED


async def test_unknown_usernames_are_locked_out_alike(stub: Any) -> None:
    for _ in range(5):
        await failure(login(stub, "mallory", "guess"))
    assert (await failure(login(stub, "mallory", "guess"))).code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_a_disabled_account_is_refused_but_only_to_whoever_knows_the_password(
    stub: Any, storage: JetStreamStorage
) -> None:
    await register(stub)
    accounts = await storage.key_value("auth_accounts")
    entry = await accounts.get("alice")
    assert entry is not None
    await accounts.put("alice", ACCOUNTS.encode(dataclasses.replace(ACCOUNTS.decode(entry.value), disabled=True)))

    assert (await failure(login(stub, "alice", "guess"))).code() == grpc.StatusCode.UNAUTHENTICATED
    refused = await failure(login(stub))
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(refused) == "ACCOUNT_DISABLED"


# -- tokens ----------------------------------------------------------------------------------------


async def test_validate_rejects_empty_malformed_forged_and_misused_tokens(stub: Any) -> None:
    await register(stub)
    session = await login(stub)
    assert bad_field_of(await failure(validate(stub, ""))) == "access_token"

    # Signed by another key under the genuine key's id.
    forger = TokenSigner(key_id_of(session.tokens.access_token), Ed25519PrivateKey.generate())
    forged = forger.issue(
        Claims(kind=TokenKind.ACCESS, subject=session.account_id, session_id=session.session_id, expire_time=2e9)
    )
    cases = {
        "garbage": "TOKEN_MALFORMED",
        session.tokens.access_token + "x": "TOKEN_MALFORMED",
        forged: "TOKEN_INVALID",
        session.tokens.refresh_token: "TOKEN_INVALID",  # a refresh token is not an access token
    }
    for token, reason in cases.items():
        err = await failure(validate(stub, token))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert reason_of(err) == reason, token


async def test_an_access_token_expires_after_fifteen_minutes(stub: Any, clock: Clock) -> None:
    await register(stub)
    session = await login(stub)
    clock.now += 15 * 60 - 1
    await validate(stub, session.tokens.access_token)
    clock.now += 1
    err = await failure(validate(stub, session.tokens.access_token))
    assert (err.code(), reason_of(err)) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_EXPIRED")


async def test_refresh_rotates_the_tokens_and_the_old_refresh_token_stops_working(stub: Any, clock: Clock) -> None:
    await register(stub)
    session = await login(stub)
    clock.now += 60
    first = await stub.Refresh(auth_pb2.RefreshRequest(refresh_token=session.tokens.refresh_token), timeout=5)
    assert (first.account_id, first.session_id) == (session.account_id, session.session_id)
    assert first.tokens.refresh_token != session.tokens.refresh_token
    assert first.tokens.access_token_expire_time.seconds == clock.now + 15 * 60
    # Rotation never extends the session past 30 days from login.
    assert first.tokens.refresh_token_expire_time == session.tokens.refresh_token_expire_time
    second = await stub.Refresh(auth_pb2.RefreshRequest(refresh_token=first.tokens.refresh_token), timeout=5)
    await validate(stub, second.tokens.access_token)

    reused = await failure(stub.Refresh(auth_pb2.RefreshRequest(refresh_token=session.tokens.refresh_token)))
    assert (reused.code(), reason_of(reused)) == (grpc.StatusCode.UNAUTHENTICATED, "REFRESH_TOKEN_REUSED")
    # Reuse means theft: the whole session is revoked, including the newest tokens.
    revoked = await failure(validate(stub, second.tokens.access_token))
    assert reason_of(revoked) == "SESSION_REVOKED"
    latest = await failure(stub.Refresh(auth_pb2.RefreshRequest(refresh_token=second.tokens.refresh_token)))
    assert reason_of(latest) == "SESSION_REVOKED"


async def test_two_concurrent_refreshes_with_one_token_let_exactly_one_through(stub: Any) -> None:
    await register(stub)
    session = await login(stub)
    request = auth_pb2.RefreshRequest(refresh_token=session.tokens.refresh_token)
    outcomes = await asyncio.gather(
        stub.Refresh(request, timeout=5), stub.Refresh(request, timeout=5), return_exceptions=True
    )
    errors = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(errors) == 1
    assert reason_of(errors[0]) == "REFRESH_TOKEN_REUSED"


async def test_a_refresh_token_expires_thirty_days_after_login(stub: Any, clock: Clock) -> None:
    await register(stub)
    session = await login(stub)
    clock.now += 30 * 24 * 3600
    err = await failure(stub.Refresh(auth_pb2.RefreshRequest(refresh_token=session.tokens.refresh_token)))
    assert (err.code(), reason_of(err)) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_EXPIRED")


async def test_refresh_rejects_empty_and_access_tokens(stub: Any) -> None:
    await register(stub)
    session = await login(stub)
    assert bad_field_of(await failure(stub.Refresh(auth_pb2.RefreshRequest()))) == "refresh_token"
    err = await failure(stub.Refresh(auth_pb2.RefreshRequest(refresh_token=session.tokens.access_token)))
    assert (err.code(), reason_of(err)) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")


# -- logout and revocation -------------------------------------------------------------------------


async def test_logout_on_one_replica_revokes_at_once_on_another(
    nc: Client, nats_server: NatsServer, prefix: str
) -> None:
    clock = Clock()
    nc2 = await nats.connect(nats_server.url)
    try:
        # Two replicas on their own connections, created together with no configured key:
        # they must agree on one generated signing key.
        first, second = await asyncio.gather(
            auth.create(dependencies(JetStreamStorage(nc, prefix=prefix), clock)),
            auth.create(dependencies(JetStreamStorage(nc2, prefix=prefix), clock)),
        )
        async with (
            served(nc, auth.add_to_server, first) as channel_a,
            served(nc2, auth.add_to_server, second) as channel_b,
        ):
            a, b = auth_pb2_grpc.AuthServiceStub(channel_a), auth_pb2_grpc.AuthServiceStub(channel_b)
            await register(a)
            session = await login(a)
            await validate(b, session.tokens.access_token)

            out = await b.Logout(auth_pb2.LogoutRequest(access_token=session.tokens.access_token), timeout=5)
            assert out.session_id == session.session_id
            assert out.revoke_time.seconds == clock.now

            err = await failure(validate(a, session.tokens.access_token))
            assert (err.code(), reason_of(err)) == (grpc.StatusCode.UNAUTHENTICATED, "SESSION_REVOKED")
            refresh = await failure(a.Refresh(auth_pb2.RefreshRequest(refresh_token=session.tokens.refresh_token)))
            assert reason_of(refresh) == "SESSION_REVOKED"
    finally:
        await nc2.close()


async def test_logout_is_idempotent_and_keeps_the_first_revoke_time(stub: Any, clock: Clock) -> None:
    await register(stub)
    session = await login(stub)
    request = auth_pb2.LogoutRequest(access_token=session.tokens.access_token)
    first = await stub.Logout(request, timeout=5)
    clock.now += 10
    again = await stub.Logout(request, timeout=5)
    assert again == first


async def test_logout_revokes_another_session_of_the_callers_account_only(stub: Any) -> None:
    await register(stub, "alice")
    await register(stub, "bob")
    phone, laptop, bobs = await login(stub), await login(stub), await login(stub, "bob")
    token = phone.tokens.access_token

    for other in (bobs.session_id, uuid.uuid4().hex, "not-a-session-id"):
        err = await failure(stub.Logout(auth_pb2.LogoutRequest(access_token=token, session_id=other)))
        assert err.code() == grpc.StatusCode.NOT_FOUND, other
    await validate(stub, bobs.tokens.access_token)

    await stub.Logout(auth_pb2.LogoutRequest(access_token=token, session_id=laptop.session_id), timeout=5)
    assert reason_of(await failure(validate(stub, laptop.tokens.access_token))) == "SESSION_REVOKED"
    await validate(stub, token)  # the caller's own session stays open

    # A revoked session may repeat its own logout, but not revoke anyone else's.
    await stub.Logout(auth_pb2.LogoutRequest(access_token=token), timeout=5)
    fresh = await login(stub)
    err = await failure(stub.Logout(auth_pb2.LogoutRequest(access_token=token, session_id=fresh.session_id)))
    assert (err.code(), reason_of(err)) == (grpc.StatusCode.UNAUTHENTICATED, "SESSION_REVOKED")


async def test_logout_rejects_empty_malformed_and_expired_tokens(stub: Any, clock: Clock) -> None:
    await register(stub)
    session = await login(stub)
    assert bad_field_of(await failure(stub.Logout(auth_pb2.LogoutRequest()))) == "access_token"
    malformed = await failure(stub.Logout(auth_pb2.LogoutRequest(access_token="nope")))
    assert malformed.code() == grpc.StatusCode.UNAUTHENTICATED
    clock.now += 16 * 60
    expired = await failure(stub.Logout(auth_pb2.LogoutRequest(access_token=session.tokens.access_token)))
    assert (expired.code(), reason_of(expired)) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_EXPIRED")


# -- persistence and failures ----------------------------------------------------------------------


async def test_a_restart_keeps_accounts_sessions_revocations_and_the_signing_key(
    nc: Client, nats_server: NatsServer, prefix: str
) -> None:
    clock = Clock()
    async with auth_service(nc, dependencies(JetStreamStorage(nc, prefix=prefix), clock)) as stub:
        account_id = await register(stub)
        kept, ended = await login(stub), await login(stub)
        await stub.Logout(auth_pb2.LogoutRequest(access_token=ended.tokens.access_token), timeout=5)

    nc2 = await nats.connect(nats_server.url)
    try:
        async with auth_service(nc2, dependencies(JetStreamStorage(nc2, prefix=prefix), clock)) as stub:
            assert (await validate(stub, kept.tokens.access_token)).account_id == account_id
            assert reason_of(await failure(validate(stub, ended.tokens.access_token))) == "SESSION_REVOKED"
            assert (await login(stub)).account_id == account_id
            assert (await failure(register(stub))).code() == grpc.StatusCode.ALREADY_EXISTS
    finally:
        await nc2.close()


async def test_the_signing_key_set_is_stored_only_in_the_auth_keys_bucket(
    nc: Client, storage: JetStreamStorage, clock: Clock
) -> None:
    async with auth_service(nc, dependencies(storage, clock)) as stub:
        await register(stub)
        session = await login(stub)
        listed = await stub.GetVerificationKeys(auth_pb2.GetVerificationKeysRequest(), timeout=5)
    assert await (await storage.key_value("auth_keys")).keys() == ["keyset"]
    [key] = listed.keys
    assert (key.kid, key.active, len(key.public_key)) == (key_id_of(session.tokens.access_token), True, 32)
    public = {key.kid: Ed25519PublicKey.from_public_bytes(key.public_key)}
    claims = verify_token(session.tokens.access_token, public, TokenKind.ACCESS, clock.now)
    assert (claims.subject, claims.session_id, claims.scopes) == (session.account_id, session.session_id, ("player",))


async def test_every_rpc_answers_unavailable_when_the_store_cannot_be_reached(
    nc: Client, nats_server: NatsServer, prefix: str, clock: Clock
) -> None:
    store_connection = await nats.connect(nats_server.url)
    deps = dependencies(JetStreamStorage(store_connection, prefix=prefix), clock)
    async with auth_service(nc, deps) as stub:
        await register(stub)
        session = await login(stub)
        await store_connection.close()
        calls: list[Callable[[], Any]] = [
            lambda: register(stub, "bob"),
            lambda: login(stub),
            lambda: validate(stub, session.tokens.access_token),
            lambda: stub.Refresh(auth_pb2.RefreshRequest(refresh_token=session.tokens.refresh_token), timeout=5),
            lambda: stub.Logout(auth_pb2.LogoutRequest(access_token=session.tokens.access_token), timeout=5),
            lambda: stub.GetVerificationKeys(auth_pb2.GetVerificationKeysRequest(), timeout=5),
            lambda: stub.ListRevocations(auth_pb2.ListRevocationsRequest(), timeout=5),
        ]
        for call in calls:
            err = await failure(call())
            assert (err.code(), reason_of(err)) == (grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE")
            # Which store, in auth.proto's words ("the sessions store cannot be reached").
            assert re.fullmatch(r"the (accounts|sessions|login failures|revocations|keys) store cannot be reached",
                                err.details() or "")


# -- pure pieces -----------------------------------------------------------------------------------


def test_scrypt_hashes_verify_only_the_right_password_and_refuse_tampered_strings() -> None:
    params = ScryptParams(log2_n=4)
    encoded = hash_password("secret password", params)
    assert verify_password("secret password", encoded)
    assert not verify_password("secret passworD", encoded)
    scheme, _, salt, key = encoded.split("$")
    for tampered in ("", "bcrypt$x", f"{scheme}$ln=30,r=8,p=1${salt}${key}", f"{scheme}$ln=4,r=8,p=1${salt}$A"):
        assert not verify_password("secret password", tampered)


def test_session_records_round_trip_through_protobuf_and_old_records_get_defaults() -> None:
    session = Session(
        session_id="cd" * 16, account_id="ab" * 16, scopes=("player", "payment:charge"), client_description="pc",
        create_time=1.5, refresh_expire_time=2.5, refresh_generation=3, revoke_time=4.5, revoke_reason="logout",
    )
    assert SESSIONS.decode(SESSIONS.encode(session)) == session
    empty = SESSIONS.decode(b"")
    assert (empty.scopes, empty.revoke_time, empty.revoke_reason) == ((), 0.0, "")
