"""Each target's protobuf descriptors, fetched from the target's own reflection over NATS.

A target's index is (re)built when discovery reports it with new services or new instances (a
redeploy may bring new protos); the previous index keeps answering until the new one is in, so
routing never has a gap. Questions the cached files cannot answer are forwarded as they are to
the target's reflection, and whatever files come back join its index.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from nats.aio.client import Client

import nats_transport.aio
from gateway.descriptor_index import DescriptorIndex, MethodKind
from gateway.discovery import TargetView
from nats_transport import ChannelOptions

log = logging.getLogger("gateway.schemas")

# After a failed fetch, wait this long before asking the same target again.
RETRY_AFTER = 5.0


@dataclass(slots=True)
class _Entry:
    index: DescriptorIndex | None = None
    key: tuple[frozenset[str], frozenset[str]] | None = None
    task: asyncio.Task[DescriptorIndex | None] | None = None
    failed_at: float = 0.0


class Schemas:
    """Descriptor indexes by target.

    Args:
        nc: the NATS connection reflection calls travel on.
        timeout: seconds one reflection exchange with a target may take.
        options: NATS transport settings of the reflection calls.
    """

    def __init__(self, nc: Client, *, timeout: float = 5.0, options: ChannelOptions | None = None) -> None:
        self._nc = nc
        self._timeout = timeout
        self._options = options or ChannelOptions()
        self._entries: dict[str, _Entry] = {}

    def __repr__(self) -> str:
        loaded = sorted(t for t, e in self._entries.items() if e.index is not None)
        return f"<gateway.Schemas loaded={loaded}>"

    # -- keeping up with discovery -----------------------------------------------------------

    def update(self, targets: Mapping[str, TargetView]) -> None:
        """Fetch the descriptors of targets that are new or changed (a discovery listener)."""
        for target, view in targets.items():
            entry = self._entries.setdefault(target, _Entry())
            key = (view.services, view.instances)
            retry = entry.failed_at and time.monotonic() - entry.failed_at >= RETRY_AFTER
            if key != entry.key or retry:
                entry.key = key
                entry.failed_at = 0.0
                self._start_fetch(target, entry, view.services)

    def _start_fetch(self, target: str, entry: _Entry, services: Iterable[str]) -> None:
        if entry.task is not None and not entry.task.done():
            entry.task.cancel()
        entry.task = asyncio.get_running_loop().create_task(self._fetch(target, entry, tuple(sorted(services))))

    async def _fetch(self, target: str, entry: _Entry, services: tuple[str, ...]) -> DescriptorIndex | None:
        index = DescriptorIndex()
        try:
            async with asyncio.timeout(self._timeout):
                await self._fill(target, index, services)
        except (grpc.aio.AioRpcError, TimeoutError, ValueError) as exc:
            entry.failed_at = time.monotonic()
            reason = str(exc) or type(exc).__name__
            log.warning("reflection of target failed", extra={"target": target, "error": reason})
            return entry.index
        entry.index = index
        log.debug("descriptors loaded", extra={"target": target, "files": len(index.filenames)})
        return index

    async def _fill(self, target: str, index: DescriptorIndex, services: tuple[str, ...]) -> None:
        questions = [reflection_pb2.ServerReflectionRequest(file_containing_symbol=s) for s in services]
        for answer in await self._exchange(target, questions):
            _add_files(index, answer)
        missing = index.missing_dependencies()
        if missing:
            # Servers normally send a file with its imports; ask for any that did not come.
            questions = [reflection_pb2.ServerReflectionRequest(file_by_filename=name) for name in sorted(missing)]
            for answer in await self._exchange(target, questions):
                _add_files(index, answer)

    async def _exchange(self, target: str, questions: list[Any]) -> list[Any]:
        """Ask ``questions`` on one reflection stream; the answers, in order."""
        if not questions:
            return []
        channel = nats_transport.aio.channel(self._nc, target, options=self._options)
        call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(timeout=self._timeout)
        answers = []
        try:
            for question in questions:
                await call.write(question)
                answer = await call.read()
                if answer is grpc.aio.EOF:
                    raise ValueError("the reflection stream ended early")
                answers.append(answer)
            await call.done_writing()
        finally:
            call.cancel()
        return answers

    # -- questions ---------------------------------------------------------------------------

    def index(self, target: str) -> DescriptorIndex | None:
        """The target's index as loaded so far, or None."""
        entry = self._entries.get(target)
        return None if entry is None else entry.index

    def method_kind(self, target: str, service: str, method: str) -> MethodKind | None:
        """The call type of a method as the target's descriptors say, if loaded."""
        index = self.index(target)
        return None if index is None else index.method_kind(service, method)

    async def loaded(self, target: str) -> DescriptorIndex | None:
        """The target's index, once a fetch under way has ended (None if none succeeded)."""
        entry = self._entries.get(target)
        if entry is None:
            return None
        if entry.task is not None and not entry.task.done():
            # wait() neither raises the fetch's own end (a newer fetch may replace it) nor
            # cancels it when the caller is cancelled.
            await asyncio.wait({entry.task})
        return entry.index

    async def ask(self, target: str, question: Any) -> Any | None:
        """Forward one reflection request to the target; files in the answer join its index.
        None when the target cannot be asked (it is gone, or serves no reflection)."""
        try:
            async with asyncio.timeout(self._timeout):
                answers = await self._exchange(target, [question])
        except (grpc.aio.AioRpcError, TimeoutError, ValueError) as exc:
            log.info("reflection question failed", extra={"target": target, "error": str(exc) or type(exc).__name__})
            return None
        answer = answers[0]
        entry = self._entries.setdefault(target, _Entry())
        if entry.index is None:
            entry.index = DescriptorIndex()
        _add_files(entry.index, answer)
        return answer

    async def close(self) -> None:
        """Stop fetches under way."""
        tasks = [e.task for e in self._entries.values() if e.task is not None and not e.task.done()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _add_files(index: DescriptorIndex, answer: Any) -> None:
    if answer.WhichOneof("message_response") != "file_descriptor_response":
        return
    for serialized in answer.file_descriptor_response.file_descriptor_proto:
        try:
            index.add(serialized)
        except Exception as exc:  # a broken descriptor from one target must not break the rest
            log.warning("undecodable file descriptor", extra={"error": str(exc)})
