"""World conditions as data, and the text built from them. Pure code, no I/O.

How the dependencies' answers become narrative inputs:

- Weather: weather-manager's condition carries over by name (the enums share numbers 1-6). Its
  enum has no "windy": a CLEAR or CLOUDY sky with a mean wind of at least 10.8 m/s (Beaufort 6,
  "strong breeze") is reported as WEATHER_CONDITION_WINDY, as the narrative proto defines it
  ("strong wind without precipitation").
- Day phase: time-manager's DAWN, DUSK and NIGHT carry over; its DAY (07:00-18:00) is MORNING
  before 12:00 game time and AFTERNOON from 12:00.
- Notable entities: an entity whose attribute ``notable`` is ``"true"`` comes first; then, by
  kind, landmarks, NPCs, creatures and items; other kinds (player avatars, props) and entities
  marked ``notable = "false"`` are left out. Ties go by entity id, so the choice is stable. At
  most 10 are reported; descriptions name the first 1 (brief), 3 (standard) or 6 (rich). The
  display name is the attribute ``name_<language>`` (e.g. ``name_fr``), else ``name``, else
  the entity id.

Detail levels and what they hold (sentences are dropped from the end when a limit would be
passed; a first sentence that alone is too long is cut with an ellipsis):

- BRIEF, at most 150 characters: one sentence of weather, time of day and region, plus the most
  notable entity when it fits (``brief_*`` templates).
- STANDARD (also for UNSPECIFIED), at most 600: ``place``, ``sky``, up to 3 entities.
- RICH, at most 2,000: ``place``, ``sky``, ``air``, ``wind``, up to 6 entities with their kinds,
  ``mood``.

Unknown inputs (a dependency was down) only remove sentences: no weather, no ``sky``, ``air``
or ``wind``; no phase, the phase-free ``place`` and no ``mood``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeAlias, cast

from gaming.common.v1 import common_pb2
from gaming.environmental_narrative.v1 import environmental_narrative_pb2 as pb
from gaming.time_manager.v1 import time_manager_pb2 as tm
from gaming.weather.v1 import weather_pb2
from gaming.world_state.v1 import world_state_pb2 as ws

from servicers.environmental_narrative.templates import DEFAULT_LANGUAGE, LANGUAGES, Templates

Condition: TypeAlias = pb.WeatherCondition.ValueType
Phase: TypeAlias = pb.DayPhase.ValueType

WINDY_MPS = 10.8  # Beaufort 6, "strong breeze"
MAX_NOTABLE = 10
NAMED = {pb.DETAIL_LEVEL_BRIEF: 1, pb.DETAIL_LEVEL_STANDARD: 3, pb.DETAIL_LEVEL_RICH: 6}
LIMITS = {pb.DETAIL_LEVEL_BRIEF: 150, pb.DETAIL_LEVEL_STANDARD: 600, pb.DETAIL_LEVEL_RICH: 2000}
# Kinds worth mentioning, most notable first; entities marked notable="true" come before them all.
KIND_RANK = {"landmark": 1, "npc": 2, "creature": 3, "item": 4}
_DAY_SECONDS = 86_400
_NOON = 12 * 3600
_STILL_MPS = 0.5


@dataclass(frozen=True, slots=True)
class Sky:
    """The weather figures a description uses."""

    condition: Condition
    celsius: float
    wind_speed: float
    wind_from_degrees: float


@dataclass(frozen=True, slots=True)
class Notable:
    """An entity worth mentioning, with its name in the requested language."""

    entity_id: str
    display_name: str
    kind: str
    position: tuple[float, float, float]


@dataclass(frozen=True, slots=True)
class Conditions:
    """Everything a description is built from; ``sky`` or ``phase`` is None when unknown."""

    region_name: str
    sky: Sky | None
    phase: Phase | None
    notables: tuple[Notable, ...]
    revision: int

    def change_key(self) -> tuple[object, ...]:
        """What an ambience stream compares: weather, phase and which entities are notable.

        Positions and the world revision are left out on purpose: an NPC walking about or any
        event elsewhere in the region is not a change of ambience.
        """
        condition = self.sky.condition if self.sky is not None else None
        return condition, self.phase, tuple((n.entity_id, n.display_name, n.kind) for n in self.notables)

    def inputs(self) -> pb.NarrativeInputs:
        """The proto's report of these conditions (UNSPECIFIED for what is unknown)."""
        return pb.NarrativeInputs(
            weather_condition=self.sky.condition if self.sky is not None else pb.WEATHER_CONDITION_UNSPECIFIED,
            day_phase=self.phase if self.phase is not None else pb.DAY_PHASE_UNSPECIFIED,
            notable_entities=[
                pb.NotableEntity(
                    entity_id=n.entity_id, display_name=n.display_name, kind=n.kind,
                    position=common_pb2.Vector3(x=n.position[0], y=n.position[1], z=n.position[2]),
                )
                for n in self.notables
            ],
            world_state_revision=common_pb2.Revision(value=self.revision),
        )


def language_of(tag: str) -> str:
    """The language subtag of a BCP 47 tag, lower case; "en" for an empty tag (en-US)."""
    return tag.split("-", 1)[0].lower() if tag else DEFAULT_LANGUAGE


def templates_for(language: str) -> tuple[str, Templates]:
    """The language whose templates are used for ``language`` (itself, or the default), and them."""
    used = language if language in LANGUAGES else DEFAULT_LANGUAGE
    return used, LANGUAGES[used]


def sky_of(weather: weather_pb2.Weather) -> Sky | None:
    """The narrative's view of a weather report; None if its condition is unspecified."""
    condition = int(weather.condition)
    if condition not in pb.WeatherCondition.values() or condition == pb.WEATHER_CONDITION_UNSPECIFIED:
        return None
    if condition in (pb.WEATHER_CONDITION_CLEAR, pb.WEATHER_CONDITION_CLOUDY) and weather.wind.speed_mps >= WINDY_MPS:
        condition = pb.WEATHER_CONDITION_WINDY
    return Sky(
        condition=cast(Condition, condition),
        celsius=weather.temperature_celsius,
        wind_speed=weather.wind.speed_mps,
        wind_from_degrees=weather.wind.direction_degrees,
    )


_PHASES: dict[int, Phase] = {
    tm.DAY_PHASE_DAWN: pb.DAY_PHASE_DAWN,
    tm.DAY_PHASE_DUSK: pb.DAY_PHASE_DUSK,
    tm.DAY_PHASE_NIGHT: pb.DAY_PHASE_NIGHT,
}


def phase_of(clock: tm.Clock) -> Phase | None:
    """The narrative's day phase for a game clock; None if the clock reports none."""
    if clock.phase == tm.DAY_PHASE_DAY:
        # Game time counts from 0001-01-01T00:00Z, a midnight, so seconds mod a day is the time of day.
        time_of_day = clock.game_time.seconds % _DAY_SECONDS
        return pb.DAY_PHASE_MORNING if time_of_day < _NOON else pb.DAY_PHASE_AFTERNOON
    return _PHASES.get(clock.phase)


def _attribute(entity: ws.Entity, key: str) -> str | None:
    for attribute in entity.attributes:
        if attribute.key == key:
            return attribute.value
    return None


def _rank(entity: ws.Entity) -> int | None:
    marked = _attribute(entity, "notable")
    if marked == "false":
        return None
    if marked == "true":
        return 0
    return KIND_RANK.get(entity.kind)


def notables(entities: Iterable[ws.Entity], language: str) -> tuple[Notable, ...]:
    """The most notable entities, best first, at most ``MAX_NOTABLE``, named in ``language``."""
    ranked = sorted(
        ((rank, entity.entity_id, entity) for entity in entities if (rank := _rank(entity)) is not None),
        key=lambda item: (item[0], item[1]),
    )
    return tuple(
        Notable(
            entity_id=entity.entity_id,
            display_name=_attribute(entity, f"name_{language}") or _attribute(entity, "name") or entity.entity_id,
            kind=entity.kind,
            position=(entity.position.x, entity.position.y, entity.position.z),
        )
        for _, _, entity in ranked[:MAX_NOTABLE]
    )


def _joined(names: list[str], and_word: str) -> str:
    if len(names) == 1:
        return names[0]
    return f"{', '.join(names[:-1])} {and_word} {names[-1]}"


def _clipped(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _fitted(sentences: list[str], limit: int) -> str:
    """The sentences that fit in ``limit`` characters, in order; the first is cut if it must be."""
    text = _clipped(sentences[0], limit)
    for sentence in sentences[1:]:
        longer = f"{text} {sentence}"
        if len(longer) > limit:
            break
        text = longer
    return text


def _brief(conditions: Conditions, templates: Templates) -> str:
    region = conditions.region_name
    sky, phase = conditions.sky, conditions.phase
    if sky is not None and phase is not None:
        text = templates.brief_both.format(
            weather=templates.weather_words[sky.condition], when=templates.phase_words[phase], region=region
        )
    elif sky is not None:
        text = templates.brief_weather.format(weather=templates.weather_words[sky.condition], region=region)
    elif phase is not None:
        text = templates.brief_phase.format(phase=templates.phase_nouns[phase], region=region)
    else:
        text = templates.brief_neither.format(region=region)
    limit = LIMITS[pb.DETAIL_LEVEL_BRIEF]
    if conditions.notables:
        near = templates.brief_near.format(name=conditions.notables[0].display_name)
        longer = f"{text[:-1]}{near}{text[-1]}"  # before the closing full stop
        if len(longer) <= limit:
            return longer
    return _clipped(text, limit)


def _air(sky: Sky, templates: Templates) -> list[str]:
    feel = next(word for bound, word in templates.feels if sky.celsius < bound)
    sentences = [templates.air.format(feel=feel, celsius=round(sky.celsius))]
    if sky.wind_speed < _STILL_MPS:
        sentences.append(templates.calm)
    else:
        direction = templates.directions[round((sky.wind_from_degrees % 360) / 45) % 8]
        sentences.append(templates.wind.format(direction=direction, speed=round(sky.wind_speed)))
    return sentences


def describe(conditions: Conditions, templates: Templates, detail: pb.DetailLevel.ValueType) -> str:
    """The description of ``conditions`` at ``detail`` (UNSPECIFIED means STANDARD)."""
    if detail == pb.DETAIL_LEVEL_BRIEF:
        return _brief(conditions, templates)
    rich = detail == pb.DETAIL_LEVEL_RICH
    level = pb.DETAIL_LEVEL_RICH if rich else pb.DETAIL_LEVEL_STANDARD
    sky, phase = conditions.sky, conditions.phase
    sentences = [templates.place[phase].format(region=conditions.region_name)]
    if sky is not None:
        night = phase == pb.DAY_PHASE_NIGHT and sky.condition in templates.night_sky
        sentences.append(templates.night_sky[sky.condition] if night else templates.sky[sky.condition])
        if rich and math.isfinite(sky.celsius) and math.isfinite(sky.wind_speed):
            sentences.extend(_air(sky, templates))
    named = conditions.notables[: NAMED[level]]
    if named:
        names = [
            f"{n.display_name} ({templates.kinds.get(n.kind, n.kind.replace('_', ' '))})" if rich else n.display_name
            for n in named
        ]
        sentence = templates.one_nearby if len(names) == 1 else templates.many_nearby
        sentences.append(sentence.format(names=_joined(names, templates.and_word)))
    if rich and phase is not None:
        sentences.append(templates.mood[phase])
    return _fitted(sentences, LIMITS[level])
