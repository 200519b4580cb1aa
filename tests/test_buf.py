"""The protos pass ``buf lint`` (STANDARD, vendored third_party ignored), as configured in buf.yaml,
and ``buf build`` writes the one descriptor set that clients in other languages build from
(docs/clients.md): every file with its imports, needing no include path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from gaming.common.v1 import common_pb2
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2

from codegen.generate import proto_sources
from mesh import catalogue
from tests._non_catalogue import NON_CATALOGUE

ROOT = Path(__file__).resolve().parent.parent
# The buf-bin wheel installs buf beside the interpreter; using that one avoids any other on PATH.
BUF = Path(sys.executable).parent / "buf"
# What a client needs besides the gaming files: error details, and the health service it may call.
VENDORED = {
    "google/rpc/status.proto": status_pb2.DESCRIPTOR,
    "google/rpc/error_details.proto": error_details_pb2.DESCRIPTOR,
    "google/rpc/code.proto": code_pb2.DESCRIPTOR,
    "grpc/health/v1/health.proto": health_pb2.DESCRIPTOR,
}


def test_buf_lint_passes() -> None:
    result = subprocess.run([str(BUF), "lint"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def mesh_binpb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The descriptor set of docs/clients.md, built as it says (from the repository's root)."""
    out = tmp_path_factory.mktemp("buf") / "mesh.binpb"
    result = subprocess.run([str(BUF), "build", "--as-file-descriptor-set", "-o", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def _files(path: Path) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    # common_pb2 is imported above, so the target option parses as a known extension.
    return {file.name: file for file in descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes()).file}


def test_the_set_holds_every_service_with_its_target(mesh_binpb: Path) -> None:
    files = _files(mesh_binpb)
    services = {f"{file.package}.{service.name}": service
                for file in files.values() if file.package.startswith("gaming.") for service in file.service}
    # The 22 services of the mesh, and those the catalogue leaves out on purpose.
    assert set(services) == set(catalogue.MODULES) | set(NON_CATALOGUE)
    lacking = sorted(name for name, service in services.items() if not service.options.Extensions[common_pb2.target])
    assert not lacking, f"no target option: {lacking}"
    (target,) = [e for e in files["gaming/common/v1/common.proto"].extension if e.name == "target"]
    assert (target.number, target.extendee) == (common_pb2.TARGET_FIELD_NUMBER, ".google.protobuf.ServiceOptions")


def test_the_set_holds_every_import_and_the_vendored_protos(mesh_binpb: Path) -> None:
    files = _files(mesh_binpb)
    assert set(VENDORED) <= set(files)
    missing = sorted({dependency for file in files.values() for dependency in file.dependency} - set(files))
    assert not missing, f"imported but not in the set: {missing}"


def test_protoc_generates_from_the_set_without_include_paths(mesh_binpb: Path, tmp_path: Path) -> None:
    # Stands for any language's protoc plugin: files are found in the set, none on disk (no -I,
    # and run away from the repository).
    out = tmp_path / "out"
    out.mkdir()
    wanted = ["gaming/weather/v1/weather.proto", "grpc/health/v1/health.proto", "google/rpc/status.proto"]
    result = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"--descriptor_set_in={mesh_binpb}",
                             f"--python_out={out}", *wanted], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (out / "gaming" / "weather" / "v1" / "weather_pb2.py").exists()


def _comparable(file: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    """``file``'s schema: without file options (the wheel's googleapis modules carry a
    cc_enable_arenas their .proto no longer has), source info, and json_name (set by some
    compilers, dropped by others)."""
    copy = descriptor_pb2.FileDescriptorProto()
    copy.CopyFrom(file)
    copy.ClearField("options")
    copy.ClearField("source_code_info")
    messages = list(copy.message_type)
    while messages:
        message = messages.pop()
        messages.extend(message.nested_type)
        for field in message.field:
            field.ClearField("json_name")
    return copy


@pytest.mark.parametrize("name", sorted(VENDORED))
def test_the_vendored_protos_match_the_modules_python_uses(mesh_binpb: Path, name: str) -> None:
    # Python servers answer with the wheels' generated modules, never with code generated from
    # protos/third_party; clients built from the copies must agree with them on the wire.
    module: FileDescriptor = VENDORED[name]
    wheel = descriptor_pb2.FileDescriptorProto()
    module.CopyToProto(wheel)
    wheel.name = name  # grpcio-health-checking registers grpc_health/v1/health.proto
    assert _comparable(_files(mesh_binpb)[name]) == _comparable(wheel)


def test_codegen_compiles_no_vendored_proto() -> None:
    # Generated Python for google.rpc or grpc.health would clash with the wheels' modules.
    third_party = ROOT / "protos" / "third_party"
    generated = sorted(p.relative_to(third_party).as_posix() for p in third_party.rglob("*.py*"))
    assert not generated, generated
    compiled = [source.as_posix() for source in proto_sources()]
    assert compiled, "codegen lists no sources"
    assert all(source.startswith("gaming/") for source in compiled), compiled
