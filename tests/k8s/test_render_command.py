"""``mesh k8s render``: the committed tree is what it renders, and ``--check`` notices when not;
``mesh k8s service-keys`` writes what the auth target reads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mesh.cli import main
from mesh.k8s import render
from mesh.security import read_identity

REPO = Path(__file__).resolve().parents[2]


def _mesh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mesh", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=60)


def test_the_committed_tree_is_what_render_writes() -> None:
    result = _mesh("k8s", "render", "--check")
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout


def test_check_fails_with_one_line_naming_a_changed_a_missing_and_a_stale_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "k8s"
    assert main(["k8s", "render", "--out", str(out)]) == 0
    assert main(["k8s", "render", "--out", str(out), "--check"]) == 0
    (out / "base" / "targets" / "auth.yaml").write_text((out / "base" / "targets" / "auth.yaml").read_text() + "#\n")
    (out / "overlays" / "prod" / "nats.conf").unlink()
    (out / "base" / "targets" / "retired.yaml").write_text((out / "base" / "namespace.yaml").read_text())
    (out / "overlays" / "mine").mkdir()
    (out / "overlays" / "mine" / "kustomization.yaml").write_text("resources: [../prod]\n")
    capsys.readouterr()
    assert main(["k8s", "render", "--out", str(out), "--check"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert "1 changed, 1 missing, 1 stale" in lines[0]
    for path in ("base/targets/auth.yaml", "overlays/prod/nats.conf", "base/targets/retired.yaml"):
        assert path in lines[0]
    # A user's own file is neither reported nor touched by rendering again.
    assert "overlays/mine" not in lines[0]
    assert main(["k8s", "render", "--out", str(out)]) == 0
    assert main(["k8s", "render", "--out", str(out), "--check"]) == 0
    assert not (out / "base" / "targets" / "retired.yaml").exists()
    assert (out / "overlays" / "mine" / "kustomization.yaml").is_file()


def test_rendering_is_deterministic() -> None:
    assert [(f.path, f.text) for f in render()] == [(f.path, f.text) for f in render()]


def test_service_keys_holds_the_public_nkey_of_every_target(tree: Path) -> None:
    secrets = tree / "overlays" / "prod" / "security" / "secrets"
    keys = json.loads((secrets / "service-keys.json").read_text())
    assert keys
    for target, nkey in keys.items():
        assert read_identity(secrets / target).nkey == nkey
    assert not {"ingress", "edge", "operator"} & set(keys)


def test_service_keys_without_identities_exits_2_saying_what_to_run(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["k8s", "service-keys", "--data-dir", str(tmp_path)]) == 2
    assert "mesh security init" in capsys.readouterr().err
