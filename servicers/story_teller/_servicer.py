"""StoryTellerService: stories in one KV bucket, beats written by ai-integration."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from gaming.ai_integration.v1 import ai_integration_pb2_grpc
from gaming.common.v1 import common_pb2
from gaming.story_teller.v1 import story_teller_pb2 as st
from gaming.story_teller.v1 import story_teller_pb2_grpc
from google.protobuf import timestamp_pb2

from servicers.auth.call_identity import acts_for, caller
from servicers.errors import (
    RpcError,
    failed_precondition,
    invalid_argument,
    not_found,
    revision_conflict,
    rpc_error,
    unavailable,
)
from servicers.storage import Entry, KeyValue, RevisionConflict, key_token
from servicers.story_teller import _narration

_log = logging.getLogger(__name__)

AI_INTEGRATION = "ai-integration"
MAX_ID_CHARS = 128
MAX_PREMISE_CHARS = 2000
MAX_CHOICE_INPUT_CHARS = 500
DEFAULT_MAX_BEATS = 5
MAX_BEATS_PER_CALL = 20
# A BCP 47 shape (language, then subtags), as short as tags get in practice.
LOCALE = re.compile(r"[A-Za-z]{2,8}(?:-[A-Za-z0-9]{1,8})*")
MAX_LOCALE_CHARS = 35
# grpcio reports "no deadline" as a huge time_remaining() (~9.2e18 s): treat that as none.
_NO_DEADLINE = 1e9
_EXHAUSTED = 0.001
# A beat after which the narrator waits: for the player's answer, or for good.
_PAUSES = (st.BEAT_KIND_CHOICE, st.BEAT_KIND_RESOLUTION)


class StoryTellerServicer(story_teller_pb2_grpc.StoryTellerServiceServicer):
    """Tells stories beat by beat (see the package docstring for the rules).

    Each story is one value (a serialized ``Story`` without its revision, which is the value's
    KV revision) under the story id's base64url, so adding a beat is one compare-and-set.

    Args:
        stories: the stories bucket.
        inference: ai-integration's stub.
        model: the model beats are written with.
        beat_max_tokens: the most tokens one beat may take.
        beat_timeout: seconds ai-integration gets for one beat (the caller's deadline caps it).
        clock: wall-clock seconds, for create times and audit.
    """

    def __init__(
        self,
        stories: KeyValue,
        inference: ai_integration_pb2_grpc.AiIntegrationServiceAsyncStub,
        *,
        model: str,
        beat_max_tokens: int,
        beat_timeout: float,
        clock: Callable[[], float],
    ) -> None:
        self._stories = stories
        self._inference = inference
        self._model = model
        self._beat_max_tokens = beat_max_tokens
        self._beat_timeout = beat_timeout
        self._clock = clock

    def __repr__(self) -> str:
        return f"<StoryTellerServicer model={self._model!r} stories={self._stories!r}>"

    async def TellStory(
        self, request: st.TellStoryRequest, context: grpc.aio.ServicerContext[st.TellStoryRequest, st.TellStoryResponse]
    ) -> AsyncIterator[st.TellStoryResponse]:
        """Beats of a new or existing story, each stored before it is sent, until ``max_beats``,
        a CHOICE or the RESOLUTION."""
        _check_id("player_id", request.player_id)
        if request.tone not in st.Tone.values():
            raise invalid_argument("tone", f"has no member {request.tone}")
        if not 0 <= request.max_beats <= MAX_BEATS_PER_CALL:
            raise invalid_argument("max_beats", f"must be 1 to {MAX_BEATS_PER_CALL} (0 means {DEFAULT_MAX_BEATS})")
        locale = request.locale.tag or _narration.DEFAULT_LOCALE
        if len(locale) > MAX_LOCALE_CHARS or not LOCALE.fullmatch(locale):
            raise invalid_argument("locale.tag", "must be a language tag such as en-US")
        if request.story_id:
            _check_id("story_id", request.story_id)
            entry = await self._existing(request.story_id)
            story = _story_of(entry)
            if story.player_id != request.player_id:
                raise rpc_error(
                    grpc.StatusCode.PERMISSION_DENIED, f"story {request.story_id!r} belongs to another player",
                    "NOT_STORY_OWNER",
                )
            _check_caller(story)
            _check_open(story)
            if story.beats and story.beats[-1].kind == st.BEAT_KIND_CHOICE:
                raise failed_precondition(
                    f"story {request.story_id!r} waits for the player's choice: answer it with Continue",
                    "STORY_AWAITS_CHOICE",
                )
            revision = entry.revision
        else:
            if not request.premise.strip():
                raise invalid_argument("premise", "is required for a new story")
            if len(request.premise) > MAX_PREMISE_CHARS:
                raise invalid_argument("premise", f"must be at most {MAX_PREMISE_CHARS} characters")
            story = st.Story(
                story_id=uuid.uuid4().hex,
                player_id=request.player_id,
                premise=request.premise,
                tone=request.tone or _narration.DEFAULT_TONE,
                locale=common_pb2.LocaleTag(tag=locale),
                create_time=self._now(),
            )
            _check_caller(story)
            revision = 0  # the first beat's write creates the story
        for _ in range(request.max_beats or DEFAULT_MAX_BEATS):
            kind = _narration.next_kind(story.beats, answering=False)
            beat = await self._beat(context, story, kind)
            revision = await self._append(story, beat, revision)
            yield st.TellStoryResponse(story_id=story.story_id, beat=beat, revision=common_pb2.Revision(value=revision))
            if kind in _PAUSES:
                return

    async def Continue(
        self,
        request: st.ContinueRequest,
        context: grpc.aio.ServicerContext[st.ContinueRequest, st.ContinueResponse],
    ) -> st.ContinueResponse:
        """The next beat, answering the player's choice, if the story is still at the revision
        the player saw."""
        _check_id("story_id", request.story_id)
        if not request.player_choice.strip():
            raise invalid_argument("player_choice", "must not be empty")
        if len(request.player_choice) > MAX_CHOICE_INPUT_CHARS:
            raise invalid_argument("player_choice", f"must be at most {MAX_CHOICE_INPUT_CHARS} characters")
        if not request.HasField("expected_revision"):
            raise invalid_argument("expected_revision", "is required: the revision of the story you last saw")
        expected = request.expected_revision.value
        entry = await self._existing(request.story_id)
        story = _story_of(entry)
        _check_caller(story)
        _check_open(story)
        if entry.revision != expected:
            raise revision_conflict(RevisionConflict(request.story_id, expected, entry.revision), "story")
        kind = _narration.next_kind(story.beats, answering=True)
        beat = await self._beat(context, story, kind, choice=request.player_choice)
        revision = await self._append(story, beat, expected)
        return st.ContinueResponse(beat=beat, revision=common_pb2.Revision(value=revision), ended=story.ended)

    async def GetStory(
        self,
        request: st.GetStoryRequest,
        context: grpc.aio.ServicerContext[st.GetStoryRequest, st.GetStoryResponse],
    ) -> st.GetStoryResponse:
        """The story with all its beats and its current revision."""
        _check_id("story_id", request.story_id)
        entry = await self._existing(request.story_id)
        story = _story_of(entry)
        _check_caller(story)
        story.revision.value = entry.revision
        return st.GetStoryResponse(story=story)

    # -- ai-integration -----------------------------------------------------------------------------

    async def _beat(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        story: st.Story,
        kind: st.BeatKind.ValueType,
        choice: str = "",
    ) -> st.Beat:
        """The next beat of ``story``, written by ai-integration (not stored yet)."""
        request = _narration.generation(story, kind, model=self._model, max_tokens=self._beat_max_tokens,
                                        choice=choice)
        call = self._inference.Generate(request, timeout=self._beat_timeout)
        try:
            reply = await call
        except grpc.aio.AioRpcError as err:
            raise self._inference_failure(context, err, len(story.beats)) from err
        except asyncio.CancelledError:
            # The caller went away: an unary call awaited here is shielded, so stop it too.
            call.cancel()
            raise
        text, choices = _narration.beat_text_and_choices(reply.text, kind, story.tone)
        if not text:
            raise unavailable(f"{AI_INTEGRATION} returned no text for beat {len(story.beats)}", "EMPTY_BEAT")
        return st.Beat(index=len(story.beats), text=text, kind=kind, suggested_choices=choices,
                       player_choice=choice, create_time=self._now())

    def _inference_failure(
        self, context: grpc.aio.ServicerContext[Any, Any], err: grpc.aio.AioRpcError, index: int
    ) -> RpcError:
        """ai-integration's failure, as the caller sees it.

        The caller's deadline running out is DEADLINE_EXCEEDED. INVALID_ARGUMENT means the
        prompt this service built was refused (a model with too small a context, say): the
        caller's request is fine, so it is INTERNAL. Anything else (no server, a backend down,
        our own beat timeout) is UNAVAILABLE naming ai-integration: retry later.
        """
        remaining = context.time_remaining()
        if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED and remaining is not None and remaining < _EXHAUSTED:
            return rpc_error(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the deadline ran out while {AI_INTEGRATION} was writing beat {index}", "DEADLINE_EXCEEDED"
            )
        _log.warning("story-teller: %s failed on beat %d: %s %s", AI_INTEGRATION, index, err.code().name,
                     err.details())
        if err.code() == grpc.StatusCode.INVALID_ARGUMENT:
            return rpc_error(
                grpc.StatusCode.INTERNAL, f"{AI_INTEGRATION} refused the prompt for beat {index}: {err.details()}",
                "PROMPT_REFUSED"
            )
        why = (f"did not answer within {self._beat_timeout:g}s" if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
               else f"failed with {err.code().name}: {err.details()}")
        return unavailable(f"{AI_INTEGRATION} is unavailable: {why}", "AI_INTEGRATION_UNAVAILABLE")

    # -- the store ----------------------------------------------------------------------------------

    async def _existing(self, story_id: str) -> Entry:
        entry = await self._stories.get(key_token(story_id))
        if entry is None:
            raise not_found(f"story {story_id!r} does not exist", "STORY_NOT_FOUND")
        return entry

    async def _append(self, story: st.Story, beat: st.Beat, revision: int) -> int:
        """Store ``story`` with ``beat`` added, if it is still at ``revision``; the new revision."""
        story.beats.append(beat)
        story.ended = beat.kind == st.BEAT_KIND_RESOLUTION
        identity = caller()
        story.audit.actor_id = identity.subject if identity is not None else story.player_id
        story.audit.update_time.CopyFrom(beat.create_time)
        try:
            return await self._stories.update(key_token(story.story_id), story.SerializeToString(), revision)
        except RevisionConflict as conflict:
            raise revision_conflict(RevisionConflict(story.story_id, revision, conflict.current), "story") from conflict

    def _now(self) -> timestamp_pb2.Timestamp:
        now = timestamp_pb2.Timestamp()
        now.FromNanoseconds(round(self._clock() * 1e9))
        return now


def _story_of(entry: Entry) -> st.Story:
    story = st.Story.FromString(entry.value)
    story.ClearField("revision")
    return story


def _check_id(field: str, value: str) -> None:
    if not value:
        raise invalid_argument(field, "is required")
    if len(value) > MAX_ID_CHARS:
        raise invalid_argument(field, f"must be at most {MAX_ID_CHARS} characters")


def _check_caller(story: st.Story) -> None:
    """PERMISSION_DENIED when the caller is a player other than the story's (operators and
    services act for every player). A call without a verified caller is not checked here: the
    access policy admits none to these methods, and a bare server without it trusts its callers."""
    if caller() is not None and not acts_for(story.player_id):
        raise rpc_error(
            grpc.StatusCode.PERMISSION_DENIED, f"story {story.story_id!r} belongs to another player", "NOT_STORY_OWNER",
        )


def _check_open(story: st.Story) -> None:
    if story.ended:
        raise failed_precondition(f"story {story.story_id!r} has ended", "STORY_ENDED")
