"""The documented templates descriptions are built from, one ``Templates`` per language.

A description is assembled from sentences chosen by the world conditions (see ``_compose`` for
which sentences each detail level uses, in what order, and the length limits):

- ``place``: the opening sentence, by day phase (``None``: the time of day is unknown), with
  ``{region}`` the region's display name;
- ``sky``: the weather sentence, by condition, with a night variant where darkness changes the
  picture (``night_sky``), omitted when the weather is unknown;
- ``air`` and ``wind``: temperature and wind (rich only), from the weather's figures;
- ``one_nearby`` / ``many_nearby``: the notable entities, their names joined by ``and_word``;
- ``mood``: the closing sentence by day phase (rich only);
- ``brief_*``: the one-sentence form for HUD banners and ambience lines.

Placeholders are ``str.format`` fields. Languages without templates (anything but ``en`` and
``fr`` here) fall back to ``en``; a template missing from a language is a bug that the tests
catch, not a fallback. Adding a language is adding one ``Templates`` to ``LANGUAGES``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TypeAlias, TypeVar

from gaming.environmental_narrative.v1 import environmental_narrative_pb2 as pb

__all__ = ["DEFAULT_LANGUAGE", "LANGUAGES", "Templates"]

_K = TypeVar("_K")
_V = TypeVar("_V")
Condition: TypeAlias = pb.WeatherCondition.ValueType
Phase: TypeAlias = pb.DayPhase.ValueType

CLEAR, CLOUDY, RAIN, STORM, SNOW, FOG, WINDY = (
    pb.WEATHER_CONDITION_CLEAR, pb.WEATHER_CONDITION_CLOUDY, pb.WEATHER_CONDITION_RAIN, pb.WEATHER_CONDITION_STORM,
    pb.WEATHER_CONDITION_SNOW, pb.WEATHER_CONDITION_FOG, pb.WEATHER_CONDITION_WINDY,
)
DAWN, MORNING, AFTERNOON, DUSK, NIGHT = (
    pb.DAY_PHASE_DAWN, pb.DAY_PHASE_MORNING, pb.DAY_PHASE_AFTERNOON, pb.DAY_PHASE_DUSK, pb.DAY_PHASE_NIGHT,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Templates:
    """Every phrase of one language.

    Attributes:
        place: opening sentence per day phase; key None when the phase is unknown. ``{region}``.
        sky: weather sentence per condition (by day).
        night_sky: weather sentence per condition at night, where it differs from ``sky``.
        air: temperature sentence, ``{feel}`` (from ``feels``) and ``{celsius}`` (an integer).
        feels: (upper bound in degrees Celsius, word), ascending; the last bound is infinite.
        wind: wind sentence, ``{direction}`` (from ``directions``) and ``{speed}`` (m/s, integer).
        calm: the sentence used instead of ``wind`` below 0.5 m/s.
        directions: where the wind comes from, 8 compass points from north, clockwise.
        one_nearby: one notable entity, ``{names}``.
        many_nearby: several notable entities, ``{names}`` (joined with ``and_word``).
        and_word: joins the last two names of a list.
        kinds: words for entity kinds (rich descriptions write ``name (kind)``); other kinds are
            shown as written, underscores as spaces.
        mood: closing sentence per day phase.
        brief_both: one sentence with weather and phase: ``{weather}``, ``{when}``, ``{region}``.
        brief_weather: weather known, phase unknown: ``{weather}``, ``{region}``.
        brief_phase: phase known, weather unknown: ``{phase}`` (from ``phase_nouns``), ``{region}``.
        brief_neither: nothing known but the region: ``{region}``.
        brief_near: appended to a brief sentence (before its full stop) for the most notable
            entity, ``{name}``, when it fits.
        weather_words: the weather in brief sentences, per condition.
        phase_words: the time of day in brief sentences (adverbial), per phase.
        phase_nouns: the time of day as the subject of a brief sentence, per phase.
    """

    place: Mapping[Phase | None, str]
    sky: Mapping[Condition, str]
    night_sky: Mapping[Condition, str]
    air: str
    feels: tuple[tuple[float, str], ...]
    wind: str
    calm: str
    directions: tuple[str, str, str, str, str, str, str, str]
    one_nearby: str
    many_nearby: str
    and_word: str
    kinds: Mapping[str, str]
    mood: Mapping[Phase, str]
    brief_both: str
    brief_weather: str
    brief_phase: str
    brief_neither: str
    brief_near: str
    weather_words: Mapping[Condition, str]
    phase_words: Mapping[Phase, str]
    phase_nouns: Mapping[Phase, str]


def _frozen(table: dict[_K, _V]) -> Mapping[_K, _V]:
    return MappingProxyType(table)


def _places(table: dict[Phase | None, str]) -> Mapping[Phase | None, str]:
    # Its own helper because the None key (phase unknown) would not fit _frozen's inferred type.
    return MappingProxyType(table)


ENGLISH = Templates(
    place=_places({
        DAWN: "Dawn breaks over {region}.",
        MORNING: "Morning light spreads across {region}.",
        AFTERNOON: "The afternoon wears on in {region}.",
        DUSK: "Dusk settles over {region}.",
        NIGHT: "Night has fallen over {region}.",
        None: "You stand in {region}.",
    }),
    sky=_frozen({
        CLEAR: "The sky is clear and bright.",
        CLOUDY: "Grey clouds hang low overhead.",
        RAIN: "Rain patters steadily on every surface.",
        STORM: "Thunder rolls as a storm lashes the land.",
        SNOW: "Snow drifts down and muffles every sound.",
        FOG: "A thick fog blurs everything beyond a few paces.",
        WINDY: "A strong wind tugs at cloaks and banners.",
    }),
    night_sky=_frozen({
        CLEAR: "Stars glitter in a cloudless sky.",
        CLOUDY: "Clouds hide the moon and stars.",
    }),
    air="The air is {feel}, around {celsius} °C.",
    feels=((0.0, "freezing"), (10.0, "cold"), (18.0, "cool"), (25.0, "mild"), (32.0, "warm"),
           (float("inf"), "hot")),
    wind="The wind blows {direction} at {speed} m/s.",
    calm="The air is perfectly still.",
    directions=("from the north", "from the north-east", "from the east", "from the south-east",
                "from the south", "from the south-west", "from the west", "from the north-west"),
    one_nearby="{names} is close by.",
    many_nearby="Close by: {names}.",
    and_word="and",
    kinds=_frozen({"npc": "local", "creature": "creature", "landmark": "landmark", "item": "item"}),
    mood=_frozen({
        DAWN: "The world stirs awake around you.",
        MORNING: "The day's work is well under way.",
        AFTERNOON: "Shadows begin to lengthen.",
        DUSK: "Lamps are lit one by one.",
        NIGHT: "Only the bold are still about.",
    }),
    brief_both="{weather} {when} in {region}.",
    brief_weather="{weather} in {region}.",
    brief_phase="{phase} in {region}.",
    brief_neither="All is quiet in {region}.",
    brief_near=", near {name}",
    weather_words=_frozen({
        CLEAR: "Clear skies", CLOUDY: "Grey skies", RAIN: "Rain falls", STORM: "A storm rages",
        SNOW: "Snow falls", FOG: "Fog lies thick", WINDY: "A strong wind blows",
    }),
    phase_words=_frozen({
        DAWN: "at dawn", MORNING: "this morning", AFTERNOON: "this afternoon", DUSK: "at dusk", NIGHT: "tonight",
    }),
    phase_nouns=_frozen({DAWN: "Dawn", MORNING: "Morning", AFTERNOON: "Afternoon", DUSK: "Dusk", NIGHT: "Night"}),
)

FRENCH = Templates(
    place=_places({
        DAWN: "L'aube se lève sur {region}.",
        MORNING: "La lumière du matin baigne {region}.",
        AFTERNOON: "L'après-midi s'étire sur {region}.",
        DUSK: "Le crépuscule tombe sur {region}.",
        NIGHT: "La nuit est tombée sur {region}.",
        None: "Vous vous trouvez à {region}.",
    }),
    sky=_frozen({
        CLEAR: "Le ciel est clair et lumineux.",
        CLOUDY: "De lourds nuages gris couvrent le ciel.",
        RAIN: "La pluie tombe sans relâche.",
        STORM: "Le tonnerre gronde tandis que l'orage fait rage.",
        SNOW: "La neige tombe et étouffe tous les bruits.",
        FOG: "Un épais brouillard noie tout au-delà de quelques pas.",
        WINDY: "Un vent violent fait claquer capes et bannières.",
    }),
    night_sky=_frozen({
        CLEAR: "Les étoiles scintillent dans un ciel sans nuages.",
        CLOUDY: "Les nuages cachent la lune et les étoiles.",
    }),
    air="L'air est {feel}, autour de {celsius} °C.",
    feels=((0.0, "glacial"), (10.0, "froid"), (18.0, "frais"), (25.0, "doux"), (32.0, "chaud"),
           (float("inf"), "brûlant")),
    wind="Le vent souffle {direction} à {speed} m/s.",
    calm="L'air est parfaitement immobile.",
    directions=("du nord", "du nord-est", "de l'est", "du sud-est", "du sud", "du sud-ouest", "de l'ouest",
                "du nord-ouest"),
    one_nearby="{names} se trouve tout près.",
    many_nearby="Tout près : {names}.",
    and_word="et",
    kinds=_frozen({"npc": "habitant", "creature": "créature", "landmark": "lieu remarquable", "item": "objet"}),
    mood=_frozen({
        DAWN: "Le monde s'éveille autour de vous.",
        MORNING: "La journée de travail bat son plein.",
        AFTERNOON: "Les ombres commencent à s'allonger.",
        DUSK: "On allume les lampes une à une.",
        NIGHT: "Seuls les plus hardis sont encore dehors.",
    }),
    brief_both="{weather} {when} à {region}.",
    brief_weather="{weather} à {region}.",
    brief_phase="{phase} à {region}.",
    brief_neither="Tout est calme à {region}.",
    brief_near=", près de {name}",
    weather_words=_frozen({
        CLEAR: "Ciel dégagé", CLOUDY: "Ciel gris", RAIN: "Pluie", STORM: "Orage", SNOW: "Neige",
        FOG: "Brouillard épais", WINDY: "Grand vent",
    }),
    phase_words=_frozen({
        DAWN: "à l'aube", MORNING: "ce matin", AFTERNOON: "cet après-midi", DUSK: "au crépuscule",
        NIGHT: "cette nuit",
    }),
    phase_nouns=_frozen({
        DAWN: "L'aube", MORNING: "Le matin", AFTERNOON: "L'après-midi", DUSK: "Le crépuscule", NIGHT: "La nuit",
    }),
)

DEFAULT_LANGUAGE = "en"
LANGUAGES: Mapping[str, Templates] = MappingProxyType({"en": ENGLISH, "fr": FRENCH})
