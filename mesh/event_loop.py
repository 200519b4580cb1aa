"""Which asyncio event loop the mesh's long-running commands run on: uvloop where it is installed.

uvloop (libuv under asyncio's API) makes loop iterations, callbacks and socket reads cheaper.
What it buys is measured in ``benchmarks/RESULTS.md`` and depends on the machine: on one 2-core
machine about 6% less CPU per unary call for the transport (client and server) and no more
throughput at 64 in flight, on another about 20% less CPU per call and 1.2x the throughput. It
is optional
(``pip install 'nats-grpc-mesh[uvloop]'``): without it the commands run on asyncio's own loop,
unchanged. ``MESH_EVENT_LOOP`` chooses: ``auto`` (the default: uvloop if importable),
``uvloop`` (required: a missing uvloop is an error, not a silent fallback) or ``asyncio``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

ENV = "MESH_EVENT_LOOP"
CHOICES = ("auto", "uvloop", "asyncio")

T = TypeVar("T")


class EventLoopError(ValueError):
    """``MESH_EVENT_LOOP`` names a loop that cannot be used."""


def chosen(environ: dict[str, str] | None = None) -> str:
    """``"uvloop"`` or ``"asyncio"``: what ``run`` will use, from ``MESH_EVENT_LOOP``."""
    value = (os.environ if environ is None else environ).get(ENV, "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise EventLoopError(f"{ENV}: must be one of {', '.join(CHOICES)}, got {value!r}")
    installed = importlib.util.find_spec("uvloop") is not None
    if value == "uvloop" and not installed:
        raise EventLoopError(f"{ENV}=uvloop but uvloop is not installed (pip install 'nats-grpc-mesh[uvloop]')")
    if value == "asyncio" or not installed:
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the chosen loop. Raises EventLoopError (closing ``main``) first
    if ``MESH_EVENT_LOOP`` is invalid."""
    try:
        loop = chosen()
    except EventLoopError:
        main.close()  # never started: no "coroutine was never awaited" warning
        raise
    if loop == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


def running() -> str:
    """The kind of loop running now (``"uvloop"`` or ``"asyncio"``), for logs and probes."""
    loop = asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
