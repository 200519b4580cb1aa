"""OrchestrationService: RunWorkflow (a saga over the mesh), GetWorkflow and ListWorkflows."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc
from gaming.common.v1 import common_pb2
from gaming.orchestration.v1 import orchestration_pb2 as pb
from gaming.orchestration.v1 import orchestration_pb2_grpc

from servicers import paging
from servicers.auth.call_identity import audit_actor
from servicers.errors import already_exists, invalid_argument, not_found, unavailable
from servicers.named_store import NamedStore
from servicers.orchestration._definition import StepPlan, fingerprint, plan
from servicers.orchestration._records import (
    IdempotencyRecord,
    decode_page_token,
    encode_page_token,
    idempotency_key,
    is_workflow_id,
    new_workflow_id,
)
from servicers.orchestration._runner import Caller, Run, timestamp
from servicers.orchestration._schema import Schemas
from servicers.storage import KeyValue, RevisionConflict, StorageUnavailable

_log = logging.getLogger(__name__)

# grpcio's time_remaining() when the call has no deadline: treat as none.
_NO_DEADLINE = 1e9
_TERMINAL = frozenset({pb.WORKFLOW_STATE_SUCCEEDED, pb.WORKFLOW_STATE_FAILED, pb.WORKFLOW_STATE_COMPENSATED})


class OrchestrationServicer(orchestration_pb2_grpc.OrchestrationServiceServicer):
    """Runs workflows as background tasks that outlive the RunWorkflow call, and records them.

    Each workflow is run by the replica whose RunWorkflow claimed its idempotency key, and is
    saved after every transition, so any replica answers GetWorkflow and ListWorkflows. A
    workflow still running when its replica stops (``close``, a crash) stays RUNNING: nothing
    resumes it.
    """

    def __init__(
        self,
        workflows: KeyValue,
        idempotency: KeyValue,
        *,
        channel: Callable[[str], Any],
        clock: Callable[[], float],
        schemas: Schemas | None = None,
        detached: Callable[[], contextvars.Context] = contextvars.copy_context,
    ) -> None:
        # A store outage is UNAVAILABLE, as orchestration.proto promises, with a message naming the store.
        self._workflows = NamedStore(workflows, "the workflow store is unavailable")
        self._idempotency = NamedStore(idempotency, "the workflow store is unavailable")
        self._clock = clock
        self._caller = Caller(channel, schemas or Schemas(channel))
        self._runs: dict[str, tuple[Run, asyncio.Task[None]]] = {}
        # Workflows outlive RunWorkflow (the proto promises it): their tasks run in a context
        # without the caller's inherited deadline, or every step would die with it.
        self._detached = detached

    def __repr__(self) -> str:
        return f"<OrchestrationServicer running={len(self._runs)} workflows={self._workflows!r}>"

    @property
    def schemas(self) -> Schemas:
        """The reflected-descriptor cache JSON steps use."""
        return self._caller.schemas

    @property
    def running(self) -> int:
        """Workflows this servicer is executing now."""
        return len(self._runs)

    async def close(self) -> None:
        """Stop the workflows still running here (they stay RUNNING in the store)."""
        tasks = [task for _, task in self._runs.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- RPCs -----------------------------------------------------------------------------------

    async def RunWorkflow(
        self,
        request: pb.RunWorkflowRequest,
        context: grpc.aio.ServicerContext[pb.RunWorkflowRequest, pb.RunWorkflowResponse],
    ) -> pb.RunWorkflowResponse:
        """Start the workflow (or find the one its idempotency key started) and wait for it,
        answering RUNNING just before the caller's deadline if it is not done by then."""
        steps = plan(request)
        give_up = _give_up(context)
        definition = fingerprint(request)
        key = idempotency_key(request.idempotency_key.key)
        now = self._clock()
        workflow_id = new_workflow_id(now)
        try:
            await self._idempotency.update(key, IdempotencyRecord(workflow_id, definition).encode(), 0)
        except RevisionConflict:
            return await self._replay(key, definition, give_up)
        workflow = _new_workflow(workflow_id, request, steps, timestamp(now), audit_actor())
        try:
            await self._save(workflow)
        except StorageUnavailable:
            await self._release(key)  # the caller retries, and must not find a workflow that never was
            raise
        run = Run(workflow, steps, caller=self._caller, save=self._save, clock=self._clock)
        # The run must outlive this call (and its deadline), yet keep its trace context.
        task = asyncio.create_task(self._execute(run), name=f"workflow-{workflow_id}", context=self._detached())
        self._runs[workflow_id] = (run, task)
        run.waiting_until = give_up
        try:
            await asyncio.wait({task}, timeout=_seconds_until(give_up))
        finally:
            run.waiting_until = None
        return _response(run.workflow)

    async def GetWorkflow(
        self,
        request: pb.GetWorkflowRequest,
        context: grpc.aio.ServicerContext[pb.GetWorkflowRequest, pb.GetWorkflowResponse],
    ) -> pb.GetWorkflowResponse:
        """The recorded workflow, as of its latest transition."""
        if not request.workflow_id:
            raise invalid_argument("workflow_id", "is required")
        workflow = await self._load(request.workflow_id) if is_workflow_id(request.workflow_id) else None
        if workflow is None:
            message = f"no workflow {request.workflow_id!r}"
            raise not_found(message, "WORKFLOW_NOT_FOUND")
        return pb.GetWorkflowResponse(workflow=workflow)

    async def ListWorkflows(
        self,
        request: pb.ListWorkflowsRequest,
        context: grpc.aio.ServicerContext[pb.ListWorkflowsRequest, pb.ListWorkflowsResponse],
    ) -> pb.ListWorkflowsResponse:
        """One page of workflows, newest first, filtered by name and state if asked."""
        name, state = request.workflow_name, request.state_filter
        if state not in pb.WorkflowState.values():
            raise invalid_argument("state_filter", f"{state} is not a WorkflowState")
        size = paging.page_size(request.page)
        after = decode_page_token(request.page.page_token, name, state)
        ids = sorted(await self._workflows.keys(), reverse=True)
        page: list[pb.Workflow] = []
        more = False
        for workflow_id in ids:
            if after is not None and workflow_id >= after:
                continue
            workflow = await self._load(workflow_id)
            if workflow is None or (name and workflow.workflow_name != name) or (state and workflow.state != state):
                continue
            if len(page) == size:
                more = True
                break
            page.append(workflow)
        filtered = bool(name) or state != pb.WORKFLOW_STATE_UNSPECIFIED
        return pb.ListWorkflowsResponse(
            workflows=page,
            page=common_pb2.PageResponse(
                next_page_token=encode_page_token(page[-1].workflow_id, name, state) if more else "",
                # Counting matches would mean reading every workflow; without filters it is free.
                total_size=-1 if filtered else len(ids),
            ),
        )

    # -- helpers --------------------------------------------------------------------------------

    async def _execute(self, run: Run) -> None:
        try:
            await run.execute()
        finally:
            self._runs.pop(run.workflow.workflow_id, None)

    async def _replay(
        self, key: str, definition: bytes, give_up: float | None
    ) -> pb.RunWorkflowResponse:
        """The workflow an idempotency key already started, once done (or at the give-up time)."""
        try:
            entry = await self._idempotency.get(key)
        except StorageUnavailable:
            _log.warning("RunWorkflow: could not read an idempotency record", exc_info=True)
            entry = None
        if entry is None:
            # Expired or unreadable between the claim that lost and now: the caller may retry.
            raise unavailable("the idempotency record is unavailable; retry", "STORE_UNAVAILABLE")
        record = IdempotencyRecord.decode(entry.value)
        if record.fingerprint != definition:
            raise already_exists(
                f"the idempotency key already started workflow {record.workflow_id} with another definition",
                "IDEMPOTENCY_KEY_REUSED",
            )
        local = self._runs.get(record.workflow_id)
        if local is not None:
            run, task = local
            await asyncio.wait({task}, timeout=_seconds_until(give_up))
            return _response(run.workflow)
        workflow = await self._wait_recorded(record.workflow_id, give_up)
        if workflow is None:
            # Claimed but not recorded yet (or its replica died in between).
            return pb.RunWorkflowResponse(workflow_id=record.workflow_id, state=pb.WORKFLOW_STATE_RUNNING)
        return _response(workflow)

    async def _wait_recorded(self, workflow_id: str, give_up: float | None) -> pb.Workflow | None:
        """The stored workflow once it finishes, or as it is at ``give_up``."""
        latest = None
        changes = self._workflows.watch(workflow_id, include_current=True)
        try:
            async with asyncio.timeout(_seconds_until(give_up)):
                async for change in changes:
                    if change.value is None:
                        continue
                    latest = pb.Workflow.FromString(change.value)
                    if latest.state in _TERMINAL:
                        break
        except TimeoutError:
            pass
        except StorageUnavailable:
            _log.warning("RunWorkflow: could not watch workflow %s", workflow_id, exc_info=True)
        finally:
            await changes.aclose()
        return latest

    async def _save(self, workflow: pb.Workflow) -> None:
        await self._workflows.put(workflow.workflow_id, workflow.SerializeToString())

    async def _load(self, workflow_id: str) -> pb.Workflow | None:
        entry = await self._workflows.get(workflow_id)
        return None if entry is None else pb.Workflow.FromString(entry.value)

    async def _release(self, key: str) -> None:
        # The workflow was never recorded: free its key, or every retry would find a ghost.
        try:
            await self._idempotency.delete(key)
        except StorageUnavailable:
            _log.warning("RunWorkflow: could not release an idempotency key", exc_info=True)


def _new_workflow(
    workflow_id: str, request: pb.RunWorkflowRequest, steps: list[StepPlan], now: Any, actor: str
) -> pb.Workflow:
    return pb.Workflow(
        workflow_id=workflow_id,
        workflow_name=request.workflow_name,
        state=pb.WORKFLOW_STATE_RUNNING,
        step_results=[pb.StepResult(name=step.name, state=pb.STEP_STATE_PENDING) for step in steps],
        create_time=now,
        audit=common_pb2.AuditInfo(actor_id=actor, update_time=now),
    )


def _response(workflow: pb.Workflow) -> pb.RunWorkflowResponse:
    # Copies the step results: the run goes on mutating its own.
    return pb.RunWorkflowResponse(
        workflow_id=workflow.workflow_id, state=workflow.state, step_results=workflow.step_results
    )


def _give_up(context: grpc.aio.ServicerContext[Any, Any]) -> float | None:
    """When (time.monotonic) to stop waiting and answer RUNNING: a little before the deadline,
    so the answer still arrives in time. None when the call has no deadline."""
    remaining: float | None = context.time_remaining()
    if remaining is None or remaining > _NO_DEADLINE:
        return None
    margin = min(0.25, max(0.02, remaining * 0.1))
    return time.monotonic() + max(0.0, remaining - margin)


def _seconds_until(moment: float | None) -> float | None:
    return None if moment is None else max(0.0, moment - time.monotonic())

