"""The nats.conf of each overlay passes ``nats-server -t`` (the server's own config check, which
reads includes and loads TLS files), with ``$POD_NAME`` from the environment as in the pod."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from mesh.k8s.common import NATS
from mesh.k8s.nats import CONFIG_DIR
from nats_transport.testing import find_nats_server
from tests.k8s._objects import overlay
from tests.k8s._pods import Network, pod_of


def _check(config: Path, pod_name: str | None = "nats-1") -> subprocess.CompletedProcess[str]:
    environ = {key: value for key, value in os.environ.items() if key != "POD_NAME"}
    if pod_name is not None:
        environ["POD_NAME"] = pod_name
    return subprocess.run([find_nats_server(), "-t", "-c", str(config)], env=environ, capture_output=True,
                          text=True, timeout=30)


def _mounted_config(tree: Path, name: str, root: Path) -> Path:
    """nats.conf as the pod sees it, its volumes (Secrets included) under ``root``."""
    built = overlay(tree, name)
    # Ports are not bound by -t: any will do.
    routes = Network({(f"{NATS}-{i}.{NATS}", 6222): 16222 + i for i in range(3)})
    pod_of(built.find("StatefulSet", NATS), built, "nats-1", root, routes,
           {"client": 14222, "cluster": 16223, "monitor": 18222})
    return root / CONFIG_DIR.lstrip("/") / "nats.conf"


def test_the_base_config_as_rendered_is_valid_for_nats_server() -> None:
    result = _check(Path(__file__).resolve().parents[2] / "k8s" / "base" / "nats" / "nats.conf")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_config_needs_the_pod_name_from_the_environment(tree: Path) -> None:
    result = _check(tree / "base" / "nats" / "nats.conf", pod_name=None)
    assert result.returncode != 0
    assert "POD_NAME" in result.stdout + result.stderr


def test_each_overlays_config_is_valid_where_the_pod_mounts_it(tree: Path, tmp_path: Path) -> None:
    for name in ("dev", "prod"):
        result = _check(_mounted_config(tree, name, tmp_path / name))
        assert result.returncode == 0, f"{name}: {result.stdout}{result.stderr}"


def test_the_prod_config_is_refused_without_its_security_files(tree: Path, tmp_path: Path) -> None:
    config = _mounted_config(tree, "prod", tmp_path / "prod")
    (config.parent.parent / "security" / "nats-security.conf").unlink()
    result = _check(config)
    assert result.returncode != 0
    assert "nats-security.conf" in result.stdout + result.stderr
