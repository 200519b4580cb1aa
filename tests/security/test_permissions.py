"""The pure permission tables and their rendering."""

from __future__ import annotations

import pytest

from mesh import catalogue
from mesh.security.permissions import (
    CLIENTS,
    Permissions,
    all_permissions,
    client_permissions,
    identities,
    jetstream_grants,
    permissions_for,
    target_permissions,
)
from mesh.security.server_config import quote, render_security

CALLS = {"a": ("b", "auth"), "b": ("auth",), "auth": ("auth",)}
STORAGE = {"a": ("a_things",), "b": ("EVENTS",), "auth": ("auth_keys",)}
STREAMS = {"EVENTS": ("events.>", "_EVLOG.EVENTS.>")}


@pytest.mark.parametrize(("target", "expected"), [
    ("a", Permissions(
        publish=("grpc.b.>", "grpc.$cancel.b", "_INBOX_b.s.>", "grpc.auth.>", "grpc.$cancel.auth",
                 "_INBOX_auth.s.>", "_INBOX_ingress.>", "_INBOX_edge.>", "_INBOX_operator.>",
                 *jetstream_grants("a_things")),
        subscribe=("grpc.a.> a", "grpc.$cancel.a", "_INBOX_a.>", "$SRV.>"))),
    ("b", Permissions(
        publish=("grpc.auth.>", "grpc.$cancel.auth", "_INBOX_auth.s.>", "_INBOX_a.>", "_INBOX_ingress.>",
                 "_INBOX_edge.>", "_INBOX_operator.>", *jetstream_grants("EVENTS", STREAMS)),
        subscribe=("grpc.b.> b", "grpc.$cancel.b", "_INBOX_b.>", "$SRV.>", "_EVLOG.EVENTS.>"))),
    ("auth", Permissions(
        publish=("grpc.auth.>", "grpc.$cancel.auth", "_INBOX_auth.s.>", "_INBOX_a.>", "_INBOX_b.>",
                 "_INBOX_auth.>", "_INBOX_ingress.>", "_INBOX_edge.>", "_INBOX_operator.>",
                 *jetstream_grants("auth_keys")),
        subscribe=("grpc.auth.> auth", "grpc.$cancel.auth", "_INBOX_auth.>", "$SRV.>"))),
])
def test_a_targets_permissions_follow_its_calls_its_callers_and_its_storage(target, expected):
    assert target_permissions(target, calls=CALLS, storage=STORAGE, stream_subjects=STREAMS) == expected


@pytest.mark.parametrize(("name", "expected"), [
    ("things", ("$KV.things.>", "$JS.API.STREAM.INFO.KV_things", "$JS.API.STREAM.CREATE.KV_things",
                "$JS.API.STREAM.UPDATE.KV_things", "$JS.API.STREAM.MSG.GET.KV_things", "$JS.API.DIRECT.GET.KV_things.>",
                "$JS.API.CONSUMER.CREATE.KV_things", "$JS.API.CONSUMER.CREATE.KV_things.>",
                "$JS.API.CONSUMER.INFO.KV_things.>", "$JS.API.CONSUMER.MSG.NEXT.KV_things.>",
                "$JS.FC.KV_things.>")),
    ("EVENTS", ("events.>", "_EVLOG.EVENTS.>", "$JS.API.STREAM.INFO.EVENTS", "$JS.API.STREAM.CREATE.EVENTS",
                "$JS.API.STREAM.UPDATE.EVENTS", "$JS.API.CONSUMER.CREATE.EVENTS.>", "$JS.API.CONSUMER.INFO.EVENTS.>",
                "$JS.API.CONSUMER.MSG.NEXT.EVENTS.>", "$JS.ACK.EVENTS.>")),
])
def test_jetstream_grants_name_one_bucket_or_stream_verb_by_verb(name, expected):
    assert jetstream_grants(name, STREAMS) == expected


@pytest.mark.parametrize("identity", identities())
def test_no_identity_gets_a_blanket_grant(identity):
    permissions = permissions_for(identity)
    everything = (*permissions.publish, *permissions.subscribe)
    assert not {">", "_INBOX.>", "$JS.API.>", "$JS.>", "$KV.>", "grpc.>"} & set(everything)
    assert not any(s.startswith(("$JS.API.STREAM.DELETE", "$JS.API.STREAM.PURGE")) for s in everything)
    if identity not in CLIENTS:
        assert all("*" not in s for s in everything), "targets name every subject they may use"


def test_only_auth_may_touch_auth_buckets():
    for identity, permissions in all_permissions().items():
        touches = any("auth_" in s for s in permissions.publish)
        assert touches == (identity == "auth"), identity


@pytest.mark.parametrize("client", CLIENTS)
def test_edge_clients_call_any_target_but_auths_internal_methods(client):
    permissions = client_permissions(client)
    assert "grpc.*.>" in permissions.publish
    assert permissions.publish_deny == ("grpc.auth.gaming.auth.v1.AuthService.IssueServiceToken",)
    assert permissions.subscribe == (f"_INBOX_{client}.>",)
    assert {f"_INBOX_{t}.s.>" for t in catalogue.CATALOGUE} <= set(permissions.publish)
    assert ("$JS.API.INFO" in permissions.publish) == (client == "operator")
    assert not any(s.startswith("$KV.") for s in permissions.publish)


def test_a_target_hears_cancels_of_its_own_calls_only_and_may_cancel_its_calls_to_others():
    for target in catalogue.CATALOGUE:
        permissions = permissions_for(target)
        assert [s for s in permissions.subscribe if "$cancel" in s] == [f"grpc.$cancel.{target}"], target
        cancels = {s for s in permissions.publish if "$cancel" in s}
        assert cancels == {f"grpc.$cancel.{callee}" for callee in catalogue.CALLS.get(target, ())}, target


def test_every_target_answers_its_callers_and_the_edge():
    for target in catalogue.CATALOGUE:
        publish = set(permissions_for(target).publish)
        callers = {c for c, called in catalogue.CALLS.items() if target in called}
        assert {f"_INBOX_{c}.>" for c in (*callers, *CLIENTS)} <= publish, target


@pytest.mark.parametrize(("text", "rendered"), [
    ("$JS.API.INFO", '"$JS.API.INFO"'),
    ("grpc.a.> a", '"grpc.a.> a"'),
    ('/odd "path"\\x', '"/odd \\"path\\"\\\\x"'),
])
def test_config_strings_are_always_quoted(text, rendered):
    assert quote(text) == rendered


def test_the_security_include_holds_only_tls_and_authorization(tmp_path):
    text = render_security(tmp_path / "c", tmp_path / "k", tmp_path / "ca",
                           {"a": ("UABC", target_permissions("a", calls=CALLS, storage=STORAGE))})
    top_level = [line.split()[0] for line in text.splitlines() if line and not line.startswith((" ", "#", "}"))]
    assert top_level == ["tls", "authorization"]
    assert '"grpc.a.> a",' in text
    assert '"$KV.a_things.>",' in text
