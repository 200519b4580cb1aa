"""grpc.health.v1 and server reflection, from the stock grpcio packages, served over NATS unchanged."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from gaming.quest.v1 import quest_pb2, quest_pb2_grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from nats.aio.client import Client

import nats_transport
from tests._waiting import wait_for

QUEST = "gaming.quest.v1.QuestService"
HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class _Quests(quest_pb2_grpc.QuestServiceServicer):
    async def GetQuest(self, request, context):
        return quest_pb2.GetQuestResponse(quest=quest_pb2.Quest(quest_id=request.quest_id))


@dataclass
class Mesh:
    server: nats_transport.aio.Server
    channel: nats_transport.aio.Channel
    health: health_aio.HealthServicer


@pytest.fixture
async def mesh(nc: Client) -> AsyncIterator[Mesh]:
    target = f"health-{uuid.uuid4().hex[:12]}"
    server = nats_transport.aio.server(nc, target)
    health = health_aio.HealthServicer()
    quest_pb2_grpc.add_QuestServiceServicer_to_server(_Quests(), server)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    names = (QUEST, HEALTH, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    await server.start()
    channel = nats_transport.aio.channel(nc, target)
    yield Mesh(server, channel, health)
    await channel.close()
    await server.stop(grace=None)


def _health(mesh: Mesh) -> health_pb2_grpc.HealthStub:
    return health_pb2_grpc.HealthStub(mesh.channel)


# -- health -----------------------------------------------------------------------------------


async def test_check_of_the_whole_server_is_serving(mesh):
    reply = await _health(mesh).Check(health_pb2.HealthCheckRequest(service=""), timeout=2)

    assert reply.status == SERVING


async def test_check_reports_a_status_set_for_a_service(mesh):
    await mesh.health.set(QUEST, NOT_SERVING)

    reply = await _health(mesh).Check(health_pb2.HealthCheckRequest(service=QUEST), timeout=2)

    assert reply.status == NOT_SERVING


async def test_check_of_an_unknown_service_fails_with_not_found(mesh):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _health(mesh).Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=2)

    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_watch_streams_the_current_status_then_each_change(mesh):
    await mesh.health.set(QUEST, SERVING)
    call = _health(mesh).Watch(health_pb2.HealthCheckRequest(service=QUEST), timeout=5)

    first = await call.read()
    await mesh.health.set(QUEST, NOT_SERVING)
    second = await call.read()
    await mesh.health.set(QUEST, SERVING)
    third = await call.read()
    call.cancel()

    assert [first.status, second.status, third.status] == [SERVING, NOT_SERVING, SERVING]


async def test_watch_of_an_unknown_service_sends_service_unknown_and_stays_open(mesh):
    call = _health(mesh).Watch(health_pb2.HealthCheckRequest(service="later.Service"), timeout=5)

    first = await call.read()
    assert first.status == SERVICE_UNKNOWN
    assert not call.done()

    # The stream is still open: the service appearing later is reported on it.
    await mesh.health.set("later.Service", SERVING)
    second = await call.read()
    call.cancel()

    assert second.status == SERVING


async def test_watch_sees_graceful_shutdown_as_not_serving(mesh):
    call = _health(mesh).Watch(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert (await call.read()).status == SERVING

    await mesh.health.enter_graceful_shutdown()

    assert (await call.read()).status == NOT_SERVING
    call.cancel()


async def test_cancelling_a_watch_ends_it_on_the_server(mesh):
    call = _health(mesh).Watch(health_pb2.HealthCheckRequest(service=QUEST))
    await call.read()
    await wait_for(lambda: mesh.server.in_flight == 1)
    await wait_for(lambda: mesh.health._watcher_count_by_service[QUEST] == 1)

    assert call.cancel()

    await wait_for(lambda: mesh.server.in_flight == 0)
    assert mesh.health._watcher_count_by_service[QUEST] == 0
    assert await call.code() == grpc.StatusCode.CANCELLED


# -- reflection -------------------------------------------------------------------------------


class _Reflection:
    """One ServerReflectionInfo bidi stream, asked one question at a time."""

    def __init__(self, channel: nats_transport.aio.Channel) -> None:
        self.call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(timeout=5)

    async def ask(self, **request) -> reflection_pb2.ServerReflectionResponse:
        await self.call.write(reflection_pb2.ServerReflectionRequest(**request))
        return await self.call.read()

    async def close(self) -> grpc.StatusCode:
        await self.call.done_writing()
        assert await self.call.read() is grpc.aio.EOF
        return await self.call.code()


def _files(response: reflection_pb2.ServerReflectionResponse) -> list[descriptor_pb2.FileDescriptorProto]:
    return [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in response.file_descriptor_response.file_descriptor_proto
    ]


async def test_reflection_answers_every_question_on_one_stream(mesh):
    session = _Reflection(mesh.channel)

    listed = await session.ask(list_services="")
    by_symbol = await session.ask(file_containing_symbol=QUEST)
    quest_file = _files(by_symbol)[0]
    imported = await session.ask(file_by_filename="gaming/common/v1/common.proto")
    unknown = await session.ask(file_containing_symbol="no.such.Symbol")

    assert sorted(s.name for s in listed.list_services_response.service) == sorted(
        [QUEST, HEALTH, reflection.SERVICE_NAME]
    )
    assert quest_file.name == "gaming/quest/v1/quest.proto"
    assert quest_file.package == "gaming.quest.v1"
    assert "QuestService" in [s.name for s in quest_file.service]
    assert "gaming/common/v1/common.proto" in quest_file.dependency
    assert next(f.name for f in _files(imported)) == "gaming/common/v1/common.proto"
    assert unknown.WhichOneof("message_response") == "error_response"
    assert unknown.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    assert unknown.original_request.file_containing_symbol == "no.such.Symbol"
    assert await session.close() == grpc.StatusCode.OK


async def test_reflected_files_rebuild_the_service_with_its_dependencies(mesh):
    session = _Reflection(mesh.channel)
    response = await session.ask(file_containing_symbol=QUEST)
    files = {f.name: f for f in _files(response)}
    # Ask by filename for any import that did not come with the answer, as grpcurl does.
    missing = [dep for f in list(files.values()) for dep in f.dependency if dep not in files]
    while missing:
        name = missing.pop()
        if name in files:
            continue
        for extra in _files(await session.ask(file_by_filename=name)):
            files.setdefault(extra.name, extra)
            missing.extend(d for d in extra.dependency if d not in files)
    assert await session.close() == grpc.StatusCode.OK

    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(name: str) -> None:
        if name in added:
            return
        for dep in files[name].dependency:
            add(dep)
        pool.Add(files[name])
        added.add(name)

    add("gaming/quest/v1/quest.proto")
    service = pool.FindServiceByName(QUEST)
    get_quest = service.methods_by_name["GetQuest"]

    assert get_quest.input_type.full_name == "gaming.quest.v1.GetQuestRequest"
    assert get_quest.output_type.full_name == "gaming.quest.v1.GetQuestResponse"
    assert "google/protobuf/timestamp.proto" in files
    assert "gaming/common/v1/common.proto" in files
