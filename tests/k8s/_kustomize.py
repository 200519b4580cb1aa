"""Just enough of Kustomize to read the rendered tree without a kustomize binary: a
kustomization's resources, its strategic merge patches (by name or by a kind and label
target), and the files behind its ConfigMap and Secret generators.

The merge follows the patch-merge keys of the Kubernetes types the tree patches (containers,
env and volumes by name, volume mounts by mount path); where kubectl is installed, a test
compares this with ``kubectl kustomize``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# List field -> the key its items merge on (the Kubernetes patchMergeKey).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "topologySpreadConstraints": "topologyKey",
}


@dataclass
class Built:
    """What one kustomization builds: objects, and generator name -> {key: source file}."""

    objects: list[dict[str, Any]]
    config_maps: dict[str, dict[str, Path]] = field(default_factory=dict)
    secrets: dict[str, dict[str, Path]] = field(default_factory=dict)

    def find(self, kind: str, name: str) -> dict[str, Any]:
        found = [o for o in self.objects if o["kind"] == kind and o["metadata"]["name"] == name]
        assert len(found) == 1, f"{len(found)} {kind}/{name}"
        return found[0]


def load_yaml(path: Path) -> list[dict[str, Any]]:
    """The documents of a YAML file."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def kustomization(folder: Path) -> dict[str, Any]:
    """The kustomization.yaml of ``folder``."""
    (doc,) = load_yaml(folder / "kustomization.yaml")
    return doc


def generator_files(folder: Path, entry: dict[str, Any]) -> dict[str, Path]:
    """A generator's files: ``key=path`` or ``path`` (key: the file's name), relative to ``folder``."""
    files = {}
    for item in entry.get("files", []):
        key, _, path = item.rpartition("=")
        files[key or Path(path).name] = folder / path
    return files


def build(folder: Path) -> Built:
    """Build the kustomization in ``folder`` (recursively through its resources)."""
    spec = kustomization(folder)
    built = Built([])
    for resource in spec.get("resources", []):
        path = folder / resource
        if path.is_dir():
            inner = build(path)
            built.objects += inner.objects
            built.config_maps.update(inner.config_maps)
            built.secrets.update(inner.secrets)
        else:
            built.objects += load_yaml(path)
    for entry in spec.get("configMapGenerator", []):
        _generate(built.config_maps, folder, entry)
    for entry in spec.get("secretGenerator", []):
        _generate(built.secrets, folder, entry)
    for patch in spec.get("patches", []):
        for doc in load_yaml(folder / patch["path"]):
            _apply(built.objects, doc, patch.get("target"))
    if "namespace" in spec:
        for obj in built.objects:
            if obj["kind"] != "Namespace":
                obj["metadata"]["namespace"] = spec["namespace"]
    return built


def _generate(into: dict[str, dict[str, Path]], folder: Path, entry: dict[str, Any]) -> None:
    behavior = entry.get("behavior", "create")
    name = entry["name"]
    assert (name in into) == (behavior == "replace"), f"{behavior} of generator {name}"
    into[name] = generator_files(folder, entry)


def _matches(obj: dict[str, Any], target: dict[str, Any]) -> bool:
    if obj["kind"] != target.get("kind", obj["kind"]):
        return False
    wanted = dict(pair.split("=", 1) for pair in target.get("labelSelector", "").split(",") if pair)
    found = obj["metadata"].get("labels", {})
    return all(found.get(key) == value for key, value in wanted.items())


def _apply(objects: list[dict[str, Any]], patch: dict[str, Any], target: dict[str, Any] | None) -> None:
    if target is None:
        matched = [o for o in objects
                   if o["kind"] == patch["kind"] and o["metadata"]["name"] == patch["metadata"]["name"]]
    else:
        matched = [o for o in objects if _matches(o, target)]
    assert matched, f"patch {patch['kind']}/{patch['metadata']['name']} matches nothing"
    for obj in matched:
        body = {key: value for key, value in patch.items() if key not in ("apiVersion", "kind", "metadata")}
        merge(obj, body)


def merge(into: dict[str, Any], patch: dict[str, Any]) -> None:
    """Strategic merge of ``patch`` into ``into`` (in place)."""
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        elif isinstance(value, list) and key in MERGE_KEYS and isinstance(into.get(key), list):
            _merge_list(into[key], value, MERGE_KEYS[key])
        else:
            into[key] = copy.deepcopy(value)


def _merge_list(into: list[dict[str, Any]], patch: list[dict[str, Any]], key: str) -> None:
    # Kustomize puts new items first (as kubectl's strategic merge does).
    new = []
    for item in patch:
        same = next((old for old in into if old.get(key) == item.get(key)), None)
        if same is None:
            new.append(copy.deepcopy(item))
        else:
            merge(same, item)
    into[:0] = new
