"""Generate Python modules, typed stubs and a descriptor set from the protos, or check they are fresh.

Everything is produced into a scratch directory first and then compared with, or copied over,
the tree beside the sources. That one path serves both modes, so ``--check`` sees exactly what a
regeneration would write, and a half-finished run never leaves the tree half-updated.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import grpc_tools

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
# An include path only: nothing under it is compiled. Python takes google.api, google.rpc and
# grpc.health from their wheels (googleapis-common-protos, grpcio-health-checking); modules
# generated from these copies would define the same symbols again and clash in the pool.
THIRD_PARTY = PROTO_ROOT / "third_party"
PACKAGE = "gaming"
DESCRIPTOR_SET = Path(PACKAGE) / "descriptor_set.binpb"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi", "_pb2_grpc.pyi")
# Files codegen owns besides the per-proto modules; anything else in the tree is left alone.
GENERATED_NAMES = ("__init__.py", "py.typed", DESCRIPTOR_SET.name)


def proto_sources() -> list[Path]:
    """Our .proto files, relative to ``protos/``, in a stable order."""
    return sorted(p.relative_to(PROTO_ROOT) for p in (PROTO_ROOT / PACKAGE).rglob("*.proto"))


def _plugin(name: str) -> str:
    # Prefer the plugin installed beside this interpreter (the project's venv), then PATH.
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise SystemExit(f"codegen: {name} not found; install the [dev] extra (mypy-protobuf)")
    return found


def generate_into(out: Path) -> None:
    """Run protoc over every source, writing modules, stubs and the descriptor set under ``out``."""
    sources = [str(p) for p in proto_sources()]
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    command = [
        sys.executable, "-m", "grpc_tools.protoc",
        f"-I{PROTO_ROOT.relative_to(ROOT)}",
        f"-I{THIRD_PARTY.relative_to(ROOT)}",
        f"-I{well_known}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        f"--descriptor_set_out={out / DESCRIPTOR_SET}",
        "--include_imports",
        *sources,
    ]
    (out / DESCRIPTOR_SET).parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"codegen: protoc failed:\n{result.stderr}")
    package_root = out / PACKAGE
    for directory in [package_root, *(d for d in package_root.rglob("*") if d.is_dir())]:
        (directory / "__init__.py").write_text("")
    (package_root / "py.typed").write_text("")


def _is_generated(relative: Path) -> bool:
    return relative.name.endswith(GENERATED_SUFFIXES) or relative.name in GENERATED_NAMES


def _generated_files(root: Path) -> set[Path]:
    base = root / PACKAGE
    if not base.exists():
        return set()
    return {
        p.relative_to(root)
        for p in base.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and _is_generated(p.relative_to(root))
    }


def stale_files(fresh: Path) -> list[str]:
    """Paths (relative to ``protos/``) that differ between ``fresh`` and the committed tree."""
    wanted = _generated_files(fresh)
    present = _generated_files(PROTO_ROOT)
    stale = {p for p in wanted if not (PROTO_ROOT / p).exists()}
    stale |= present - wanted
    stale |= {
        p for p in wanted & present
        if not filecmp.cmp(fresh / p, PROTO_ROOT / p, shallow=False)
    }
    return sorted(str(p) for p in stale)


def write_tree(fresh: Path) -> list[str]:
    """Bring the committed tree in line with ``fresh``; return what changed."""
    changed = stale_files(fresh)
    wanted = _generated_files(fresh)
    for name in changed:
        path = Path(name)
        target = PROTO_ROOT / path
        if path in wanted:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(fresh / path, target)
        else:
            target.unlink()
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m codegen``."""
    parser = argparse.ArgumentParser(prog="python -m codegen", description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail, naming them, if generated files are stale")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="codegen-") as scratch:
        fresh = Path(scratch)
        generate_into(fresh)
        if args.check:
            stale = stale_files(fresh)
            for name in stale:
                print(f"stale: protos/{name}", file=sys.stderr)
            if stale:
                print("codegen: generated code is stale; run `python -m codegen`", file=sys.stderr)
                return 1
            print(f"codegen: {len(_generated_files(fresh))} generated files are fresh")
            return 0
        changed = write_tree(fresh)
        for name in changed:
            print(f"wrote: protos/{name}")
        print(f"codegen: {len(changed)} files changed")
        return 0
