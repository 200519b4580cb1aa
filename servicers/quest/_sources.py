"""What GenerateQuest asks the rest of the mesh, in three branches run side by side.

- ``region``: world-state GetRegion (required: the region must exist; its bounds pick templates).
- ``giver``: world-state ListEntities of kind ``npc`` in the region (the first ``MAX_CANDIDATES``
  by id; a region without NPCs offers one default herald), then npc-behavior Decide for each
  candidate as it sees the player, and the candidate most willing to talk (highest TALK utility;
  ties go to the lower entity id) gives the quest. Required.
- ``narrative``: story-teller TellStory, one beat, from a premise made of the region and the
  difficulty (not the template: that is not known before the region is, and the branches run
  side by side). Optional: when story-teller fails, the quest keeps its template-only
  description and the answer is flagged (``servicers._downstream.flag_degraded``).

Each branch takes its share of the caller's remaining time (``_downstream``: required 80 %,
optional 50 %); the giver branch spends its share on its two calls in turn.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from gaming.common.v1 import common_pb2
from gaming.npc_behavior.v1 import npc_behavior_pb2, npc_behavior_pb2_grpc
from gaming.quest.v1 import quest_pb2
from gaming.story_teller.v1 import story_teller_pb2, story_teller_pb2_grpc
from gaming.world_state.v1 import world_state_pb2, world_state_pb2_grpc

from servicers._downstream import OPTIONAL, REQUIRED, DependencyError, budget, describe, gather_all

_log = logging.getLogger(__name__)

STORY_TELLER = "story-teller"
NPC_BEHAVIOR = "npc-behavior"
WORLD_STATE = "world-state"
NPC_KIND = "npc"
MAX_CANDIDATES = 8
# How strongly a candidate giver perceives the player (Perception.intensity).
PLAYER_PRESENCE = 0.6
_MOODS = {
    "calm": npc_behavior_pb2.MOOD_CALM, "happy": npc_behavior_pb2.MOOD_HAPPY,
    "alert": npc_behavior_pb2.MOOD_ALERT, "afraid": npc_behavior_pb2.MOOD_AFRAID,
    "angry": npc_behavior_pb2.MOOD_ANGRY,
}
_TONES: dict[int, int] = {
    quest_pb2.DIFFICULTY_EASY: story_teller_pb2.TONE_WHIMSICAL,
    quest_pb2.DIFFICULTY_NORMAL: story_teller_pb2.TONE_HEROIC,
    quest_pb2.DIFFICULTY_HARD: story_teller_pb2.TONE_MYSTERIOUS,
    quest_pb2.DIFFICULTY_LEGENDARY: story_teller_pb2.TONE_DARK,
}


@dataclass(frozen=True, slots=True)
class Giver:
    """The NPC who gives the quest: its entity id and the name quest texts use."""

    npc_id: str
    name: str


@dataclass(frozen=True, slots=True)
class Narrative:
    """A story-teller hook: the story it starts and its first beat."""

    story_id: str
    text: str


@dataclass(frozen=True, slots=True)
class Gathered:
    """What the three branches found; ``narrative`` None when story-teller failed."""

    region: world_state_pb2.Region
    giver: Giver
    narrative: Narrative | None


class Sources:
    """Calls world-state, npc-behavior and story-teller through ``channel(target)``."""

    def __init__(self, channel: Callable[[str], Any]) -> None:
        self._channel = channel

    def __repr__(self) -> str:
        return f"<Sources {WORLD_STATE}, {NPC_BEHAVIOR}, {STORY_TELLER}>"

    async def gather(
        self, request: quest_pb2.GenerateQuestRequest, difficulty: int, remaining: float | None
    ) -> Gathered:
        """Run the three branches side by side.

        Raises:
            DependencyError: NOT_FOUND for an unknown region, UNAVAILABLE naming world-state or
                npc-behavior when either failed (the other branches are then cancelled).
        """
        region, giver, narrative = await gather_all(
            self.region(request.region_id, budget(remaining, REQUIRED)),
            self.giver(request.region_id, request.player_id, budget(remaining, REQUIRED)),
            self.narrative(request, difficulty, budget(remaining, OPTIONAL)),
        )
        return Gathered(region, giver, narrative)

    async def region(self, region_id: str, seconds: float) -> world_state_pb2.Region:
        """The region from world-state."""
        stub = world_state_pb2_grpc.WorldStateServiceStub(self._channel(WORLD_STATE))
        try:
            reply = await stub.GetRegion(world_state_pb2.GetRegionRequest(region_id=region_id), timeout=seconds)
        except grpc.aio.AioRpcError as err:
            raise _world_state_error(err, region_id) from err
        region: world_state_pb2.Region = reply.region
        return region

    async def giver(self, region_id: str, player_id: str, seconds: float) -> Giver:
        """The candidate NPC most willing to talk to the player."""
        started = time.monotonic()
        world = world_state_pb2_grpc.WorldStateServiceStub(self._channel(WORLD_STATE))
        listing = world_state_pb2.ListEntitiesRequest(
            region_id=region_id, kind=NPC_KIND, page=common_pb2.PageRequest(page_size=MAX_CANDIDATES)
        )
        try:
            # Half the branch's time for the listing, the rest (whatever it left) for deciding.
            listed = await world.ListEntities(listing, timeout=seconds / 2)
        except grpc.aio.AioRpcError as err:
            raise _world_state_error(err, region_id) from err
        candidates = [(_npc_state(entity), _display_name(entity)) for entity in listed.entities]
        if not candidates:
            herald = default_giver(region_id)
            candidates = [(npc_behavior_pb2.NpcState(npc_id=herald.npc_id, health=1.0, energy=1.0,
                                                     mood=npc_behavior_pb2.MOOD_HAPPY), herald.name)]
        npc = npc_behavior_pb2_grpc.NpcBehaviorServiceStub(self._channel(NPC_BEHAVIOR))
        left = max(seconds - (time.monotonic() - started), 0.0)
        try:
            decisions = await gather_all(*(
                npc.Decide(npc_behavior_pb2.DecideRequest(state=state, perceptions=[_sees(player_id)]), timeout=left)
                for state, _ in candidates
            ))
        except grpc.aio.AioRpcError as err:
            # Our requests are valid by construction: any failure means npc-behavior let us down.
            raise DependencyError.down(NPC_BEHAVIOR, err) from err
        scores = [_talk_score(decision) for decision in decisions]
        best = max(range(len(candidates)), key=lambda index: (scores[index], -index))
        state, name = candidates[best]
        return Giver(state.npc_id, name)

    async def narrative(
        self, request: quest_pb2.GenerateQuestRequest, difficulty: int, seconds: float
    ) -> Narrative | None:
        """A hook from story-teller, or None when it cannot give one in time."""
        stub = story_teller_pb2_grpc.StoryTellerServiceStub(self._channel(STORY_TELLER))
        tell = story_teller_pb2.TellStoryRequest(
            premise=(f"A traveller arrives in {request.region_id} looking for work, and someone there needs help"
                     f" with a {_difficulty_word(difficulty)} task."),
            player_id=request.player_id,
            tone=_TONES[difficulty],  # type: ignore[arg-type]  # an int of the enum
            max_beats=1,
            locale=request.locale if request.HasField("locale") else None,
        )
        call = stub.TellStory(tell, timeout=seconds)
        try:
            async for reply in call:
                return Narrative(reply.story_id, reply.beat.text)
            return None
        except grpc.aio.AioRpcError as err:
            _log.warning("story-teller failed; using the template's description: %s", describe(err))
            return None
        finally:
            call.cancel()  # we read one beat: nothing more is wanted


def default_giver(region_id: str) -> Giver:
    """The giver of a region without NPCs: its herald (not an entity of the world)."""
    return Giver(f"herald@{region_id}", f"the herald of {region_id}")


def _world_state_error(err: grpc.aio.AioRpcError, region_id: str) -> DependencyError:
    if err.code() == grpc.StatusCode.NOT_FOUND:
        return DependencyError(grpc.StatusCode.NOT_FOUND, f"region {region_id!r} does not exist", "REGION_NOT_FOUND")
    return DependencyError.down(WORLD_STATE, err)


def _difficulty_word(difficulty: int) -> str:
    return quest_pb2.Difficulty.Name(difficulty).removeprefix("DIFFICULTY_").lower()  # type: ignore[arg-type]


def _attribute(entity: world_state_pb2.Entity, key: str) -> str | None:
    for attribute in entity.attributes:
        if attribute.key == key:
            return attribute.value
    return None


def _fraction(entity: world_state_pb2.Entity, key: str, default: float) -> float:
    """A [0, 1] attribute of the entity (npc-behavior refuses values outside it)."""
    text = _attribute(entity, key)
    try:
        value = float(text) if text is not None else default
    except ValueError:
        return default
    return min(max(value, 0.0), 1.0) if math.isfinite(value) else default


def _npc_state(entity: world_state_pb2.Entity) -> npc_behavior_pb2.NpcState:
    mood = _MOODS.get((_attribute(entity, "mood") or "").lower(), npc_behavior_pb2.MOOD_CALM)
    return npc_behavior_pb2.NpcState(
        npc_id=entity.entity_id,
        health=_fraction(entity, "health", 1.0),
        energy=_fraction(entity, "energy", 0.8),
        hunger=_fraction(entity, "hunger", 0.2),
        position=entity.position,
        mood=mood,
    )


def _display_name(entity: world_state_pb2.Entity) -> str:
    return _attribute(entity, "name") or entity.entity_id


def _sees(player_id: str) -> npc_behavior_pb2.Perception:
    # No position: npc-behavior then takes the NPC's own, i.e. the player stands next to it.
    return npc_behavior_pb2.Perception(
        kind=npc_behavior_pb2.PERCEPTION_KIND_SEE_PLAYER, source_id=player_id, intensity=PLAYER_PRESENCE
    )


def _talk_score(decision: npc_behavior_pb2.DecideResponse) -> float:
    for action in (decision.chosen, *decision.alternatives):
        if action.kind == npc_behavior_pb2.ACTION_KIND_TALK:
            return float(action.utility_score)
    return 0.0
