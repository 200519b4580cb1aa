"""npc-behavior: utility-AI decisions for NPCs (``gaming.npc_behavior.v1.NpcBehaviorService``).

``Decide`` scores every action from the NPC's needs and perceptions with the documented response
curves of ``_scoring`` and returns the best with the others ranked. ``DecisionStream`` answers
many decisions on one bidi stream and remembers recent threats per NPC while the stream lasts
(``_memory``), so its decisions may differ from ``Decide``'s in the way that module documents.
The service keeps no state between calls, so it opens no buckets.
"""

from __future__ import annotations

from gaming.npc_behavior.v1 import npc_behavior_pb2_grpc

from servicers.dependencies import Dependencies
from servicers.npc_behavior._servicer import MAX_OUTSTANDING, NpcBehaviorServicer

__all__ = ["MAX_OUTSTANDING", "SERVICE_NAMES", "TARGET", "NpcBehaviorServicer", "add_to_server", "create"]

TARGET = "npc-behavior"
SERVICE_NAMES = ("gaming.npc_behavior.v1.NpcBehaviorService",)


async def create(deps: Dependencies) -> NpcBehaviorServicer:
    """A ready servicer; it needs only the clock (for ``decide_time``)."""
    return NpcBehaviorServicer(clock=deps.clock)


add_to_server = npc_behavior_pb2_grpc.add_NpcBehaviorServiceServicer_to_server
