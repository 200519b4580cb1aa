"""Short-term memory of threats, kept per NPC for the life of one DecisionStream.

Decide is stateless. On a DecisionStream, each threat perception that names its source
(SEE_PLAYER, HEAR_NOISE or TAKE_DAMAGE with a non-empty ``source_id``) is remembered for that
NPC, keyed by (source, kind), at its last known position. Each later decision of the same NPC
halves a remembered threat's weight (``DECAY``), and forgets it once the weight would fall below
``FORGET_BELOW``: a threat perceived once keeps counting, weaker each time, for three more
decisions. A threat perceived again is remembered afresh at full weight. A remembered threat
adds only to the threat feature, measured from the NPC's current position, so fleeing from
where it was seen lowers it further. Hence a stream can choose FLEE or ATTACK where Decide with
the same request, which knows nothing of the earlier hit, would choose WANDER.

Memory is bounded: ``MAX_NPCS`` NPCs per stream (least recently decided forgotten first) and
``MAX_THREATS`` threats per NPC (the weakest forgotten first). Nothing outlives the stream.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Iterable

from gaming.npc_behavior.v1 import npc_behavior_pb2 as pb

from servicers.npc_behavior._scoring import Stimulus, threat_base

DECAY = 0.5
FORGET_BELOW = 0.1
MAX_NPCS = 1024
MAX_THREATS = 16

_Key = tuple[str, int]


class ThreatMemory:
    """What one stream remembers: per NPC, recent threats by (source, kind)."""

    def __init__(self, *, max_npcs: int = MAX_NPCS, max_threats: int = MAX_THREATS) -> None:
        self._npcs: OrderedDict[str, dict[_Key, Stimulus]] = OrderedDict()
        self._max_npcs = max_npcs
        self._max_threats = max_threats

    def __repr__(self) -> str:
        threats = sum(len(remembered) for remembered in self._npcs.values())
        return f"<ThreatMemory npcs={len(self._npcs)} threats={threats}>"

    def __len__(self) -> int:
        return len(self._npcs)

    def recall(self, npc_id: str, perceptions: Iterable[pb.Perception]) -> list[Stimulus]:
        """The stimuli of this decision (the perceptions, then the remembered threats not
        perceived again), and the NPC's memory moved on by one decision."""
        current = [Stimulus.of(perception) for perception in perceptions]
        previous = self._npcs.pop(npc_id, {})
        decayed = {
            key: dataclasses.replace(stimulus, weight=stimulus.weight * DECAY)
            for key, stimulus in previous.items()
            if stimulus.weight * DECAY >= FORGET_BELOW
        }
        fresh: dict[_Key, Stimulus] = {}
        for stimulus in current:
            if not stimulus.source_id or threat_base(stimulus.kind, stimulus.intensity) <= 0.0:
                continue
            key = (stimulus.source_id, stimulus.kind)
            known = fresh.get(key)
            if known is None or stimulus.intensity > known.intensity:
                fresh[key] = stimulus
        recalled = [stimulus for key, stimulus in decayed.items() if key not in fresh]
        remembered = {**decayed, **fresh}
        if len(remembered) > self._max_threats:
            strongest = sorted(remembered.items(), key=_strength, reverse=True)[: self._max_threats]
            remembered = dict(strongest)
        if remembered:
            self._npcs[npc_id] = remembered
            while len(self._npcs) > self._max_npcs:
                self._npcs.popitem(last=False)
        return current + recalled


def _strength(item: tuple[_Key, Stimulus]) -> tuple[float, str, int]:
    stimulus = item[1]
    # Ties broken by the key, so which threat is forgotten does not depend on dict order.
    return (threat_base(stimulus.kind, stimulus.intensity) * stimulus.weight, stimulus.source_id, stimulus.kind)
