"""quest-system over NATS, with the real world-state, npc-behavior and payment on the same NATS,
and story-teller as a stand-in the tests can slow down or stop (one test runs the real one):
generation in parallel with deadline shares, degraded narrative, idempotency, the open-quest
limit, Accept by compare-and-set, progress that completes and pays, List pages, a restart."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import nats
import pytest
from gaming.common.v1 import common_pb2
from gaming.payment.v1 import payment_pb2, payment_pb2_grpc
from gaming.quest.v1 import quest_pb2 as pb
from gaming.quest.v1 import quest_pb2_grpc
from gaming.story_teller.v1 import story_teller_pb2 as st
from gaming.story_teller.v1 import story_teller_pb2_grpc
from gaming.world_state.v1 import world_state_pb2 as ws
from gaming.world_state.v1 import world_state_pb2_grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nats.aio.client import Client

from mesh.catalogue import load
from mesh.jetstream_storage import JetStreamStorage
from nats_transport._status import NO_SERVER
from nats_transport.testing import NatsServer
from servicers import npc_behavior, paging, payment, quest, world_state
from servicers._downstream import degraded_sources
from servicers.dependencies import Dependencies
from servicers.quest import templates
from tests._buckets import delete_buckets
from tests._serving import served
from tests._waiting import wait_for
from tests.servicers._mesh import Calls, Mesh, mesh_on, recorded

SMALL = str(8 * 1024 * 1024)
REGIONS = [
    # 100 m across: too small for the wolf cull (200 m) and anything larger.
    {"regionId": "harbor", "displayName": "Saltmarsh Harbor", "boundsMin": {"x": -50, "y": -10, "z": -50},
     "boundsMax": {"x": 50, "y": 50, "z": 50}, "maxEntities": 50},
    {"regionId": "wildlands", "displayName": "The Wildlands", "boundsMin": {"x": -2500, "y": -100, "z": -2500},
     "boundsMax": {"x": 2500, "y": 500, "z": 2500}, "maxEntities": 50},
]
BEAT = "Fog rolls off the water as a lantern swings above the quay."


class Clock:
    """A wall clock the test moves by hand (expiry, orphaned slots)."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class StandInStoryTeller(story_teller_pb2_grpc.StoryTellerServiceServicer):
    """Answers TellStory with one fixed beat; ``hold`` makes it hang instead, until the call is
    cancelled (``cancelled`` counts those)."""

    def __init__(self) -> None:
        self.hold = False
        self.told = 0
        self.cancelled = 0

    async def TellStory(self, request: st.TellStoryRequest, context: Any) -> AsyncIterator[st.TellStoryResponse]:
        self.told += 1
        if self.hold:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        yield st.TellStoryResponse(
            story_id=f"story-{self.told}",
            beat=st.Beat(index=0, text=BEAT, kind=st.BEAT_KIND_EXPOSITION),
            revision=common_pb2.Revision(value=1),
        )


@dataclass
class Quests:
    """quest-system and its surroundings for one test."""

    stub: Any
    world: Any
    payments: Any
    story: StandInStoryTeller
    calls: Calls
    clock: Clock
    mesh: Mesh
    storage: Any
    prefix: str


async def host_surroundings(mesh: Mesh, storage: Any, calls: Calls, story: Any) -> None:
    """The real world-state, npc-behavior and payment (recording deadlines), and ``story``."""
    base = Dependencies(storage=storage, channel=mesh.channel)
    world = await world_state.create(Dependencies(storage=storage, channel=mesh.channel,
                                                  settings={"regions": json.dumps(REGIONS)}))
    await mesh.host(world_state.TARGET, world_state.add_to_server,
                    recorded(world, calls, "GetRegion", "ListEntities"))
    await mesh.host(npc_behavior.TARGET, npc_behavior.add_to_server,
                    recorded(await npc_behavior.create(base), calls, "Decide"))
    ledger = await payment.create(Dependencies(storage=storage, channel=mesh.channel,
                                               settings={"accounts_max_bytes": SMALL, "ledger_max_bytes": SMALL}))
    await mesh.host(payment.TARGET, payment.add_to_server, recorded(ledger, calls, "Deposit"))
    await mesh.host("story-teller", story_teller_pb2_grpc.add_StoryTellerServiceServicer_to_server,
                    recorded(story, calls, "TellStory"))


@contextlib.asynccontextmanager
async def quests_on(nc: Client, storage: Any, mesh: Mesh, clock: Clock) -> AsyncIterator[Any]:
    servicer = await quest.create(Dependencies(storage=storage, channel=mesh.channel, clock=clock,
                                               settings={"bucket_max_bytes": SMALL}))
    async with served(nc, quest.add_to_server, servicer) as channel:
        yield quest_pb2_grpc.QuestServiceStub(channel)


@pytest.fixture
async def q(nc: Client) -> AsyncIterator[Quests]:
    calls, story, clock = Calls(), StandInStoryTeller(), Clock()
    # A prefix of our own (not the ``storage`` fixture's) so the restart test can reopen it.
    prefix = f"t{uuid.uuid4().hex[:8]}_"
    storage = JetStreamStorage(nc, prefix=prefix)
    try:
        async with mesh_on(nc) as mesh:
            await host_surroundings(mesh, storage, calls, story)
            async with quests_on(nc, storage, mesh, clock) as stub:
                yield Quests(
                    stub=stub,
                    world=world_state_pb2_grpc.WorldStateServiceStub(mesh.channel(world_state.TARGET)),
                    payments=payment_pb2_grpc.PaymentServiceStub(mesh.channel(payment.TARGET)),
                    story=story, calls=calls, clock=clock, mesh=mesh, storage=storage, prefix=prefix,
                )
    finally:
        if nc.is_connected:
            await delete_buckets(nc, prefix)


# -- helpers ----------------------------------------------------------------------------------------


def generate(player: str = "ayla", region: str = "harbor", difficulty: int = pb.DIFFICULTY_EASY,
             key: str | None = None) -> pb.GenerateQuestRequest:
    return pb.GenerateQuestRequest(player_id=player, region_id=region, difficulty=difficulty,  # type: ignore[arg-type]
                                   idempotency_key=common_pb2.IdempotencyKey(key=key or uuid.uuid4().hex))


async def spawn_npc(world: Any, entity_id: str, region: str = "harbor", **attributes: str) -> None:
    await world.ApplyEvent(ws.ApplyEventRequest(
        region_id=region, event_id=common_pb2.IdempotencyKey(key=uuid.uuid4().hex),
        event=ws.WorldEvent(spawn=ws.SpawnEntity(
            entity_id=entity_id, kind="npc", position=common_pb2.Vector3(x=1, y=0, z=1),
            attributes=[common_pb2.Attribute(key=k, value=v) for k, v in attributes.items()],
        )),
    ), timeout=5)


async def generated(q: Quests, request: pb.GenerateQuestRequest | None = None, timeout: float = 5) -> pb.Quest:
    reply = await q.stub.GenerateQuest(request or generate(), timeout=timeout)
    quest_: pb.Quest = reply.quest
    return quest_


async def accepted(q: Quests, quest_: pb.Quest) -> pb.Quest:
    reply = await q.stub.Accept(pb.AcceptRequest(quest_id=quest_.quest_id, player_id=quest_.player_id,
                                                 expected_revision=quest_.revision), timeout=5)
    accepted_: pb.Quest = reply.quest
    return accepted_


def progress(quest_: pb.Quest, objective: str, increment: int = 1, key: str | None = None) -> pb.UpdateProgressRequest:
    return pb.UpdateProgressRequest(quest_id=quest_.quest_id, objective_id=objective, increment=increment,
                                    idempotency_key=common_pb2.IdempotencyKey(key=key or uuid.uuid4().hex))


async def finish(q: Quests, quest_: pb.Quest) -> pb.UpdateProgressResponse:
    reply = None
    for objective in quest_.objectives:
        reply = await q.stub.UpdateProgress(progress(quest_, objective.objective_id, objective.required_count),
                                            timeout=5)
    assert reply is not None
    return reply


def story_failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    """How each story-teller call quest-system gave up on failed (``CODE: details``), as it logged."""
    return [str(record.args[0]) for record in caplog.records
            if record.name == "servicers.quest._sources" and record.getMessage().startswith("story-teller failed")]


async def failure(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def detail(err: grpc.aio.AioRpcError, kind: Any) -> Any:
    status = rpc_status.from_call(err)
    assert status is not None
    for packed in status.details:
        if packed.Is(kind.DESCRIPTOR):
            found = kind()
            packed.Unpack(found)
            return found
    raise AssertionError(f"no {kind.DESCRIPTOR.name} in the status details")


async def gold(q: Quests, player: str) -> int:
    reply = await q.payments.Balance(payment_pb2.BalanceRequest(account_id=player, currency_code="GOLD"), timeout=5)
    return int(reply.balance.amount_minor)


# -- GenerateQuest ----------------------------------------------------------------------------------


async def test_a_quest_is_a_template_filled_with_the_region_the_friendliest_npc_and_a_story_beat(q):
    await spawn_npc(q.world, "npc-grum", mood="angry", name="Grum")
    await spawn_npc(q.world, "npc-mara", mood="happy", name="Mara")
    call = q.stub.GenerateQuest(generate(difficulty=pb.DIFFICULTY_NORMAL), timeout=5)
    made = (await call).quest

    assert made.status == pb.QUEST_STATUS_AVAILABLE
    assert made.revision.value == 1
    assert made.player_id == "ayla"
    assert made.region_id == "harbor"
    # Harbor is 100 m across: only the small templates fit.
    assert made.template_id in {"herb_gathering", "lost_courier"}
    assert made.giver_npc_id == "npc-mara"
    assert made.description.endswith(BEAT)
    assert "Mara" in made.description
    assert "Saltmarsh Harbor" in made.description
    assert made.story_id == "story-1"
    template = next(t for t in templates.TEMPLATES if t.template_id == made.template_id)
    assert [o.objective_id for o in made.objectives] == [p.objective_id for p in template.objectives]
    assert all(o.current_count == 0 and o.required_count >= 1 for o in made.objectives)
    assert made.rewards[0].money.currency_code == "GOLD"
    assert made.rewards[0].money.amount_minor == template.gold * 2
    assert made.expire_time.ToSeconds() == int(q.clock.now) + template.lifetime_days * 86400
    assert degraded_sources(await call.trailing_metadata()) == []
    # Two candidates, each asked of npc-behavior; one story beat; one region read.
    assert len(q.calls.of("Decide")) == 2
    assert len(q.calls.of("TellStory")) == 1
    assert len(q.calls.of("GetRegion")) == 1


async def test_a_region_without_npcs_offers_its_herald_as_the_giver(q):
    made = await generated(q)
    assert made.giver_npc_id == "herald@harbor"
    assert "the herald of harbor" in made.description
    assert [seen.request.state.npc_id for seen in q.calls.of("Decide")] == ["herald@harbor"]


async def test_large_regions_offer_the_large_templates_and_legendary_fails_where_none_fits(q):
    wide = await generated(q, generate(region="wildlands", difficulty=pb.DIFFICULTY_LEGENDARY))
    assert wide.template_id in {"ruin_survey", "ancient_wyrm"}
    assert wide.rewards[0].money.amount_minor % 5 == 0

    err = await failure(q.stub.GenerateQuest(generate(difficulty=pb.DIFFICULTY_LEGENDARY), timeout=5))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert detail(err, error_details_pb2.ErrorInfo).reason == "NO_TEMPLATE_FITS"


async def test_an_unknown_region_is_not_found(q):
    err = await failure(q.stub.GenerateQuest(generate(region="atlantis"), timeout=5))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "atlantis" in (err.details() or "")


@pytest.mark.parametrize(("request_", "field"), [
    (pb.GenerateQuestRequest(region_id="harbor", idempotency_key=common_pb2.IdempotencyKey(key="k")), "player_id"),
    (pb.GenerateQuestRequest(player_id="p", idempotency_key=common_pb2.IdempotencyKey(key="k")), "region_id"),
    (pb.GenerateQuestRequest(player_id="p", region_id="harbor"), "idempotency_key.key"),
    (pb.GenerateQuestRequest(player_id="p", region_id="harbor",
                             idempotency_key=common_pb2.IdempotencyKey(key="tab\there")), "idempotency_key.key"),
    (pb.GenerateQuestRequest(player_id="p" * 129, region_id="harbor",
                             idempotency_key=common_pb2.IdempotencyKey(key="k")), "player_id"),
    (pb.GenerateQuestRequest(player_id="p", region_id="harbor", difficulty=9,  # type: ignore[arg-type]
                             idempotency_key=common_pb2.IdempotencyKey(key="k")), "difficulty"),
])
async def test_a_bad_generate_request_is_invalid_argument_naming_the_field(q, request_, field):
    err = await failure(q.stub.GenerateQuest(request_, timeout=5))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert detail(err, error_details_pb2.BadRequest).field_violations[0].field == field
    assert q.calls.seen == []


async def test_the_same_idempotency_key_returns_the_first_quest_without_asking_again(q):
    first = await generated(q, generate(key="once"))
    again = await generated(q, generate(key="once"))
    other_player = await generated(q, generate(player="brann", key="once"))

    assert again == first
    assert other_player.quest_id != first.quest_id  # keys belong to their player
    assert q.story.told == 2


async def test_concurrent_generations_with_one_key_make_one_quest(q):
    replies = await asyncio.gather(*(generated(q, generate(key="racing")) for _ in range(4)))
    assert len({reply.quest_id for reply in replies}) == 1
    listed = await q.stub.List(pb.ListRequest(player_id="ayla"), timeout=5)
    assert [item.quest_id for item in listed.quests] == [replies[0].quest_id]


async def test_a_stopped_story_teller_leaves_the_template_description_and_flags_it(q, caplog):
    await q.mesh.stop("story-teller")
    call = q.stub.GenerateQuest(generate(key="no-story"), timeout=5)
    made = (await call).quest

    # No responders, known at once: not a wait for story-teller's share of the deadline.
    assert story_failures(caplog) == [f"UNAVAILABLE: {NO_SERVER[1]}"]
    assert made.story_id == ""
    assert made.description == "the herald of harbor needs moonpetal herbs from the meadows of Saltmarsh Harbor to " \
        "brew a remedy." or made.description.startswith("the herald of harbor is waiting")
    assert degraded_sources(await call.trailing_metadata()) == ["story-teller"]


async def test_a_hanging_story_teller_is_given_up_on_within_its_share_of_the_deadline(q, caplog):
    q.story.hold = True
    call = q.stub.GenerateQuest(generate(key="slow-story"), timeout=1.0)
    made = (await call).quest  # answered, so within the caller's second

    assert made.story_id == ""
    assert degraded_sources(await call.trailing_metadata()) == ["story-teller"]
    # story-teller had half of the caller's second, and was given up on when that ran out: its
    # handler was cancelled, and the quest was made without it.
    (told,) = q.calls.of("TellStory")
    assert told.time_remaining is not None
    assert 0 < told.time_remaining <= 0.5
    await wait_for(lambda: q.story.cancelled == 1)
    assert [failure.split(":")[0] for failure in story_failures(caplog)] == ["DEADLINE_EXCEEDED"]
    again = q.stub.GenerateQuest(generate(key="slow-story"), timeout=5)
    assert (await again).quest == made
    assert degraded_sources(await again.trailing_metadata()) == ["story-teller"]


async def test_a_stopped_world_state_fails_generation_with_unavailable_naming_it(q):
    await q.mesh.stop(world_state.TARGET)
    err = await failure(q.stub.GenerateQuest(generate(), timeout=5))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert "world-state" in (err.details() or "")
    assert NO_SERVER[1] in (err.details() or "")  # no responders, known at once: no wait for a share
    assert detail(err, error_details_pb2.ErrorInfo).reason == "DEPENDENCY_UNAVAILABLE"


async def test_a_stopped_npc_behavior_fails_generation_with_unavailable_naming_it(q):
    await q.mesh.stop(npc_behavior.TARGET)
    err = await failure(q.stub.GenerateQuest(generate(), timeout=5))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert "npc-behavior" in (err.details() or "")


async def test_a_failed_generation_can_be_retried_with_its_key_once_the_dependency_is_back(q):
    await q.mesh.stop(world_state.TARGET)
    await failure(q.stub.GenerateQuest(generate(key="retry-me"), timeout=5))
    world = await world_state.create(Dependencies(storage=q.storage, channel=q.mesh.channel,
                                                  settings={"regions": json.dumps(REGIONS)}))
    await q.mesh.host(world_state.TARGET, world_state.add_to_server, world)
    made = await generated(q, generate(key="retry-me"))
    assert made.status == pb.QUEST_STATUS_AVAILABLE


async def test_a_short_caller_deadline_reaches_every_downstream_as_its_share(q):
    await spawn_npc(q.world, "npc-mara", mood="happy")
    await q.stub.GenerateQuest(generate(), timeout=1.0)

    for method in ("GetRegion", "ListEntities", "Decide", "TellStory"):
        (seen,) = q.calls.of(method)
        assert seen.time_remaining is not None, method
        assert 0 < seen.time_remaining <= 1.0, method
    assert q.calls.of("GetRegion")[0].time_remaining <= 0.8
    assert q.calls.of("ListEntities")[0].time_remaining <= 0.4  # half of the giver branch's 80 %
    assert q.calls.of("TellStory")[0].time_remaining <= 0.5


async def test_without_a_caller_deadline_each_downstream_call_still_has_a_bound(q):
    await q.stub.GenerateQuest(generate())
    assert 4.0 < q.calls.of("GetRegion")[0].time_remaining <= 5.0
    assert 1.5 < q.calls.of("TellStory")[0].time_remaining <= 2.0


async def test_a_player_holds_at_most_25_open_quests_and_completing_one_frees_a_place(q):
    made = [await generated(q) for _ in range(quest.MAX_OPEN)]
    err = await failure(q.stub.GenerateQuest(generate(), timeout=5))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert detail(err, error_details_pb2.ErrorInfo).reason == "TOO_MANY_OPEN_QUESTS"
    assert await generated(q, generate(player="brann"))  # the limit is per player

    done = await accepted(q, made[0])
    await finish(q, done)
    assert (await generated(q)).status == pb.QUEST_STATUS_AVAILABLE


async def test_expired_quests_no_longer_count_as_open(q):
    for _ in range(quest.MAX_OPEN):
        await generated(q)
    q.clock.now += 8 * 86400  # past the seven days of the small templates
    assert (await generated(q)).status == pb.QUEST_STATUS_AVAILABLE


# -- GetQuest, List ---------------------------------------------------------------------------------


async def test_get_quest_returns_the_quest_and_refuses_empty_or_unknown_ids(q):
    made = await generated(q)
    assert (await q.stub.GetQuest(pb.GetQuestRequest(quest_id=made.quest_id), timeout=5)).quest == made
    err = await failure(q.stub.GetQuest(pb.GetQuestRequest(), timeout=5))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    for unknown in ("0" * 25, "no such quest"):
        err = await failure(q.stub.GetQuest(pb.GetQuestRequest(quest_id=unknown), timeout=5))
        assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_an_open_quest_past_its_expire_time_reads_expired_and_cannot_be_accepted(q):
    made = await generated(q)
    q.clock.now += 8 * 86400
    got = (await q.stub.GetQuest(pb.GetQuestRequest(quest_id=made.quest_id), timeout=5)).quest
    assert got.status == pb.QUEST_STATUS_EXPIRED
    err = await failure(q.stub.Accept(pb.AcceptRequest(quest_id=made.quest_id, player_id="ayla",
                                                       expected_revision=made.revision), timeout=5))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_list_pages_a_players_quests_newest_first_and_filters_by_status(q):
    made = []
    for _ in range(5):
        made.append(await generated(q))
        q.clock.now += 1
    await generated(q, generate(player="brann"))
    active = await accepted(q, made[1])
    newest_first = [item.quest_id for item in reversed(made)]

    seen, token = [], ""
    while True:
        page = await q.stub.List(pb.ListRequest(player_id="ayla", page=common_pb2.PageRequest(
            page_size=2, page_token=token)), timeout=5)
        seen.extend(item.quest_id for item in page.quests)
        assert page.page.total_size == 5
        token = page.page.next_page_token
        if not token:
            break
    assert seen == newest_first

    only_active = await q.stub.List(pb.ListRequest(player_id="ayla", status_filter=pb.QUEST_STATUS_ACTIVE), timeout=5)
    assert [item for item in only_active.quests] == [active]
    assert only_active.page.total_size == -1
    available = await q.stub.List(pb.ListRequest(player_id="ayla", status_filter=pb.QUEST_STATUS_AVAILABLE,
                                                 page=common_pb2.PageRequest(page_size=3)), timeout=5)
    assert [item.quest_id for item in available.quests] == [newest_first[0], newest_first[1], newest_first[2]]
    rest = await q.stub.List(pb.ListRequest(player_id="ayla", status_filter=pb.QUEST_STATUS_AVAILABLE, page=(
        common_pb2.PageRequest(page_size=3, page_token=available.page.next_page_token))), timeout=5)
    assert [item.quest_id for item in rest.quests] == [newest_first[4]]
    assert not rest.page.next_page_token

    nobody = await q.stub.List(pb.ListRequest(player_id="nobody"), timeout=5)
    assert list(nobody.quests) == []
    assert nobody.page.total_size == 0


async def test_list_refuses_an_empty_player_a_bad_status_and_foreign_page_tokens(q):
    token = paging.encode_token("x", "ayla", str(pb.QUEST_STATUS_ACTIVE))
    cases = [
        (pb.ListRequest(), "player_id"),
        (pb.ListRequest(player_id="ayla", status_filter=42), "status_filter"),  # type: ignore[arg-type]
        (pb.ListRequest(player_id="ayla", page=common_pb2.PageRequest(page_size=-1)), "page.page_size"),
        (pb.ListRequest(player_id="ayla", page=common_pb2.PageRequest(page_token="garbage!")), "page.page_token"),
        (pb.ListRequest(player_id="ayla", page=common_pb2.PageRequest(page_token=token)), "page.page_token"),
    ]
    for request_, field in cases:
        err = await failure(q.stub.List(request_, timeout=5))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert detail(err, error_details_pb2.BadRequest).field_violations[0].field == field


# -- Accept -----------------------------------------------------------------------------------------


async def test_accept_makes_the_quest_active_with_a_new_revision(q):
    made = await generated(q)
    active = await accepted(q, made)
    assert active.status == pb.QUEST_STATUS_ACTIVE
    assert active.revision.value == made.revision.value + 1
    assert active.audit.actor_id == "ayla"
    assert (await q.stub.GetQuest(pb.GetQuestRequest(quest_id=made.quest_id), timeout=5)).quest == active


async def test_accept_checks_the_player_the_revision_and_the_status_in_that_order(q):
    made = await generated(q)
    err = await failure(q.stub.Accept(pb.AcceptRequest(quest_id=made.quest_id, player_id="brann",
                                                       expected_revision=made.revision), timeout=5))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED

    stale = common_pb2.Revision(value=made.revision.value + 7)
    err = await failure(q.stub.Accept(pb.AcceptRequest(quest_id=made.quest_id, player_id="ayla",
                                                       expected_revision=stale), timeout=5))
    assert err.code() == grpc.StatusCode.ABORTED
    info = detail(err, error_details_pb2.ErrorInfo)
    assert info.reason == "REVISION_CONFLICT"
    assert info.metadata["current_revision"] == str(made.revision.value)

    active = await accepted(q, made)
    err = await failure(q.stub.Accept(pb.AcceptRequest(quest_id=made.quest_id, player_id="ayla",
                                                       expected_revision=active.revision), timeout=5))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_two_accepts_of_one_revision_let_exactly_one_win(q):
    made = await generated(q)
    results = await asyncio.gather(accepted(q, made), accepted(q, made), return_exceptions=True)
    wins = [result for result in results if isinstance(result, pb.Quest)]
    losses = [result for result in results if isinstance(result, grpc.aio.AioRpcError)]
    assert len(wins) == 1
    assert len(losses) == 1
    assert losses[0].code() == grpc.StatusCode.ABORTED


@pytest.mark.parametrize(("request_", "field", "code"), [
    (pb.AcceptRequest(player_id="ayla", expected_revision=common_pb2.Revision(value=1)), "quest_id",
     grpc.StatusCode.INVALID_ARGUMENT),
    (pb.AcceptRequest(quest_id="q", expected_revision=common_pb2.Revision(value=1)), "player_id",
     grpc.StatusCode.INVALID_ARGUMENT),
    (pb.AcceptRequest(quest_id="q", player_id="ayla"), "expected_revision", grpc.StatusCode.INVALID_ARGUMENT),
    (pb.AcceptRequest(quest_id="1" * 25, player_id="ayla", expected_revision=common_pb2.Revision(value=1)), None,
     grpc.StatusCode.NOT_FOUND),
])
async def test_a_bad_or_unknown_accept_is_refused(q, request_, field, code):
    err = await failure(q.stub.Accept(request_, timeout=5))
    assert err.code() == code
    if field is not None:
        assert detail(err, error_details_pb2.BadRequest).field_violations[0].field == field


# -- UpdateProgress ---------------------------------------------------------------------------------


async def test_progress_counts_up_to_the_required_count_and_the_last_objective_completes_and_pays(q):
    active = await accepted(q, await generated(q))
    first, second = active.objectives
    step = await q.stub.UpdateProgress(progress(active, first.objective_id, 1), timeout=5)
    assert step.quest.objectives[0].current_count == 1
    assert not step.completed
    assert step.quest.revision.value == active.revision.value + 1
    over = await q.stub.UpdateProgress(progress(active, first.objective_id, 1000), timeout=5)
    assert over.quest.objectives[0].current_count == first.required_count
    assert over.quest.status == pb.QUEST_STATUS_ACTIVE
    assert not over.completed

    done = await q.stub.UpdateProgress(progress(active, second.objective_id, second.required_count), timeout=5)
    assert done.completed
    assert done.quest.status == pb.QUEST_STATUS_COMPLETED
    assert await gold(q, "ayla") == active.rewards[0].money.amount_minor
    err = await failure(q.stub.UpdateProgress(progress(active, first.objective_id), timeout=5))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_replayed_progress_key_applies_once_and_returns_the_first_result(q):
    active = await accepted(q, await generated(q))
    objective = active.objectives[0].objective_id
    first = await q.stub.UpdateProgress(progress(active, objective, 1, key="step-1"), timeout=5)
    await q.stub.UpdateProgress(progress(active, objective, 1), timeout=5)
    replay = await q.stub.UpdateProgress(progress(active, objective, 1, key="step-1"), timeout=5)

    assert replay == first
    now = (await q.stub.GetQuest(pb.GetQuestRequest(quest_id=active.quest_id), timeout=5)).quest
    assert now.objectives[0].current_count == 2


async def test_concurrent_completions_pay_the_reward_once(q):
    active = await accepted(q, await generated(q))
    for objective in active.objectives[1:]:
        await q.stub.UpdateProgress(progress(active, objective.objective_id, objective.required_count), timeout=5)
    last = active.objectives[0]
    results = await asyncio.gather(*(
        q.stub.UpdateProgress(progress(active, last.objective_id, last.required_count), timeout=5) for _ in range(3)
    ), return_exceptions=True)

    completed = [r for r in results if isinstance(r, pb.UpdateProgressResponse) and r.completed]
    assert len(completed) == 1
    assert all(r.code() == grpc.StatusCode.FAILED_PRECONDITION for r in results if isinstance(r, grpc.aio.AioRpcError))
    assert await gold(q, "ayla") == active.rewards[0].money.amount_minor


async def test_a_failed_reward_grant_applies_nothing_and_a_retry_pays_once(q):
    active = await accepted(q, await generated(q))
    for objective in active.objectives[1:]:
        await q.stub.UpdateProgress(progress(active, objective.objective_id, objective.required_count), timeout=5)
    before = (await q.stub.GetQuest(pb.GetQuestRequest(quest_id=active.quest_id), timeout=5)).quest
    await q.mesh.stop(payment.TARGET)
    last = progress(active, active.objectives[0].objective_id, active.objectives[0].required_count, key="last")

    err = await failure(q.stub.UpdateProgress(last, timeout=5))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert "payment" in (err.details() or "")
    assert (await q.stub.GetQuest(pb.GetQuestRequest(quest_id=active.quest_id), timeout=5)).quest == before

    ledger = await payment.create(Dependencies(storage=q.storage, channel=q.mesh.channel,
                                               settings={"accounts_max_bytes": SMALL, "ledger_max_bytes": SMALL}))
    await q.mesh.host(payment.TARGET, payment.add_to_server, ledger)
    done = await q.stub.UpdateProgress(last, timeout=5)
    assert done.completed
    assert await q.stub.UpdateProgress(last, timeout=5) == done
    assert await gold(q, "ayla") == active.rewards[0].money.amount_minor


async def test_progress_needs_an_active_quest_and_a_known_objective(q):
    made = await generated(q)
    err = await failure(q.stub.UpdateProgress(progress(made, made.objectives[0].objective_id), timeout=5))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    active = await accepted(q, made)
    err = await failure(q.stub.UpdateProgress(progress(active, "no-such-objective"), timeout=5))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    err = await failure(q.stub.UpdateProgress(progress(pb.Quest(quest_id="2" * 25), "gather"), timeout=5))
    assert err.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(("increment", "key", "field"), [
    (0, "k", "increment"), (1001, "k", "increment"), (1, "", "idempotency_key.key"),
])
async def test_a_bad_progress_request_is_invalid_argument(q, increment, key, field):
    request_ = pb.UpdateProgressRequest(quest_id="q", objective_id="gather", increment=increment,
                                        idempotency_key=common_pb2.IdempotencyKey(key=key))
    err = await failure(q.stub.UpdateProgress(request_, timeout=5))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert detail(err, error_details_pb2.BadRequest).field_violations[0].field == field


# -- durability and the real story-teller -----------------------------------------------------------


async def test_a_restart_keeps_quests_their_progress_and_their_idempotency_keys(nats_server: NatsServer, nc, q):
    made = await generated(q, generate(key="kept"))
    active = await accepted(q, made)
    step = await q.stub.UpdateProgress(progress(active, active.objectives[0].objective_id, key="p1"), timeout=5)

    nc2 = await nats.connect(nats_server.url)
    try:
        storage2 = JetStreamStorage(nc2, prefix=q.prefix)
        async with quests_on(nc2, storage2, q.mesh, q.clock) as stub:
            got = (await stub.GetQuest(pb.GetQuestRequest(quest_id=made.quest_id), timeout=5)).quest
            listed = await stub.List(pb.ListRequest(player_id="ayla"), timeout=5)
            again = (await stub.GenerateQuest(generate(key="kept"), timeout=5)).quest
            replay = await stub.UpdateProgress(progress(active, active.objectives[0].objective_id, key="p1"), timeout=5)
    finally:
        await nc2.close()

    assert got == step.quest
    assert [item.quest_id for item in listed.quests] == [made.quest_id]
    assert again == step.quest
    assert replay == step


async def test_generation_works_end_to_end_with_the_real_story_teller(nc, storage):
    story_module, inference_module = load("story-teller"), load("ai-integration")
    if story_module is None or inference_module is None:
        pytest.skip("story-teller or ai-integration is not built yet")
    calls = Calls()
    async with mesh_on(nc) as mesh:
        await host_surroundings(mesh, storage, calls, StandInStoryTeller())
        await mesh.stop("story-teller")
        deps = Dependencies(storage=storage, channel=mesh.channel)
        await mesh.host(inference_module.TARGET, inference_module.add_to_server, await inference_module.create(deps))
        await mesh.host(story_module.TARGET, story_module.add_to_server, await story_module.create(deps))
        async with quests_on(nc, storage, mesh, Clock()) as stub:
            call = stub.GenerateQuest(generate(), timeout=10)
            made = (await call).quest
            stories = story_teller_pb2_grpc.StoryTellerServiceStub(mesh.channel(story_module.TARGET))
            story = (await stories.GetStory(st.GetStoryRequest(story_id=made.story_id), timeout=5)).story

    assert degraded_sources(await call.trailing_metadata()) == []
    assert story.player_id == "ayla"
    assert made.description.endswith(story.beats[0].text)

