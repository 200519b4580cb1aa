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


DEFAULT_CONTAINER = "kubectl.kubernetes.io/default-container"


def main_container(template: dict[str, Any]) -> dict[str, Any]:
    """A pod template's own container: its only one, or the one its default-container annotation
    names (beside it, sidecars: the NATS pods' metrics exporter)."""
    containers: list[dict[str, Any]] = template["spec"]["containers"]
    if len(containers) == 1:
        return containers[0]
    name = template["metadata"]["annotations"][DEFAULT_CONTAINER]
    (main,) = [c for c in containers if c["name"] == name]
    return main


def container(workload: dict[str, Any]) -> dict[str, Any]:
    """The main container of a workload's pod."""
    return main_container(workload["spec"]["template"])


def env(workload: dict[str, Any]) -> dict[str, str]:
    """The container's plain environment variables."""
    return {v["name"]: v["value"] for v in container(workload).get("env", []) if "value" in v}
