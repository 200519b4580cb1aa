"""A QuestService whose GetQuest a test supplies, and a context manager that serves it over NATS."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from gaming.quest.v1 import quest_pb2, quest_pb2_grpc
from nats.aio.client import Client

import nats_transport.aio

Handler = Callable[[quest_pb2.GetQuestRequest, Any], Any]


class Quests(quest_pb2_grpc.QuestServiceServicer):
    """GetQuest is the handler a test gives; the other methods are left unimplemented (the
    generated base class answers UNIMPLEMENTED)."""

    def __init__(self, get_quest: Handler) -> None:
        self.GetQuest = get_quest


def reply(title: str = "", **quest: Any) -> quest_pb2.GetQuestResponse:
    """A GetQuestResponse holding one quest."""
    return quest_pb2.GetQuestResponse(quest=quest_pb2.Quest(title=title, **quest))


@contextlib.asynccontextmanager
async def serving(nc: Client, target: str, get_quest: Handler, **server_args: Any) -> AsyncIterator[Any]:
    """A started server for ``target`` answering GetQuest with ``get_quest``; stopped on exit."""
    server = nats_transport.aio.server(nc, target, **server_args)
    quest_pb2_grpc.add_QuestServiceServicer_to_server(Quests(get_quest), server)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(0)
