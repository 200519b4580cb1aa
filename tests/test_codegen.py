"""``python -m codegen`` keeps generated code fresh, and ``--check`` catches drift."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROBE_MESSAGE = "\nmessage CodegenDriftProbe {\n  string note = 1;\n}\n"


def _codegen(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # Run from ``cwd`` so ``-m codegen`` imports that tree's codegen, which works on its own protos.
    return subprocess.run(
        [sys.executable, "-m", "codegen", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def _generated_bytes(repo: Path) -> dict[str, bytes]:
    gaming = repo / "protos" / "gaming"
    return {
        str(path.relative_to(repo)): path.read_bytes()
        for path in sorted(gaming.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".proto"
    }


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """Just what codegen needs, copied, so the test may break and regenerate it freely."""
    copy = tmp_path / "repo"
    ignore = shutil.ignore_patterns("__pycache__")
    for folder in ("protos", "codegen"):
        shutil.copytree(ROOT / folder, copy / folder, ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", copy / "pyproject.toml")
    return copy


def _a_service_proto(repo: Path) -> Path:
    protos = sorted(p for p in (repo / "protos" / "gaming").glob("*/v1/*.proto") if p.parts[-3] != "common")
    assert protos, "no service protos to edit"
    return protos[0]


def test_check_passes_on_the_committed_tree() -> None:
    result = _codegen(ROOT, "--check")
    assert result.returncode == 0, result.stderr


def test_check_fails_naming_the_stale_files_after_a_proto_changes(repo_copy: Path) -> None:
    proto = _a_service_proto(repo_copy)
    with proto.open("a") as source:
        source.write(PROBE_MESSAGE)

    stale = _codegen(repo_copy, "--check")

    assert stale.returncode != 0
    assert f"{proto.stem}_pb2.py" in stale.stderr
    assert "descriptor_set.binpb" in stale.stderr


def test_regenerating_makes_check_pass_again(repo_copy: Path) -> None:
    with _a_service_proto(repo_copy).open("a") as source:
        source.write(PROBE_MESSAGE)

    generated = _codegen(repo_copy)
    check = _codegen(repo_copy, "--check")

    assert generated.returncode == 0, generated.stderr
    assert check.returncode == 0, check.stderr


def test_generation_is_deterministic(repo_copy: Path) -> None:
    first = _codegen(repo_copy)
    after_first = _generated_bytes(repo_copy)
    second = _codegen(repo_copy)

    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert "codegen: 0 files changed" in second.stdout
    assert _generated_bytes(repo_copy) == after_first
