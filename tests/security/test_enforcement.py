"""The generated configuration enforced by a real nats-server: mTLS, nkeys and each identity's
permissions, denied and granted. A denied subscribe or publish does not raise in nats-py: it
arrives through error_cb, so each denial waits (bounded) for that report."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import grpc
import nats
import nats.errors
import nats.js.errors
import pytest
from gaming.event_bus.v1 import event_bus_pb2 as eb
from gaming.event_bus.v1 import event_bus_pb2_grpc as eb_grpc

import nats_transport.aio
from mesh.jetstream_storage import JetStreamStorage
from tests._waiting import wait_for
from tests.security._identities import Errors, connect, tls_context

A, B = "quest-system", "payment"  # A calls B (CALLS), B does not call A
NOT_CALLED_BY_A = "settings"


@pytest.fixture
def secrets(data_dir: Path) -> Path:
    return data_dir / "secrets"


async def _refused(url: str, **options: object) -> Exception:
    try:
        nc = await nats.connect(servers=[url], allow_reconnect=False, max_reconnect_attempts=0,
                                connect_timeout=3, **options)  # type: ignore[arg-type]
    except Exception as error:
        return error
    await nc.close()
    raise AssertionError("the server accepted the connection")


async def _violation(errors: Errors, subject: str) -> None:
    await wait_for(lambda: any(subject.lower() in v.lower() for v in errors.violations()), timeout=3)


# -- who may connect ----------------------------------------------------------------------------


async def test_a_client_without_tls_or_credentials_is_refused(secured):
    await _refused(secured.url)


async def test_a_client_with_a_valid_nkey_but_no_client_certificate_is_refused(secured, secrets):
    error = await _refused(secured.url, tls=tls_context(secrets / A, client_cert=False),
                           nkeys_seed=str(secrets / A / "nkey.seed"))
    assert error is not None


async def test_a_client_with_a_certificate_but_no_nkey_is_refused(secured, secrets):
    await _refused(secured.url, tls=tls_context(secrets / A))


# -- denials ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("subject", "queue"), [
    (f"grpc.{B}.>", ""),  # another target's calls
    (f"grpc.{B}.>", B),  # joining another target's queue group
    (f"grpc.{A}.>", ""),  # its own calls, but outside its queue group
    (f"grpc.{A}.>", "intruder"),  # its own calls in another queue group
    ("_INBOX.>", ""),  # every default inbox
    (f"_INBOX_{B}.>", ""),  # another target's replies
    (f"grpc.$cancel.{B}", ""),  # another target's cancels, which name its callers' reply subjects
    ("grpc.$cancel.*", ""),
    (">", ""),
])
async def test_a_target_cannot_subscribe_outside_its_own_subjects(secured, secrets, subject, queue):
    errors = Errors()
    nc = await connect(secured.url, secrets, A, errors)
    try:
        await nc.subscribe(subject, queue=queue)
        await _violation(errors, f'subscription to "{subject}"')
    finally:
        await nc.close()


@pytest.mark.parametrize("subject", [
    f"grpc.{NOT_CALLED_BY_A}.gaming.settings.v1.SettingsService.Get",  # a target it does not call
    f"_INBOX_{B}.1.2",  # forging a reply from B's own calls (not its per-call .s. subjects)
    f"grpc.$cancel.{NOT_CALLED_BY_A}",  # cancelling calls of a target it does not call
    "$KV.auth_keys.signing",  # writing auth's signing key
])
async def test_a_target_cannot_publish_outside_its_grants(secured, secrets, subject):
    errors = Errors()
    nc = await connect(secured.url, secrets, A, errors)
    try:
        await nc.publish(subject, b"x")
        await _violation(errors, f'publish to "{subject}"')
    finally:
        await nc.close()


async def test_a_target_cannot_read_another_targets_bucket_or_delete_its_stream(secured, secrets):
    owner = await connect(secured.url, secrets, B)
    errors = Errors()
    intruder = await connect(secured.url, secrets, A, errors)
    try:
        kv = await JetStreamStorage(owner).key_value("payment_accounts")
        await kv.put("alice", b"100")
        js = intruder.jetstream(timeout=1.0)
        with pytest.raises(nats.errors.TimeoutError):
            await js.key_value("payment_accounts")
        with pytest.raises(nats.errors.TimeoutError):
            await js.delete_stream("KV_payment_accounts")
        with pytest.raises(nats.errors.TimeoutError):
            await js.key_value("auth_keys")
        await _violation(errors, '"$JS.API.STREAM.DELETE.KV_payment_accounts"')
        assert (await kv.get("alice")) is not None
    finally:
        await intruder.close()
        await owner.close()


async def test_the_ingress_may_not_call_auths_internal_methods(secured, secrets):
    errors = Errors()
    nc = await connect(secured.url, secrets, "ingress", errors)
    try:
        await nc.publish("grpc.auth.gaming.auth.v1.AuthService.Validate", b"")  # allowed
        await nc.publish("grpc.auth.gaming.auth.v1.AuthService.IssueServiceToken", b"")
        await _violation(errors, "IssueServiceToken")
        assert not any("Validate" in v for v in errors.violations())
    finally:
        await nc.close()


# -- grants -------------------------------------------------------------------------------------


class Events(eb_grpc.EventBusServiceServicer):
    """A stand-in event bus: unary, server-streaming and client-streaming methods."""

    async def Publish(self, request, context):
        return eb.PublishResponse(sequence=7)

    async def Subscribe(self, request, context):
        for i in range(1, 4):
            yield eb.SubscribeResponse(event=eb.Event(sequence=i, topic="t"))

    async def PublishBatch(self, request_iterator, context):
        count = len([r async for r in request_iterator])
        return eb.PublishBatchResponse(accepted_count=count, last_sequence=count)


async def test_a_target_serves_its_queue_group_and_calls_a_target_it_depends_on(secured, secrets):
    # body-broker-integration calls event-bus; the stream calls cross event-bus's per-call subjects.
    caller, callee = "body-broker-integration", "event-bus"
    errors = Errors()
    server_nc = await connect(secured.url, secrets, callee, errors)
    client_nc = await connect(secured.url, secrets, caller, errors)
    server = nats_transport.aio.server(server_nc, callee)
    eb_grpc.add_EventBusServiceServicer_to_server(Events(), server)
    await server.start()
    try:
        stub = eb_grpc.EventBusServiceStub(nats_transport.aio.channel(client_nc, callee))
        assert (await stub.Publish(eb.PublishRequest(topic="t"), timeout=5)).sequence == 7
        got = [r.event.sequence async for r in stub.Subscribe(eb.SubscribeRequest(topic_filter="t"), timeout=5)]
        assert got == [1, 2, 3]

        async def batch():
            for i in range(50):
                yield eb.PublishBatchRequest(message_id=str(i))

        assert (await stub.PublishBatch(batch(), timeout=5)).accepted_count == 50
        assert errors.violations() == []
    finally:
        await server.stop(0)
        await client_nc.close()
        await server_nc.close()


async def test_a_caller_cancels_its_unary_call_and_the_targets_handler_stops(secured, secrets):
    caller, callee = "body-broker-integration", "event-bus"
    started, stopped = asyncio.Event(), asyncio.Event()

    class Slow(Events):
        async def Publish(self, request, context):
            started.set()
            try:
                await asyncio.Event().wait()  # nothing sets it: only the cancel ends this
            finally:
                stopped.set()

    errors = Errors()
    server_nc = await connect(secured.url, secrets, callee, errors)
    client_nc = await connect(secured.url, secrets, caller, errors)
    server = nats_transport.aio.server(server_nc, callee)
    eb_grpc.add_EventBusServiceServicer_to_server(Slow(), server)
    await server.start()
    try:
        stub = eb_grpc.EventBusServiceStub(nats_transport.aio.channel(client_nc, callee))
        call = stub.Publish(eb.PublishRequest(topic="t"), timeout=30)
        await wait_for(started.is_set)
        call.cancel()
        await wait_for(stopped.is_set, timeout=2)
        assert server.stats.unary_cancelled == 1
        assert errors.violations() == []
    finally:
        await server.stop(0)
        await client_nc.close()
        await server_nc.close()


async def test_a_target_that_does_not_call_another_cannot_reach_it(secured, secrets):
    server_nc = await connect(secured.url, secrets, "event-bus")
    errors = Errors()
    client_nc = await connect(secured.url, secrets, "weather-manager", errors)
    server = nats_transport.aio.server(server_nc, "event-bus")
    eb_grpc.add_EventBusServiceServicer_to_server(Events(), server)
    await server.start()
    try:
        stub = eb_grpc.EventBusServiceStub(nats_transport.aio.channel(client_nc, "event-bus"))
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Publish(eb.PublishRequest(topic="t"), timeout=1)
        await _violation(errors, '"grpc.event-bus.')
    finally:
        await server.stop(0)
        with contextlib.suppress(asyncio.CancelledError):
            await client_nc.close()
        await server_nc.close()
