"""npc-behavior over nats_transport against a real nats-server: decisions, errors and the stream."""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator

import grpc
import pytest
from gaming.common.v1 import common_pb2
from gaming.npc_behavior.v1 import npc_behavior_pb2 as pb
from gaming.npc_behavior.v1 import npc_behavior_pb2_grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from servicers import npc_behavior
from servicers.dependencies import Dependencies
from servicers.npc_behavior._memory import ThreatMemory
from tests._serving import served

NOW = 1_700_000_000.25
SEE_PLAYER = pb.PERCEPTION_KIND_SEE_PLAYER
HEAR_NOISE = pb.PERCEPTION_KIND_HEAR_NOISE
TAKE_DAMAGE = pb.PERCEPTION_KIND_TAKE_DAMAGE
SEE_ITEM = pb.PERCEPTION_KIND_SEE_ITEM
SEE_NPC = pb.PERCEPTION_KIND_SEE_NPC
EVERY_ACTION = sorted(
    value for value in pb.ActionKind.values() if value != pb.ACTION_KIND_UNSPECIFIED
)


def _no_channel(target: str) -> None:
    raise AssertionError(f"npc-behavior calls no other service, yet asked for {target}")


@pytest.fixture
async def stub(nc, storage) -> AsyncIterator[npc_behavior_pb2_grpc.NpcBehaviorServiceStub]:
    servicer = await npc_behavior.create(Dependencies(storage=storage, channel=_no_channel, clock=lambda: NOW))
    async with served(nc, npc_behavior.add_to_server, servicer) as channel:
        yield npc_behavior_pb2_grpc.NpcBehaviorServiceStub(channel)


def state(npc_id: str = "guard-1", **fields: object) -> pb.NpcState:
    values: dict[str, object] = {"health": 1.0, "energy": 1.0, "hunger": 0.0, **fields}
    return pb.NpcState(npc_id=npc_id, **values)  # type: ignore[arg-type]


def seen(kind: int, source_id: str = "", x: float = 0.0, intensity: float = 1.0) -> pb.Perception:
    return pb.Perception(kind=kind, source_id=source_id, position=common_pb2.Vector3(x=x), intensity=intensity)  # type: ignore[arg-type]


async def decide(stub, npc: pb.NpcState, *perceptions: pb.Perception) -> pb.DecideResponse:
    return await stub.Decide(pb.DecideRequest(state=npc, perceptions=perceptions), timeout=5)


# -- Decide: choices --------------------------------------------------------------------------


async def test_a_content_npc_with_nothing_around_wanders(stub):
    reply = await decide(stub, state())

    assert reply.chosen.kind == pb.ACTION_KIND_WANDER
    assert reply.chosen.target_id == ""


async def test_a_calm_npc_talks_to_a_player_standing_close(stub):
    reply = await decide(stub, state(), seen(SEE_PLAYER, "player-7", x=2, intensity=0.8))

    assert reply.chosen.kind == pb.ACTION_KIND_TALK
    assert reply.chosen.target_id == "player-7"
    assert "player-7" in reply.chosen.reason


async def test_a_healthy_npc_that_is_hit_attacks_its_attacker(stub):
    sight, hit = seen(SEE_PLAYER, "player-7", x=2, intensity=0.8), seen(TAKE_DAMAGE, "player-7", x=2, intensity=0.3)

    reply = await decide(stub, state(), sight, hit)

    assert reply.chosen.kind == pb.ACTION_KIND_ATTACK
    assert reply.chosen.target_id == "player-7"
    assert reply.chosen.reason.startswith("threat 0.9")


async def test_a_badly_hurt_npc_that_is_hit_flees_from_its_attacker(stub):
    reply = await decide(stub, state(health=0.15), seen(TAKE_DAMAGE, "player-7", x=2, intensity=0.3))

    assert reply.chosen.kind == pb.ACTION_KIND_FLEE
    assert reply.chosen.target_id == "player-7"
    assert "health 0.15" in reply.chosen.reason


async def test_a_hungry_npc_eats_the_food_it_sees(stub):
    reply = await decide(stub, state(hunger=0.9), seen(SEE_ITEM, "apple-3", x=3), seen(SEE_ITEM, "bread-1", x=30))

    assert reply.chosen.kind == pb.ACTION_KIND_EAT
    assert reply.chosen.target_id == "apple-3"


async def test_an_exhausted_npc_rests(stub):
    reply = await decide(stub, state(energy=0.1))

    assert reply.chosen.kind == pb.ACTION_KIND_REST


async def test_a_noise_nearby_makes_an_npc_patrol(stub):
    reply = await decide(stub, state(), seen(HEAR_NOISE, x=10, intensity=0.8))

    assert reply.chosen.kind == pb.ACTION_KIND_PATROL
    assert "noise" in reply.chosen.reason


async def test_mood_changes_the_choice_for_the_same_stimuli(stub):
    player = seen(SEE_PLAYER, "player-7", x=2, intensity=0.8)

    calm = await decide(stub, state(mood=pb.MOOD_CALM), player)
    angry = await decide(stub, state(mood=pb.MOOD_ANGRY), player)
    afraid = await decide(stub, state(mood=pb.MOOD_AFRAID), player)
    unspecified = await decide(stub, state(), player)

    assert [calm.chosen.kind, angry.chosen.kind, afraid.chosen.kind] == [
        pb.ACTION_KIND_TALK, pb.ACTION_KIND_ATTACK, pb.ACTION_KIND_FLEE
    ]
    assert "mood x1.5" in angry.chosen.reason
    assert unspecified.chosen == calm.chosen


async def test_the_current_activity_gets_an_inertia_bonus(stub):
    # A happy NPC near a barely noticed neighbour: wandering just beats talking, unless it is
    # talking already.
    neighbour = seen(SEE_NPC, "smith", intensity=0.27)
    fresh = await decide(stub, state(mood=pb.MOOD_HAPPY), neighbour)
    talking = await decide(stub, state(mood=pb.MOOD_HAPPY, current_activity=pb.ACTION_KIND_TALK), neighbour)

    before = {action.kind: action.utility_score for action in [fresh.chosen, *fresh.alternatives]}
    after = {action.kind: action.utility_score for action in [talking.chosen, *talking.alternatives]}
    assert fresh.chosen.kind == pb.ACTION_KIND_WANDER
    assert talking.chosen.kind == pb.ACTION_KIND_TALK
    assert talking.chosen.target_id == "smith"
    assert after[pb.ACTION_KIND_TALK] == pytest.approx(before[pb.ACTION_KIND_TALK] + 0.05, abs=1e-6)
    assert "already doing it" in talking.chosen.reason


async def test_a_perception_of_unspecified_kind_is_ignored(stub):
    plain = await decide(stub, state())
    with_unknown = await decide(stub, state(), seen(pb.PERCEPTION_KIND_UNSPECIFIED, "ghost", intensity=1.0))

    assert with_unknown.chosen == plain.chosen
    assert list(with_unknown.alternatives) == list(plain.alternatives)


async def test_every_action_is_ranked_once_best_first_with_scores_between_0_and_1(stub):
    reply = await decide(
        stub, state(hunger=0.6, energy=0.4), seen(SEE_NPC, "smith", x=4), seen(SEE_ITEM, "apple", x=6, intensity=0.5)
    )

    ranked = [reply.chosen, *reply.alternatives]
    scores = [action.utility_score for action in ranked]
    assert sorted(action.kind for action in ranked) == EVERY_ACTION
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= value <= 1.0 for value in scores)
    assert all(action.reason for action in ranked)
    assert reply.chosen.kind not in [action.kind for action in reply.alternatives]


async def test_the_same_request_always_gets_the_same_decision_stamped_with_the_clock(stub):
    perceptions = [seen(SEE_PLAYER, "p", x=5, intensity=0.5), seen(HEAR_NOISE, x=12, intensity=0.3)]
    first = await decide(stub, state(hunger=0.4), *perceptions)
    second = await decide(stub, state(hunger=0.4), *perceptions)

    assert first == second
    assert first.decide_time.seconds == int(NOW)
    assert first.decide_time.nanos == 250_000_000


# -- Decide: errors ---------------------------------------------------------------------------


def _too_many() -> list[pb.Perception]:
    return [seen(HEAR_NOISE, intensity=0.1)] * 65


INVALID = [
    pytest.param(pb.DecideRequest(), "state", id="no state"),
    pytest.param(pb.DecideRequest(state=state(npc_id="")), "state.npc_id", id="empty npc id"),
    pytest.param(pb.DecideRequest(state=state(npc_id="n" * 257)), "state.npc_id", id="npc id too long"),
    pytest.param(pb.DecideRequest(state=state(health=1.5)), "state.health", id="health above 1"),
    pytest.param(pb.DecideRequest(state=state(energy=math.nan)), "state.energy", id="energy NaN"),
    pytest.param(pb.DecideRequest(state=state(hunger=-0.1)), "state.hunger", id="hunger below 0"),
    pytest.param(pb.DecideRequest(state=state(mood=42)), "state.mood", id="unknown mood"),
    pytest.param(pb.DecideRequest(state=state(current_activity=99)), "state.current_activity", id="unknown action"),
    pytest.param(
        pb.DecideRequest(state=state(position=common_pb2.Vector3(x=math.inf))), "state.position", id="infinite position"
    ),
    pytest.param(pb.DecideRequest(state=state(), perceptions=_too_many()), "perceptions", id="65 perceptions"),
    pytest.param(
        pb.DecideRequest(state=state(), perceptions=[seen(SEE_ITEM), seen(SEE_ITEM, intensity=2.0)]),
        "perceptions[1].intensity",
        id="intensity above 1",
    ),
    pytest.param(
        pb.DecideRequest(state=state(), perceptions=[pb.Perception(kind=77)]), "perceptions[0].kind", id="unknown kind"
    ),
    pytest.param(
        pb.DecideRequest(state=state(), perceptions=[seen(SEE_ITEM, source_id="s" * 257)]),
        "perceptions[0].source_id",
        id="source id too long",
    ),
]


@pytest.mark.parametrize(("request_", "field"), INVALID)
async def test_a_request_out_of_range_fails_with_invalid_argument_naming_the_field(stub, request_, field):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Decide(request_, timeout=5)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(caught.value)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert [violation.field for violation in bad_request.field_violations] == [field]


async def test_exactly_64_perceptions_are_accepted(stub):
    reply = await decide(stub, state(), *[seen(HEAR_NOISE, intensity=0.1)] * 64)

    assert reply.chosen.kind != pb.ACTION_KIND_UNSPECIFIED


# -- DecisionStream ---------------------------------------------------------------------------


def tick(sequence: int, npc: pb.NpcState, *perceptions: pb.Perception) -> pb.DecisionStreamRequest:
    return pb.DecisionStreamRequest(client_sequence=sequence, state=npc, perceptions=perceptions)


async def test_the_stream_answers_each_request_in_order_echoing_its_sequence(stub):
    call = stub.DecisionStream(timeout=10)
    npcs = [state(f"npc-{index}", hunger=index / 10) for index in range(10)]
    for sequence, npc in enumerate(npcs, start=100):
        await call.write(tick(sequence, npc))
    await call.done_writing()

    replies = [reply async for reply in call]

    assert [reply.client_sequence for reply in replies] == list(range(100, 110))
    assert [reply.npc_id for reply in replies] == [npc.npc_id for npc in npcs]
    assert all(reply.error_code == 0 and reply.error_message == "" for reply in replies)
    assert await call.code() == grpc.StatusCode.OK


async def test_a_stream_decision_without_memory_matches_decide(stub):
    perceptions = [seen(SEE_PLAYER, "player-7", x=2, intensity=0.8), seen(SEE_ITEM, "apple", x=1)]
    call = stub.DecisionStream(timeout=10)
    await call.write(tick(1, state(hunger=0.7), *perceptions))
    streamed = await call.read()
    await call.done_writing()

    alone = await decide(stub, state(hunger=0.7), *perceptions)

    assert streamed.chosen == alone.chosen
    assert list(streamed.alternatives) == list(alone.alternatives)


async def test_an_invalid_request_is_answered_in_band_and_the_stream_goes_on(stub):
    call = stub.DecisionStream(timeout=10)
    await call.write(tick(1, state()))
    await call.write(tick(2, state(health=7.0)))
    await call.write(tick(3, state(npc_id="")))
    await call.write(pb.DecisionStreamRequest(client_sequence=4))
    await call.write(tick(5, state(energy=0.1)))
    await call.done_writing()

    replies = [reply async for reply in call]

    assert [reply.client_sequence for reply in replies] == [1, 2, 3, 4, 5]
    assert [reply.error_code for reply in replies] == [0, code_pb2.INVALID_ARGUMENT, code_pb2.INVALID_ARGUMENT,
                                                       code_pb2.INVALID_ARGUMENT, 0]
    assert replies[1].error_message == "state.health: 7.0 is outside [0, 1]"
    assert replies[1].npc_id == "guard-1"
    assert not replies[1].HasField("chosen")
    assert replies[2].error_message == "state.npc_id: is required"
    assert replies[3].error_message == "state: is required"
    assert replies[4].chosen.kind == pb.ACTION_KIND_REST
    assert await call.code() == grpc.StatusCode.OK


async def test_a_remembered_hit_keeps_a_hurt_npc_fleeing_where_decide_would_not(stub):
    hurt = state(health=0.3)
    call = stub.DecisionStream(timeout=10)
    await call.write(tick(1, hurt, seen(TAKE_DAMAGE, "bandit", x=2, intensity=0.3)))
    hit = await call.read()
    # The next tick perceives nothing: the stream still remembers the bandit, Decide cannot.
    await call.write(tick(2, hurt))
    remembered = await call.read()
    stateless = await decide(stub, hurt)
    await call.done_writing()

    assert hit.chosen.kind == pb.ACTION_KIND_FLEE
    assert remembered.chosen.kind == pb.ACTION_KIND_FLEE
    assert remembered.chosen.target_id == "bandit"
    assert "remembered" in remembered.chosen.reason
    assert remembered.chosen.utility_score < hit.chosen.utility_score
    assert stateless.chosen.kind != pb.ACTION_KIND_FLEE


async def test_a_remembered_threat_halves_each_decision_and_is_gone_after_three(stub):
    npc = state()
    call = stub.DecisionStream(timeout=10)
    await call.write(tick(0, npc, seen(TAKE_DAMAGE, "bandit", intensity=0.4)))
    await call.read()
    flee_scores = []
    for sequence in range(1, 6):
        await call.write(tick(sequence, npc))
        reply = await call.read()
        flee_scores.append(next(a.utility_score for a in [reply.chosen, *reply.alternatives]
                                if a.kind == pb.ACTION_KIND_FLEE))
    await call.done_writing()

    assert flee_scores[0] > flee_scores[1] > flee_scores[2] > 0.0
    assert flee_scores[3:] == [0.0, 0.0]


async def test_memory_is_kept_per_npc_and_a_new_stream_starts_with_none(stub):
    hurt_a, hurt_b = state("npc-a", health=0.3), state("npc-b", health=0.3)
    first = stub.DecisionStream(timeout=10)
    await first.write(tick(1, hurt_a, seen(TAKE_DAMAGE, "bandit", intensity=0.3)))
    await first.read()
    await first.write(tick(2, hurt_b))
    other_npc = await first.read()
    await first.done_writing()
    second = stub.DecisionStream(timeout=10)
    await second.write(tick(1, hurt_a))
    new_stream = await second.read()
    await second.done_writing()

    assert other_npc.chosen.kind != pb.ACTION_KIND_FLEE
    assert new_stream.chosen.kind != pb.ACTION_KIND_FLEE


async def test_a_client_that_never_reads_answers_is_cut_off_with_resource_exhausted(stub):
    call = stub.DecisionStream(timeout=20)
    written = 0
    # Requests are small and the server keeps reading them, so the writes themselves do not
    # block; the answers pile up unread until the server gives up. Writing may fail from then on.
    with contextlib.suppress(grpc.aio.AioRpcError):
        for sequence in range(5000):
            await call.write(tick(sequence, state(f"npc-{sequence % 50}")))
            written += 1

    assert await call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "more than 256 requests" in await call.details()
    assert written > 256
    # Raised like every servicer error: the rich status names the reason.
    status = status_pb2.Status.FromString(dict(await call.trailing_metadata())["grpc-status-details-bin"])
    (info,) = [d for d in status.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
    unpacked = error_details_pb2.ErrorInfo()
    info.Unpack(unpacked)
    assert unpacked.reason == "ANSWERS_NOT_READ"


def test_memory_forgets_the_least_recent_npc_and_the_weakest_threats_beyond_its_bounds():
    memory = ThreatMemory(max_npcs=2, max_threats=2)
    memory.recall("a", [seen(SEE_PLAYER, "p1")])
    memory.recall("b", [seen(SEE_PLAYER, "p1")])
    memory.recall("c", [seen(SEE_PLAYER, "p1")])
    recalled_a = memory.recall("a", [])
    memory.recall("d", [seen(TAKE_DAMAGE, "x"), seen(SEE_PLAYER, "y"), seen(HEAR_NOISE, "z")])
    recalled_d = memory.recall("d", [])

    assert recalled_a == []
    assert len(memory) == 2
    assert sorted(stimulus.source_id for stimulus in recalled_d) == ["x", "y"]
    assert all(stimulus.weight == 0.5 for stimulus in recalled_d)
