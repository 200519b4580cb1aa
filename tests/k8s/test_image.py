"""The image the manifests run, as far as can be checked without a container engine: what the
Dockerfile copies and installs, what .dockerignore keeps out, the tag the manifests expect, and
that the commands the pods run import with the runtime dependencies alone (what ``pip install .``
puts in the image)."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from mesh.k8s import render
from mesh.k8s.common import IMAGE

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _instructions() -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in joined.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_the_image_is_built_in_two_stages_and_runs_mesh_as_user_10001() -> None:
    steps = _instructions()
    stages = [i for i, (op, _) in enumerate(steps) if op == "FROM"]
    assert len(stages) == 2
    runtime = steps[stages[1]:]
    assert ("USER", "10001:10001") in runtime
    assert ("ENTRYPOINT", '["mesh"]') in runtime
    assert any(op == "COPY" and arg.startswith("--from=builder") for op, arg in runtime)


def test_the_image_installs_the_project_with_uvloop_and_without_its_dev_extras() -> None:
    installs = [arg for op, arg in _instructions() if op == "RUN" and "pip install" in arg]
    # opentelemetry-proto goes in again last, at the version the OTLP exporter pins: xds-protos
    # ships an old copy of its modules that can land over it.
    exporter = next(d for d in PYPROJECT["project"]["dependencies"]
                    if d.startswith("opentelemetry-exporter-otlp-proto-http=="))
    version = exporter.partition("==")[2]
    assert PYPROJECT["project"]["optional-dependencies"]["uvloop"]
    assert installs == [
        "/opt/mesh/bin/pip install '.[uvloop]'",
        f"/opt/mesh/bin/pip install --no-deps --force-reinstall opentelemetry-proto=={version}",
    ]
    assert f"--force-reinstall opentelemetry-proto=={version}" in (REPO / "README.md").read_text()


def test_the_image_gets_every_package_the_project_installs_and_dockerignore_keeps_none_out() -> None:
    copied = {source for op, arg in _instructions() if op == "COPY" and not arg.startswith("--from")
              for source in arg.split()[:-1]}
    wanted = {"pyproject.toml", "README.md"}
    for where in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["where"]:
        for pattern in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]:
            for package in (REPO / where).glob(pattern.rstrip("*")):
                if (package / "__init__.py").is_file():
                    wanted.add(where if where != "." else package.name)
    assert wanted <= copied
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert not ignored & copied
    # Secrets (k8s/overlays/prod/security/), local state and the development environment stay out.
    assert {".git", ".venv", ".mesh-data", "k8s", "tests"} <= ignored


def test_the_manifests_run_the_image_tagged_with_the_package_version() -> None:
    assert f"nats-grpc-mesh:{PYPROJECT['project']['version']}" == IMAGE
    images = {container["image"] for file in render() if file.path.startswith("base/")
              for obj in file.objects if obj.get("kind") == "Deployment"
              for container in obj["spec"]["template"]["spec"]["containers"]}
    assert images == {IMAGE}
    assert metadata.version("nats-grpc-mesh") == PYPROJECT["project"]["version"]


def _distribution(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _closure(names: list[str]) -> set[str]:
    found: set[str] = set()
    todo = [_distribution(n) for n in names]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [_distribution(r) for r in requires if "extra ==" not in r]
    return found


def test_the_commands_the_pods_run_import_with_the_runtime_dependencies_alone() -> None:
    runtime = _closure(PYPROJECT["project"]["dependencies"])
    dev_only = _closure(PYPROJECT["project"]["optional-dependencies"]["dev"]) - runtime
    modules = sorted({module for module, dists in metadata.packages_distributions().items()
                      if {d.lower().replace("_", "-") for d in dists} <= dev_only})
    # A child interpreter that cannot import any module only the dev extras bring.
    script = f"""
import importlib.abc, sys
BLOCKED = set({modules!r})
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("only a dev dependency provides " + name)
sys.meta_path.insert(0, Block())
import mesh.cli, mesh.serve, mesh.host
for target in __import__("mesh.catalogue").catalogue.built_targets():
    __import__("mesh.catalogue").catalogue.load(target)
import importlib.util
if importlib.util.find_spec("mesh.gateway_command"):
    import mesh.gateway_command
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
