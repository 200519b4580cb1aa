"""The call every transport makes: QuestService.GetQuest with a small fixed Quest.

Shared by the server processes and the client so every transport carries the same bytes.
"""

from __future__ import annotations

from gaming.quest.v1 import quest_pb2

SERVICE = "gaming.quest.v1.QuestService"
METHOD = "GetQuest"
OURS_TARGET = "benchquest"  # target of the nats_transport server
OURS_SYNC_SERVICER_TARGET = "benchquestsync"  # the nats_transport server whose servicer is plain def
OURS_TRACED_TARGET = "benchquesttraced"  # the nats_transport server that traces its calls
RAW_TARGET = "benchraw"  # the raw responder listens where a server for this target would
RAW_SUBJECT = f"grpc.{RAW_TARGET}.{SERVICE}.{METHOD}"
CALL_TIMEOUT = 5.0  # seconds, every call of every transport

REQUEST = quest_pb2.GetQuestRequest(quest_id="q-0001")

QUEST = quest_pb2.Quest(
    quest_id="q-0001",
    player_id="p-0042",
    region_id="r-ashlands",
    title="The Ember Courier",
    description="Carry the sealed ember to the watch tower before the storm breaks.",
    giver_npc_id="npc-warden",
    status=quest_pb2.QUEST_STATUS_ACTIVE,
    difficulty=quest_pb2.DIFFICULTY_NORMAL,
    template_id="t-courier",
    objectives=[quest_pb2.Objective(objective_id="o-1", description="Reach the tower", required_count=1)],
)
RESPONSE = quest_pb2.GetQuestResponse(quest=QUEST)

REQUEST_BYTES = REQUEST.SerializeToString()
# GetQuest's google.api.http rule (protos/gaming/quest/v1/quest.proto), for the Envoy case.
HTTP_PATH = f"/v1/quest-system/quests/{REQUEST.quest_id}"

# Server streaming: a raw-bytes method answering the count it is asked for with RESPONSE_BYTES
# messages, registered the same way (a generic handler) on grpc.aio and on nats_transport.
STREAM_SERVICE = "bench.v1.StreamService"
STREAM_METHOD = f"/{STREAM_SERVICE}/Stream"
RESPONSE_BYTES = RESPONSE.SerializeToString()
