"""The rendered tree, written to a temporary folder, and the prod overlay's security/ folder
filled the way docs/deploy.md says (``mesh security init`` and ``mesh k8s service-keys``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh.cli import main
from mesh.k8s import render, write
from mesh.k8s.common import nats_hosts

# What docs/deploy.md passes to `mesh security init --host`.
SERVER_HOSTS = (*nats_hosts(), "nats-client", "mesh-gateway")


def fill_security(tree: Path) -> Path:
    """Run the documented commands into ``tree``'s prod overlay; the security folder."""
    security = tree / "overlays" / "prod" / "security"
    hosts = [part for host in SERVER_HOSTS for part in ("--host", host)]
    assert main(["security", "init", "--data-dir", str(security), *hosts]) == 0
    assert main(["k8s", "service-keys", "--data-dir", str(security)]) == 0
    return security


@pytest.fixture(scope="session")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The rendered tree (what `mesh k8s render` writes), with a filled prod security folder."""
    folder = tmp_path_factory.mktemp("k8s")
    write(render(), folder)
    fill_security(folder)
    return folder
