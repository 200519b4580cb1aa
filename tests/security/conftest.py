"""One locked-down nats-server per module, configured by ``mesh security init``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh.security import initialise
from nats_transport.testing import NatsServer


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir after ``mesh security init`` (generated once per module: keys take time)."""
    folder = tmp_path_factory.mktemp("mesh-security")
    initialise(folder, hosts=["nats"])
    return folder


@pytest.fixture(scope="module")
def secured(data_dir: Path) -> Iterator[NatsServer]:
    """A nats-server with JetStream running the generated tls and authorization blocks."""
    with NatsServer(name="secured", include=data_dir / "nats-security.conf") as server:
        yield server
