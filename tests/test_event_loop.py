"""``MESH_EVENT_LOOP``: which loop mesh's commands run on (``mesh/event_loop.py``)."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys

import pytest

from mesh import event_loop
from mesh.event_loop import EventLoopError, chosen

HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None


@pytest.mark.parametrize(
    ("value", "with_uvloop", "without_uvloop"),
    [
        (None, "uvloop", "asyncio"),
        ("auto", "uvloop", "asyncio"),
        ("", "uvloop", "asyncio"),
        ("AUTO", "uvloop", "asyncio"),
        ("asyncio", "asyncio", "asyncio"),
        ("uvloop", "uvloop", EventLoopError),
    ],
)
def test_the_loop_chosen_follows_the_setting_and_what_is_installed(monkeypatch, value, with_uvloop, without_uvloop):
    environ = {} if value is None else {event_loop.ENV: value}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name == "uvloop" else None)
    assert chosen(environ) == with_uvloop
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    if isinstance(without_uvloop, str):
        assert chosen(environ) == without_uvloop
    else:
        with pytest.raises(without_uvloop, match="uvloop is not installed"):
            chosen(environ)


def test_an_unknown_loop_is_an_error_naming_the_setting_and_the_choices():
    with pytest.raises(EventLoopError, match=r"MESH_EVENT_LOOP: must be one of auto, uvloop, asyncio, got 'tokio'"):
        chosen({event_loop.ENV: "tokio"})


def test_run_runs_the_coroutine_on_the_chosen_loop(monkeypatch):
    async def kind() -> str:
        return event_loop.running()

    monkeypatch.setenv(event_loop.ENV, "asyncio")
    assert event_loop.run(kind()) == "asyncio"
    if HAS_UVLOOP:
        monkeypatch.setenv(event_loop.ENV, "uvloop")
        assert event_loop.run(kind()) == "uvloop"


def test_a_bad_setting_closes_the_coroutine_it_never_ran(monkeypatch):
    ran = []

    async def main() -> None:
        ran.append(True)

    coroutine = main()
    monkeypatch.setenv(event_loop.ENV, "tokio")
    with pytest.raises(EventLoopError):
        event_loop.run(coroutine)
    assert ran == []
    assert coroutine.cr_frame is None  # closed: no "never awaited" warning later


def test_mesh_serve_with_a_bad_loop_setting_says_so_in_one_line_and_exits_2():
    done = subprocess.run(
        [sys.executable, "-m", "mesh", "serve", "quest-system", "--nats-url", "nats://127.0.0.1:1"],
        env={**os.environ, event_loop.ENV: "tokio"}, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "mesh serve: error: MESH_EVENT_LOOP: must be one of auto, uvloop, asyncio, got 'tokio'"
    ]


def test_running_names_asyncio_on_asyncio_loop():
    assert asyncio.run(_running()) == "asyncio"


async def _running() -> str:
    return event_loop.running()
