"""A workflow definition, checked and normalized: what RunWorkflow accepts, and what it runs.

Pure code, no I/O. ``plan()`` turns a ``RunWorkflowRequest`` into ``StepPlan``s with every
default applied (5 s per attempt, 3 attempts), or raises ``InvalidArgument`` naming the field.
``fingerprint()`` identifies a definition, so a reused idempotency key can be told apart from
a replay of the same workflow.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from gaming.orchestration.v1 import orchestration_pb2 as pb
from google.protobuf import json_format, struct_pb2

from servicers.errors import InvalidArgument

MAX_STEPS = 32
MAX_NAME = 128
MAX_KEY = 128
DEFAULT_DEADLINE = 5.0
MAX_DEADLINE = 300.0
DEFAULT_ATTEMPTS = 3
MAX_ATTEMPTS = 10

_STEP_NAME = re.compile(r"^[a-z0-9_-]{1,64}\Z")
# One NATS token, as the transport requires of targets.
_TARGET = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
_METHOD = re.compile(r"^/?([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)/([A-Za-z_][A-Za-z0-9_]*)\Z")


@dataclass(frozen=True, slots=True)
class CallPlan:
    """One call as it will be made.

    Attributes:
        target: the mesh target.
        method: the gRPC path, ``/package.Service/Method``.
        service: the service's full name (what reflection is asked about).
        json: the request as a JSON object, or None when the request is binary.
        binary: the request bytes when ``json`` is None (empty for an unset request).
        deadline: seconds each attempt may take.
        max_attempts: attempts in all, counting the first.
    """

    target: str
    method: str
    service: str
    json: dict[str, object] | None
    binary: bytes
    deadline: float
    max_attempts: int


@dataclass(frozen=True, slots=True)
class StepPlan:
    """One step: its name, its call and, if it has one, the call that undoes it."""

    name: str
    call: CallPlan
    compensation: CallPlan | None


def plan(request: pb.RunWorkflowRequest) -> list[StepPlan]:
    """The steps of ``request``, checked; raises ``InvalidArgument`` for the first bad field."""
    if not 1 <= len(request.workflow_name) <= MAX_NAME:
        raise InvalidArgument("workflow_name", f"must be 1 to {MAX_NAME} characters")
    if not request.HasField("idempotency_key") or not request.idempotency_key.key:
        raise InvalidArgument("idempotency_key.key", "is required")
    key = request.idempotency_key.key
    if len(key) > MAX_KEY or not all(" " <= char <= "~" for char in key):
        raise InvalidArgument("idempotency_key.key", f"must be 1 to {MAX_KEY} printable ASCII characters")
    if not request.steps:
        raise InvalidArgument("steps", "a workflow needs at least one step")
    if len(request.steps) > MAX_STEPS:
        raise InvalidArgument("steps", f"has {len(request.steps)} steps; at most {MAX_STEPS}")
    seen: dict[str, int] = {}
    steps = []
    for index, step in enumerate(request.steps):
        path = f"steps[{index}]"
        if not _STEP_NAME.match(step.name):
            raise InvalidArgument(f"{path}.name", "must be 1 to 64 characters of [a-z0-9_-]")
        if step.name in seen:
            raise InvalidArgument(f"{path}.name", f"duplicates steps[{seen[step.name]}].name {step.name!r}")
        seen[step.name] = index
        if not step.HasField("call"):
            raise InvalidArgument(f"{path}.call", "is required")
        call = _call(step.call, f"{path}.call")
        compensation = _call(step.compensation, f"{path}.compensation") if step.HasField("compensation") else None
        steps.append(StepPlan(step.name, call, compensation))
    return steps


def _call(call: pb.Call, path: str) -> CallPlan:
    if not call.target_service:
        raise InvalidArgument(f"{path}.target_service", "is required")
    if not _TARGET.match(call.target_service):
        raise InvalidArgument(
            f"{path}.target_service", "must be a mesh target name: 1 to 64 characters of [A-Za-z0-9_-]",
        )
    if not call.method:
        raise InvalidArgument(f"{path}.method", "is required")
    matched = _METHOD.match(call.method)
    if matched is None:
        raise InvalidArgument(f"{path}.method", "must be a full method name, package.Service/Method")
    service, method = matched.groups()
    deadline = DEFAULT_DEADLINE
    if call.HasField("deadline"):
        seconds, nanos = call.deadline.seconds, call.deadline.nanos
        if seconds < 0 or nanos < 0 or nanos > 999_999_999 or (seconds == 0 and nanos == 0):
            raise InvalidArgument(f"{path}.deadline", "must be a positive duration")
        deadline = seconds + nanos / 1e9
        if deadline > MAX_DEADLINE:
            raise InvalidArgument(f"{path}.deadline", f"must be at most {MAX_DEADLINE:g} seconds")
    if call.max_attempts > MAX_ATTEMPTS:
        raise InvalidArgument(f"{path}.max_attempts", f"must be 1 to {MAX_ATTEMPTS} (0 means {DEFAULT_ATTEMPTS})")
    encoding = call.WhichOneof("request")
    json = _struct_to_dict(call.json_request) if encoding == "json_request" else None
    return CallPlan(
        target=call.target_service,
        method=f"/{service}/{method}",
        service=service,
        json=json,
        binary=call.binary_request,
        deadline=deadline,
        max_attempts=call.max_attempts or DEFAULT_ATTEMPTS,
    )


def _struct_to_dict(struct: struct_pb2.Struct) -> dict[str, object]:
    result: dict[str, object] = json_format.MessageToDict(struct)
    return result


def fingerprint(request: pb.RunWorkflowRequest) -> bytes:
    """SHA-256 of the definition without its idempotency key (deterministic serialization, so
    equal definitions give equal fingerprints)."""
    definition = pb.RunWorkflowRequest()
    definition.CopyFrom(request)
    definition.ClearField("idempotency_key")
    return hashlib.sha256(definition.SerializeToString(deterministic=True)).digest()
