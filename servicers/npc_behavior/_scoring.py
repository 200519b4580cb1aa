"""The utility model: response curves over an NPC's needs and perceptions, one score per action.

Pure code, no I/O: the same state and perceptions always give the same scores, ranking and
reasons. Every score lies in [0, 1].

Curves (``x`` in [0, 1]; ``d`` a distance in metres)::

    proximity(d)          = 1 / (1 + (d / 10)^2)          1 at the NPC, 0.5 at 10 m, 0.2 at 20 m
    logistic(x, mid, k)   = the logistic 1 / (1 + e^(-k (x - mid))), rescaled so 0 -> 0, 1 -> 1
    quadratic(x)          = x^2                            a need that matters only when it is big

Perceptions become four features (an unset perception position counts as the NPC's own)::

    threat     = 1 - prod(1 - c * w) over the threat contributions c, where
                 SEE_PLAYER   c = 0.5 * intensity * proximity(d)
                 HEAR_NOISE   c = 0.25 * intensity * proximity(d)
                 TAKE_DAMAGE  c = min(1, 0.4 + 1.5 * intensity) * (0.5 + 0.5 * proximity(d))
                 (the strongest contribution names the threat's source; w is 1 for a
                 perception and below 1 for a threat remembered by DecisionStream)
    food       = max over SEE_ITEM of intensity * proximity(d)
    social     = max over SEE_NPC of intensity * proximity(d), and over SEE_PLAYER of
                 0.8 * intensity * proximity(d)
    suspicion  = max over HEAR_NOISE of intensity * proximity(d)

Actions (``m`` is the mood's multiplier for the action, table ``MOOD_MULTIPLIERS``)::

    FLEE    threat * (0.25 + 0.75 * logistic(1 - health, 0.5, 8)) * m
    ATTACK  threat^2 * logistic(health, 0.35, 10) * (0.5 + 0.5 * energy) * m
    EAT     max(food, 0.3) * logistic(hunger, 0.5, 10) * (1 - threat)      (0.3: its own provisions)
    REST    max(quadratic(1 - energy), 0.7 * quadratic(1 - health)) * (1 - threat)
    TALK    social * (1 - 0.5 * threat) * m
    PATROL  (0.2 + 0.5 * suspicion) * (0.5 + 0.5 * energy) * (1 - 0.5 * threat) * m
    WANDER  0.3 * (0.5 + 0.5 * energy) * (1 - threat) * m
    IDLE    0.2 * (1 - 0.5 * threat) * m

The action the NPC is doing now (``current_activity``) gets ``INERTIA`` added, so it does not
flip-flop between near-equal actions. Scores are clamped to [0, 1] and rounded to float32 (what
the response carries) before ranking; ties rank by action number, so the order is total.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gaming.common.v1 import common_pb2
from gaming.npc_behavior.v1 import npc_behavior_pb2 as pb

from servicers.errors import invalid_argument

MAX_PERCEPTIONS = 64
MAX_ID_LENGTH = 256
INERTIA = 0.05

_MOODS = (pb.MOOD_CALM, pb.MOOD_HAPPY, pb.MOOD_ALERT, pb.MOOD_AFRAID, pb.MOOD_ANGRY)
_ACTIONS = (
    pb.ACTION_KIND_IDLE,
    pb.ACTION_KIND_WANDER,
    pb.ACTION_KIND_FLEE,
    pb.ACTION_KIND_ATTACK,
    pb.ACTION_KIND_TALK,
    pb.ACTION_KIND_EAT,
    pb.ACTION_KIND_REST,
    pb.ACTION_KIND_PATROL,
)
_PERCEPTIONS = (
    pb.PERCEPTION_KIND_UNSPECIFIED,
    pb.PERCEPTION_KIND_SEE_PLAYER,
    pb.PERCEPTION_KIND_HEAR_NOISE,
    pb.PERCEPTION_KIND_TAKE_DAMAGE,
    pb.PERCEPTION_KIND_SEE_ITEM,
    pb.PERCEPTION_KIND_SEE_NPC,
)

# Policy as data: how each mood scales the actions it affects (absent = 1.0). Unspecified mood
# is calm, as the proto says.
MOOD_MULTIPLIERS: dict[int, dict[int, float]] = {
    pb.MOOD_CALM: {},
    pb.MOOD_HAPPY: {
        pb.ACTION_KIND_FLEE: 0.8, pb.ACTION_KIND_ATTACK: 0.6, pb.ACTION_KIND_TALK: 1.3,
        pb.ACTION_KIND_WANDER: 1.2, pb.ACTION_KIND_PATROL: 0.9, pb.ACTION_KIND_IDLE: 1.1,
    },
    pb.MOOD_ALERT: {
        pb.ACTION_KIND_FLEE: 1.1, pb.ACTION_KIND_ATTACK: 1.1, pb.ACTION_KIND_TALK: 0.6,
        pb.ACTION_KIND_WANDER: 0.7, pb.ACTION_KIND_PATROL: 1.4, pb.ACTION_KIND_IDLE: 0.8,
    },
    pb.MOOD_AFRAID: {
        pb.ACTION_KIND_FLEE: 2.0, pb.ACTION_KIND_ATTACK: 0.5, pb.ACTION_KIND_TALK: 0.3,
        pb.ACTION_KIND_WANDER: 0.8, pb.ACTION_KIND_PATROL: 0.7, pb.ACTION_KIND_IDLE: 0.9,
    },
    pb.MOOD_ANGRY: {
        pb.ACTION_KIND_FLEE: 0.7, pb.ACTION_KIND_ATTACK: 1.5, pb.ACTION_KIND_TALK: 0.4,
        pb.ACTION_KIND_WANDER: 0.9, pb.ACTION_KIND_PATROL: 1.1, pb.ACTION_KIND_IDLE: 0.8,
    },
}


@dataclass(frozen=True, slots=True)
class Stimulus:
    """One perception as the scorer sees it.

    ``weight`` below 1 marks a threat recalled from an earlier decision of the same stream: its
    threat contribution is scaled by the weight, and it feeds no other feature (a remembered
    player is not someone to talk to now).
    """

    kind: int
    source_id: str
    position: tuple[float, float, float] | None
    intensity: float
    weight: float = 1.0

    @property
    def remembered(self) -> bool:
        """Whether this stimulus was recalled rather than perceived now."""
        return self.weight < 1.0

    @classmethod
    def of(cls, perception: pb.Perception) -> Stimulus:
        """The stimulus of a request's perception."""
        where = _xyz(perception.position) if perception.HasField("position") else None
        return cls(perception.kind, perception.source_id, where, float(perception.intensity))


@dataclass(frozen=True, slots=True)
class Scored:
    """One candidate action with its score (a float32 value), target and reason."""

    kind: pb.ActionKind.ValueType
    target_id: str
    score: float
    reason: str

    def to_proto(self) -> pb.Action:
        """The action as the API returns it."""
        return pb.Action(kind=self.kind, target_id=self.target_id, utility_score=self.score, reason=self.reason)


# -- validation ---------------------------------------------------------------------------------


def check(state: pb.NpcState, has_state: bool, perceptions: Sequence[pb.Perception], prefix: str = "") -> None:
    """Raise ``InvalidArgument`` naming the first field out of its documented range (Decide's
    status; DecisionStream answers it in-band)."""
    if not has_state:
        raise invalid_argument(f"{prefix}state", "is required")
    if not state.npc_id:
        raise invalid_argument(f"{prefix}state.npc_id", "is required")
    if len(state.npc_id) > MAX_ID_LENGTH:
        raise invalid_argument(f"{prefix}state.npc_id", f"is longer than {MAX_ID_LENGTH} characters")
    for name in ("health", "energy", "hunger"):
        _check_fraction(f"{prefix}state.{name}", getattr(state, name))
    _check_position(f"{prefix}state.position", state.position)
    if state.mood != pb.MOOD_UNSPECIFIED and state.mood not in _MOODS:
        raise invalid_argument(f"{prefix}state.mood", f"{state.mood} is not a Mood")
    if state.current_activity != pb.ACTION_KIND_UNSPECIFIED and state.current_activity not in _ACTIONS:
        raise invalid_argument(f"{prefix}state.current_activity", f"{state.current_activity} is not an ActionKind")
    if len(perceptions) > MAX_PERCEPTIONS:
        raise invalid_argument(f"{prefix}perceptions", f"has {len(perceptions)} items; at most {MAX_PERCEPTIONS}")
    for index, perception in enumerate(perceptions):
        path = f"{prefix}perceptions[{index}]"
        if perception.kind not in _PERCEPTIONS:
            raise invalid_argument(f"{path}.kind", f"{perception.kind} is not a PerceptionKind")
        if len(perception.source_id) > MAX_ID_LENGTH:
            raise invalid_argument(f"{path}.source_id", f"is longer than {MAX_ID_LENGTH} characters")
        _check_fraction(f"{path}.intensity", perception.intensity)
        _check_position(f"{path}.position", perception.position)


def _check_fraction(field: str, value: float) -> None:
    # `not (0 <= x <= 1)` is also true for NaN, which no comparison admits.
    if not 0.0 <= value <= 1.0:
        raise invalid_argument(field, f"{value} is outside [0, 1]")


def _check_position(field: str, position: common_pb2.Vector3) -> None:
    if not all(math.isfinite(axis) for axis in (position.x, position.y, position.z)):
        raise invalid_argument(field, "coordinates must be finite numbers")


# -- curves ---------------------------------------------------------------------------------------


def proximity(distance: float) -> float:
    """1 at the NPC, 0.5 at 10 m, falling with the square of the distance."""
    return 1.0 / (1.0 + (distance / 10.0) ** 2)


def logistic(x: float, mid: float, steepness: float) -> float:
    """An S-curve through ``mid``, rescaled to map 0 to 0 and 1 to 1."""

    def raw(value: float) -> float:
        return 1.0 / (1.0 + math.exp(-steepness * (value - mid)))

    low, high = raw(0.0), raw(1.0)
    return (raw(x) - low) / (high - low)


def quadratic(x: float) -> float:
    """x squared: small needs barely count, big ones dominate."""
    return x * x


# -- features -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Best:
    """The strongest stimulus behind a feature."""

    value: float = 0.0
    source_id: str = ""
    distance: float = 0.0
    remembered: bool = False


@dataclass(frozen=True, slots=True)
class Features:
    """What the perceptions amount to, with the stimulus behind each feature."""

    threat: float
    threat_source: _Best
    food: _Best
    social: _Best
    suspicion: _Best


def threat_base(kind: int, intensity: float) -> float:
    """The distance-free part of a stimulus's threat (0 for kinds that are no threat)."""
    if kind == pb.PERCEPTION_KIND_SEE_PLAYER:
        return 0.5 * intensity
    if kind == pb.PERCEPTION_KIND_HEAR_NOISE:
        return 0.25 * intensity
    if kind == pb.PERCEPTION_KIND_TAKE_DAMAGE:
        return min(1.0, 0.4 + 1.5 * intensity)
    return 0.0


def threat_falloff(kind: int, distance: float) -> float:
    """How a threat fades with distance: damage hurts wherever it came from, sights fade."""
    near = proximity(distance)
    return 0.5 + 0.5 * near if kind == pb.PERCEPTION_KIND_TAKE_DAMAGE else near


def features(position: tuple[float, float, float], stimuli: Iterable[Stimulus]) -> Features:
    """Threat, food, social and suspicion features of the stimuli, seen from ``position``."""
    calm = 1.0
    threat_source = food = social = suspicion = _Best()
    for stimulus in stimuli:
        if stimulus.kind == pb.PERCEPTION_KIND_UNSPECIFIED:
            continue  # ignored by the scorer, as the proto says
        distance = 0.0 if stimulus.position is None else math.dist(position, stimulus.position)
        near = proximity(distance)
        base = threat_base(stimulus.kind, stimulus.intensity)
        contribution = base * threat_falloff(stimulus.kind, distance) * stimulus.weight
        calm *= 1.0 - contribution
        threat_source = _stronger(threat_source, contribution, stimulus, distance)
        if stimulus.remembered:
            continue
        if stimulus.kind == pb.PERCEPTION_KIND_SEE_ITEM:
            food = _stronger(food, stimulus.intensity * near, stimulus, distance)
        elif stimulus.kind == pb.PERCEPTION_KIND_SEE_NPC:
            social = _stronger(social, stimulus.intensity * near, stimulus, distance)
        elif stimulus.kind == pb.PERCEPTION_KIND_SEE_PLAYER:
            social = _stronger(social, 0.8 * stimulus.intensity * near, stimulus, distance)
        elif stimulus.kind == pb.PERCEPTION_KIND_HEAR_NOISE:
            suspicion = _stronger(suspicion, stimulus.intensity * near, stimulus, distance)
    return Features(1.0 - calm, threat_source, food, social, suspicion)


def _stronger(current: _Best, value: float, stimulus: Stimulus, distance: float) -> _Best:
    # Strictly greater: on a tie the earlier stimulus keeps the feature, so the result is stable.
    if value > current.value:
        return _Best(value, stimulus.source_id, distance, stimulus.remembered)
    return current


# -- scores ---------------------------------------------------------------------------------------


def score(state: pb.NpcState, stimuli: Iterable[Stimulus]) -> list[Scored]:
    """Every action scored for ``state`` and ``stimuli``, best first (see the module docstring)."""
    seen = features(_xyz(state.position), stimuli)
    mood = state.mood if state.mood in _MOODS else pb.MOOD_CALM
    multipliers = MOOD_MULTIPLIERS[mood]
    health, energy, hunger = float(state.health), float(state.energy), float(state.hunger)
    threat = seen.threat
    stamina = 0.5 + 0.5 * energy
    danger = _describe_threat(seen)

    raw: list[tuple[pb.ActionKind.ValueType, float, str, str]] = [
        (pb.ACTION_KIND_FLEE, threat * (0.25 + 0.75 * logistic(1.0 - health, 0.5, 8.0)),
         seen.threat_source.source_id, f"{danger}, health {health:.2f}"),
        (pb.ACTION_KIND_ATTACK, threat * threat * logistic(health, 0.35, 10.0) * stamina,
         seen.threat_source.source_id, f"{danger}, health {health:.2f}, energy {energy:.2f}"),
        (pb.ACTION_KIND_EAT, max(seen.food.value, 0.3) * logistic(hunger, 0.5, 10.0) * (1.0 - threat),
         seen.food.source_id, _describe_food(seen, hunger)),
        (pb.ACTION_KIND_REST, max(quadratic(1.0 - energy), 0.7 * quadratic(1.0 - health)) * (1.0 - threat),
         "", f"energy {energy:.2f}, health {health:.2f}"),
        (pb.ACTION_KIND_TALK, seen.social.value * (1.0 - 0.5 * threat),
         seen.social.source_id, _describe(seen.social, "someone to talk to", "nobody to talk to")),
        (pb.ACTION_KIND_PATROL, (0.2 + 0.5 * seen.suspicion.value) * stamina * (1.0 - 0.5 * threat),
         "", _describe(seen.suspicion, "noise", "routine round")),
        (pb.ACTION_KIND_WANDER, 0.3 * stamina * (1.0 - threat), "", f"energy {energy:.2f}, {danger}"),
        (pb.ACTION_KIND_IDLE, 0.2 * (1.0 - 0.5 * threat), "", "baseline"),
    ]
    scored = []
    for kind, value, target, reason in raw:
        multiplier = multipliers.get(kind, 1.0)
        if multiplier != 1.0:
            value *= multiplier
            reason += f", mood x{multiplier:g}"
        if kind == state.current_activity:
            value += INERTIA
            reason += ", already doing it"
        scored.append(Scored(kind, target, _float32(min(max(value, 0.0), 1.0)), reason))
    return sorted(scored, key=lambda action: (-action.score, action.kind))


def _describe_threat(seen: Features) -> str:
    if seen.threat <= 0.0:
        return "no threat"
    return f"threat {seen.threat:.2f}" + _from(seen.threat_source)


def _describe_food(seen: Features, hunger: float) -> str:
    if seen.food.value >= 0.3:
        return f"hunger {hunger:.2f}, food {seen.food.value:.2f}" + _from(seen.food)
    return f"hunger {hunger:.2f}, own provisions"


def _describe(best: _Best, what: str, none: str) -> str:
    return f"{what} {best.value:.2f}" + _from(best) if best.value > 0.0 else none


def _from(best: _Best) -> str:
    who = best.source_id or "unknown source"
    remembered = ", remembered" if best.remembered else ""
    return f" ({who} at {best.distance:.1f} m{remembered})"


def _xyz(vector: common_pb2.Vector3) -> tuple[float, float, float]:
    return (vector.x, vector.y, vector.z)


def _float32(value: float) -> float:
    # Rank on the value the response will carry (a proto float), so the client sees the order.
    result: float = struct.unpack("f", struct.pack("f", value))[0]
    return result
