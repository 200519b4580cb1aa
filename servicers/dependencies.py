"""What the mesh injects into servicers: storage, channels to other targets, settings, a clock."""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from servicers.event_log import EventLog
from servicers.storage import Storage


@dataclass(frozen=True, slots=True, kw_only=True)
class Dependencies:
    """Everything a servicer may use from outside its own module.

    Attributes:
        storage: KV buckets (JetStream in the mesh).
        channel: a grpc.aio.Channel to another target over the mesh, by target name.
        settings: per-service configuration (``MESH_<SERVICE>_<NAME>`` in the host), strings.
        clock: wall-clock seconds (``time.time``); tests may pass a fake.
        replicas: the JetStream replica count buckets and streams are created with.
        event_log: the durable event log (a JetStream stream in the mesh), for the event bus.
        detached: a context for work that must outlive the call that started it (run a task in
            it: ``create_task(work(), context=deps.detached())``): the transport's
            ``nats_transport.detached`` in the mesh, which drops the inherited deadline.
    """

    storage: Storage
    channel: Callable[[str], Any]
    settings: Mapping[str, str] = field(default_factory=dict)
    clock: Callable[[], float] = time.time
    replicas: int = 1
    event_log: EventLog | None = None
    detached: Callable[[], contextvars.Context] = contextvars.copy_context
