"""NpcBehaviorService: Decide (stateless) and DecisionStream (bidi, with per-NPC threat memory)."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc
from gaming.npc_behavior.v1 import npc_behavior_pb2 as pb
from gaming.npc_behavior.v1 import npc_behavior_pb2_grpc
from google.protobuf import timestamp_pb2
from google.rpc import code_pb2

from servicers.errors import InvalidArgument, rpc_error
from servicers.npc_behavior._memory import ThreatMemory
from servicers.npc_behavior._scoring import Scored, Stimulus, check, score

# More requests than this read but not yet answered ends a DecisionStream with
# RESOURCE_EXHAUSTED, as the proto promises: the client sends faster than it reads answers.
MAX_OUTSTANDING = 256


class NpcBehaviorServicer(npc_behavior_pb2_grpc.NpcBehaviorServiceServicer):
    """Utility-AI decisions: every action scored by the curves of ``_scoring``, best first.

    The model is code, so it is always loaded: the UNAVAILABLE the proto allows for an unloaded
    model never happens here.
    """

    def __init__(self, *, clock: Callable[[], float], max_outstanding: int = MAX_OUTSTANDING) -> None:
        self._clock = clock
        self._max_outstanding = max_outstanding
        self._streams = 0

    def __repr__(self) -> str:
        return f"<NpcBehaviorServicer streams={self._streams} max_outstanding={self._max_outstanding}>"

    async def Decide(
        self,
        request: pb.DecideRequest,
        context: grpc.aio.ServicerContext[pb.DecideRequest, pb.DecideResponse],
    ) -> pb.DecideResponse:
        """The best action for the request's state and perceptions, and the others ranked."""
        check(request.state, request.HasField("state"), request.perceptions)
        ranked = score(request.state, [Stimulus.of(perception) for perception in request.perceptions])
        chosen, alternatives = _split(ranked)
        return pb.DecideResponse(chosen=chosen, alternatives=alternatives, decide_time=_timestamp(self._clock()))

    async def DecisionStream(  # type: ignore[override]  # grpc.aio also takes a coroutine that writes; the stub knows only generators
        self,
        request_iterator: AsyncIterator[pb.DecisionStreamRequest],
        context: grpc.aio.ServicerContext[pb.DecisionStreamRequest, pb.DecisionStreamResponse],
    ) -> None:
        """One response per request, in order; bad requests answered in-band.

        Requests are read by a task of their own, so a client that stops reading answers is
        noticed (more than ``max_outstanding`` requests waiting) even while a write is blocked by
        flow control; a handler that only yielded could not see that. Hence ``context.write``.
        """
        self._streams += 1
        memory = ThreatMemory()
        waiting: asyncio.Queue[pb.DecisionStreamRequest | None] = asyncio.Queue()
        overflow = asyncio.Event()
        reader = asyncio.create_task(self._read(request_iterator, waiting, overflow))
        overflowed = asyncio.create_task(overflow.wait())
        try:
            while True:
                # A request already waiting needs no task; an empty queue is raced with overflow.
                request = waiting.get_nowait() if not waiting.empty() else await _first(waiting.get(), overflowed)
                if overflow.is_set():
                    break
                if request is None:
                    await reader  # re-raises what ended the reading, if it failed
                    return
                answer = self._answer(request, memory)
                await _first(context.write(answer), overflowed)
                if overflow.is_set():
                    break
        finally:
            self._streams -= 1
            for task in (reader, overflowed):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        raise rpc_error(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"more than {self._max_outstanding} requests are waiting for an answer: read the responses",
            "ANSWERS_NOT_READ",
        )

    async def _read(
        self,
        requests: AsyncIterator[pb.DecisionStreamRequest],
        waiting: asyncio.Queue[pb.DecisionStreamRequest | None],
        overflow: asyncio.Event,
    ) -> None:
        try:
            async for request in requests:
                waiting.put_nowait(request)
                if waiting.qsize() > self._max_outstanding:
                    overflow.set()
                    return
        finally:
            # The end marker also when reading failed: the writer then awaits this task and
            # sees why, instead of waiting for a request that will never come.
            waiting.put_nowait(None)

    def _answer(self, request: pb.DecisionStreamRequest, memory: ThreatMemory) -> pb.DecisionStreamResponse:
        reply = pb.DecisionStreamResponse(client_sequence=request.client_sequence, npc_id=request.state.npc_id)
        try:
            check(request.state, request.HasField("state"), request.perceptions)
        except InvalidArgument as invalid:
            # In-band, so one bad request does not end the stream of the others.
            reply.error_code = code_pb2.INVALID_ARGUMENT
            reply.error_message = invalid.message
            return reply
        chosen, alternatives = _split(score(request.state, memory.recall(request.state.npc_id, request.perceptions)))
        reply.chosen.CopyFrom(chosen)
        reply.alternatives.extend(alternatives)
        return reply


async def _first(work: Any, stop: asyncio.Task[Any]) -> Any:
    """Run ``work`` until it finishes or ``stop`` does; cancel ``work`` if ``stop`` won."""
    task = asyncio.ensure_future(work)
    await asyncio.wait((task, stop), return_when=asyncio.FIRST_COMPLETED)
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None
    return task.result()


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    # Split before scaling: seconds * 1e9 is past a double's exact integers, and would blur nanos.
    whole = math.floor(seconds)
    return timestamp_pb2.Timestamp(seconds=whole, nanos=min(round((seconds - whole) * 1e9), 999_999_999))


def _split(ranked: Sequence[Scored]) -> tuple[pb.Action, list[pb.Action]]:
    return ranked[0].to_proto(), [action.to_proto() for action in ranked[1:]]
