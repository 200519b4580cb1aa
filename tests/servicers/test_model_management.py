"""model-management over NATS: registration with compare-and-set, paged lists, ranked selection,
the built-in model seeded at start-up, and a registry that outlives the servicer."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import nats
import pytest
from gaming.ai_integration.v1 import ai_integration_pb2 as ai
from gaming.ai_integration.v1 import ai_integration_pb2_grpc
from gaming.common.v1 import common_pb2
from gaming.model_management.v1 import model_management_pb2 as mm
from gaming.model_management.v1 import model_management_pb2_grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nats.aio.client import Client

from mesh.jetstream_storage import JetStreamStorage
from nats_transport.testing import NatsServer
from servicers import ai_integration, model_management
from servicers.dependencies import Dependencies
from servicers.model_management import _ranking
from tests._serving import served

NOW = 1_700_000_000.5
LOCAL = "local-tiny"


def no_channel(target: str) -> Any:
    raise AssertionError(f"model-management calls no other service (asked for {target!r})")


def deps(storage: Any, **settings: str) -> Dependencies:
    return Dependencies(storage=storage, channel=no_channel, settings=settings, clock=lambda: NOW)


@contextlib.asynccontextmanager
async def registry(nc: Client, storage: Any, **settings: str) -> AsyncIterator[Any]:
    servicer = await model_management.create(deps(storage, **settings))
    async with served(nc, model_management.add_to_server, servicer) as channel:
        yield model_management_pb2_grpc.ModelManagementServiceStub(channel)


@pytest.fixture
async def stub(nc: Client, storage: JetStreamStorage) -> AsyncIterator[Any]:
    """A registry holding only what it seeds (the built-in model)."""
    async with registry(nc, storage) as stub:
        yield stub


@pytest.fixture
async def empty(nc: Client, storage: JetStreamStorage) -> AsyncIterator[Any]:
    """A registry that seeds nothing."""
    async with registry(nc, storage, seed_builtin_models="false") as stub:
        yield stub


def ms(milliseconds: int) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromMilliseconds(milliseconds)
    return duration


def model(
    name: str,
    *capabilities: Any,
    context: int = 4096,
    latency_ms: int | None = 500,
    cost: int = 0,
    availability: Any = mm.AVAILABILITY_AVAILABLE,
    **fields: Any,
) -> mm.Model:
    described = mm.Model(
        name=name,
        display_name=name.title(),
        backend=ai.BACKEND_OPENAI_COMPATIBLE,
        backend_model=f"{name}-upstream",
        capabilities=list(capabilities) or [mm.CAPABILITY_TEXT_GENERATION],
        context_tokens=context,
        latency_class=mm.LATENCY_CLASS_INTERACTIVE,
        availability=availability,
        cost_per_million_tokens=common_pb2.Money(currency_code="USD", amount_minor=cost) if cost else None,
        **fields,
    )
    if latency_ms is not None:
        described.expected_latency.CopyFrom(ms(latency_ms))
    return described


def register(described: mm.Model, expected: int | None = None) -> mm.RegisterRequest:
    request = mm.RegisterRequest(model=described)
    if expected is not None:
        request.expected_revision.value = expected
    return request


async def failure(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def detail(err: grpc.aio.AioRpcError, kind: Any) -> Any:
    status = rpc_status.from_call(err)
    assert status is not None
    for packed in status.details:
        found = kind()
        if packed.Unpack(found):
            return found
    raise AssertionError(f"no {kind.__name__} in {status.details}")


def bad_field(err: grpc.aio.AioRpcError) -> str:
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    return str(detail(err, error_details_pb2.BadRequest).field_violations[0].field)


def names(candidates: Any) -> list[str]:
    return [candidate.model.name for candidate in candidates]


# -- the built-in model ------------------------------------------------------------------------------


async def test_a_fresh_registry_holds_the_built_in_model_and_select_finds_it(stub: Any) -> None:
    selected = await stub.Select(mm.SelectRequest(required_capability=mm.CAPABILITY_CHAT), timeout=5)
    [best] = selected.candidates
    assert (best.model.name, best.rank, best.score, best.preferred) == (LOCAL, 1, 1.0, False)
    assert best.model.backend == ai.BACKEND_LOCAL
    assert best.model.availability == mm.AVAILABILITY_AVAILABLE
    assert best.model.revision.value > 0
    assert best.model.audit.actor_id == "model-management"
    assert best.model.create_time.ToNanoseconds() == round(NOW * 1e9)


async def test_the_selected_built_in_model_is_one_ai_integration_serves(nc: Client, storage: Any) -> None:
    async with registry(nc, storage) as registry_stub:
        selected = await registry_stub.Select(mm.SelectRequest(required_capability=mm.CAPABILITY_TEXT_GENERATION,
                                                               latency_budget=ms(200)), timeout=5)
    servicer = await ai_integration.create(Dependencies(storage=storage, channel=no_channel))
    async with served(nc, ai_integration.add_to_server, servicer) as channel:
        chosen = selected.candidates[0].model
        reply = await ai_integration_pb2_grpc.AiIntegrationServiceStub(channel).Generate(
            ai.GenerateRequest(model=chosen.name, prompt="The ranger", seed=3, max_tokens=chosen.context_tokens // 2),
            timeout=5,
        )
    assert reply.backend == chosen.backend
    assert reply.text


async def test_without_seeding_the_registry_starts_empty_and_select_answers_nothing(empty: Any) -> None:
    listed = await empty.List(mm.ListRequest(), timeout=5)
    selected = await empty.Select(mm.SelectRequest(required_capability=mm.CAPABILITY_TEXT_GENERATION), timeout=5)
    assert list(listed.models) == []
    assert listed.page.total_size == 0
    assert list(selected.candidates) == []


async def test_a_malformed_seed_setting_is_refused_at_start_up(storage: Any) -> None:
    with pytest.raises(ValueError, match="seed_builtin_models"):
        await model_management.create(deps(storage, seed_builtin_models="yes"))


# -- Register, Get ---------------------------------------------------------------------------------


async def test_register_creates_a_model_with_a_revision_create_time_and_audit(empty: Any) -> None:
    described = model("sage-13b", mm.CAPABILITY_CHAT, mm.CAPABILITY_SUMMARIZATION,
                      attributes=[common_pb2.Attribute(key="family", value="llama")])
    described.revision.value = 999  # output only: ignored
    described.audit.actor_id = "forged"
    # A client's x-actor-id claims nothing: the actor is the verified caller (none here).
    reply = await empty.Register(register(described), metadata=(("x-actor-id", "ops-alice"),), timeout=5)
    assert reply.created
    assert reply.model.revision.value > 0
    assert reply.model.revision.value != 999
    assert reply.model.audit.actor_id == ""
    assert reply.model.create_time.ToNanoseconds() == reply.model.audit.update_time.ToNanoseconds()
    got = await empty.Get(mm.GetRequest(name="sage-13b"), timeout=5)
    assert got.model == reply.model


async def test_register_fills_in_availability_and_the_latency_of_the_class(empty: Any) -> None:
    described = model("plain", latency_ms=None, availability=mm.AVAILABILITY_UNSPECIFIED)
    stored = (await empty.Register(register(described), timeout=5)).model
    assert stored.availability == mm.AVAILABILITY_AVAILABLE
    assert stored.expected_latency == ms(2000)  # the ceiling of INTERACTIVE


async def test_an_unconditional_register_replaces_and_keeps_the_create_time(empty: Any) -> None:
    first = (await empty.Register(register(model("bard", context=2048)), timeout=5)).model
    second = await empty.Register(register(model("bard", context=8192)), timeout=5)
    assert not second.created
    assert second.model.context_tokens == 8192
    assert second.model.revision.value > first.revision.value
    assert second.model.create_time == first.create_time


async def test_register_with_expected_revision_zero_only_creates(empty: Any) -> None:
    created = await empty.Register(register(model("scribe"), expected=0), timeout=5)
    assert created.created
    err = await failure(empty.Register(register(model("scribe"), expected=0), timeout=5))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_register_with_the_current_revision_replaces(empty: Any) -> None:
    first = (await empty.Register(register(model("oracle")), timeout=5)).model
    second = await empty.Register(register(model("oracle", context=1024), expected=first.revision.value), timeout=5)
    assert second.model.context_tokens == 1024
    assert not second.created


async def test_register_with_a_stale_revision_is_aborted_with_the_current_one(empty: Any) -> None:
    first = (await empty.Register(register(model("oracle")), timeout=5)).model
    second = (await empty.Register(register(model("oracle", context=1024)), timeout=5)).model
    err = await failure(empty.Register(register(model("oracle", context=1), expected=first.revision.value), timeout=5))
    assert err.code() == grpc.StatusCode.ABORTED
    info = detail(err, error_details_pb2.ErrorInfo)
    assert info.reason == "REVISION_CONFLICT"
    assert info.metadata["current_revision"] == str(second.revision.value)
    assert (await empty.Get(mm.GetRequest(name="oracle"), timeout=5)).model.context_tokens == 1024


async def test_register_with_a_revision_for_a_missing_model_is_not_found(empty: Any) -> None:
    err = await failure(empty.Register(register(model("ghost"), expected=7), timeout=5))
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_concurrent_unconditional_registers_all_land_one_after_another(empty: Any) -> None:
    replies = await asyncio.gather(*(
        empty.Register(register(model("busy", context=1000 + i)), timeout=10) for i in range(8)
    ))
    assert sum(reply.created for reply in replies) == 1
    assert len({reply.model.revision.value for reply in replies}) == 8
    last = max(replies, key=lambda reply: reply.model.revision.value)
    assert (await empty.Get(mm.GetRequest(name="busy"), timeout=5)).model == last.model


async def test_concurrent_create_only_registers_let_exactly_one_win(empty: Any) -> None:
    outcomes = await asyncio.gather(
        *(empty.Register(register(model("race"), expected=0), timeout=10) for _ in range(6)), return_exceptions=True
    )
    assert sum(isinstance(outcome, mm.RegisterResponse) for outcome in outcomes) == 1
    assert all(outcome.code() == grpc.StatusCode.ALREADY_EXISTS
               for outcome in outcomes if isinstance(outcome, grpc.aio.AioRpcError))


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"name": ""}, "model.name"),
        ({"name": "has/slash"}, "model.name"),
        ({"display_name": "d" * 257}, "model.display_name"),
        ({"backend": ai.BACKEND_UNSPECIFIED}, "model.backend"),
        ({"backend": 42}, "model.backend"),
        ({"backend_model": "b" * 257}, "model.backend_model"),
        ({"capabilities": []}, "model.capabilities"),
        ({"capabilities": [mm.CAPABILITY_CHAT, mm.CAPABILITY_UNSPECIFIED]}, "model.capabilities[1]"),
        ({"capabilities": [77]}, "model.capabilities[0]"),
        ({"capabilities": [mm.CAPABILITY_CHAT, mm.CAPABILITY_CHAT]}, "model.capabilities"),
        ({"context_tokens": 0}, "model.context_tokens"),
        ({"context_tokens": -5}, "model.context_tokens"),
        ({"latency_class": mm.LATENCY_CLASS_UNSPECIFIED}, "model.latency_class"),
        ({"expected_latency": duration_pb2.Duration(seconds=-1)}, "model.expected_latency"),
        ({"expected_latency": duration_pb2.Duration(seconds=90_000)}, "model.expected_latency"),
        ({"cost_per_million_tokens": common_pb2.Money(currency_code="USD", amount_minor=-1)},
         "model.cost_per_million_tokens.amount_minor"),
        ({"cost_per_million_tokens": common_pb2.Money(amount_minor=150)},
         "model.cost_per_million_tokens.currency_code"),
        ({"cost_per_million_tokens": common_pb2.Money(currency_code="usd", amount_minor=1)},
         "model.cost_per_million_tokens.currency_code"),
        ({"availability": 9}, "model.availability"),
        ({"attributes": [common_pb2.Attribute(key=f"k{i}", value="v") for i in range(33)]}, "model.attributes"),
        ({"attributes": [common_pb2.Attribute(key="Family", value="v")]}, "model.attributes[0].key"),
        ({"attributes": [common_pb2.Attribute(key="ok", value="v" * 257)]}, "model.attributes[0].value"),
    ],
)
async def test_a_malformed_model_is_invalid_argument_naming_the_field(
    empty: Any, change: dict[str, Any], field: str
) -> None:
    described = model("valid")
    for name, value in change.items():
        described.ClearField(name)  # type: ignore[arg-type]  # names come from the table above
        if isinstance(value, list):
            getattr(described, name).extend(value)
        elif hasattr(value, "SerializeToString"):
            getattr(described, name).CopyFrom(value)
        else:
            setattr(described, name, value)
    err = await failure(empty.Register(register(described), timeout=5))
    assert bad_field(err) == field


async def test_a_register_without_a_model_is_invalid(empty: Any) -> None:
    assert bad_field(await failure(empty.Register(mm.RegisterRequest(), timeout=5))) == "model.name"


@pytest.mark.parametrize(
    ("name", "code"),
    [("", grpc.StatusCode.INVALID_ARGUMENT), ("a b", grpc.StatusCode.INVALID_ARGUMENT),
     ("nobody", grpc.StatusCode.NOT_FOUND)],
)
async def test_get_of_a_malformed_or_unknown_name_fails(empty: Any, name: str, code: grpc.StatusCode) -> None:
    err = await failure(empty.Get(mm.GetRequest(name=name), timeout=5))
    assert err.code() == code


async def test_names_with_dots_are_stored_and_found(empty: Any) -> None:
    await empty.Register(register(model("gpt-4.1-mini")), timeout=5)
    await empty.Register(register(model(".hidden..dots.")), timeout=5)
    listed = await empty.List(mm.ListRequest(), timeout=5)
    assert [found.name for found in listed.models] == [".hidden..dots.", "gpt-4.1-mini"]
    assert (await empty.Get(mm.GetRequest(name="gpt-4.1-mini"), timeout=5)).model.name == "gpt-4.1-mini"


# -- List --------------------------------------------------------------------------------------------


async def test_list_pages_through_models_in_name_order(empty: Any) -> None:
    for name in ["delta", "alpha", "echo", "charlie", "bravo"]:
        await empty.Register(register(model(name)), timeout=5)
    seen, token, pages = [], "", 0
    while True:
        listed = await empty.List(mm.ListRequest(page=common_pb2.PageRequest(page_size=2, page_token=token)), timeout=5)
        assert listed.page.total_size == 5
        seen += [found.name for found in listed.models]
        pages += 1
        token = listed.page.next_page_token
        if not token:
            break
    assert seen == ["alpha", "bravo", "charlie", "delta", "echo"]
    assert pages == 3


async def test_list_filters_by_capability_and_availability(empty: Any) -> None:
    await empty.Register(register(model("chatty", mm.CAPABILITY_CHAT)), timeout=5)
    await empty.Register(register(model("polyglot", mm.CAPABILITY_TRANSLATION, mm.CAPABILITY_CHAT,
                                        availability=mm.AVAILABILITY_DEGRADED)), timeout=5)
    await empty.Register(register(model("writer", mm.CAPABILITY_TEXT_GENERATION)), timeout=5)
    chat = await empty.List(mm.ListRequest(capability=mm.CAPABILITY_CHAT), timeout=5)
    degraded = await empty.List(mm.ListRequest(availability=mm.AVAILABILITY_DEGRADED), timeout=5)
    both = await empty.List(mm.ListRequest(capability=mm.CAPABILITY_CHAT, availability=mm.AVAILABILITY_AVAILABLE),
                            timeout=5)
    assert [found.name for found in chat.models] == ["chatty", "polyglot"]
    assert chat.page.total_size == -1  # filtered: not counted
    assert [found.name for found in degraded.models] == ["polyglot"]
    assert [found.name for found in both.models] == ["chatty"]


async def test_a_filtered_list_pages_over_matching_models_only(empty: Any) -> None:
    for index in range(6):
        capability = mm.CAPABILITY_CHAT if index % 2 else mm.CAPABILITY_EMBEDDING
        await empty.Register(register(model(f"m{index}", capability)), timeout=5)
    request = mm.ListRequest(capability=mm.CAPABILITY_CHAT, page=common_pb2.PageRequest(page_size=2))
    first = await empty.List(request, timeout=5)
    request.page.page_token = first.page.next_page_token
    second = await empty.List(request, timeout=5)
    assert [found.name for found in first.models] == ["m1", "m3"]
    assert [found.name for found in second.models] == ["m5"]
    assert not second.page.next_page_token


async def test_list_refuses_bad_pages_and_a_token_from_other_filters(empty: Any) -> None:
    for name in ["a", "b", "c"]:
        await empty.Register(register(model(name, mm.CAPABILITY_CHAT)), timeout=5)
    token = (await empty.List(mm.ListRequest(page=common_pb2.PageRequest(page_size=1)), timeout=5)).page.next_page_token
    assert token
    cases = [
        (mm.ListRequest(page=common_pb2.PageRequest(page_size=-1)), "page.page_size"),
        (mm.ListRequest(page=common_pb2.PageRequest(page_token="not a token!")), "page.page_token"),
        (mm.ListRequest(capability=mm.CAPABILITY_CHAT, page=common_pb2.PageRequest(page_token=token)),
         "page.page_token"),
        (mm.ListRequest(capability=mm.Capability.ValueType(99)), "capability"),
        (mm.ListRequest(availability=mm.Availability.ValueType(99)), "availability"),
    ]
    for request, field in cases:
        assert bad_field(await failure(empty.List(request, timeout=5))) == field


# -- Select --------------------------------------------------------------------------------------------


async def test_select_ranks_by_preference_availability_latency_cost_then_name(empty: Any) -> None:
    text = mm.CAPABILITY_TEXT_GENERATION
    for described in [
        model("slow", text, latency_ms=900),
        model("fast-pricey", text, latency_ms=100, cost=500),
        model("fast-cheap", text, latency_ms=100, cost=10),
        model("fast-cheap-b", text, latency_ms=100, cost=10),
        model("shaky", text, latency_ms=50, availability=mm.AVAILABILITY_DEGRADED),
        model("down", text, latency_ms=1, availability=mm.AVAILABILITY_UNAVAILABLE),
        model("favourite", text, latency_ms=1500, availability=mm.AVAILABILITY_DEGRADED),
        model("embedder", mm.CAPABILITY_EMBEDDING, latency_ms=1),
    ]:
        await empty.Register(register(described), timeout=5)
    selected = await empty.Select(mm.SelectRequest(required_capability=text, max_candidates=20,
                                                   preferred_models=["favourite", "nobody"]), timeout=5)
    assert names(selected.candidates) == ["favourite", "fast-cheap", "fast-cheap-b", "fast-pricey", "slow", "shaky"]
    assert [candidate.rank for candidate in selected.candidates] == [1, 2, 3, 4, 5, 6]
    assert [candidate.preferred for candidate in selected.candidates] == [True] + [False] * 5
    scores = [candidate.score for candidate in selected.candidates]
    assert scores[0] == 1.0
    assert scores == sorted(scores, reverse=True)
    assert all(0 < score <= 1 for score in scores)


async def test_select_leaves_out_what_cannot_serve_the_task(empty: Any) -> None:
    chat = mm.CAPABILITY_CHAT
    await empty.Register(register(model("small", chat, context=1024, latency_ms=50)), timeout=5)
    await empty.Register(register(model("big", chat, context=32768, latency_ms=1200)), timeout=5)
    await empty.Register(register(model("mid", chat, context=8192, latency_ms=300)), timeout=5)

    async def select(**criteria: Any) -> list[str]:
        return names((await empty.Select(mm.SelectRequest(required_capability=chat, **criteria), timeout=5)).candidates)

    assert await select() == ["small", "mid", "big"]
    assert await select(min_context_tokens=8192) == ["mid", "big"]
    assert await select(latency_budget=ms(300)) == ["small", "mid"]  # equal to the budget is within it
    assert await select(latency_budget=ms(300), min_context_tokens=2048) == ["mid"]
    assert await select(excluded_models=["small"]) == ["mid", "big"]
    assert await select(max_candidates=1) == ["small"]
    assert await select(min_context_tokens=100_000) == []
    assert await select(latency_budget=ms(0)) == []


async def test_a_preferred_model_that_does_not_qualify_is_not_selected(empty: Any) -> None:
    await empty.Register(register(model("a", mm.CAPABILITY_CHAT, latency_ms=100)), timeout=5)
    await empty.Register(register(model("b", mm.CAPABILITY_CHAT, latency_ms=5000)), timeout=5)
    selected = await empty.Select(mm.SelectRequest(required_capability=mm.CAPABILITY_CHAT, latency_budget=ms(1000),
                                                   preferred_models=["b"]), timeout=5)
    assert names(selected.candidates) == ["a"]
    assert not selected.candidates[0].preferred


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({}, "required_capability"),
        ({"required_capability": 99}, "required_capability"),
        ({"latency_budget": duration_pb2.Duration(seconds=-1)}, "latency_budget"),
        ({"min_context_tokens": -1}, "min_context_tokens"),
        ({"max_candidates": 21}, "max_candidates"),
        ({"max_candidates": -1}, "max_candidates"),
        ({"preferred_models": [f"m{i}" for i in range(11)]}, "preferred_models"),
        ({"excluded_models": [f"m{i}" for i in range(51)]}, "excluded_models"),
        ({"preferred_models": ["ok", "not ok"]}, "preferred_models[1]"),
        ({"excluded_models": [""]}, "excluded_models[0]"),
    ],
)
async def test_a_malformed_select_is_invalid_argument_naming_the_field(
    stub: Any, request_fields: dict[str, Any], field: str
) -> None:
    fields = {"required_capability": mm.CAPABILITY_CHAT, **request_fields}
    if not request_fields:
        fields = {}
    err = await failure(stub.Select(mm.SelectRequest(**fields), timeout=5))
    assert bad_field(err) == field


def test_ranking_scores_are_positions_among_all_qualifying_models() -> None:
    models = [model(name, latency_ms=latency) for name, latency in [("c", 30), ("a", 10), ("b", 20), ("d", 40)]]
    ranked = _ranking.rank(models, _ranking.Criteria(capability=mm.CAPABILITY_TEXT_GENERATION, max_candidates=2))
    assert [(c.model.name, c.rank, c.score) for c in ranked] == [("a", 1, 1.0), ("b", 2, 0.75)]


# -- Deregister ----------------------------------------------------------------------------------------


async def test_deregister_removes_the_model_and_reports_its_last_revision(empty: Any) -> None:
    stored = (await empty.Register(register(model("retired")), timeout=5)).model
    removed = await empty.Deregister(mm.DeregisterRequest(name="retired"), timeout=5)
    assert (removed.name, removed.revision.value) == ("retired", stored.revision.value)
    assert (await failure(empty.Get(mm.GetRequest(name="retired"), timeout=5))).code() == grpc.StatusCode.NOT_FOUND
    assert list((await empty.List(mm.ListRequest(), timeout=5)).models) == []
    again = await empty.Register(register(model("retired"), expected=0), timeout=5)
    assert again.created


async def test_deregister_with_the_current_revision_removes_and_a_stale_one_is_aborted(empty: Any) -> None:
    first = (await empty.Register(register(model("m")), timeout=5)).model
    second = (await empty.Register(register(model("m", context=10)), timeout=5)).model
    request = mm.DeregisterRequest(name="m")
    request.expected_revision.value = first.revision.value
    err = await failure(empty.Deregister(request, timeout=5))
    assert err.code() == grpc.StatusCode.ABORTED
    assert detail(err, error_details_pb2.ErrorInfo).metadata["current_revision"] == str(second.revision.value)
    request.expected_revision.value = second.revision.value
    assert (await empty.Deregister(request, timeout=5)).revision.value == second.revision.value


@pytest.mark.parametrize(
    ("name", "code"),
    [("", grpc.StatusCode.INVALID_ARGUMENT), ("x*y", grpc.StatusCode.INVALID_ARGUMENT),
     ("nobody", grpc.StatusCode.NOT_FOUND)],
)
async def test_deregister_of_a_malformed_or_unknown_name_fails(empty: Any, name: str, code: grpc.StatusCode) -> None:
    assert (await failure(empty.Deregister(mm.DeregisterRequest(name=name), timeout=5))).code() == code


# -- durability and failures ---------------------------------------------------------------------------


async def test_a_restart_keeps_acknowledged_state(nc: Client, nats_server: NatsServer) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}_"
    async with registry(nc, JetStreamStorage(nc, prefix=prefix)) as stub:
        kept = (await stub.Register(register(model("keeper", mm.CAPABILITY_CHAT)), timeout=5)).model
        local = (await stub.Get(mm.GetRequest(name=LOCAL), timeout=5)).model
        local.availability = mm.AVAILABILITY_DEGRADED
        marked = (await stub.Register(register(local, expected=local.revision.value), timeout=5)).model

    nc2 = await nats.connect(nats_server.url, max_reconnect_attempts=0)
    try:
        async with registry(nc2, JetStreamStorage(nc2, prefix=prefix)) as stub:
            got = (await stub.Get(mm.GetRequest(name="keeper"), timeout=5)).model
            local_after = (await stub.Get(mm.GetRequest(name=LOCAL), timeout=5)).model
    finally:
        await nc2.close()
    assert got == kept
    # Seeding creates only: the operator's change to the built-in entry survives the restart.
    assert local_after == marked
    assert local_after.availability == mm.AVAILABILITY_DEGRADED


async def test_an_unreachable_store_is_unavailable(nc: Client, nats_server: NatsServer) -> None:
    store_connection = await nats.connect(nats_server.url, max_reconnect_attempts=0)
    store = JetStreamStorage(store_connection, prefix=f"t{uuid.uuid4().hex[:8]}_")
    servicer = await model_management.create(deps(store))
    await store_connection.close()
    async with served(nc, model_management.add_to_server, servicer) as channel:
        stub = model_management_pb2_grpc.ModelManagementServiceStub(channel)
        calls = [
            stub.Get(mm.GetRequest(name=LOCAL), timeout=5),
            stub.Register(register(model("x")), timeout=5),
            stub.List(mm.ListRequest(), timeout=5),
            stub.Select(mm.SelectRequest(required_capability=mm.CAPABILITY_CHAT), timeout=5),
            stub.Deregister(mm.DeregisterRequest(name=LOCAL), timeout=5),
        ]
        for call in calls:
            err = await failure(call)
            assert err.code() == grpc.StatusCode.UNAVAILABLE
            assert err.details() == "the model registry store is unavailable"
            assert detail(err, error_details_pb2.ErrorInfo).reason == "STORE_UNAVAILABLE"
