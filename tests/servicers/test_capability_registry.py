"""capability-registry over NATS: registering with compare-and-set, reading, paged lists, and
per-subject evaluation with lists and a deterministic percentage rollout."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import nats
import pytest
from gaming.capability_registry.v1 import capability_registry_pb2 as cr
from gaming.capability_registry.v1 import capability_registry_pb2_grpc
from gaming.common.v1 import common_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nats.aio.client import Client

from mesh.jetstream_storage import JetStreamStorage
from nats_transport.testing import NatsServer
from servicers import capability_registry
from servicers.dependencies import Dependencies
from tests._serving import served


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def no_channel(target: str) -> Any:
    raise AssertionError(f"capability-registry calls no other service (asked for {target!r})")


@contextlib.asynccontextmanager
async def registry(
    nc: Client, storage: Any, clock: Clock | None = None
) -> AsyncIterator[Any]:
    deps = Dependencies(storage=storage, channel=no_channel, clock=clock or Clock())
    servicer = await capability_registry.create(deps)
    async with served(nc, capability_registry.add_to_server, servicer) as channel:
        yield capability_registry_pb2_grpc.CapabilityRegistryServiceStub(channel)


@pytest.fixture
async def stub(nc: Client, storage: JetStreamStorage) -> AsyncIterator[Any]:
    async with registry(nc, storage) as stub:
        yield stub


def register(expected: int | None = None, actor_id: str = "ops", **feature: Any) -> cr.RegisterRequest:
    feature.setdefault("name", "npc.dialogue_v2")
    request = cr.RegisterRequest(feature=cr.Feature(**feature), actor_id=actor_id)
    if expected is not None:
        request.expected_revision.value = expected
    return request


async def failure(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def detail(err: grpc.aio.AioRpcError, kind: type[Any]) -> Any:
    status = rpc_status.from_call(err)
    assert status is not None
    unpacked = kind()
    assert status.details[0].Unpack(unpacked)
    return unpacked


async def is_enabled(stub: Any, feature_name: str, subject_id: str) -> cr.IsEnabledResponse:
    reply: cr.IsEnabledResponse = await stub.IsEnabled(
        cr.IsEnabledRequest(feature_name=feature_name, subject_id=subject_id), timeout=5
    )
    return reply


# -- Register and Get ----------------------------------------------------------------------------


async def test_register_creates_a_feature_that_get_returns(stub: Any) -> None:
    reply = await stub.Register(
        register(description="new dialogue", enabled=True, rollout_basis_points=2500, allow_subject_ids=["p1"]),
        timeout=5,
    )
    assert reply.created
    stored = reply.feature
    assert stored.revision.value > 0
    assert stored.create_time.seconds == 1_700_000_000
    assert (stored.audit.actor_id, stored.audit.update_time) == ("", stored.create_time)  # no token: no actor
    got = await stub.Get(cr.GetRequest(name="npc.dialogue_v2"), timeout=5)
    assert got.feature == stored


async def test_output_only_fields_are_ignored_and_repeated_list_entries_kept_once(stub: Any) -> None:
    reply = await stub.Register(
        register(revision=common_pb2.Revision(value=999), create_time={"seconds": 5},
                 audit=common_pb2.AuditInfo(actor_id="forged"), allow_subject_ids=["b", "a", "b"]),
        timeout=5,
    )
    assert reply.feature.revision.value != 999
    assert reply.feature.create_time.seconds == 1_700_000_000
    assert reply.feature.audit.actor_id == ""  # claimed without a token: not recorded
    assert list(reply.feature.allow_subject_ids) == ["b", "a"]


async def test_an_unconditional_register_replaces_and_keeps_the_creation_time(
    nc: Client, storage: JetStreamStorage
) -> None:
    clock = Clock()
    async with registry(nc, storage, clock) as stub:
        first = await stub.Register(register(enabled=False), timeout=5)
        clock.now += 60
        second = await stub.Register(register(enabled=True, actor_id="ops2"), timeout=5)
    assert not second.created
    assert second.feature.revision.value > first.feature.revision.value
    assert second.feature.create_time == first.feature.create_time
    assert second.feature.audit.update_time.seconds == first.feature.create_time.seconds + 60
    assert (second.feature.enabled, second.feature.audit.actor_id) == (True, "")  # no token: no actor


async def test_create_only_register_of_an_existing_feature_is_already_exists(stub: Any) -> None:
    await stub.Register(register(expected=0), timeout=5)
    err = await failure(stub.Register(register(expected=0), timeout=5))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_register_expecting_a_revision_of_a_missing_feature_is_not_found(stub: Any) -> None:
    err = await failure(stub.Register(register(expected=7), timeout=5))
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_register_at_a_stale_revision_is_aborted_with_the_current_one(stub: Any) -> None:
    first = (await stub.Register(register(expected=0), timeout=5)).feature.revision.value
    second = (await stub.Register(register(expected=first, enabled=True), timeout=5)).feature.revision.value
    err = await failure(stub.Register(register(expected=first, enabled=False), timeout=5))
    assert err.code() == grpc.StatusCode.ABORTED
    info = detail(err, error_details_pb2.ErrorInfo)
    assert info.reason == "REVISION_CONFLICT"
    assert (info.metadata["expected_revision"], info.metadata["current_revision"]) == (str(first), str(second))
    got = await stub.Get(cr.GetRequest(name="npc.dialogue_v2"), timeout=5)
    assert got.feature.enabled


async def test_concurrent_registers_at_one_revision_let_exactly_one_win(stub: Any) -> None:
    base = (await stub.Register(register(expected=0), timeout=5)).feature.revision.value
    calls = [stub.Register(register(expected=base, description=f"writer {i}"), timeout=5) for i in range(6)]
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    winners = [o for o in outcomes if isinstance(o, cr.RegisterResponse)]
    losers = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(winners) == 1
    assert [err.code() for err in losers] == [grpc.StatusCode.ABORTED] * 5


async def test_concurrent_unconditional_registers_all_succeed_and_one_creates(stub: Any) -> None:
    calls = [stub.Register(register(description=f"writer {i}"), timeout=10) for i in range(8)]
    replies = await asyncio.gather(*calls)
    assert sum(r.created for r in replies) == 1
    assert len({r.feature.revision.value for r in replies}) == 8


def _without_feature() -> cr.RegisterRequest:
    request = register()
    request.ClearField("feature")
    return request


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (_without_feature(), "feature"),
        (register(name=""), "feature.name"),
        (register(name="NPC.dialogue"), "feature.name"),
        (register(name="npc..dialogue"), "feature.name"),
        (register(name="npc.dialogue."), "feature.name"),
        (register(name="_npc"), "feature.name"),
        (register(name="npc.dialogue v2"), "feature.name"),
        (register(name="a" * 129), "feature.name"),
        (register(description="x" * 1025), "feature.description"),
        (register(rollout_basis_points=-1), "feature.rollout_basis_points"),
        (register(rollout_basis_points=10_001), "feature.rollout_basis_points"),
        (register(allow_subject_ids=[f"p{i}" for i in range(10_001)]), "feature.allow_subject_ids"),
        (register(deny_subject_ids=["ok", ""]), "feature.deny_subject_ids[1]"),
        (register(allow_subject_ids=["p1", "p2"], deny_subject_ids=["p3", "p2"]), "feature.deny_subject_ids[1]"),
        (register(actor_id="x" * 129), "actor_id"),
        (register(allow_subject_ids=["x" * 128] * 1 + [f"{i:0128d}" for i in range(9_000)]), "feature"),
    ],
)
async def test_a_malformed_definition_is_invalid_argument_naming_the_field(
    stub: Any, request_: cr.RegisterRequest, field: str
) -> None:
    err = await failure(stub.Register(request_, timeout=5))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert detail(err, error_details_pb2.BadRequest).field_violations[0].field == field


async def test_get_with_an_empty_or_malformed_name_is_invalid_and_an_unknown_one_not_found(stub: Any) -> None:
    for name in ("", "Bad Name"):
        err = await failure(stub.Get(cr.GetRequest(name=name), timeout=5))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    err = await failure(stub.Get(cr.GetRequest(name="no.such_feature"), timeout=5))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert detail(err, error_details_pb2.ErrorInfo).reason == "FEATURE_NOT_FOUND"


# -- List ----------------------------------------------------------------------------------------


NAMES = ["npc.dialogue", "npc.dialogue_v2", "npc.pathing", "npcs", "quests.daily", "weather"]


async def register_all(stub: Any) -> None:
    await asyncio.gather(*(stub.Register(register(name=name), timeout=5) for name in reversed(NAMES)))


async def list_all(stub: Any, name_prefix: str = "", page_size: int = 0) -> tuple[list[str], list[int]]:
    names: list[str] = []
    totals: list[int] = []
    token = ""
    while True:
        reply = await stub.List(
            cr.ListRequest(name_prefix=name_prefix, page=common_pb2.PageRequest(page_size=page_size, page_token=token)),
            timeout=5,
        )
        names += [feature.name for feature in reply.features]
        totals.append(reply.page.total_size)
        token = reply.page.next_page_token
        if not token:
            return names, totals


async def test_list_pages_through_features_in_name_order(stub: Any) -> None:
    await register_all(stub)
    names, totals = await list_all(stub, page_size=4)
    assert names == NAMES
    assert totals == [6, 6]


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("npc", ["npc.dialogue", "npc.dialogue_v2", "npc.pathing", "npcs"]),
        ("npc.", ["npc.dialogue", "npc.dialogue_v2", "npc.pathing"]),
        ("npc.dia", ["npc.dialogue", "npc.dialogue_v2"]),
        ("npc.dialogue_", ["npc.dialogue_v2"]),
        ("w", ["weather"]),
        ("Z*", []),
    ],
)
async def test_list_with_a_name_prefix_returns_only_matching_features(
    stub: Any, prefix: str, expected: list[str]
) -> None:
    await register_all(stub)
    names, totals = await list_all(stub, name_prefix=prefix, page_size=1)
    assert names == expected
    assert totals[0] == len(expected)


async def test_list_refuses_a_bad_page_size_and_a_token_from_another_query(stub: Any) -> None:
    await register_all(stub)
    first = await stub.List(cr.ListRequest(page=common_pb2.PageRequest(page_size=1)), timeout=5)
    requests = [
        cr.ListRequest(page=common_pb2.PageRequest(page_size=-5)),
        cr.ListRequest(name_prefix="npc", page=common_pb2.PageRequest(page_token=first.page.next_page_token)),
        cr.ListRequest(page=common_pb2.PageRequest(page_token="garbage!")),
    ]
    for request in requests:
        err = await failure(stub.List(request, timeout=5))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert detail(err, error_details_pb2.BadRequest).field_violations[0].field.startswith("page.")


async def test_list_of_an_empty_registry_is_one_empty_page(stub: Any) -> None:
    reply = await stub.List(cr.ListRequest(), timeout=5)
    assert (list(reply.features), reply.page.next_page_token, reply.page.total_size) == ([], "", 0)


# -- IsEnabled -----------------------------------------------------------------------------------


async def test_an_unknown_feature_is_disabled_not_an_error(stub: Any) -> None:
    for name in ("no.such_feature", "Not A Name!"):
        reply = await is_enabled(stub, name, "p1")
        assert (reply.enabled, reply.reason) == (False, cr.REASON_FEATURE_NOT_FOUND)
        assert not reply.HasField("feature_revision")


@pytest.mark.parametrize(("feature_name", "subject_id", "field"), [("", "p1", "feature_name"), ("a", "", "subject_id")])
async def test_is_enabled_without_a_feature_or_subject_is_invalid(
    stub: Any, feature_name: str, subject_id: str, field: str
) -> None:
    request = cr.IsEnabledRequest(feature_name=feature_name, subject_id=subject_id)
    err = await failure(stub.IsEnabled(request, timeout=5))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert detail(err, error_details_pb2.BadRequest).field_violations[0].field == field


async def test_evaluation_order_is_switch_then_deny_then_allow_then_rollout(stub: Any) -> None:
    everyone: dict[str, Any] = {
        "rollout_basis_points": 10_000, "allow_subject_ids": ["friend"], "deny_subject_ids": ["foe"]
    }
    off = await stub.Register(register(name="off", enabled=False, **everyone), timeout=5)
    await stub.Register(register(name="on", enabled=True, **everyone), timeout=5)
    await stub.Register(register(name="allow.only", enabled=True, allow_subject_ids=["friend"]), timeout=5)
    cases = [
        ("off", "friend", False, cr.REASON_FEATURE_DISABLED),
        ("on", "foe", False, cr.REASON_DENY_LISTED),
        ("on", "friend", True, cr.REASON_ALLOW_LISTED),
        ("on", "stranger", True, cr.REASON_IN_ROLLOUT),
        ("allow.only", "friend", True, cr.REASON_ALLOW_LISTED),
        ("allow.only", "stranger", False, cr.REASON_OUTSIDE_ROLLOUT),
    ]
    for name, subject, enabled, reason in cases:
        reply = await is_enabled(stub, name, subject)
        assert (name, subject, reply.enabled, reply.reason) == (name, subject, enabled, reason)
    assert (await is_enabled(stub, "off", "x")).feature_revision == off.feature.revision


async def test_a_rollout_enables_about_its_share_of_subjects_and_only_adds_subjects_as_it_grows(stub: Any) -> None:
    subjects = [f"player-{i}" for i in range(400)]
    await stub.Register(register(name="ramp", enabled=True, rollout_basis_points=2500), timeout=5)
    quarter = {s for s in subjects if (await is_enabled(stub, "ramp", s)).enabled}
    await stub.Register(register(name="ramp", enabled=True, rollout_basis_points=5000), timeout=5)
    half = {s for s in subjects if (await is_enabled(stub, "ramp", s)).enabled}
    assert 60 <= len(quarter) <= 140
    assert 160 <= len(half) <= 240
    assert quarter <= half
    assert quarter == {s for s in subjects if capability_registry.rollout_bucket("ramp", s) < 2500}


def test_rollout_buckets_are_stable_and_depend_on_the_feature_name() -> None:
    # Pinned: other languages reproduce these from the documented recipe.
    assert capability_registry.rollout_bucket("npc.dialogue_v2", "player-1") == 5042
    assert capability_registry.rollout_bucket("npc.dialogue_v3", "player-1") == 9913
    buckets = {capability_registry.rollout_bucket("f", f"s{i}") for i in range(2000)}
    assert min(buckets) >= 0
    assert max(buckets) < 10_000


def test_a_rollout_of_zero_enables_nobody_and_of_ten_thousand_everybody() -> None:
    subjects = [f"s{i}" for i in range(200)]
    nobody = cr.Feature(name="f", enabled=True, rollout_basis_points=0)
    everybody = cr.Feature(name="f", enabled=True, rollout_basis_points=10_000)
    assert not any(capability_registry.evaluate(nobody, s)[0] for s in subjects)
    assert all(capability_registry.evaluate(everybody, s)[0] for s in subjects)


# -- durability and failures ---------------------------------------------------------------------


async def test_a_restart_keeps_acknowledged_state(nc: Client, nats_server: NatsServer) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}_"
    async with registry(nc, JetStreamStorage(nc, prefix=prefix)) as stub:
        written = await stub.Register(register(enabled=True, deny_subject_ids=["foe"]), timeout=5)

    nc2 = await nats.connect(nats_server.url, max_reconnect_attempts=0)
    try:
        async with registry(nc2, JetStreamStorage(nc2, prefix=prefix)) as stub:
            got = await stub.Get(cr.GetRequest(name="npc.dialogue_v2"), timeout=5)
            verdict = await is_enabled(stub, "npc.dialogue_v2", "foe")
    finally:
        await nc2.close()
    assert got.feature == written.feature
    assert verdict.reason == cr.REASON_DENY_LISTED


async def test_an_unreachable_store_is_unavailable(nc: Client, nats_server: NatsServer) -> None:
    store_connection = await nats.connect(nats_server.url, max_reconnect_attempts=0)
    servicer = await capability_registry.create(
        Dependencies(storage=JetStreamStorage(store_connection, prefix=f"t{uuid.uuid4().hex[:8]}_"), channel=no_channel)
    )
    await store_connection.close()
    async with served(nc, capability_registry.add_to_server, servicer) as channel:
        stub = capability_registry_pb2_grpc.CapabilityRegistryServiceStub(channel)
        calls = [
            stub.Register(register(), timeout=5),
            stub.Get(cr.GetRequest(name="a"), timeout=5),
            stub.List(cr.ListRequest(), timeout=5),
            stub.IsEnabled(cr.IsEnabledRequest(feature_name="a", subject_id="p"), timeout=5),
        ]
        for call in calls:
            err = await failure(call)
            assert err.code() == grpc.StatusCode.UNAVAILABLE
