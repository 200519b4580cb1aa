"""Which target serves which gRPC service, learned from the NATS Services API and kept current.

Every nats_transport server answers ``$SRV.INFO`` (ADR-32) as one instance of its target, with
the gRPC services it serves in its metadata (``grpc.services``, ``grpc.target``). The registry
broadcasts ``$SRV.INFO`` every ``interval`` seconds, gathers the answers for ``window`` seconds,
and keeps an instance until it misses ``misses`` polls in a row: one slow answer from a busy
host must not take a whole target off the table.

A service once seen stays *known* for the registry's life, so a caller can tell a service that
never existed (UNIMPLEMENTED) from one whose targets are all gone (UNAVAILABLE).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from nats.aio.client import Client
from nats.aio.msg import Msg

log = logging.getLogger("gateway.discovery")

INFO_SUBJECT = "$SRV.INFO"
INFO_TYPE = "io.nats.micro.v1.info_response"
SERVICES_KEY = "grpc.services"
TARGET_KEY = "grpc.target"


@dataclass(frozen=True, slots=True)
class Instance:
    """One server instance as its ``$SRV.INFO`` answer describes it."""

    target: str
    id: str
    services: frozenset[str]
    methods: frozenset[str]


@dataclass(frozen=True, slots=True)
class TargetView:
    """A live target: the services its instances serve, and which instances those are."""

    services: frozenset[str]
    instances: frozenset[str]


def parse_info(data: bytes) -> Instance | None:
    """An instance from a ``$SRV.INFO`` answer; None for answers that are not gRPC servers."""
    try:
        answer = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None  # the no-responders status has an empty body; foreign services may send anything
    if not isinstance(answer, dict) or answer.get("type") != INFO_TYPE:
        return None
    metadata = answer.get("metadata") or {}
    if not isinstance(metadata, dict) or SERVICES_KEY not in metadata:
        return None  # a NATS micro service that does not carry gRPC
    target = str(metadata.get(TARGET_KEY) or answer.get("name") or "")
    instance_id = str(answer.get("id") or "")
    if not target or not instance_id:
        return None
    services = frozenset(name for name in str(metadata[SERVICES_KEY]).split(",") if name)
    methods = frozenset(
        f"/{endpoint['metadata']['grpc.service']}/{endpoint['name']}"
        for endpoint in answer.get("endpoints") or ()
        if isinstance(endpoint, dict) and isinstance(endpoint.get("metadata"), dict)
        and "grpc.service" in endpoint["metadata"] and "name" in endpoint
    )
    return Instance(target, instance_id, services, methods)


class Discovery:
    """The service -> target table, refreshed by polling ``$SRV.INFO``.

    Args:
        nc: a connected NATS client (not closed by the registry).
        interval: seconds between polls.
        window: seconds each poll gathers answers for.
        misses: polls an instance may miss before it is dropped.
        ignore: service names never routed (the ingress serves its own health and reflection,
            which every target also lists).
    """

    def __init__(
        self,
        nc: Client,
        *,
        interval: float = 1.5,
        window: float = 0.25,
        misses: int = 2,
        ignore: Iterable[str] = (),
    ) -> None:
        if interval <= 0 or window <= 0 or misses < 1:
            raise ValueError("interval and window must be positive and misses at least 1")
        self._nc = nc
        self._interval = interval
        self._window = window
        self._misses = misses
        self._ignore = frozenset(ignore)
        self._instances: dict[str, Instance] = {}
        self._missed: dict[str, int] = {}
        self._known: set[str] = set()
        self._view: dict[str, TargetView] = {}
        self._routes: dict[str, str] = {}
        self._connected = nc.is_connected
        self._changed = asyncio.Event()
        self._listeners: list[Callable[[Mapping[str, TargetView]], None]] = []
        self._poll_task: asyncio.Task[None] | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._poll_started = 0.0
        self.polls = 0

    def __repr__(self) -> str:
        return (
            f"<gateway.Discovery targets={len(self._view)} services={len(self._routes)} "
            f"instances={len(self._instances)} polls={self.polls}>"
        )

    # -- life --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Poll once (so the table is filled when this returns), then keep polling."""
        await self.refresh()
        self._loop_task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop polling; the table keeps its last state."""
        for task in (self._loop_task, self._poll_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._loop_task = self._poll_task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)  # a poll period, not a wait for a condition
            try:
                await self.refresh()
            except Exception:
                log.exception("discovery poll failed")

    # -- polling -----------------------------------------------------------------------------

    async def refresh(self, *, since: float | None = None) -> None:
        """Poll now, or join the poll under way if it began at ``since`` (monotonic) or later
        (any poll under way, if None). Callers asking about a service the table lacks pass the
        time they asked, so a poll that began before a service came up does not answer them;
        many such callers still share one poll."""
        while True:
            task = self._poll_task
            if task is None or task.done():
                self._poll_started = time.monotonic()
                task = self._poll_task = asyncio.get_running_loop().create_task(self._poll())
                await asyncio.shield(task)
                return
            started = self._poll_started
            await asyncio.shield(task)
            if since is None or started >= since:
                return

    async def _poll(self) -> None:
        if not self._nc.is_connected:
            # Keep the last table: every call fails UNAVAILABLE anyway, and the targets are most
            # likely still there when the connection comes back.
            self._set_connected(False)
            return
        answers = await self._gather()
        self._set_connected(True)
        self._apply(answers)
        self.polls += 1

    async def _gather(self) -> list[Instance]:
        answers: list[Instance] = []

        async def on_answer(msg: Msg) -> None:
            instance = parse_info(msg.data)
            if instance is not None:
                answers.append(instance)

        inbox = self._nc.new_inbox()
        sub = await self._nc.subscribe(inbox, cb=on_answer)
        try:
            await self._nc.publish(INFO_SUBJECT, b"", reply=inbox)
            # A broadcast has no end marker: every instance that answers within the window counts.
            await asyncio.sleep(self._window)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        return answers

    def _apply(self, answers: list[Instance]) -> None:
        seen = {instance.id for instance in answers}
        for instance in answers:
            self._instances[instance.id] = instance
            self._missed[instance.id] = 0
        for instance_id in list(self._instances):
            if instance_id in seen:
                continue
            self._missed[instance_id] = self._missed.get(instance_id, 0) + 1
            if self._missed[instance_id] >= self._misses:
                gone = self._instances.pop(instance_id)
                self._missed.pop(instance_id, None)
                log.info("instance gone", extra={"target": gone.target, "instance": instance_id})
        self._rebuild()

    def _rebuild(self) -> None:
        view: dict[str, TargetView] = {}
        for instance in self._instances.values():
            services = instance.services - self._ignore
            current = view.get(instance.target)
            if current is None:
                view[instance.target] = TargetView(services, frozenset({instance.id}))
            else:
                view[instance.target] = TargetView(current.services | services, current.instances | {instance.id})
        routes: dict[str, str] = {}
        # Targets in name order, so that every ingress replica picks the same one when two
        # targets claim a service (a misconfiguration, logged once per change).
        for target in sorted(view):
            for service in view[target].services:
                if service in routes and routes[service] != target:
                    log.warning("service served by several targets", extra={
                        "service": service, "chosen": routes[service], "also": target})
                routes.setdefault(service, target)
        self._known.update(routes)
        if view != self._view or routes != self._routes:
            self._view, self._routes = view, routes
            self._notify()
        # Every poll, not only on change: a listener may retry what failed last time.
        for listener in list(self._listeners):
            try:
                listener(self._view)
            except Exception:
                log.exception("discovery listener failed")

    def _set_connected(self, connected: bool) -> None:
        if connected != self._connected:
            self._connected = connected
            self._notify()

    def _notify(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    # -- questions ---------------------------------------------------------------------------

    def add_listener(self, listener: Callable[[Mapping[str, TargetView]], None]) -> None:
        """Call ``listener(targets)`` after every poll (and once now), with the live targets."""
        self._listeners.append(listener)
        listener(self._view)

    def changed(self) -> asyncio.Event:
        """An event set at the next change of the table or of the connection state.

        Take it *before* looking at the table, then await it: no change can slip in between.
        """
        return self._changed

    @property
    def connected(self) -> bool:
        """Whether the last poll found the NATS connection up."""
        return self._connected and self._nc.is_connected

    def target_of(self, service: str) -> str | None:
        """The live target serving ``service``, or None."""
        return self._routes.get(service)

    def knows(self, service: str) -> bool:
        """Whether ``service`` was ever served by a target this registry saw."""
        return service in self._known

    def services(self) -> list[str]:
        """Services with a live target, sorted."""
        return sorted(self._routes)

    def targets(self) -> dict[str, TargetView]:
        """Live targets by name."""
        return dict(self._view)

    async def resolve(self, service: str) -> str | None:
        """The live target of ``service``, polling first if none is in the table (a service
        deployed since the last poll is found at once)."""
        target = self._routes.get(service)
        if target is None:
            await self.refresh(since=time.monotonic())
            target = self._routes.get(service)
        return target
