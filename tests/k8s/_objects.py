"""The rendered objects, read back from their YAML, by overlay; and the mesh pods among them."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from tests.k8s._kustomize import Built, build

OVERLAYS = ("dev", "prod")


@functools.cache
def overlay(tree: Path, name: str) -> Built:
    """``overlays/<name>`` of ``tree`` built by the test's own kustomize."""
    return build(tree / "overlays" / name)


def workloads(built: Built) -> list[dict[str, Any]]:
    """Deployments and StatefulSets."""
    return [o for o in built.objects if o["kind"] in ("Deployment", "StatefulSet")]


def mesh_pods(built: Built) -> list[dict[str, Any]]:
    """The Deployments that run the mesh image (``mesh serve`` or ``mesh gateway``)."""
    return [o for o in built.objects if o["kind"] == "Deployment" and container(o)["command"] == ["mesh"]]


def container(workload: dict[str, Any]) -> dict[str, Any]:
    """The one container of a workload's pod."""
    (only,) = workload["spec"]["template"]["spec"]["containers"]
    return only


def env(workload: dict[str, Any]) -> dict[str, str]:
    """The container's plain environment variables."""
    return {v["name"]: v["value"] for v in container(workload).get("env", []) if "value" in v}
