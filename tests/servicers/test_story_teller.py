"""story-teller over NATS with the real ai-integration servicer (its built-in model is
deterministic) on its own target: beats streamed and stored, the story's arc, compare-and-set on
Continue, ai-integration or the store going away, deadlines reaching ai-integration, ownership
under the auth interceptor, and a story that outlives the servicer."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import nats
import pytest
from gaming.ai_integration.v1 import ai_integration_pb2 as ai
from gaming.ai_integration.v1 import ai_integration_pb2_grpc
from gaming.auth.v1 import auth_pb2, auth_pb2_grpc
from gaming.common.v1 import common_pb2
from gaming.story_teller.v1 import story_teller_pb2 as st
from gaming.story_teller.v1 import story_teller_pb2_grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nats.aio.client import Client

import nats_transport.aio
from mesh.jetstream_storage import JetStreamStorage
from nats_transport.testing import NatsServer
from servicers import ai_integration, auth, story_teller
from servicers.auth import AccessPolicy, ValidateVerifier
from servicers.dependencies import Dependencies
from servicers.error_boundary import ErrorBoundary
from servicers.story_teller import _narration
from tests._buckets import delete_buckets
from tests._serving import served
from tests.servicers._faulty_storage import FaultyStorage

NOW = 1_700_000_000.25
SETTINGS = {"bucket_max_bytes": str(8 * 1024 * 1024), "beat_max_tokens": "24"}
PREMISE = "A lighthouse keeper finds a door in the rock below the tower"
K = st.BeatKind


class ObservedInference(ai_integration_pb2_grpc.AiIntegrationServiceServicer):
    """Forwards to the real ai-integration servicer, noting each request, its reply and the
    deadline it arrived with: how a test sees what story-teller asked for."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[tuple[ai.GenerateRequest, ai.GenerateResponse | None, float | None]] = []

    async def Generate(self, request: ai.GenerateRequest, context: Any) -> ai.GenerateResponse:
        remaining = context.time_remaining()
        reply: ai.GenerateResponse | None = None
        try:
            reply = await self.inner.Generate(request, context)
            return reply
        finally:
            self.calls.append((request, reply, remaining))

    async def StreamGenerate(self, request: ai.StreamGenerateRequest, context: Any) -> AsyncIterator[Any]:
        async for message in self.inner.StreamGenerate(request, context):
            yield message

    @property
    def requests(self) -> list[ai.GenerateRequest]:
        return [request for request, _, _ in self.calls]


@dataclass
class World:
    stories: Any
    inference: ObservedInference
    direct: Any  # a stub straight to ai-integration
    stop_inference: Any
    storage: Any


@contextlib.asynccontextmanager
async def world_on(nc: Client, storage: Any, *, inference: dict[str, str] | None = None,
                   settings: dict[str, str] | None = None) -> AsyncIterator[World]:
    """story-teller and the real ai-integration (with ``inference`` settings) on test targets."""
    target = f"{ai_integration.TARGET}-{uuid.uuid4().hex[:8]}"

    def channel(name: str) -> Any:
        assert name == ai_integration.TARGET, name
        return nats_transport.aio.channel(nc, target)

    observed = ObservedInference(await ai_integration.create(
        Dependencies(storage=storage, channel=channel, settings=inference or {})
    ))
    servicer = await story_teller.create(
        Dependencies(storage=storage, channel=channel, settings={**SETTINGS, **(settings or {})}, clock=lambda: NOW)
    )
    # Served by hand rather than with ``served`` so that a test can stop it with a grace period.
    inference_server = nats_transport.aio.server(nc, target, interceptors=[ErrorBoundary()])
    ai_integration.add_to_server(observed, inference_server)
    await inference_server.start()

    async def stop_inference(grace: float = 0) -> None:
        await inference_server.stop(grace)

    try:
        async with served(nc, story_teller.add_to_server, servicer) as stories:
            yield World(
                stories=story_teller_pb2_grpc.StoryTellerServiceStub(stories),
                inference=observed,
                direct=ai_integration_pb2_grpc.AiIntegrationServiceStub(channel(ai_integration.TARGET)),
                stop_inference=stop_inference,
                storage=storage,
            )
    finally:
        await inference_server.stop(0)


@pytest.fixture
async def world(nc: Client, storage: JetStreamStorage) -> AsyncIterator[World]:
    async with world_on(nc, storage) as running:
        yield running


async def failure(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def stream_failure(call: Any) -> tuple[list[Any], grpc.aio.AioRpcError]:
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for message in call:
            received.append(message)
    return received, caught.value


def detail(err: grpc.aio.AioRpcError, kind: Any) -> Any:
    status = rpc_status.from_call(err)
    assert status is not None
    for packed in status.details:
        found = kind()
        if packed.Unpack(found):
            return found
    raise AssertionError(f"no {kind.__name__} in {status.details}")


def bad_field(err: grpc.aio.AioRpcError) -> str:
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    return str(detail(err, error_details_pb2.BadRequest).field_violations[0].field)


def kinds(beats: Any) -> list[int]:
    return [beat.kind for beat in beats]


async def tell(world: World, **fields: Any) -> list[st.TellStoryResponse]:
    request = st.TellStoryRequest(**{"player_id": "p1", **({"premise": PREMISE} if "story_id" not in fields else {}),
                                     **fields})
    return [message async for message in world.stories.TellStory(request, timeout=10)]


async def get(world: World, story_id: str) -> st.Story:
    response: st.GetStoryResponse = await world.stories.GetStory(st.GetStoryRequest(story_id=story_id), timeout=5)
    return response.story


async def answer(world: World, story_id: str, revision: int, choice: str = "Open the door") -> st.ContinueResponse:
    request = st.ContinueRequest(story_id=story_id, player_choice=choice,
                                 expected_revision=common_pb2.Revision(value=revision))
    response: st.ContinueResponse = await world.stories.Continue(request, timeout=10)
    return response


# -- TellStory ----------------------------------------------------------------------------------------


async def test_tell_story_streams_beats_until_a_choice_and_stores_each(world: World) -> None:
    messages = await tell(world, tone=st.TONE_MYSTERIOUS, locale=common_pb2.LocaleTag(tag="en-GB"))
    beats = [message.beat for message in messages]
    assert kinds(beats) == [K.BEAT_KIND_EXPOSITION, K.BEAT_KIND_RISING_ACTION, K.BEAT_KIND_DIALOGUE,
                            K.BEAT_KIND_CHOICE]
    assert [beat.index for beat in beats] == [0, 1, 2, 3]
    story_id = messages[0].story_id
    assert story_id
    assert {message.story_id for message in messages} == {story_id}
    revisions = [message.revision.value for message in messages]
    assert revisions == sorted(set(revisions))
    assert all(beat.text and not beat.player_choice for beat in beats)
    assert all(beat.create_time.ToNanoseconds() == round(NOW * 1e9) for beat in beats)
    # The built-in model lists no options, so a CHOICE suggests the tone's stock choices.
    assert list(beats[-1].suggested_choices) == list(_narration.STOCK_CHOICES[st.TONE_MYSTERIOUS])
    assert all(not beat.suggested_choices for beat in beats[:-1])

    story = await get(world, story_id)
    assert list(story.beats) == beats
    assert (story.story_id, story.player_id, story.premise) == (story_id, "p1", PREMISE)
    assert (story.tone, story.locale.tag, story.ended) == (st.TONE_MYSTERIOUS, "en-GB", False)
    assert story.revision.value == revisions[-1]
    assert story.create_time.ToNanoseconds() == round(NOW * 1e9)
    assert story.audit.actor_id == "p1"


async def test_each_beat_is_ai_integrations_output_for_a_prompt_built_from_the_story(world: World) -> None:
    messages = await tell(world, max_beats=3, tone=st.TONE_DARK)
    story_id = messages[0].story_id
    assert len(world.inference.calls) == 3
    for (request, reply, _), message in zip(world.inference.calls, messages, strict=True):
        assert reply is not None
        assert message.beat.text == reply.text.strip()
        assert request.model == "local-tiny"
        assert request.max_tokens == 24
        assert request.seed == _narration.beat_seed(story_id, message.beat.index)
        assert f"Premise: {PREMISE}" in request.prompt
        assert "dark (grim" in request.system_prompt
        assert "en-US" in request.system_prompt
    first, second, third = world.inference.requests
    assert "Story so far" not in first.prompt
    assert first.prompt.endswith("Next beat (exposition):")
    assert messages[0].beat.text in second.prompt
    assert second.prompt.endswith("Next beat (rising action):")
    assert messages[0].beat.text in third.prompt
    assert messages[1].beat.text in third.prompt


async def test_the_beats_are_a_deterministic_function_of_the_story(world: World) -> None:
    messages = await tell(world, max_beats=2)
    # The story id seeds the built-in model: asking ai-integration again with the requests
    # story-teller made gives the same text.
    for request, message in zip(world.inference.requests, messages, strict=True):
        again = await world.direct.Generate(request, timeout=5)
        assert again.text.strip() == message.beat.text


async def test_max_beats_bounds_the_stream(world: World) -> None:
    messages = await tell(world, max_beats=2)
    assert kinds(message.beat for message in messages) == [K.BEAT_KIND_EXPOSITION, K.BEAT_KIND_RISING_ACTION]
    assert len((await get(world, messages[0].story_id)).beats) == 2


async def test_an_unspecified_tone_and_locale_mean_heroic_and_en_us(world: World) -> None:
    messages = await tell(world, max_beats=1)
    story = await get(world, messages[0].story_id)
    assert (story.tone, story.locale.tag) == (st.TONE_HEROIC, "en-US")


async def test_tell_story_extends_a_story_after_the_players_answer(world: World) -> None:
    opening = await tell(world)
    story_id = opening[0].story_id
    answered = await answer(world, story_id, opening[-1].revision.value)
    more = await tell(world, story_id=story_id, premise="ignored", tone=st.TONE_HUMOROUS)
    assert kinds(message.beat for message in more) == [K.BEAT_KIND_DIALOGUE, K.BEAT_KIND_CHOICE]
    assert [message.beat.index for message in more] == [5, 6]
    assert {message.story_id for message in more} == {story_id}
    story = await get(world, story_id)
    assert (story.premise, story.tone) == (PREMISE, st.TONE_HEROIC)  # an extension changes neither
    assert list(story.beats) == [m.beat for m in opening] + [answered.beat] + [m.beat for m in more]
    assert list(more[-1].beat.suggested_choices) == list(_narration.STOCK_CHOICES[st.TONE_HEROIC])


async def test_extending_a_story_that_waits_for_a_choice_is_failed_precondition(world: World) -> None:
    opening = await tell(world)
    _, err = await stream_failure(world.stories.TellStory(
        st.TellStoryRequest(story_id=opening[0].story_id, player_id="p1"), timeout=5
    ))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert detail(err, error_details_pb2.ErrorInfo).reason == "STORY_AWAITS_CHOICE"


@pytest.mark.parametrize(
    ("fields", "field_name"),
    [
        ({"premise": ""}, "premise"),
        ({"premise": "   "}, "premise"),
        ({"premise": "p" * 2001}, "premise"),
        ({"player_id": ""}, "player_id"),
        ({"player_id": "x" * 129}, "player_id"),
        ({"tone": 99}, "tone"),
        ({"max_beats": 21}, "max_beats"),
        ({"locale": common_pb2.LocaleTag(tag="not a locale")}, "locale.tag"),
        ({"story_id": "s" * 129}, "story_id"),
    ],
)
async def test_tell_story_refuses_bad_fields_naming_them(world: World, fields: dict[str, Any], field_name: str) -> None:
    request = st.TellStoryRequest(**{"player_id": "p1", "premise": PREMISE, **fields})
    _, err = await stream_failure(world.stories.TellStory(request, timeout=5))
    assert bad_field(err) == field_name
    assert world.inference.calls == []


async def test_tell_story_of_an_unknown_story_is_not_found(world: World) -> None:
    _, err = await stream_failure(world.stories.TellStory(
        st.TellStoryRequest(story_id="no-such-story", player_id="p1"), timeout=5
    ))
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_extending_another_players_story_is_permission_denied(world: World) -> None:
    opening = await tell(world, max_beats=1)
    _, err = await stream_failure(world.stories.TellStory(
        st.TellStoryRequest(story_id=opening[0].story_id, player_id="intruder"), timeout=5
    ))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED


# -- Continue ------------------------------------------------------------------------------------------


async def test_continue_appends_a_beat_answering_the_players_choice(world: World) -> None:
    opening = await tell(world)
    story_id, revision = opening[0].story_id, opening[-1].revision.value
    reply = await answer(world, story_id, revision, "Knock three times")
    assert (reply.beat.index, reply.beat.kind, reply.beat.player_choice) == (4, K.BEAT_KIND_RISING_ACTION,
                                                                             "Knock three times")
    assert reply.revision.value > revision
    assert not reply.ended
    request = world.inference.requests[-1]
    assert request.prompt.endswith("Player: Knock three times\nNext beat (rising action):")
    story = await get(world, story_id)
    assert story.beats[-1] == reply.beat
    assert story.revision == reply.revision


async def test_continue_with_a_stale_revision_is_aborted_with_the_current_one(world: World) -> None:
    opening = await tell(world)
    story_id, revision = opening[0].story_id, opening[-1].revision.value
    first = await answer(world, story_id, revision)
    calls = len(world.inference.calls)
    err = await failure(world.stories.Continue(st.ContinueRequest(
        story_id=story_id, player_choice="Run", expected_revision=common_pb2.Revision(value=revision)
    ), timeout=5))
    assert err.code() == grpc.StatusCode.ABORTED
    info = detail(err, error_details_pb2.ErrorInfo)
    assert (info.reason, info.metadata["current_revision"]) == ("REVISION_CONFLICT", str(first.revision.value))
    assert len(world.inference.calls) == calls  # refused before any generation
    assert len((await get(world, story_id)).beats) == 5


async def test_concurrent_continues_from_one_revision_let_exactly_one_win(world: World) -> None:
    opening = await tell(world)
    story_id, revision = opening[0].story_id, opening[-1].revision.value
    outcomes = await asyncio.gather(
        *(answer(world, story_id, revision, f"Choice {n}") for n in range(4)), return_exceptions=True
    )
    won = [outcome for outcome in outcomes if isinstance(outcome, st.ContinueResponse)]
    lost = [outcome for outcome in outcomes if isinstance(outcome, grpc.aio.AioRpcError)]
    assert len(won) == 1
    assert len(lost) == 3
    assert {err.code() for err in lost} == {grpc.StatusCode.ABORTED}
    story = await get(world, story_id)
    assert len(story.beats) == 5
    assert story.beats[-1] == won[0].beat


async def test_the_story_climbs_to_a_climax_and_ends_with_a_resolution(world: World) -> None:
    messages = await tell(world)
    story_id, revision = messages[0].story_id, messages[-1].revision.value
    seen = [message.beat.kind for message in messages]
    for _ in range(_narration.CHOICES_BEFORE_CLIMAX - 1):
        reply = await answer(world, story_id, revision)
        more = await tell(world, story_id=story_id)
        seen += [reply.beat.kind] + [message.beat.kind for message in more]
        revision = more[-1].revision.value
    climax = await answer(world, story_id, revision)
    assert (climax.beat.kind, climax.ended) == (K.BEAT_KIND_CLIMAX, False)
    ending = await tell(world, story_id=story_id)
    assert kinds(message.beat for message in ending) == [K.BEAT_KIND_RESOLUTION]
    assert seen == [K.BEAT_KIND_EXPOSITION] + [K.BEAT_KIND_RISING_ACTION, K.BEAT_KIND_DIALOGUE,
                                               K.BEAT_KIND_CHOICE] * 3
    story = await get(world, story_id)
    assert story.ended
    assert story.beats[-1].kind == K.BEAT_KIND_RESOLUTION
    err = await failure(world.stories.Continue(st.ContinueRequest(
        story_id=story_id, player_choice="Again!", expected_revision=story.revision
    ), timeout=5))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert detail(err, error_details_pb2.ErrorInfo).reason == "STORY_ENDED"
    _, err = await stream_failure(world.stories.TellStory(st.TellStoryRequest(story_id=story_id, player_id="p1"),
                                                          timeout=5))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_continue_can_end_the_story_itself(world: World) -> None:
    messages = await tell(world)
    story_id, revision = messages[0].story_id, messages[-1].revision.value
    replies = []
    for _ in range(_narration.CHOICES_BEFORE_CLIMAX + 1):
        replies.append(await answer(world, story_id, revision))
        revision = replies[-1].revision.value
    assert kinds(reply.beat for reply in replies) == [
        K.BEAT_KIND_RISING_ACTION, K.BEAT_KIND_DIALOGUE, K.BEAT_KIND_CLIMAX, K.BEAT_KIND_RESOLUTION
    ]
    assert [reply.ended for reply in replies] == [False, False, False, True]


@pytest.mark.parametrize(
    ("fields", "field_name"),
    [
        ({"story_id": ""}, "story_id"),
        ({"player_choice": ""}, "player_choice"),
        ({"player_choice": " \n"}, "player_choice"),
        ({"player_choice": "c" * 501}, "player_choice"),
        ({"expected_revision": None}, "expected_revision"),
    ],
)
async def test_continue_refuses_bad_fields_naming_them(world: World, fields: dict[str, Any], field_name: str) -> None:
    request = st.ContinueRequest(**{"story_id": "s1", "player_choice": "Go",
                                    "expected_revision": common_pb2.Revision(value=1), **fields})
    assert bad_field(await failure(world.stories.Continue(request, timeout=5))) == field_name


async def test_continue_of_an_unknown_story_is_not_found(world: World) -> None:
    err = await failure(world.stories.Continue(st.ContinueRequest(
        story_id="nope", player_choice="Go", expected_revision=common_pb2.Revision(value=1)
    ), timeout=5))
    assert err.code() == grpc.StatusCode.NOT_FOUND


# -- GetStory ------------------------------------------------------------------------------------------


async def test_get_story_refuses_an_empty_id_and_does_not_find_an_unknown_one(world: World) -> None:
    assert bad_field(await failure(world.stories.GetStory(st.GetStoryRequest(), timeout=5))) == "story_id"
    for story_id in ("unknown", "with spaces and.dots*>"):
        err = await failure(world.stories.GetStory(st.GetStoryRequest(story_id=story_id), timeout=5))
        assert err.code() == grpc.StatusCode.NOT_FOUND


# -- dependencies failing ------------------------------------------------------------------------------


async def test_ai_integration_down_is_unavailable_naming_it_and_nothing_is_stored(world: World) -> None:
    opening = await tell(world)
    story_id, revision = opening[0].story_id, opening[-1].revision.value
    await world.stop_inference()
    _, err = await stream_failure(world.stories.TellStory(st.TellStoryRequest(player_id="p1", premise=PREMISE),
                                                          timeout=3))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert (err.details() or "").startswith("ai-integration is unavailable")
    assert detail(err, error_details_pb2.ErrorInfo).reason == "AI_INTEGRATION_UNAVAILABLE"
    err = await failure(world.stories.Continue(st.ContinueRequest(
        story_id=story_id, player_choice="Go", expected_revision=common_pb2.Revision(value=revision)
    ), timeout=3))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert "ai-integration" in (err.details() or "")
    story = await get(world, story_id)
    assert (len(story.beats), story.revision.value) == (4, revision)


async def test_when_ai_integration_goes_away_mid_story_the_beats_sent_stay_stored(
    nc: Client, storage: Any
) -> None:
    # Paced at 20 ms a token, a 24-token beat takes about half a second: ai-integration is
    # stopped while it writes the second beat, which it may finish (a grace period), and it
    # takes no call after that.
    async with world_on(nc, storage, inference={"local_token_interval_ms": "20"}) as world:
        call = world.stories.TellStory(st.TellStoryRequest(player_id="p1", premise=PREMISE), timeout=10)
        first = await call.read()
        await world.stop_inference(grace=5)
        rest, err = await stream_failure(call)
        sent = [first, *rest]
        assert len(sent) < 4  # the stream ended before its CHOICE beat
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert (err.details() or "").startswith("ai-integration is unavailable")
        story = await get(world, first.story_id)
        assert list(story.beats) == [message.beat for message in sent]
        assert story.revision == sent[-1].revision


async def test_the_callers_deadline_reaches_ai_integration(world: World) -> None:
    await tell(world, max_beats=1)  # a 10 s deadline
    opening = [m async for m in world.stories.TellStory(
        st.TellStoryRequest(player_id="p1", premise=PREMISE, max_beats=2), timeout=0.9
    )]
    await world.stories.Continue(st.ContinueRequest(
        story_id=opening[0].story_id, player_choice="Go", expected_revision=opening[-1].revision
    ), timeout=0.7)
    deadlines = [remaining for _, _, remaining in world.inference.calls]
    assert len(deadlines) == 4
    first, second, third, continued = deadlines
    assert first is not None
    assert 9 < first <= 10
    assert second is not None
    assert third is not None
    assert 0 < third <= second <= 0.9
    assert continued is not None
    assert 0 < continued <= 0.7


async def test_a_beat_slower_than_the_beat_timeout_is_unavailable(nc: Client, storage: Any) -> None:
    async with world_on(nc, storage, inference={"local_token_interval_ms": "50"},
                        settings={"beat_timeout_s": "0.2"}) as world:
        _, err = await stream_failure(world.stories.TellStory(
            st.TellStoryRequest(player_id="p1", premise=PREMISE), timeout=5
        ))
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert err.details() == "ai-integration is unavailable: did not answer within 0.2s"


async def test_a_caller_deadline_shorter_than_a_beat_is_deadline_exceeded(nc: Client, storage: Any) -> None:
    async with world_on(nc, storage, inference={"local_token_interval_ms": "50"}) as world:
        _, err = await stream_failure(world.stories.TellStory(
            st.TellStoryRequest(player_id="p1", premise=PREMISE), timeout=0.3
        ))
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_an_unreachable_store_is_unavailable(nc: Client, storage: JetStreamStorage) -> None:
    faulty = FaultyStorage(storage)
    async with world_on(nc, faulty) as world:
        opening = await tell(world, max_beats=1)
        faulty.fail()
        err = await failure(world.stories.GetStory(st.GetStoryRequest(story_id=opening[0].story_id), timeout=5))
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert detail(err, error_details_pb2.ErrorInfo).reason == "STORAGE_UNAVAILABLE"
        _, err = await stream_failure(world.stories.TellStory(st.TellStoryRequest(player_id="p1", premise=PREMISE),
                                                              timeout=5))
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        faulty.restore()
        assert len((await get(world, opening[0].story_id)).beats) == 1


async def test_a_restart_keeps_acknowledged_state(nats_server: NatsServer) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}_"
    first_nc = await nats.connect(nats_server.url)
    try:
        async with world_on(first_nc, JetStreamStorage(first_nc, prefix=prefix)) as world:
            opening = await tell(world)
            reply = await answer(world, opening[0].story_id, opening[-1].revision.value)
            before = await get(world, opening[0].story_id)
    finally:
        await first_nc.close()

    second_nc = await nats.connect(nats_server.url)
    try:
        async with world_on(second_nc, JetStreamStorage(second_nc, prefix=prefix)) as world:
            after = await get(world, opening[0].story_id)
            assert after == before
            assert after.revision == reply.revision
            more = await tell(world, story_id=opening[0].story_id)
            assert [message.beat.index for message in more] == [5, 6]
    finally:
        await delete_buckets(second_nc, prefix)
        await second_nc.close()


# -- ownership under the auth interceptor --------------------------------------------------------------


TELL = "/gaming.story_teller.v1.StoryTellerService/TellStory"
CONTINUE = "/gaming.story_teller.v1.StoryTellerService/Continue"
GET = "/gaming.story_teller.v1.StoryTellerService/GetStory"


@contextlib.asynccontextmanager
async def guarded(nc: Client, storage: Any) -> AsyncIterator[tuple[Any, Any]]:
    """(story-teller stub, auth stub): story-teller behind its AccessPolicy, with the real auth and
    ai-integration services on test targets."""
    targets = {name: f"{name}-{uuid.uuid4().hex[:8]}" for name in (auth.TARGET, ai_integration.TARGET, "stories")}
    deps = Dependencies(storage=storage, channel=lambda name: nats_transport.aio.channel(nc, targets[name]),
                        settings={**SETTINGS, "scrypt_log2_n": "10"}, clock=lambda: NOW)
    servers = []
    hosted: list[tuple[str, Callable[[Any, Any], None], Any, list[Any]]] = [
        (auth.TARGET, auth.add_to_server, await auth.create(deps), []),
        (ai_integration.TARGET, ai_integration.add_to_server, await ai_integration.create(deps), []),
        ("stories", story_teller.add_to_server, await story_teller.create(deps),
         [AccessPolicy.for_services(story_teller.SERVICE_NAMES, ValidateVerifier(deps.channel(auth.TARGET)))]),
    ]
    for name, add, servicer, interceptors in hosted:
        server = nats_transport.aio.server(nc, targets[name], interceptors=[*interceptors, ErrorBoundary()])
        add(servicer, server)
        await server.start()
        servers.append(server)
    try:
        yield (story_teller_pb2_grpc.StoryTellerServiceStub(deps.channel("stories")),
               auth_pb2_grpc.AuthServiceStub(deps.channel(auth.TARGET)))
    finally:
        for server in reversed(servers):
            await server.stop(0)


async def signed_in(accounts: Any, username: str) -> tuple[str, tuple[tuple[str, str]]]:
    """(account id, bearer metadata) of a new account."""
    password = "correct horse battery"
    await accounts.Register(auth_pb2.RegisterRequest(username=username, password=password,
                                                     display_name=username.title()), timeout=5)
    session = await accounts.Login(auth_pb2.LoginRequest(username=username, password=password), timeout=5)
    return session.account_id, (("authorization", f"Bearer {session.tokens.access_token}"),)


async def test_with_the_auth_interceptor_only_the_stories_player_may_use_it(nc: Client, storage: Any) -> None:
    async with guarded(nc, storage) as (stories, accounts):
        alice, as_alice = await signed_in(accounts, "alice")
        _, as_bob = await signed_in(accounts, "bob")
        opening = [m async for m in stories.TellStory(st.TellStoryRequest(player_id=alice, premise=PREMISE),
                                                      metadata=as_alice, timeout=10)]
        story_id = opening[0].story_id
        story = (await stories.GetStory(st.GetStoryRequest(story_id=story_id), metadata=as_alice, timeout=5)).story
        assert story.audit.actor_id == alice

        err = await failure(stories.GetStory(st.GetStoryRequest(story_id=story_id), timeout=5))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        err = await failure(stories.GetStory(st.GetStoryRequest(story_id=story_id), metadata=as_bob, timeout=5))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        err = await failure(stories.Continue(st.ContinueRequest(
            story_id=story_id, player_choice="Steal it", expected_revision=opening[-1].revision
        ), metadata=as_bob, timeout=5))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        # Bob may not start a story in Alice's name either.
        _, err = await stream_failure(stories.TellStory(st.TellStoryRequest(player_id=alice, premise=PREMISE),
                                                        metadata=as_bob, timeout=5))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        reply = await stories.Continue(st.ContinueRequest(
            story_id=story_id, player_choice="Open it", expected_revision=opening[-1].revision
        ), metadata=as_alice, timeout=10)
        assert reply.beat.player_choice == "Open it"


# -- pure parts and the module -------------------------------------------------------------------------


def test_options_a_model_lists_become_the_choices_and_leave_the_text() -> None:
    text = "The bridge sways.\n- Cross it\n2) Burn it\n*  Wait for dawn  \n"
    assert _narration.beat_text_and_choices(text, K.BEAT_KIND_CHOICE, st.TONE_DARK) == (
        "The bridge sways.", ["Cross it", "Burn it", "Wait for dawn"]
    )
    # One option is not a choice: the tone's stock choices stand in, and the text stays whole.
    assert _narration.beat_text_and_choices("Go?\n- Yes", K.BEAT_KIND_CHOICE, st.TONE_DARK) == (
        "Go?\n- Yes", list(_narration.STOCK_CHOICES[st.TONE_DARK])
    )
    assert _narration.beat_text_and_choices("  x" * 600, K.BEAT_KIND_DIALOGUE, st.TONE_DARK)[0] == (
        ("  x" * 600).strip()[:_narration.MAX_BEAT_CHARS].rstrip()
    )


def test_a_story_always_reaches_its_resolution() -> None:
    beats: list[st.Beat] = []
    while not beats or beats[-1].kind != K.BEAT_KIND_RESOLUTION:
        beats.append(st.Beat(kind=_narration.next_kind(beats, answering=False)))
        assert len(beats) <= _narration.MAX_BEATS
    # Without any answer the cycle goes on until the story nears its cap, then closes.
    assert len(beats) == _narration.MAX_BEATS


def test_the_module_names_its_target_and_service() -> None:
    assert story_teller.TARGET == "story-teller"
    assert [st.DESCRIPTOR.services_by_name["StoryTellerService"].full_name] == list(story_teller.SERVICE_NAMES)


@pytest.mark.parametrize(
    "settings",
    [{"model": "has space"}, {"beat_max_tokens": "0"}, {"beat_max_tokens": "lots"}, {"beat_max_tokens": "1025"},
     {"beat_timeout_s": "0"}, {"beat_timeout_s": "never"}, {"bucket_max_bytes": "-1"}],
)
async def test_malformed_settings_are_refused_at_start_up(storage: Any, settings: dict[str, str]) -> None:
    with pytest.raises(ValueError, match=next(iter(settings))):
        await story_teller.create(Dependencies(storage=storage, channel=lambda name: None, settings=settings))
