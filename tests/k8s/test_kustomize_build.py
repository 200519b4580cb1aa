"""The overlays built by the real Kustomize (``kubectl kustomize``, where kubectl is installed):
they build, every ConfigMap and Secret a pod names is generated under that (hashed) name in the
pod's namespace, and the pods are the ones the other tests read with their own small kustomize."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.k8s._objects import OVERLAYS, overlay, workloads

KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl (with its built-in kustomize) is not installed")
_HASH = re.compile(r"-[a-z0-9]{10}$")


def _kustomize(folder: Path) -> list[dict[str, Any]]:
    assert KUBECTL is not None
    result = subprocess.run([KUBECTL, "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]


def _unhashed(pod: dict[str, Any]) -> dict[str, Any]:
    """A pod spec with generated names back to the names the manifests use."""
    text = yaml.safe_dump(pod)
    for volume in pod.get("volumes", []):
        for source, key in (("configMap", "name"), ("secret", "secretName")):
            if source in volume:
                text = text.replace(volume[source][key], _HASH.sub("", volume[source][key]))
    return dict(yaml.safe_load(text))


@pytest.mark.parametrize("name", OVERLAYS)
def test_each_overlay_builds_and_every_configmap_and_secret_a_pod_mounts_is_generated(tree: Path, name: str) -> None:
    objects = _kustomize(tree / "overlays" / name)
    generated = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects}
    for workload in (o for o in objects if o["kind"] in ("Deployment", "StatefulSet")):
        namespace = workload["metadata"]["namespace"]
        for volume in workload["spec"]["template"]["spec"].get("volumes", []):
            if "configMap" in volume:
                assert ("ConfigMap", namespace, volume["configMap"]["name"]) in generated, volume
            if "secret" in volume:
                assert ("Secret", namespace, volume["secret"]["secretName"]) in generated, volume
    for obj in objects:
        kubernetes_validate.validate(obj, "1.30.0", strict=True)


@pytest.mark.parametrize("name", OVERLAYS)
def test_the_tests_own_kustomize_builds_the_same_pods_as_kubectl(tree: Path, name: str) -> None:
    real = {(o["kind"], o["metadata"]["name"]): o for o in _kustomize(tree / "overlays" / name)
            if o["kind"] in ("Deployment", "StatefulSet")}
    ours = {(o["kind"], o["metadata"]["name"]): o for o in workloads(overlay(tree, name))}
    assert set(real) == set(ours)
    for key, workload in ours.items():
        assert real[key]["spec"]["replicas"] == workload["spec"]["replicas"], key
        assert _unhashed(real[key]["spec"]["template"]["spec"]) == workload["spec"]["template"]["spec"], key
