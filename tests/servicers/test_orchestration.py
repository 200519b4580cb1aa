"""orchestration over NATS: workflows across real and stand-in services, with reflection-driven
JSON, per-step deadlines, retries, compensation, idempotency, and records that survive a restart.

Downstream services run on the same nats-server under per-test target names (a channel factory
maps "payment" to "payment-<test id>"), each with server reflection, as the mesh hosts them. The
real payment and settings servicers show a business workflow; a scripted stand-in (the settings
API, answering as each scope id's script says) makes failures, slow attempts and gates on demand.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import nats
import pytest
from gaming.common.v1 import common_pb2
from gaming.orchestration.v1 import orchestration_pb2 as pb
from gaming.orchestration.v1 import orchestration_pb2_grpc
from gaming.payment.v1 import payment_pb2, payment_pb2_grpc
from gaming.settings.v1 import settings_pb2, settings_pb2_grpc
from google.protobuf import duration_pb2, json_format, struct_pb2
from google.rpc import error_details_pb2
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status
from nats.aio.client import Client

import nats_transport
from mesh.jetstream_storage import JetStreamStorage
from nats_transport._status import NO_SERVER
from servicers import orchestration, payment, settings
from servicers.dependencies import Dependencies
from servicers.error_boundary import ErrorBoundary
from tests._serving import served
from tests._waiting import wait_for

SMALL = str(4 * 1024 * 1024)  # the session's nats-server reserves every bucket's max_bytes
ORCHESTRATION_SETTINGS = {"workflows_max_bytes": SMALL, "idempotency_max_bytes": SMALL}
SETTINGS_METHOD = "gaming.settings.v1.SettingsService"
GET = f"{SETTINGS_METHOD}/Get"
UPDATE = f"{SETTINGS_METHOD}/Update"


# -- the stand-in service -----------------------------------------------------------------------

GATE = "gate"


@dataclass
class Seen:
    """One call the stand-in answered (or failed)."""

    method: str
    scope_id: str
    time_remaining: float | None


@dataclass
class Scripted(settings_pb2_grpc.SettingsServiceServicer):
    """A settings-shaped service whose answers follow a script per scope id.

    Each call pops the next action of its scope's script (none left: answer at once): a status
    code fails the call with it; a number sleeps that many seconds first; GATE waits for
    ``gate``; a (code, pushback) pair fails with ``grpc-retry-pushback-ms`` set.
    """

    scripts: dict[str, deque[Any]] = field(default_factory=lambda: defaultdict(deque))
    seen: list[Seen] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: list[str] = field(default_factory=list)  # scope ids of calls cancelled mid-sleep

    def script(self, scope_id: str, *actions: Any) -> None:
        self.scripts[scope_id].extend(actions)

    def calls(self, scope_id: str) -> list[Seen]:
        return [seen for seen in self.seen if seen.scope_id == scope_id]

    async def _behave(self, method: str, scope_id: str, context: Any) -> None:
        self.seen.append(Seen(method, scope_id, context.time_remaining()))
        action = self.scripts[scope_id].popleft() if self.scripts[scope_id] else None
        if isinstance(action, grpc.StatusCode):
            await context.abort(action, f"scripted {action.name}")
        if isinstance(action, tuple):
            code, pushback = action
            await context.abort(code, "scripted pushback", (("grpc-retry-pushback-ms", pushback),))
        if isinstance(action, float | int):
            try:
                await asyncio.sleep(action)  # a slow answer, the script's pacing: not a wait for anything
            except asyncio.CancelledError:
                self.cancelled.append(scope_id)
                raise
        if action == GATE:
            await self.gate.wait()

    async def Get(self, request: settings_pb2.GetRequest, context: Any) -> settings_pb2.GetResponse:
        await self._behave("Get", request.scope.id, context)
        count = len(self.calls(request.scope.id))
        values = {"calls": settings_pb2.SettingValue(int_value=count)}
        return settings_pb2.GetResponse(settings=settings_pb2.Settings(scope=request.scope, values=values))

    async def Update(self, request: settings_pb2.UpdateRequest, context: Any) -> settings_pb2.UpdateResponse:
        await self._behave("Update", request.scope.id, context)
        return settings_pb2.UpdateResponse(settings=settings_pb2.Settings(scope=request.scope))


# -- the mesh of one test -------------------------------------------------------------------------


class Mesh:
    """Targets of one test: logical names mapped to unique ones, each served with reflection."""

    def __init__(self, nc: Client, stack: contextlib.AsyncExitStack) -> None:
        self.nc = nc
        self.suffix = uuid.uuid4().hex[:8]
        self._stack = stack

    def name(self, target: str) -> str:
        return f"{target}-{self.suffix}"

    def channel(self, target: str) -> Any:
        return nats_transport.aio.channel(self.nc, self.name(target))

    async def host(
        self, target: str, add: Callable[[Any, Any], None], servicer: Any, names: tuple[str, ...], *,
        with_reflection: bool = True,
    ) -> Any:
        server = nats_transport.aio.server(self.nc, self.name(target), interceptors=[ErrorBoundary()])
        add(servicer, server)
        if with_reflection:
            reflection.enable_server_reflection((*names, reflection.SERVICE_NAME), server)
        await server.start()
        self._stack.push_async_callback(server.stop, 0)
        return server


@pytest.fixture
async def mesh(nc: Client) -> AsyncIterator[Mesh]:
    async with contextlib.AsyncExitStack() as stack:
        yield Mesh(nc, stack)


@pytest.fixture
async def scripted(mesh: Mesh) -> Scripted:
    service = Scripted()
    await mesh.host("scripted", settings_pb2_grpc.add_SettingsServiceServicer_to_server, service, (SETTINGS_METHOD,))
    return service


@dataclass
class Orchestrator:
    stub: Any
    servicer: orchestration.OrchestrationServicer


@contextlib.asynccontextmanager
async def orchestrator_on(nc: Client, storage: Any, mesh: Mesh) -> AsyncIterator[Orchestrator]:
    # As the host does: workflows run without the RunWorkflow caller's deadline.
    deps = Dependencies(storage=storage, channel=mesh.channel, settings=ORCHESTRATION_SETTINGS,
                        detached=nats_transport.detached)
    servicer = await orchestration.create(deps)
    try:
        async with served(nc, orchestration.add_to_server, servicer) as channel:
            yield Orchestrator(orchestration_pb2_grpc.OrchestrationServiceStub(channel), servicer)
    finally:
        await servicer.close()


@pytest.fixture
async def orchestrator(nc: Client, storage: Any, mesh: Mesh) -> AsyncIterator[Orchestrator]:
    async with orchestrator_on(nc, storage, mesh) as running:
        yield running


@pytest.fixture
async def stub(orchestrator: Orchestrator) -> Any:
    return orchestrator.stub


# -- building workflows ---------------------------------------------------------------------------


def as_struct(value: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


def scoped(scope_id: str) -> dict[str, Any]:
    return {"scope": {"kind": "SCOPE_KIND_PLAYER", "id": scope_id}}


def call(
    target: str = "scripted", method: str = GET, request: dict[str, Any] | bytes | None = None, *,
    deadline: float | None = None, attempts: int = 0,
) -> pb.Call:
    built = pb.Call(target_service=target, method=method, max_attempts=attempts)
    if isinstance(request, bytes):
        built.binary_request = request
    elif request is not None:
        built.json_request.CopyFrom(as_struct(request))
    if deadline is not None:
        built.deadline.CopyFrom(duration_pb2.Duration(seconds=int(deadline), nanos=round(deadline % 1 * 1e9)))
    return built


def step(name: str, scope_id: str | None = None, *, undo: str | None = None, **options: Any) -> pb.Step:
    """A step calling the stand-in's Get for ``scope_id`` (default: the step's name), and
    compensated by an Update of scope ``undo`` if given."""
    built = pb.Step(name=name, call=call(request=scoped(scope_id or name), **options))
    if undo is not None:
        built.compensation.CopyFrom(call(method=UPDATE, request=scoped(undo)))
    return built


def workflow(*steps: pb.Step, name: str = "test_flow", key: str | None = None) -> pb.RunWorkflowRequest:
    return pb.RunWorkflowRequest(
        workflow_name=name, steps=steps, idempotency_key=common_pb2.IdempotencyKey(key=key or uuid.uuid4().hex)
    )


def states(reply: Any) -> list[str]:
    return [pb.StepState.Name(result.state) for result in reply.step_results]


def output(result: pb.StepResult) -> dict[str, Any]:
    converted: dict[str, Any] = json_format.MessageToDict(result.json_output)
    return converted


# -- a business workflow over the real payment and settings services -------------------------------


@pytest.fixture
async def shop(mesh: Mesh, nc: Client) -> Any:
    """The real payment and settings servicers, each with its own buckets."""
    for module, extra in ((payment, {"accounts_max_bytes": SMALL, "ledger_max_bytes": SMALL}),
                          (settings, {"bucket_max_bytes": SMALL})):
        storage = JetStreamStorage(nc, prefix=f"t{uuid.uuid4().hex[:8]}_")
        servicer = await module.create(Dependencies(storage=storage, channel=mesh.channel, settings=extra))
        await mesh.host(module.TARGET, module.add_to_server, servicer, module.SERVICE_NAMES)
    return payment_pb2_grpc.PaymentServiceStub(mesh.channel(payment.TARGET))


def money(amount: int) -> dict[str, Any]:
    return {"currencyCode": "GEM", "amountMinor": str(amount)}


def deposit(account: str, amount: int, key: str) -> pb.Call:
    request = {"accountId": account, "amount": money(amount), "idempotencyKey": {"key": key}}
    return call("payment", "gaming.payment.v1.PaymentService/Deposit", request)


def charge(account: str, amount: int, key: str) -> pb.Call:
    request = {"accountId": account, "amount": money(amount), "idempotencyKey": {"key": key}}
    return call("payment", "gaming.payment.v1.PaymentService/Charge", request)


def remember_purchase(player: str, item: str, *, revision: int | None = 0) -> pb.Call:
    request: dict[str, Any] = {
        "scope": {"kind": "SCOPE_KIND_PLAYER", "id": player},
        "set": {"inventory.last_item": {"stringValue": item}},
    }
    if revision is not None:
        request["expectedRevision"] = {"value": str(revision)}
    return call("settings", "gaming.settings.v1.SettingsService/Update", request, attempts=1)


async def balance(payments: Any, account: str) -> int:
    reply = await payments.Balance(payment_pb2.BalanceRequest(account_id=account, currency_code="GEM"), timeout=5)
    return int(reply.balance.amount_minor)


async def test_a_workflow_over_payment_and_settings_runs_each_step_and_returns_json_outputs(stub, shop, mesh):
    request = workflow(
        pb.Step(name="grant", call=deposit("alice", 500, "grant-1")),
        pb.Step(name="remember", call=remember_purchase("alice", "sword")),
        name="grant_quest_reward",
    )

    reply = await stub.RunWorkflow(request, timeout=10)

    assert reply.state == pb.WORKFLOW_STATE_SUCCEEDED
    assert states(reply) == ["STEP_STATE_SUCCEEDED", "STEP_STATE_SUCCEEDED"]
    grant, remember = reply.step_results
    assert output(grant)["transaction"]["amount"] == {"currencyCode": "GEM", "amountMinor": "500"}
    assert output(remember)["settings"]["values"] == {"inventory.last_item": {"stringValue": "sword"}}
    assert (grant.attempts, grant.status_code, grant.status_message) == (1, 0, "")
    assert grant.start_time.ToNanoseconds() <= grant.end_time.ToNanoseconds() <= remember.start_time.ToNanoseconds()
    assert await balance(shop, "alice") == 500
    stored = await settings_pb2_grpc.SettingsServiceStub(mesh.channel(settings.TARGET)).Get(
        settings_pb2.GetRequest(scope=settings_pb2.Scope(kind=settings_pb2.SCOPE_KIND_PLAYER, id="alice")), timeout=5
    )
    assert stored.settings.values["inventory.last_item"].string_value == "sword"


async def test_a_failing_step_refunds_the_charge_made_before_it(stub, shop):
    await stub.RunWorkflow(workflow(pb.Step(name="fund", call=deposit("bob", 1000, "fund-1"))), timeout=10)
    buy = pb.Step(name="charge", call=charge("bob", 300, "buy-1"), compensation=deposit("bob", 300, "undo-buy-1"))
    # No expected revision: settings refuses the update with INVALID_ARGUMENT, never retried.
    broken = pb.Step(name="remember", call=remember_purchase("bob", "shield", revision=None))

    reply = await stub.RunWorkflow(workflow(buy, broken, name="buy_item"), timeout=10)

    assert reply.state == pb.WORKFLOW_STATE_COMPENSATED
    assert states(reply) == ["STEP_STATE_COMPENSATED", "STEP_STATE_FAILED"]
    failed = reply.step_results[1]
    assert failed.status_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert failed.attempts == 1
    assert "expected_revision" in failed.status_message
    assert reply.step_results[0].compensation_status_code == 0
    assert await balance(shop, "bob") == 1000


# -- compensation ---------------------------------------------------------------------------------


async def test_compensations_run_in_reverse_order_and_later_steps_are_skipped(stub, scripted):
    scripted.script("c", grpc.StatusCode.FAILED_PRECONDITION)

    reply = await stub.RunWorkflow(
        workflow(step("a", undo="undo-a"), step("b"), step("b2", undo="undo-b2"), step("c", undo="undo-c"), step("d")),
        timeout=10,
    )

    assert [(seen.method, seen.scope_id) for seen in scripted.seen] == [
        ("Get", "a"), ("Get", "b"), ("Get", "b2"), ("Get", "c"), ("Update", "undo-b2"), ("Update", "undo-a")
    ]
    assert reply.state == pb.WORKFLOW_STATE_COMPENSATED
    assert states(reply) == [
        "STEP_STATE_COMPENSATED", "STEP_STATE_SUCCEEDED", "STEP_STATE_COMPENSATED", "STEP_STATE_FAILED",
        "STEP_STATE_SKIPPED",
    ]
    assert reply.step_results[3].status_code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert reply.step_results[3].status_message == "scripted: scripted FAILED_PRECONDITION"
    assert not reply.step_results[4].HasField("start_time")


async def test_a_failed_compensation_leaves_the_workflow_failed_and_the_others_still_run(stub, scripted):
    scripted.script("c", grpc.StatusCode.NOT_FOUND)
    scripted.script("undo-b", grpc.StatusCode.PERMISSION_DENIED)

    reply = await stub.RunWorkflow(workflow(step("a", undo="undo-a"), step("b", undo="undo-b"), step("c")), timeout=10)

    assert reply.state == pb.WORKFLOW_STATE_FAILED
    assert states(reply) == ["STEP_STATE_COMPENSATED", "STEP_STATE_COMPENSATION_FAILED", "STEP_STATE_FAILED"]
    assert reply.step_results[1].compensation_status_code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert [seen.scope_id for seen in scripted.seen][-2:] == ["undo-b", "undo-a"]


async def test_a_first_step_failing_leaves_nothing_to_undo(stub, scripted):
    scripted.script("a", grpc.StatusCode.INVALID_ARGUMENT)

    reply = await stub.RunWorkflow(workflow(step("a", undo="undo-a"), step("b")), timeout=10)

    assert reply.state == pb.WORKFLOW_STATE_COMPENSATED
    assert states(reply) == ["STEP_STATE_FAILED", "STEP_STATE_SKIPPED"]
    assert [seen.scope_id for seen in scripted.seen] == ["a"]


# -- retries --------------------------------------------------------------------------------------


async def test_an_unavailable_step_is_retried_until_it_succeeds(stub, scripted):
    scripted.script("flaky", grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE)

    reply = await stub.RunWorkflow(workflow(step("flaky")), timeout=10)

    assert reply.state == pb.WORKFLOW_STATE_SUCCEEDED
    result = reply.step_results[0]
    assert (result.attempts, result.status_code, result.status_message) == (3, 0, "")
    assert output(result)["settings"]["values"]["calls"] == {"intValue": "3"}


async def test_retries_stop_at_max_attempts(stub, scripted):
    scripted.script("down", *[grpc.StatusCode.UNAVAILABLE] * 5)

    reply = await stub.RunWorkflow(workflow(step("down", attempts=2)), timeout=10)

    assert states(reply) == ["STEP_STATE_FAILED"]
    assert reply.step_results[0].attempts == 2
    assert reply.step_results[0].status_code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert len(scripted.calls("down")) == 2


@pytest.mark.parametrize(
    "code",
    [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
     grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.INTERNAL],
)
async def test_codes_that_are_not_retryable_fail_the_step_at_the_first_attempt(stub, scripted, code):
    scripted.script("once", code, code)

    reply = await stub.RunWorkflow(workflow(step("once", attempts=5)), timeout=10)

    assert states(reply) == ["STEP_STATE_FAILED"]
    assert reply.step_results[0].attempts == 1
    assert reply.step_results[0].status_code == code.value[0]


@pytest.mark.parametrize("code", [grpc.StatusCode.ABORTED, grpc.StatusCode.RESOURCE_EXHAUSTED])
async def test_aborted_and_resource_exhausted_are_retried_too(stub, scripted, code):
    scripted.script("busy", code)

    reply = await stub.RunWorkflow(workflow(step("busy")), timeout=10)

    assert states(reply) == ["STEP_STATE_SUCCEEDED"]
    assert reply.step_results[0].attempts == 2


async def test_a_server_pushback_of_minus_one_stops_the_retries(stub, scripted):
    scripted.script("pushy", (grpc.StatusCode.UNAVAILABLE, "-1"))

    reply = await stub.RunWorkflow(workflow(step("pushy", attempts=5)), timeout=10)

    assert states(reply) == ["STEP_STATE_FAILED"]
    assert reply.step_results[0].attempts == 1


async def test_a_stopped_downstream_fails_its_step_with_unavailable_well_within_the_deadline(stub, scripted):
    reply = await stub.RunWorkflow(workflow(step("a"), pb.Step(name="gone", call=call("stopped", GET, b""))),
                                   timeout=10)

    # Both steps ended within the caller's deadline (a workflow outliving it would still be
    # RUNNING), each attempt failed on no responders, not on a timeout.
    assert states(reply) == ["STEP_STATE_SUCCEEDED", "STEP_STATE_FAILED"]
    gone = reply.step_results[1]
    assert gone.status_code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert gone.attempts == 3
    assert gone.status_message == f"stopped: {NO_SERVER[1]}"


# -- deadlines ------------------------------------------------------------------------------------


async def test_a_step_slower_than_its_deadline_fails_with_deadline_exceeded(stub, scripted):
    scripted.script("slow", 5.0)

    reply = await stub.RunWorkflow(workflow(step("slow", deadline=0.3, attempts=1)), timeout=10)

    assert states(reply) == ["STEP_STATE_FAILED"]
    assert reply.step_results[0].status_code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    (seen,) = scripted.calls("slow")
    assert seen.time_remaining is not None
    assert seen.time_remaining <= 0.3
    # The downstream got the step's deadline and was cut short by it, 5 s sleep unfinished.
    await wait_for(lambda: scripted.cancelled == ["slow"])


async def test_a_slow_attempt_is_retried_and_the_next_one_succeeds(stub, scripted):
    scripted.script("slow-once", 5.0)

    reply = await stub.RunWorkflow(workflow(step("slow-once", deadline=0.3)), timeout=10)

    assert states(reply) == ["STEP_STATE_SUCCEEDED"]
    assert reply.step_results[0].attempts == 2


async def test_each_attempt_is_capped_by_the_callers_remaining_time(stub, scripted):
    reply = await stub.RunWorkflow(workflow(step("capped", deadline=60)), timeout=1.0)

    assert states(reply) == ["STEP_STATE_SUCCEEDED"]
    (seen,) = scripted.calls("capped")
    assert seen.time_remaining is not None
    assert seen.time_remaining <= 1.0


async def test_the_step_deadline_reaches_the_downstream_when_no_caller_deadline_is_shorter(stub, scripted):
    await stub.RunWorkflow(workflow(step("own", deadline=2.5)), timeout=30)

    (seen,) = scripted.calls("own")
    assert seen.time_remaining is not None
    assert 1.5 < seen.time_remaining <= 2.5


async def test_a_workflow_outliving_its_callers_deadline_keeps_running_and_can_be_polled(stub, scripted):
    scripted.script("wait", GATE, GATE)

    # Answered at all, so before the caller's 0.8 s were up (else DEADLINE_EXCEEDED).
    reply = await stub.RunWorkflow(workflow(step("first"), step("wait", deadline=30)), timeout=0.8)

    assert reply.state == pb.WORKFLOW_STATE_RUNNING
    assert states(reply)[0] == "STEP_STATE_SUCCEEDED"
    # The attempt cut off with the caller is retried with the step's own deadline, after it left.
    await wait_for(lambda: len(scripted.calls("wait")) == 2)
    assert scripted.calls("wait")[1].time_remaining > 20
    scripted.gate.set()

    async def finished() -> bool:
        got = await stub.GetWorkflow(pb.GetWorkflowRequest(workflow_id=reply.workflow_id), timeout=5)
        return got.workflow.state == pb.WORKFLOW_STATE_SUCCEEDED

    await wait_for(finished)
    got = await stub.GetWorkflow(pb.GetWorkflowRequest(workflow_id=reply.workflow_id), timeout=5)
    assert got.workflow.step_results[1].attempts == 2
    assert got.workflow.HasField("end_time")


# -- JSON and binary requests -----------------------------------------------------------------------


async def test_binary_requests_travel_as_given_and_binary_outputs_come_back(stub, scripted):
    request = settings_pb2.GetRequest(scope=settings_pb2.Scope(kind=settings_pb2.SCOPE_KIND_PLAYER, id="bin"))

    reply = await stub.RunWorkflow(
        workflow(pb.Step(name="raw", call=call(method=GET, request=request.SerializeToString()))), timeout=10
    )

    result = reply.step_results[0]
    assert result.WhichOneof("output") == "binary_output"
    answer = settings_pb2.GetResponse.FromString(result.binary_output)
    assert answer.settings.scope.id == "bin"


async def test_binary_requests_need_no_reflection_while_json_ones_fail_without_it(stub, mesh):
    await mesh.host("bare", settings_pb2_grpc.add_SettingsServiceServicer_to_server, Scripted(), (SETTINGS_METHOD,),
                    with_reflection=False)

    binary = await stub.RunWorkflow(workflow(pb.Step(name="raw", call=call("bare", GET, b""))), timeout=10)
    json = await stub.RunWorkflow(workflow(pb.Step(name="json", call=call("bare", GET, scoped("x")))), timeout=10)

    assert states(binary) == ["STEP_STATE_SUCCEEDED"]
    assert states(json) == ["STEP_STATE_FAILED"]
    assert json.step_results[0].status_code == grpc.StatusCode.UNIMPLEMENTED.value[0]
    assert "reflection" in json.step_results[0].status_message


async def test_a_json_request_that_does_not_fit_the_method_fails_its_step_without_retries(stub, scripted):
    reply = await stub.RunWorkflow(workflow(pb.Step(name="bad", call=call(request={"nope": 1}))), timeout=10)

    result = reply.step_results[0]
    assert result.state == pb.STEP_STATE_FAILED
    assert result.status_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "gaming.settings.v1.GetRequest" in result.status_message
    assert result.attempts == 1
    assert scripted.seen == []


async def test_a_method_the_target_does_not_serve_fails_its_step_with_unimplemented(stub, scripted):
    missing = await stub.RunWorkflow(
        workflow(pb.Step(name="m", call=call(method=f"{SETTINGS_METHOD}/Nope", request={}))), timeout=10
    )
    streaming = await stub.RunWorkflow(
        workflow(pb.Step(name="w", call=call(method=f"{SETTINGS_METHOD}/Watch", request={}))), timeout=10
    )
    unknown = await stub.RunWorkflow(
        workflow(pb.Step(name="s", call=call(method="gaming.quest.v1.QuestService/GetQuest", request={}))), timeout=10
    )

    assert missing.step_results[0].status_code == grpc.StatusCode.UNIMPLEMENTED.value[0]
    assert streaming.step_results[0].status_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "unary" in streaming.step_results[0].status_message
    assert unknown.step_results[0].status_code == grpc.StatusCode.UNIMPLEMENTED.value[0]


async def test_descriptors_are_fetched_once_per_target(orchestrator, scripted):
    for index in range(3):
        await orchestrator.stub.RunWorkflow(workflow(step(f"s{index}"), step(f"t{index}")), timeout=10)

    assert orchestrator.servicer.schemas.fetches == 1
    assert len(scripted.seen) == 6


# -- idempotency ----------------------------------------------------------------------------------


async def test_the_same_idempotency_key_returns_the_first_workflow_without_running_it_again(stub, scripted):
    request = workflow(step("once"), key="order-17")

    first = await stub.RunWorkflow(request, timeout=10)
    again = await stub.RunWorkflow(request, timeout=10)

    assert again == first
    assert len(scripted.calls("once")) == 1


async def test_concurrent_runs_with_one_key_start_one_workflow(stub, scripted):
    scripted.script("slow", 0.3)
    request = workflow(step("slow"), key="race")

    replies = await asyncio.gather(*(stub.RunWorkflow(request, timeout=10) for _ in range(4)))

    assert len({reply.workflow_id for reply in replies}) == 1
    assert all(reply.state == pb.WORKFLOW_STATE_SUCCEEDED for reply in replies)
    assert len(scripted.calls("slow")) == 1


async def test_an_idempotency_key_reused_for_another_definition_fails_with_already_exists(stub, scripted):
    await stub.RunWorkflow(workflow(step("a"), key="k-1"), timeout=10)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RunWorkflow(workflow(step("b"), key="k-1"), timeout=10)

    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS


# -- reading workflows ----------------------------------------------------------------------------


async def test_get_workflow_returns_the_record_with_its_actor_and_times(stub, scripted):
    reply = await stub.RunWorkflow(workflow(step("a"), name="audited"), timeout=10,
                                   metadata=(("actor-id", "ops-7"), ("x-actor-id", "ops-7")))

    got = (await stub.GetWorkflow(pb.GetWorkflowRequest(workflow_id=reply.workflow_id), timeout=5)).workflow

    assert got.workflow_id == reply.workflow_id
    assert got.workflow_name == "audited"
    assert got.state == pb.WORKFLOW_STATE_SUCCEEDED
    assert list(got.step_results) == list(reply.step_results)
    assert got.audit.actor_id == ""  # only a verified caller is an actor, never metadata
    assert got.create_time.ToNanoseconds() <= got.end_time.ToNanoseconds()


@pytest.mark.parametrize(
    ("workflow_id", "code"),
    [("", grpc.StatusCode.INVALID_ARGUMENT), ("1700000000000-0123456789ab", grpc.StatusCode.NOT_FOUND),
     ("../etc.passwd>", grpc.StatusCode.NOT_FOUND)],
)
async def test_get_workflow_refuses_an_empty_id_and_does_not_find_unknown_ones(stub, workflow_id, code):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetWorkflow(pb.GetWorkflowRequest(workflow_id=workflow_id), timeout=5)

    assert caught.value.code() == code


async def test_list_workflows_pages_newest_first_and_filters_by_name_and_state(stub, scripted):
    scripted.script("bad", grpc.StatusCode.INVALID_ARGUMENT)
    ids = []
    for index, (name, scope) in enumerate([("alpha", "ok"), ("beta", "ok"), ("alpha", "bad"), ("alpha", "ok"),
                                           ("beta", "ok")]):
        reply = await stub.RunWorkflow(workflow(step(f"s{index}", scope), name=name), timeout=10)
        ids.append(reply.workflow_id)
    newest_first = ids[::-1]

    pages, token = [], ""
    while True:
        page = await stub.ListWorkflows(
            pb.ListWorkflowsRequest(page=common_pb2.PageRequest(page_size=2, page_token=token)), timeout=5
        )
        pages.append([item.workflow_id for item in page.workflows])
        token = page.page.next_page_token
        if not token:
            break
    alphas = await stub.ListWorkflows(pb.ListWorkflowsRequest(workflow_name="alpha"), timeout=5)
    succeeded_alphas = await stub.ListWorkflows(
        pb.ListWorkflowsRequest(workflow_name="alpha", state_filter=pb.WORKFLOW_STATE_SUCCEEDED), timeout=5
    )

    assert pages == [newest_first[0:2], newest_first[2:4], newest_first[4:]]
    assert page.page.total_size == 5
    assert [item.workflow_id for item in alphas.workflows] == [ids[3], ids[2], ids[0]]
    assert alphas.page.total_size == -1
    assert [item.workflow_id for item in succeeded_alphas.workflows] == [ids[3], ids[0]]


async def test_list_workflows_refuses_bad_pages_and_states(stub, scripted):
    for index in range(2):
        await stub.RunWorkflow(workflow(step(f"s{index}")), timeout=10)
    first = await stub.ListWorkflows(pb.ListWorkflowsRequest(page=common_pb2.PageRequest(page_size=1)), timeout=5)
    bad = [
        (pb.ListWorkflowsRequest(page=common_pb2.PageRequest(page_token="garbage!")), "page.page_token"),
        (pb.ListWorkflowsRequest(workflow_name="other",
                                 page=common_pb2.PageRequest(page_token=first.page.next_page_token)),
         "page.page_token"),
        (pb.ListWorkflowsRequest(page=common_pb2.PageRequest(page_size=-1)), "page.page_size"),
        (pb.ListWorkflowsRequest(state_filter=42), "state_filter"),  # type: ignore[arg-type]
    ]

    for request, field_path in bad:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ListWorkflows(request, timeout=5)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert bad_field(caught.value) == field_path


# -- validation -----------------------------------------------------------------------------------


def bad_field(err: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(err)
    assert status is not None
    detail = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(detail)
    return str(detail.field_violations[0].field)


def with_call(**fields: Any) -> pb.RunWorkflowRequest:
    return workflow(pb.Step(name="s", call=pb.Call(**{"target_service": "scripted", "method": GET, **fields})))


def _long_deadline() -> pb.RunWorkflowRequest:
    return with_call(deadline=duration_pb2.Duration(seconds=301))


INVALID = [
    pytest.param(workflow(), "steps", id="no steps"),
    pytest.param(workflow(*[step(f"s{index}") for index in range(33)]), "steps", id="33 steps"),
    pytest.param(workflow(step("same"), step("same")), "steps[1].name", id="duplicate names"),
    pytest.param(workflow(step("Bad Name")), "steps[0].name", id="bad step name"),
    pytest.param(workflow(pb.Step(name="s")), "steps[0].call", id="no call"),
    pytest.param(workflow(step("a"), name=""), "workflow_name", id="no workflow name"),
    pytest.param(workflow(step("a"), name="n" * 129), "workflow_name", id="workflow name too long"),
    pytest.param(pb.RunWorkflowRequest(workflow_name="w", steps=[step("a")]), "idempotency_key.key", id="no key"),
    pytest.param(workflow(step("a"), key="k" * 129), "idempotency_key.key", id="key too long"),
    pytest.param(workflow(step("a"), key="tab\there"), "idempotency_key.key", id="key not printable"),
    pytest.param(with_call(target_service=""), "steps[0].call.target_service", id="empty target"),
    pytest.param(with_call(target_service="a.b"), "steps[0].call.target_service", id="dotted target"),
    pytest.param(with_call(method=""), "steps[0].call.method", id="empty method"),
    pytest.param(with_call(method="NoSlash"), "steps[0].call.method", id="bad method"),
    pytest.param(with_call(deadline=duration_pb2.Duration()), "steps[0].call.deadline", id="zero deadline"),
    pytest.param(_long_deadline(), "steps[0].call.deadline", id="deadline over 5 minutes"),
    pytest.param(with_call(max_attempts=11), "steps[0].call.max_attempts", id="11 attempts"),
    pytest.param(
        workflow(pb.Step(name="s", call=call(), compensation=pb.Call(target_service="x"))),
        "steps[0].compensation.method",
        id="bad compensation",
    ),
]


@pytest.mark.parametrize(("request_", "field_path"), INVALID)
async def test_a_bad_definition_fails_with_invalid_argument_naming_the_field(stub, request_, field_path):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RunWorkflow(request_, timeout=5)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_field(caught.value) == field_path


async def test_limits_are_inclusive_32_steps_10_attempts_and_5_minutes(stub, scripted):
    steps = [step(f"s{index}", "limits") for index in range(31)]
    steps.append(pb.Step(name="last", call=call(request=scoped("limits"), deadline=300, attempts=10)))

    reply = await stub.RunWorkflow(workflow(*steps), timeout=30)

    assert reply.state == pb.WORKFLOW_STATE_SUCCEEDED
    assert len(reply.step_results) == 32


# -- restarts -------------------------------------------------------------------------------------


async def test_a_restart_keeps_recorded_workflows_and_their_idempotency_keys(nats_server, nc, mesh, scripted):
    prefix = f"t{uuid.uuid4().hex[:8]}_"
    request = workflow(step("kept"), key="survives")
    async with orchestrator_on(nc, JetStreamStorage(nc, prefix=prefix), mesh) as before:
        first = await before.stub.RunWorkflow(request, timeout=10)

    nc2 = await nats.connect(nats_server.url)
    try:
        async with orchestrator_on(nc2, JetStreamStorage(nc2, prefix=prefix), mesh) as after:
            got = await after.stub.GetWorkflow(pb.GetWorkflowRequest(workflow_id=first.workflow_id), timeout=5)
            listed = await after.stub.ListWorkflows(pb.ListWorkflowsRequest(), timeout=5)
            again = await after.stub.RunWorkflow(request, timeout=10)
    finally:
        await nc2.close()

    assert got.workflow.state == pb.WORKFLOW_STATE_SUCCEEDED
    assert [item.workflow_id for item in listed.workflows] == [first.workflow_id]
    assert again == first
    assert len(scripted.calls("kept")) == 1


async def test_a_replay_on_another_replica_waits_for_the_running_workflow_to_finish(nc, storage, mesh, scripted):
    scripted.script("held", GATE)
    request = workflow(step("held"), key="shared")
    async with orchestrator_on(nc, storage, mesh) as first, orchestrator_on(nc, storage, mesh) as second:
        started = asyncio.ensure_future(first.stub.RunWorkflow(request, timeout=10))
        await wait_for(lambda: len(scripted.calls("held")) == 1)
        # The second replica finds the key taken and follows the stored record.
        replayed = asyncio.ensure_future(second.stub.RunWorkflow(request, timeout=10))
        early = await second.stub.RunWorkflow(request, timeout=0.3)
        scripted.gate.set()
        original, replay = await started, await replayed

    assert early.state == pb.WORKFLOW_STATE_RUNNING
    assert early.workflow_id == original.workflow_id
    assert replay == original
    assert original.state == pb.WORKFLOW_STATE_SUCCEEDED
    assert len(scripted.calls("held")) == 1
