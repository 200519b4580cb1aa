"""Running one workflow: each step's call with its deadline and retries, then compensations.

Policy, as data below:

- An attempt may take the step's own deadline, capped, while a RunWorkflow caller is still
  waiting, by the time that caller has left (``Run.waiting_until``). An attempt cut short by that
  cap fails with DEADLINE_EXCEEDED like any slow attempt, and counts as one; the retries after
  the caller has gone get the step's whole deadline, so the workflow carries on in the background
  as the proto promises.
- ``RETRYABLE`` codes are retried up to the call's ``max_attempts``, waiting
  random(0, min(0.1 s * 2^(n-1), 5 s)) before attempt n+1 (gRPC's backoff, with full jitter), or
  what the server asked for in ``grpc-retry-pushback-ms`` (negative or malformed: no retry). The
  codes gRPC names as never to retry are never in ``RETRYABLE``.
- When a step finally fails, the later steps are SKIPPED and the compensations of the steps that
  succeeded run in reverse order, each with the same retry policy. Every compensation is tried,
  even after one fails. The workflow ends COMPENSATED when all of them succeeded (also when
  there was nothing to undo, e.g. the first step failed, or no completed step has a
  compensation), FAILED when any failed.

A JSON request becomes the method's protobuf message through the target's reflection
(``_schema``) and the answer becomes JSON again; a binary request travels as given. A request
that does not fit the method fails the step with INVALID_ARGUMENT (not retried).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from gaming.orchestration.v1 import orchestration_pb2 as pb
from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import DecodeError

from servicers.orchestration._definition import CallPlan, StepPlan
from servicers.orchestration._schema import SchemaError, Schemas

_log = logging.getLogger(__name__)

RETRYABLE = frozenset({
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
})
# gRPC practice: never retried, whatever a policy says.
NEVER_RETRIED = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.UNIMPLEMENTED,
})
assert not RETRYABLE & NEVER_RETRIED

INITIAL_BACKOFF = 0.1
BACKOFF_MULTIPLIER = 2.0
MAX_BACKOFF = 5.0
# A workflow is one KV value (at most 1 MiB with NATS defaults): 32 outputs of this size fit.
MAX_OUTPUT_BYTES = 24 * 1024
MAX_STATUS_MESSAGE = 1024
PUSHBACK_KEY = "grpc-retry-pushback-ms"


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one attempt.

    Attributes:
        code: its status.
        message: the status message (empty on success).
        binary: the response bytes, on success.
        json: the response as JSON, on success of a JSON call.
        pushback: seconds the server asked to wait before a retry; negative: do not retry.
    """

    code: grpc.StatusCode
    message: str = ""
    binary: bytes | None = None
    json: dict[str, Any] | None = None
    pushback: float | None = None

    @property
    def ok(self) -> bool:
        """Whether the attempt succeeded."""
        return bool(self.code == grpc.StatusCode.OK)


class Caller:
    """Makes single attempts of calls over the mesh, converting JSON through reflection."""

    def __init__(self, channel: Callable[[str], Any], schemas: Schemas) -> None:
        self._channel = channel
        self._schemas = schemas

    def __repr__(self) -> str:
        return f"<Caller schemas={self._schemas!r}>"

    @property
    def schemas(self) -> Schemas:
        """The descriptor cache used for JSON requests."""
        return self._schemas

    async def attempt(self, call: CallPlan, budget: float) -> Outcome:
        """One attempt of ``call`` taking at most ``budget`` seconds (its gRPC deadline),
        describing the method included."""
        deadline = time.monotonic() + budget
        types = None
        try:
            if call.json is None:
                request = call.binary
            else:
                method_name = call.method.rsplit("/", 1)[1]
                types = await self._schemas.method(call.target, call.service, method_name, budget)
                try:
                    message = json_format.ParseDict(call.json, types.request(), descriptor_pool=types.pool)
                except json_format.ParseError as err:
                    name = types.request.DESCRIPTOR.full_name
                    return Outcome(grpc.StatusCode.INVALID_ARGUMENT, f"json_request is not a valid {name}: {err}")
                request = message.SerializeToString()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return Outcome(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded while describing the method")
            response: bytes = await self._channel(call.target).unary_unary(call.method)(request, timeout=remaining)
        except SchemaError as err:
            return Outcome(err.code, err.message)
        except grpc.aio.AioRpcError as err:
            # Named after the target, so a workflow's record says which dependency failed.
            return Outcome(err.code(), f"{call.target}: {err.details() or err.code().name}", pushback=_pushback(err))
        if types is None:
            return Outcome(grpc.StatusCode.OK, binary=response)
        try:
            decoded = types.response.FromString(response)
        except DecodeError:
            name = types.response.DESCRIPTOR.full_name
            return Outcome(grpc.StatusCode.INTERNAL, f"the response does not parse as {name}")
        as_json: dict[str, Any] = json_format.MessageToDict(decoded, descriptor_pool=types.pool)
        return Outcome(grpc.StatusCode.OK, binary=response, json=as_json)


def _pushback(err: grpc.aio.AioRpcError) -> float | None:
    for key, value in err.trailing_metadata() or ():
        if key.lower() == PUSHBACK_KEY:
            try:
                return int(value) / 1000.0
            except (TypeError, ValueError):
                return -1.0  # malformed pushback: gRPC says do not retry
    return None


class Run:
    """One workflow being executed, and its record as it progresses.

    ``workflow`` is the live record (``save`` is called with it after every transition);
    ``waiting_until`` is the monotonic time a waiting RunWorkflow caller gives up, or None.
    """

    def __init__(
        self,
        workflow: pb.Workflow,
        steps: list[StepPlan],
        *,
        caller: Caller,
        save: Callable[[pb.Workflow], Awaitable[None]],
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.workflow = workflow
        self.waiting_until: float | None = None
        self._steps = steps
        self._caller = caller
        self._save_to = save
        self._clock = clock
        self._sleep = sleep

    def __repr__(self) -> str:
        state = pb.WorkflowState.Name(self.workflow.state)
        return f"<Run {self.workflow.workflow_id} {self.workflow.workflow_name!r} {state}>"

    async def execute(self) -> None:
        """Run every step, then the compensations if one failed; record the outcome."""
        try:
            failed_at = await self._forward()
            if failed_at is None:
                self.workflow.state = pb.WORKFLOW_STATE_SUCCEEDED
            else:
                undone = await self._compensate(failed_at)
                self.workflow.state = pb.WORKFLOW_STATE_COMPENSATED if undone else pb.WORKFLOW_STATE_FAILED
        except Exception:
            # A bug here must not leave the workflow RUNNING for ever.
            _log.exception("workflow %s stopped unexpectedly", self.workflow.workflow_id)
            self.workflow.state = pb.WORKFLOW_STATE_FAILED
        self.workflow.end_time.CopyFrom(self._now())
        await self._save()

    async def _forward(self) -> int | None:
        """Run the steps in order; the index of the one that failed, or None."""
        results = self.workflow.step_results
        for index, step in enumerate(self._steps):
            result = results[index]
            result.state = pb.STEP_STATE_RUNNING
            result.start_time.CopyFrom(self._now())
            await self._save()
            outcome = await self._with_retries(step.call, result)
            result.end_time.CopyFrom(self._now())
            _record_status(result, outcome)
            if not outcome.ok:
                result.state = pb.STEP_STATE_FAILED
                for later in results[index + 1 :]:
                    later.state = pb.STEP_STATE_SKIPPED
                await self._save()
                return index
            result.state = pb.STEP_STATE_SUCCEEDED
            _record_output(result, step.call, outcome)
            await self._save()
        return None

    async def _compensate(self, failed_at: int) -> bool:
        """Undo the succeeded steps before ``failed_at``, last first; whether all undid."""
        undone = True
        for index in reversed(range(failed_at)):
            compensation = self._steps[index].compensation
            if compensation is None:
                continue  # the step needs no undo
            result = self.workflow.step_results[index]
            outcome = await self._with_retries(compensation, None)
            result.compensation_status_code = outcome.code.value[0]
            if outcome.ok:
                result.state = pb.STEP_STATE_COMPENSATED
            else:
                result.state = pb.STEP_STATE_COMPENSATION_FAILED
                undone = False
                _log.warning("workflow %s: compensation of step %s failed: %s %s", self.workflow.workflow_id,
                             result.name, outcome.code.name, outcome.message)
            await self._save()
        return undone

    async def _with_retries(self, call: CallPlan, result: pb.StepResult | None) -> Outcome:
        attempt = 0
        while True:
            attempt += 1
            outcome = await self._caller.attempt(call, self._attempt_timeout(call.deadline))
            if result is not None:
                result.attempts = attempt
            if (
                outcome.ok
                or outcome.code not in RETRYABLE
                or attempt >= call.max_attempts
                or (outcome.pushback is not None and outcome.pushback < 0)
            ):
                return outcome
            if result is not None:
                # Visible to GetWorkflow while the step waits for its next attempt.
                _record_status(result, outcome)
                await self._save()
            await self._sleep(outcome.pushback if outcome.pushback is not None else backoff(attempt))

    def _attempt_timeout(self, deadline: float) -> float:
        if self.waiting_until is None:
            return deadline
        left = self.waiting_until - time.monotonic()
        # Nothing left: the caller is being answered right now; the attempt is no longer its.
        return min(deadline, left) if left > 0 else deadline

    async def _save(self) -> None:
        try:
            await self._save_to(self.workflow)
        except Exception:
            # The run goes on (its caller still gets the outcome); GetWorkflow may lag until the
            # next transition is saved.
            _log.exception("workflow %s: could not save its state", self.workflow.workflow_id)

    def _now(self) -> timestamp_pb2.Timestamp:
        return timestamp(self._clock())


def backoff(attempt: int) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based): full jitter, capped."""
    return random.uniform(0.0, min(INITIAL_BACKOFF * BACKOFF_MULTIPLIER ** (attempt - 1), MAX_BACKOFF))


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    """A Timestamp of wall-clock ``seconds`` (split first: seconds * 1e9 would blur the nanos)."""
    whole = int(seconds // 1)
    return timestamp_pb2.Timestamp(seconds=whole, nanos=min(round((seconds - whole) * 1e9), 999_999_999))


def _record_status(result: pb.StepResult, outcome: Outcome) -> None:
    result.status_code = outcome.code.value[0]
    result.status_message = outcome.message[:MAX_STATUS_MESSAGE]


def _record_output(result: pb.StepResult, call: CallPlan, outcome: Outcome) -> None:
    if outcome.json is not None:
        result.json_output.SetInParent()  # an empty response is still an output: {}
        json_format.ParseDict(outcome.json, result.json_output)
        size = result.json_output.ByteSize()
    else:
        result.binary_output = outcome.binary or b""
        size = len(result.binary_output)
    if size > MAX_OUTPUT_BYTES:
        result.ClearField("json_output" if call.json is not None else "binary_output")
        result.status_message = f"output of {size} bytes not kept (at most {MAX_OUTPUT_BYTES})"
