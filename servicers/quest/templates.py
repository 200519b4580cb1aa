"""The quest templates quest-system generates from: titles, premises and objective patterns.

A template is data: text patterns with ``{region}`` (the region's display name), ``{giver}``
(the giver NPC's name) and ``{count}`` (an objective's required count) placeholders, the
difficulties it is offered at, how large a region it needs, and its base rewards. Counts and
rewards are given at DIFFICULTY_EASY and multiplied by ``DIFFICULTY_SCALE``.

Which template a request gets: among those that ``fits`` the request's difficulty and region,
the one a hash of (player, region, idempotency key) picks, so a given request always gets the
same template and different requests spread over all that fit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from gaming.common.v1 import common_pb2
from gaming.quest.v1 import quest_pb2
from gaming.story_teller.v1 import story_teller_pb2
from gaming.world_state.v1 import world_state_pb2

# Counts and rewards at each difficulty, relative to DIFFICULTY_EASY.
DIFFICULTY_SCALE: dict[int, int] = {
    quest_pb2.DIFFICULTY_EASY: 1,
    quest_pb2.DIFFICULTY_NORMAL: 2,
    quest_pb2.DIFFICULTY_HARD: 3,
    quest_pb2.DIFFICULTY_LEGENDARY: 5,
}
REWARD_CURRENCY = "GOLD"
MAX_TITLE_CHARS = 120


@dataclass(frozen=True, slots=True, kw_only=True)
class ObjectivePattern:
    """One objective of a template.

    Attributes:
        objective_id: id of the objective within the quest.
        text: what to do, with placeholders.
        count: required count at DIFFICULTY_EASY.
        scales: whether the count grows with difficulty (a single delivery does not).
    """

    objective_id: str
    text: str
    count: int
    scales: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class QuestTemplate:
    """A kind of quest.

    Attributes:
        template_id: stable id, recorded in each quest.
        title: the quest's title pattern.
        premise: what story-teller is asked to narrate (a hook for the player).
        summary: the description used when story-teller cannot be reached.
        tone: the story-teller tone.
        objectives: in the order they are meant to be done.
        difficulties: the difficulties the template is offered at.
        min_region_span: metres the region must measure, east-west and north-south, at least.
        gold: reward in minor units of ``REWARD_CURRENCY`` at DIFFICULTY_EASY.
        experience: experience points at DIFFICULTY_EASY.
        item_id: an item granted once, whatever the difficulty; empty for none.
        lifetime_days: days from generation until an unfinished quest expires.
    """

    template_id: str
    title: str
    premise: str
    summary: str
    tone: int
    objectives: tuple[ObjectivePattern, ...]
    difficulties: frozenset[int]
    min_region_span: float = 0.0
    gold: int
    experience: int
    item_id: str = ""
    lifetime_days: int = 7

    def fits(self, difficulty: int, region: world_state_pb2.Region) -> bool:
        """Whether the template is offered at ``difficulty`` in ``region``."""
        if difficulty not in self.difficulties:
            return False
        span = min(region.bounds_max.x - region.bounds_min.x, region.bounds_max.z - region.bounds_min.z)
        return span >= self.min_region_span

    def objectives_for(self, difficulty: int, *, region: str, giver: str) -> list[quest_pb2.Objective]:
        """The objectives at ``difficulty``, texts filled in, counts at zero."""
        scale = DIFFICULTY_SCALE[difficulty]
        built = []
        for pattern in self.objectives:
            count = pattern.count * scale if pattern.scales else pattern.count
            text = pattern.text.format(count=count, region=region, giver=giver)
            built.append(quest_pb2.Objective(objective_id=pattern.objective_id, description=text,
                                             required_count=count, current_count=0))
        return built

    def rewards_for(self, difficulty: int) -> list[quest_pb2.Reward]:
        """The rewards at ``difficulty``: gold, experience, and the item if any."""
        scale = DIFFICULTY_SCALE[difficulty]
        rewards = [
            quest_pb2.Reward(money=common_pb2.Money(currency_code=REWARD_CURRENCY, amount_minor=self.gold * scale)),
            quest_pb2.Reward(experience_points=self.experience * scale),
        ]
        if self.item_id:
            rewards.append(quest_pb2.Reward(item=quest_pb2.ItemReward(item_id=self.item_id, quantity=1)))
        return rewards

    def title_for(self, *, region: str, giver: str) -> str:
        """The title, at most ``MAX_TITLE_CHARS`` characters."""
        return _clip(self.title.format(region=region, giver=giver), MAX_TITLE_CHARS)

    def premise_for(self, *, region: str, giver: str) -> str:
        """The premise story-teller narrates."""
        return self.premise.format(region=region, giver=giver)

    def summary_for(self, *, region: str, giver: str) -> str:
        """The description without story-teller."""
        return self.summary.format(region=region, giver=giver)


_E, _N, _H, _L = (quest_pb2.DIFFICULTY_EASY, quest_pb2.DIFFICULTY_NORMAL, quest_pb2.DIFFICULTY_HARD,
                  quest_pb2.DIFFICULTY_LEGENDARY)

TEMPLATES: tuple[QuestTemplate, ...] = (
    QuestTemplate(
        template_id="herb_gathering",
        title="Herbs for {giver}",
        premise="{giver}, a healer in {region}, asks a traveller to gather moonpetal herbs before a fever spreads.",
        summary="{giver} needs moonpetal herbs from the meadows of {region} to brew a remedy.",
        tone=story_teller_pb2.TONE_WHIMSICAL,
        objectives=(
            ObjectivePattern(objective_id="gather", text="Gather {count} moonpetal herbs in {region}", count=5),
            ObjectivePattern(objective_id="deliver", text="Bring the herbs to {giver}", count=1, scales=False),
        ),
        difficulties=frozenset({_E, _N}),
        gold=50,
        experience=100,
    ),
    QuestTemplate(
        template_id="lost_courier",
        title="The Lost Courier of {region}",
        premise="A courier carrying a sealed satchel for {giver} vanished somewhere in {region}.",
        summary="{giver} is waiting for a courier who never arrived. Search {region} for the satchel.",
        tone=story_teller_pb2.TONE_MYSTERIOUS,
        objectives=(
            ObjectivePattern(objective_id="search", text="Search {count} abandoned campsites in {region}", count=2),
            ObjectivePattern(objective_id="return", text="Return the sealed satchel to {giver}", count=1,
                             scales=False),
        ),
        difficulties=frozenset({_E, _N, _H}),
        gold=80,
        experience=150,
        item_id="courier_seal",
    ),
    QuestTemplate(
        template_id="wolf_cull",
        title="Thin the Pack",
        premise="Wolves grow bold around {region}, and {giver} fears for the herds.",
        summary="{giver} asks for help: wolves are attacking the herds of {region}.",
        tone=story_teller_pb2.TONE_HEROIC,
        objectives=(
            ObjectivePattern(objective_id="defeat", text="Defeat {count} wolves prowling {region}", count=4),
            ObjectivePattern(objective_id="pelts", text="Recover {count} wolf pelts", count=2),
        ),
        difficulties=frozenset({_N, _H}),
        min_region_span=200.0,
        gold=120,
        experience=250,
    ),
    QuestTemplate(
        template_id="ruin_survey",
        title="Echoes in the Ruins of {region}",
        premise="{giver} has heard voices from the ruined towers of {region} and wants them mapped.",
        summary="{giver} wants the ruined towers of {region} mapped and their wards relit.",
        tone=story_teller_pb2.TONE_MYSTERIOUS,
        objectives=(
            ObjectivePattern(objective_id="map", text="Map {count} ruined towers across {region}", count=2),
            ObjectivePattern(objective_id="wards", text="Light {count} warding braziers", count=3),
        ),
        difficulties=frozenset({_N, _H, _L}),
        min_region_span=1000.0,
        gold=200,
        experience=400,
        lifetime_days=14,
    ),
    QuestTemplate(
        template_id="ancient_wyrm",
        title="The Wyrm Beneath {region}",
        premise="An ancient wyrm stirs beneath {region}; {giver} begs for a champion before it wakes.",
        summary="{giver} warns of an ancient wyrm waking beneath {region}. Find it and end it.",
        tone=story_teller_pb2.TONE_DARK,
        objectives=(
            ObjectivePattern(objective_id="signs", text="Find {count} signs of the wyrm", count=3),
            ObjectivePattern(objective_id="slay", text="Slay the ancient wyrm", count=1, scales=False),
        ),
        difficulties=frozenset({_H, _L}),
        min_region_span=2000.0,
        gold=500,
        experience=1000,
        item_id="wyrm_scale",
        lifetime_days=30,
    ),
)


def fitting(difficulty: int, region: world_state_pb2.Region,
            templates: Sequence[QuestTemplate] = TEMPLATES) -> list[QuestTemplate]:
    """The templates offered at ``difficulty`` in ``region``, in catalogue order."""
    return [template for template in templates if template.fits(difficulty, region)]


def pick(candidates: Sequence[QuestTemplate], *seed: str) -> QuestTemplate:
    """One of ``candidates`` (not empty), chosen by a hash of ``seed``: the same seed, the same pick."""
    digest = hashlib.sha256("\x00".join(seed).encode()).digest()
    return candidates[int.from_bytes(digest[:8], "big") % len(candidates)]


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
