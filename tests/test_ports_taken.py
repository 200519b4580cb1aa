"""Taken ports: one line naming every flag at fault, exit 2, nothing started, no traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nats_transport.testing import free_port

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def taken() -> Iterator[list[int]]:
    """Two ports held by listeners of this test."""
    holders = []
    for _ in range(2):
        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        holders.append(holder)
    yield [h.getsockname()[1] for h in holders]
    for holder in holders:
        holder.close()


def test_mesh_up_names_every_taken_port_in_one_line_before_starting_anything(taken, tmp_path):
    nats_port, admin_port = taken
    done = subprocess.run(
        [sys.executable, "-m", "mesh", "up", "--data-dir", str(tmp_path / "data"),
         "--nats-port", str(nats_port), "--admin-port", str(admin_port), "--nats-monitor-port", str(free_port()),
         "--grpc-port", str(free_port()), "--http-port", str(free_port())],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    errors = done.stderr.strip().splitlines()
    assert len(errors) == 1, done.stderr
    assert f"--nats-port: cannot listen on 127.0.0.1:{nats_port}" in errors[0]
    assert f"--admin-port: cannot listen on 127.0.0.1:{admin_port}" in errors[0]
    assert not (tmp_path / "data" / "nats-server.log").exists()  # nothing was started


def test_mesh_serve_with_its_admin_port_taken_is_one_line_and_exit_2(taken):
    done = subprocess.run(
        [sys.executable, "-m", "mesh", "serve", "weather-manager", "--nats-url", f"nats://127.0.0.1:{free_port()}",
         "--admin-host", "127.0.0.1", "--admin-port", str(taken[0])],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"mesh serve: error: --admin-port: cannot listen on 127.0.0.1:{taken[0]}: address already in use"]
