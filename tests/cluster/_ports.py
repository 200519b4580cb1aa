"""Runs of consecutive free ports: a ``mesh up --cluster N`` node i listens on a flag's port + i."""

from __future__ import annotations

import contextlib
import random
import socket

from nats_transport.testing import SAFE_PORT_RANGE


def free_port_run(count: int, *, avoid: set[int] | None = None, attempts: int = 200) -> int:
    """The first of ``count`` consecutive loopback ports that were all free a moment ago."""
    avoid = avoid or set()
    low, high = SAFE_PORT_RANGE  # as free_port: no outgoing connection takes these
    for _ in range(attempts):
        with contextlib.ExitStack() as held:
            first = _bind(held, random.randint(low, high - count))
            if first is None:
                continue
            ports = [first, *(first + i for i in range(1, count))]
            if any(p in avoid for p in ports):
                continue
            # Held together, so the run is free as a whole, not port by port.
            if all(_bind(held, port) is not None for port in ports[1:]):
                return first
    raise RuntimeError(f"no run of {count} free ports found in {attempts} attempts")


def disjoint_runs(*counts: int) -> list[int]:
    """One run of free ports per count, no two overlapping (their first ports)."""
    taken: set[int] = set()
    firsts = []
    for count in counts:
        first = free_port_run(count, avoid=taken)
        taken.update(range(first, first + count))
        firsts.append(first)
    return firsts


def _bind(stack: contextlib.ExitStack, port: int) -> int | None:
    probe = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    try:
        probe.bind(("127.0.0.1", port))
    except OSError:
        return None
    return int(probe.getsockname()[1])
