"""``catalogue.CALLS`` and ``catalogue.STORAGE`` match the servicers' code.

Each target's real ``create()`` runs against recording stand-ins: the buckets it opens, the event
log it needs and the channels it asks for must all be declared. Channels are mostly asked for
per call, not at creation, so the target names written in each servicer's source (its
``WORLD_STATE = "world-state"`` constants) must be declared too."""

from __future__ import annotations

import ast
import asyncio
import fnmatch
import inspect
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import pytest

from mesh import catalogue
from mesh.jetstream_event_log import JetStreamEventLog
from servicers.dependencies import Dependencies
from servicers.storage import Change, Entry, RevisionConflict

SERVICERS = Path(catalogue.__file__).resolve().parent.parent / "servicers"
SETTINGS = {"auth": {"scrypt_log2_n": "10"}}


class MemoryBucket:
    """Just enough of a KV bucket for create(): revisions, compare-and-set and a live watch."""

    max_value = 1 << 20

    def __init__(self) -> None:
        self._data: dict[str, Entry] = {}
        self._revision = 0
        self._watchers: list[asyncio.Queue[Change]] = []

    async def get(self, key: str) -> Entry | None:
        return self._data.get(key)

    async def put(self, key: str, value: bytes) -> int:
        self._revision += 1
        self._data[key] = Entry(key, value, self._revision)
        for queue in self._watchers:
            queue.put_nowait(Change(key, value, self._revision))
        return self._revision

    async def update(self, key: str, value: bytes, revision: int) -> int:
        current = self._data[key].revision if key in self._data else 0
        if current != revision:
            raise RevisionConflict(key, revision, current)
        return await self.put(key, value)

    async def delete(self, key: str, revision: int | None = None) -> None:
        self._data.pop(key, None)

    async def keys(self, pattern: str = ">") -> list[str]:
        return sorted(k for k in self._data if _matches(pattern, k))

    async def watch(self, pattern: str, *, include_current: bool = True) -> AsyncGenerator[Change, None]:
        queue: asyncio.Queue[Change] = asyncio.Queue()
        self._watchers.append(queue)
        try:
            if include_current:
                for entry in list(self._data.values()):
                    if _matches(pattern, entry.key):
                        yield Change(entry.key, entry.value, entry.revision)
            while True:
                change = await queue.get()
                if _matches(pattern, change.key):
                    yield change
        finally:
            self._watchers.remove(queue)


def _matches(pattern: str, key: str) -> bool:
    return pattern == ">" or fnmatch.fnmatchcase(key, pattern.replace(">", "*"))


class RecordingStorage:
    def __init__(self) -> None:
        self.names: list[str] = []
        self._buckets: dict[str, MemoryBucket] = {}

    async def key_value(self, name: str, **options: Any) -> MemoryBucket:
        self.names.append(name)
        return self._buckets.setdefault(name, MemoryBucket())


class AnyChannel:
    """A channel whose multicallables are never called during create()."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


async def _create(target: str, *, event_log: Any) -> tuple[Any, list[str], list[str]]:
    storage, channels = RecordingStorage(), []

    def channel(name: str) -> AnyChannel:
        channels.append(name)
        return AnyChannel()

    module = catalogue.load(target)
    assert module is not None
    deps = Dependencies(storage=storage, channel=channel, settings=SETTINGS.get(target, {}), event_log=event_log)
    servicer = await asyncio.wait_for(module.create(deps), 10)
    if hasattr(servicer, "aclose"):
        await servicer.aclose()
    return servicer, storage.names, channels


def test_the_tables_cover_exactly_the_catalogue():
    assert list(catalogue.CALLS) == list(catalogue.CATALOGUE)
    assert list(catalogue.STORAGE) == list(catalogue.CATALOGUE)
    for target, called in catalogue.CALLS.items():
        assert set(called) <= set(catalogue.CATALOGUE), target
        assert "auth" in called, f"{target} must be able to reach auth"


@pytest.mark.parametrize("target", list(catalogue.CATALOGUE))
async def test_create_opens_exactly_the_declared_storage_and_only_declared_channels(target):
    declared = catalogue.STORAGE[target]
    streams = [n for n in declared if n in catalogue.STREAM_SUBJECTS]
    if streams:
        # Only targets that declare a stream refuse to start without the event log.
        with pytest.raises(ValueError, match="event_log"):
            await _create(target, event_log=None)
    _, buckets, channels = await _create(target, event_log=None if not streams else object())
    assert sorted(set(buckets)) == sorted(n for n in declared if n not in catalogue.STREAM_SUBJECTS)
    assert set(channels) <= set(catalogue.CALLS[target])


@pytest.mark.parametrize("target", list(catalogue.CATALOGUE))
def test_every_target_named_in_a_servicers_source_is_declared_as_called(target):
    module = catalogue.CATALOGUE[target]
    package = SERVICERS / module
    files = sorted(package.rglob("*.py")) if package.is_dir() else [SERVICERS / f"{module}.py"]
    named = {name for file in files for name in _target_names(ast.parse(file.read_text()))} - {target}
    assert named <= set(catalogue.CALLS[target])


def _target_names(tree: ast.Module) -> set[str]:
    """Target names in module constants (``WORLD_STATE = "world-state"``) and ``channel("x")`` calls."""
    values: list[ast.expr] = [n.value for n in tree.body if isinstance(n, ast.Assign)]
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")).endswith("channel"):
            values += node.args
    return {v.value for v in values if isinstance(v, ast.Constant) and v.value in catalogue.CATALOGUE}


def test_only_auth_holds_auth_buckets():
    holders = {t for t, names in catalogue.STORAGE.items() if any(n.startswith("auth_") for n in names)}
    assert holders == {"auth"}
    every = [n for names in catalogue.STORAGE.values() for n in names]
    assert len(every) == len(set(every)), "a bucket or stream is declared by two targets"


def test_stream_subjects_are_the_hosts_event_log_defaults():
    defaults = {name: p.default for name, p in inspect.signature(JetStreamEventLog).parameters.items()}
    stream = defaults["stream"]
    assert {
        stream: (f"{defaults['subject_prefix']}.>", f"{defaults['control_prefix']}.{stream}.>")
    } == catalogue.STREAM_SUBJECTS
