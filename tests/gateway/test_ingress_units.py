"""Pure parts of the ingress, table-driven: which metadata crosses, deadlines, method paths,
``$SRV.INFO`` answers, and the descriptor index."""

from __future__ import annotations

import json

import pytest
from gaming.npc_behavior.v1 import npc_behavior_pb2
from gaming.settings.v1 import settings_pb2
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor

from gateway import metadata
from gateway.descriptor_index import DescriptorIndex, MethodKind
from gateway.discovery import parse_info
from gateway.forwarding import split_method
from gateway.reflection import v1_file

# -- metadata ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "forwarded"),
    [
        ("x-player", True),
        ("authorization", True),
        ("traceparent", True),
        ("x-token-bin", True),
        ("X-Mixed-Case", True),
        (":authority", False),
        (":path", False),
        ("user-agent", False),
        ("te", False),
        ("content-type", False),
        ("grpc-accept-encoding", False),
        ("grpc-timeout", False),
        ("grpc-previous-rpc-attempts", False),
        ("nats-grpc-stream", False),  # the NATS transport's own signalling: never from outside
        ("connection", False),
    ],
)
def test_request_metadata_keeps_user_keys_and_drops_transport_ones(key: str, forwarded: bool):
    kept = metadata.request_metadata([(key, "v")])

    assert kept == (((key.lower(), "v"),) if forwarded else ())


def test_request_metadata_keeps_order_and_repeats():
    pairs = [("a", "1"), ("user-agent", "x"), ("a", "2"), ("b-bin", b"\x00")]

    assert metadata.request_metadata(pairs) == (("a", "1"), ("a", "2"), ("b-bin", b"\x00"))


def test_trailing_metadata_keeps_the_rich_status_details_and_nothing_else_of_grpc():
    pairs = [("x-why", "r"), ("grpc-status-details-bin", b"\x08\x0a"), ("grpc-status", "10"), ("grpc-message", "m")]

    assert metadata.trailing_metadata(pairs) == (("x-why", "r"), ("grpc-status-details-bin", b"\x08\x0a"))


def test_initial_metadata_drops_transport_keys():
    assert metadata.initial_metadata([("x-a", "1"), ("content-type", "application/grpc")]) == (("x-a", "1"),)


@pytest.mark.parametrize(
    ("remaining", "timeout"),
    [(None, None), (9.2e18, None), (2.5, 2.5), (0.0, 1e-6), (-1.0, 1e-6)],
)
def test_the_remaining_deadline_becomes_the_nats_timeout(remaining: float | None, timeout: float | None):
    assert metadata.remaining_timeout(remaining) == timeout


# -- method paths ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "parts"),
    [
        ("/gaming.quest.v1.QuestService/GetQuest", ("gaming.quest.v1.QuestService", "GetQuest")),
        ("/Svc/M", ("Svc", "M")),
        ("gaming.quest.v1.QuestService/GetQuest", None),
        ("/gaming.quest.v1.QuestService", None),
        ("/gaming.quest.v1.QuestService/", None),
        ("//M", None),
        ("/a/b/c", None),
    ],
)
def test_method_paths_split_into_service_and_method(path: str, parts: tuple[str, str] | None):
    assert split_method(path) == parts


# -- $SRV.INFO answers --------------------------------------------------------------------------------


def info(**fields: object) -> bytes:
    answer: dict[str, object] = {
        "type": "io.nats.micro.v1.info_response", "name": "quest", "id": "abc",
        "metadata": {"grpc.services": "gaming.quest.v1.QuestService,grpc.health.v1.Health", "grpc.target": "quest"},
        "endpoints": [{"name": "GetQuest", "subject": "grpc.quest.gaming.quest.v1.QuestService.GetQuest",
                       "queue_group": "quest", "metadata": {"grpc.service": "gaming.quest.v1.QuestService"}}],
    }
    answer.update(fields)
    return json.dumps(answer).encode()


def test_an_info_answer_names_the_target_its_services_and_methods():
    instance = parse_info(info())

    assert instance is not None
    assert (instance.target, instance.id) == ("quest", "abc")
    assert instance.services == {"gaming.quest.v1.QuestService", "grpc.health.v1.Health"}
    assert instance.methods == {"/gaming.quest.v1.QuestService/GetQuest"}


@pytest.mark.parametrize(
    "data",
    [
        b"",  # the no-responders status
        b"not json",
        b"[]",
        info(type="io.nats.micro.v1.ping_response"),
        info(metadata={"other": "service"}),  # a NATS micro service that is not gRPC
        info(id=""),
    ],
)
def test_answers_that_are_not_grpc_servers_are_ignored(data: bytes):
    assert parse_info(data) is None


# -- the descriptor index -----------------------------------------------------------------------------


def serialized(descriptor: FileDescriptor) -> bytes:
    proto = descriptor_pb2.FileDescriptorProto()
    descriptor.CopyToProto(proto)
    return proto.SerializeToString()


def index_of(*descriptors: FileDescriptor) -> DescriptorIndex:
    index = DescriptorIndex()
    pending, seen = list(descriptors), set()
    while pending:
        descriptor = pending.pop()
        if descriptor.name not in seen:
            seen.add(descriptor.name)
            index.add(serialized(descriptor))
            pending.extend(descriptor.dependencies)
    return index


SETTINGS_FILE = "gaming/settings/v1/settings.proto"


@pytest.mark.parametrize(
    ("symbol", "filename"),
    [
        ("gaming.settings.v1.SettingsService", SETTINGS_FILE),
        ("gaming.settings.v1.SettingsService.Watch", SETTINGS_FILE),
        (".gaming.settings.v1.GetRequest", SETTINGS_FILE),
        ("gaming.settings.v1.GetRequest.scope", SETTINGS_FILE),
        ("gaming.settings.v1.SCOPE_KIND_PLAYER", SETTINGS_FILE),  # enum values are the enum's siblings
        ("gaming.settings.v1.ScopeKind", SETTINGS_FILE),
        ("gaming.common.v1.Revision", "gaming/common/v1/common.proto"),
        ("google.api.http", "google/api/annotations.proto"),
        ("google.protobuf.Timestamp", "google/protobuf/timestamp.proto"),
        ("gaming.settings.v1.Nothing", None),
    ],
)
def test_the_index_finds_the_file_of_each_kind_of_symbol(symbol: str, filename: str | None):
    assert index_of(settings_pb2.DESCRIPTOR).file_containing_symbol(symbol) == filename


def test_a_file_comes_with_every_import_once():
    index = index_of(settings_pb2.DESCRIPTOR)

    files = [descriptor_pb2.FileDescriptorProto.FromString(b) for b in index.with_dependencies(SETTINGS_FILE)]

    names = [f.name for f in files]
    assert names[0] == SETTINGS_FILE
    assert len(names) == len(set(names))
    assert {dep for f in files for dep in f.dependency} <= set(names)
    assert not index.missing_dependencies()


def test_the_index_knows_the_call_type_of_each_method():
    index = index_of(settings_pb2.DESCRIPTOR, npc_behavior_pb2.DESCRIPTOR)

    assert index.method_kind("gaming.settings.v1.SettingsService", "Get") == MethodKind(False, False)
    assert index.method_kind("gaming.settings.v1.SettingsService", "Watch") == MethodKind(False, True)
    assert index.method_kind("gaming.npc_behavior.v1.NpcBehaviorService", "DecisionStream") == MethodKind(True, True)
    assert index.method_kind("gaming.settings.v1.SettingsService", "Nope") is None
    assert index.method_kind("no.Service", "Get") is None
    assert [MethodKind(a, b).name for a, b in ((0, 0), (1, 0), (0, 1), (1, 1))] == [
        "unary", "client_stream", "server_stream", "bidi_stream"]


def test_extensions_are_found_by_type_and_number():
    index = index_of(annotations_pb2.DESCRIPTOR)

    assert index.file_containing_extension("google.protobuf.MethodOptions", 72295728) == "google/api/annotations.proto"
    assert index.file_containing_extension(".google.protobuf.MethodOptions", 1) is None
    assert index.extension_numbers("google.protobuf.MethodOptions") == [72295728]
    assert index.extension_numbers("google.protobuf.FileOptions") == []  # known, none here
    assert index.extension_numbers("no.such.Message") is None


def test_a_file_added_twice_keeps_its_first_copy():
    index = index_of(settings_pb2.DESCRIPTOR)
    before = index.with_dependencies(SETTINGS_FILE)

    index.add(serialized(settings_pb2.DESCRIPTOR))

    assert index.with_dependencies(SETTINGS_FILE) == before


def test_the_v1_reflection_file_is_the_v1alpha_one_under_the_v1_package():
    proto = v1_file()
    index = DescriptorIndex()
    index.add(proto.SerializeToString())

    assert index.method_kind("grpc.reflection.v1.ServerReflection", "ServerReflectionInfo") == MethodKind(True, True)
    assert all(".v1alpha." not in f.type_name for m in proto.message_type for f in m.field)
