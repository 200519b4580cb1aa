"""A whole ``mesh up --secure``: mTLS to NATS, one identity per target, a TLS ingress, and the
access policy of the protos enforced with locally verified tokens, across chained calls and all
four call types."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from gaming.ai_integration.v1 import ai_integration_pb2 as ai
from gaming.ai_integration.v1 import ai_integration_pb2_grpc
from gaming.auth.v1 import auth_pb2, auth_pb2_grpc
from gaming.common.v1 import common_pb2
from gaming.npc_behavior.v1 import npc_behavior_pb2 as npc
from gaming.npc_behavior.v1 import npc_behavior_pb2_grpc
from gaming.payment.v1 import payment_pb2, payment_pb2_grpc
from gaming.performance_mode.v1 import performance_mode_pb2 as pm
from gaming.performance_mode.v1 import performance_mode_pb2_grpc
from gaming.quest.v1 import quest_pb2, quest_pb2_grpc
from gaming.time_manager.v1 import time_manager_pb2, time_manager_pb2_grpc
from google.protobuf import timestamp_pb2

from mesh.connection import AccessDenied, NatsAccess, connect
from nats_transport.testing import free_port
from tests._waiting import wait_for
from tests.test_mesh_cli import _finish, _read_until_ready

READY_TIMEOUT = 60.0
# Refusals of the access policy or of the transport: a call that gets one of these was not let
# through, whatever its business outcome would have been.
REFUSED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAVAILABLE,
           grpc.StatusCode.DEADLINE_EXCEEDED)


@dataclass
class SecureMesh:
    data_dir: Path
    nats_url: str
    channel: grpc.aio.Channel

    def identity(self, name: str) -> Path:
        return self.data_dir / "secrets" / name


@pytest.fixture
async def secure_mesh(tmp_path: Path) -> AsyncIterator[SecureMesh]:
    ports = {flag: free_port() for flag in ("--nats-port", "--nats-monitor-port", "--grpc-port", "--http-port",
                                            "--admin-port")}
    data_dir = tmp_path / "data"
    flags = [part for flag, port in ports.items() for part in (flag, str(port))]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mesh", "up", "--secure", *flags, "--data-dir", str(data_dir),
        cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        # Accounts may hold the operator scope here, so the test can log in as an operator.
        env={**os.environ, "MESH_AUTH_ACCOUNT_SCOPES": "player,operator",
             "MESH_AUTH_SCRYPT_LOG2_N": "10"},
    )
    lines: list[str] = []
    try:
        await asyncio.wait_for(_read_until_ready(process, lines), READY_TIMEOUT)
        assert not any("INSECURE" in line for line in lines)
        ca = (data_dir / "secrets" / "server" / "ca.pem").read_bytes()
        credentials = grpc.ssl_channel_credentials(root_certificates=ca)
        async with grpc.aio.secure_channel(f"localhost:{ports['--grpc-port']}", credentials) as channel:
            yield SecureMesh(data_dir, f"nats://127.0.0.1:{ports['--nats-port']}", channel)
    finally:
        await _finish(process)


async def _login(channel: grpc.aio.Channel, scopes: list[str]) -> auth_pb2.LoginResponse:
    stub = auth_pb2_grpc.AuthServiceStub(channel)
    username = f"u{uuid.uuid4().hex[:10]}"
    await stub.Register(auth_pb2.RegisterRequest(username=username, password="correct horse", display_name="U"),
                        timeout=10)
    return await stub.Login(auth_pb2.LoginRequest(username=username, password="correct horse", scopes=scopes),
                            timeout=10)


def _bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


async def _code(call) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def _forged(token: str) -> str:
    """The same claims, with the operator scope added and the signature left as it was."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["scope"] = ["player", "operator"]
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


async def test_nats_refuses_a_client_without_our_certificate_and_an_identity_connects(secure_mesh: SecureMesh):
    with pytest.raises((AccessDenied, OSError)):
        await connect(NatsAccess(urls=(secure_mesh.nats_url,)), name="anonymous", connect_timeout=2,
                      allow_reconnect=False, max_reconnect_attempts=0)
    operator = await connect(NatsAccess(urls=(secure_mesh.nats_url,)).as_identity(secure_mesh.identity("operator")),
                             name="operator", connect_timeout=2, allow_reconnect=False, max_reconnect_attempts=0)
    await operator.close()


async def test_tokens_open_exactly_what_the_protos_allow_across_chained_calls_and_every_call_type(
    secure_mesh: SecureMesh,
):
    channel = secure_mesh.channel
    player = await _login(channel, ["player"])
    operator = await _login(channel, ["operator"])
    as_player, as_operator = _bearer(player.tokens.access_token), _bearer(operator.tokens.access_token)

    # A chained call (quest-system -> story-teller, npc-behavior, world-state), the player's token
    # forwarded at each hop.
    quests = quest_pb2_grpc.QuestServiceStub(channel)
    request = quest_pb2.GenerateQuestRequest(
        player_id=player.account_id, region_id="harbor", difficulty=quest_pb2.DIFFICULTY_NORMAL,
        idempotency_key=common_pb2.IdempotencyKey(key=uuid.uuid4().hex))
    code = await _code(quests.GenerateQuest(request, timeout=20, metadata=as_player))
    assert code not in REFUSED, code

    # Server streaming (player).
    generate = ai_integration_pb2_grpc.AiIntegrationServiceStub(channel).StreamGenerate(
        ai.GenerateRequest(model="local-tiny", prompt="The innkeeper", seed=1, max_tokens=8),
        timeout=20, metadata=as_player)
    pieces = [piece async for piece in generate]
    assert pieces

    # Client streaming (player).
    now = timestamp_pb2.Timestamp()
    now.FromNanoseconds(time.time_ns())
    samples = [pm.ReportMetricsRequest(client_id="pc-secure" if i == 0 else "", sample_time=now, frame_time_ms=14,
                                       gpu_time_ms=12, cpu_time_ms=6, memory_mb=2000, temperature_celsius=60)
               for i in range(5)]
    report = performance_mode_pb2_grpc.PerformanceModeServiceStub(channel).ReportMetrics(
        iter(samples), timeout=20, metadata=as_player)
    assert (await report).samples_counted == 5

    # Bidirectional streaming (operator only).
    decisions = npc_behavior_pb2_grpc.NpcBehaviorServiceStub(channel)
    state = npc.NpcState(npc_id="guard-1", health=1.0, energy=1.0, hunger=0.0)
    call = decisions.DecisionStream(timeout=20, metadata=as_operator)
    await call.write(npc.DecisionStreamRequest(client_sequence=1, state=state))
    answer = await call.read()
    assert answer.client_sequence == 1
    await call.done_writing()
    refused = decisions.DecisionStream(timeout=20, metadata=as_player)
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await refused.read()
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED

    # The operator-only SetScale: a player is denied, a forged operator token is not a token.
    clock = time_manager_pb2_grpc.TimeManagerServiceStub(channel)
    scale = time_manager_pb2.SetScaleRequest(world_id="w-secure", time_scale=2.0, reason="test")
    assert await _code(clock.SetScale(scale, timeout=10, metadata=as_player)) == grpc.StatusCode.PERMISSION_DENIED
    forged = _bearer(_forged(player.tokens.access_token))
    assert await _code(clock.SetScale(scale, timeout=10, metadata=forged)) == grpc.StatusCode.UNAUTHENTICATED
    assert await _code(clock.SetScale(scale, timeout=10, metadata=as_operator)) not in REFUSED

    # An anonymous deposit into someone else's account.
    deposit = payment_pb2.DepositRequest(
        account_id=player.account_id, amount=common_pb2.Money(currency_code="GEM", amount_minor=10**12),
        idempotency_key=common_pb2.IdempotencyKey(key=uuid.uuid4().hex), actor_id="root-operator")
    payments = payment_pb2_grpc.PaymentServiceStub(channel)
    assert await _code(payments.Deposit(deposit, timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
    assert await _code(payments.Deposit(deposit, timeout=10, metadata=as_player)) == grpc.StatusCode.PERMISSION_DENIED

    # A logout reaches every verifier within the revocation poll.
    auth = auth_pb2_grpc.AuthServiceStub(channel)
    await auth.Logout(auth_pb2.LogoutRequest(access_token=player.tokens.access_token), timeout=10)
    report_again = performance_mode_pb2_grpc.PerformanceModeServiceStub(channel)

    async def refused_after_logout() -> bool:
        call = report_again.ReportMetrics(iter(samples), timeout=10, metadata=as_player)
        return await _code(call) == grpc.StatusCode.UNAUTHENTICATED

    await wait_for(refused_after_logout, timeout=15)
