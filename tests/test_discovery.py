"""Every server answers the NATS Services API (ADR-32) as a service named after its target."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import grpc
import nats.errors
import pytest
from gaming.quest.v1 import quest_pb2, quest_pb2_grpc
from nats.aio.client import Client

import nats_transport

QUEST_METHODS = ("GenerateQuest", "GetQuest", "Accept", "UpdateProgress", "List")
SERVICE = "gaming.quest.v1.QuestService"


class _Quests(quest_pb2_grpc.QuestServiceServicer):
    async def GetQuest(self, request, context):
        if request.quest_id == "missing":
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such quest")
        return quest_pb2.GetQuestResponse(quest=quest_pb2.Quest(quest_id=request.quest_id))


@pytest.fixture
def target() -> str:
    return f"disc-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def server(nc: Client, target: str) -> AsyncIterator[nats_transport.aio.Server]:
    srv = nats_transport.aio.server(nc, target)
    quest_pb2_grpc.add_QuestServiceServicer_to_server(_Quests(), srv)
    await srv.start()
    yield srv
    await srv.stop(grace=None)


async def _ask(nc: Client, subject: str) -> dict:
    reply = await nc.request(subject, b"", timeout=2)
    return json.loads(reply.data)


async def _responses(nc: Client, subject: str, name: str) -> list[dict]:
    """All answers to a broadcast $SRV request that come from the service ``name``."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish(subject, b"", reply=inbox)
    answers = []
    try:
        while True:
            msg = await sub.next_msg(timeout=0.5)
            if not msg.data:
                continue  # a no-responders status: nobody answers $SRV at all
            answer = json.loads(msg.data)
            if answer.get("name") == name:
                answers.append(answer)
                break
    except nats.errors.TimeoutError:
        pass
    finally:
        await sub.unsubscribe()
    return answers


async def test_ping_by_target_names_the_target(nc, server, target):
    answer = await _ask(nc, f"$SRV.PING.{target}")

    assert answer["type"] == "io.nats.micro.v1.ping_response"
    assert answer["name"] == target
    assert answer["id"]
    assert answer["version"]


async def test_ping_to_every_service_includes_this_server(nc, server, target):
    answers = await _responses(nc, "$SRV.PING", target)

    assert [a["type"] for a in answers] == ["io.nats.micro.v1.ping_response"]


async def test_ping_by_target_and_id_reaches_the_instance(nc, server, target):
    instance = (await _ask(nc, f"$SRV.PING.{target}"))["id"]

    answer = await _ask(nc, f"$SRV.PING.{target}.{instance}")

    assert answer["id"] == instance


async def test_info_lists_one_endpoint_per_method_with_its_call_subject(nc, server, target):
    info = await _ask(nc, f"$SRV.INFO.{target}")

    assert info["type"] == "io.nats.micro.v1.info_response"
    assert info["name"] == target
    endpoints = info["endpoints"]
    assert len(endpoints) == len(QUEST_METHODS)
    assert sorted(e["subject"] for e in endpoints) == sorted(
        f"grpc.{target}.{SERVICE}.{method}" for method in QUEST_METHODS
    )
    assert {e["queue_group"] for e in endpoints} == {target}
    assert len({e["name"] for e in endpoints}) == len(QUEST_METHODS)


async def test_info_metadata_names_the_grpc_services(nc, target):
    from grpc_health.v1 import health_pb2_grpc
    from grpc_health.v1.health import aio as health_aio

    srv = nats_transport.aio.server(nc, target)
    quest_pb2_grpc.add_QuestServiceServicer_to_server(_Quests(), srv)
    health_pb2_grpc.add_HealthServicer_to_server(health_aio.HealthServicer(), srv)
    await srv.start()
    try:
        info = await _ask(nc, f"$SRV.INFO.{target}")
    finally:
        await srv.stop(grace=None)

    services_text = json.dumps(info["metadata"])
    assert SERVICE in services_text
    assert "grpc.health.v1.Health" in services_text
    subjects = {e["subject"] for e in info["endpoints"]}
    assert f"grpc.{target}.grpc.health.v1.Health.Check" in subjects
    assert f"grpc.{target}.grpc.health.v1.Health.Watch" in subjects


async def test_info_lists_the_methods_of_a_generic_handler_too(nc, target):
    srv = nats_transport.aio.server(nc, target)
    echo = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
    srv.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("raw.v1.EchoService", {"Echo": echo, "Shout": echo}),)
    )
    await srv.start()
    try:
        info = await _ask(nc, f"$SRV.INFO.{target}")
    finally:
        await srv.stop(grace=None)

    assert "raw.v1.EchoService" in json.dumps(info["metadata"])
    assert sorted(e["subject"] for e in info["endpoints"]) == [
        f"grpc.{target}.raw.v1.EchoService.Echo",
        f"grpc.{target}.raw.v1.EchoService.Shout",
    ]


async def test_a_call_made_through_the_endpoint_subject_is_served(nc, server, target):
    info = await _ask(nc, f"$SRV.INFO.{target}")
    (endpoint,) = [e for e in info["endpoints"] if e["subject"].endswith(".GetQuest")]
    channel = nats_transport.aio.channel(nc, target)
    try:
        reply = await quest_pb2_grpc.QuestServiceStub(channel).GetQuest(
            quest_pb2.GetQuestRequest(quest_id="q1"), timeout=2
        )
    finally:
        await channel.close()

    assert endpoint["subject"] == f"grpc.{target}.{SERVICE}.GetQuest"
    assert reply.quest.quest_id == "q1"


async def test_stats_count_the_calls_and_errors_made_before(nc, server, target):
    channel = nats_transport.aio.channel(nc, target)
    stub = quest_pb2_grpc.QuestServiceStub(channel)
    try:
        await stub.GetQuest(quest_pb2.GetQuestRequest(quest_id="q1"), timeout=2)
        await stub.GetQuest(quest_pb2.GetQuestRequest(quest_id="q2"), timeout=2)
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.GetQuest(quest_pb2.GetQuestRequest(quest_id="missing"), timeout=2)
    finally:
        await channel.close()

    stats = await _ask(nc, f"$SRV.STATS.{target}")

    assert stats["type"] == "io.nats.micro.v1.stats_response"
    assert stats["name"] == target
    assert stats["started"]
    (get_quest,) = [e for e in stats["endpoints"] if e["subject"].endswith(".GetQuest")]
    assert get_quest["num_requests"] == 3
    assert get_quest["num_errors"] == 1
    assert "NOT_FOUND" in get_quest["last_error"]
    assert get_quest["processing_time"] > 0
    others = [e for e in stats["endpoints"] if not e["subject"].endswith(".GetQuest")]
    assert [e["num_requests"] for e in others] == [0] * (len(QUEST_METHODS) - 1)


async def test_a_stopped_server_no_longer_answers_ping(nc, target):
    srv = nats_transport.aio.server(nc, target)
    quest_pb2_grpc.add_QuestServiceServicer_to_server(_Quests(), srv)
    await srv.start()
    await _ask(nc, f"$SRV.PING.{target}")

    await srv.stop(grace=None)

    with pytest.raises((nats.errors.NoRespondersError, nats.errors.TimeoutError)):
        await nc.request(f"$SRV.PING.{target}", b"", timeout=0.3)
    assert await _responses(nc, "$SRV.PING", target) == []
