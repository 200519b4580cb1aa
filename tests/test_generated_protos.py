"""The generated gRPC modules of every service package import and expose what grpcio users expect."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf import descriptor_pb2

from tests._non_catalogue import NON_CATALOGUE_PACKAGES

ROOT = Path(__file__).resolve().parent.parent
GAMING = ROOT / "protos" / "gaming"
SERVICE_PACKAGE_COUNT = 22  # the catalogue's; tests/_non_catalogue.py lists the others

# Discovered from the tree rather than listed, so a package added without its code shows up here.
GRPC_MODULES = sorted(
    path for path in GAMING.glob("*/v1/*_pb2_grpc.py") if path.parts[-3] != "common"
)


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(GAMING.parent).with_suffix("").parts)


def _import(path: Path) -> tuple[ModuleType, ModuleType]:
    grpc_module = importlib.import_module(_module_name(path))
    pb2_module = importlib.import_module(_module_name(path).removesuffix("_grpc"))
    return grpc_module, pb2_module


def test_there_is_one_generated_grpc_module_per_service_package() -> None:
    packages = [path.parts[-3] for path in GRPC_MODULES]
    in_catalogue = [package for package in packages if package not in NON_CATALOGUE_PACKAGES]
    assert len(in_catalogue) == SERVICE_PACKAGE_COUNT, f"found {len(in_catalogue)}: {in_catalogue}"
    assert sorted(set(packages) - set(in_catalogue)) == sorted(NON_CATALOGUE_PACKAGES)


@pytest.mark.parametrize("path", GRPC_MODULES, ids=lambda path: path.parts[-3])
def test_each_service_has_its_servicer_stub_and_registration_function(path: Path) -> None:
    grpc_module, pb2_module = _import(path)
    services = list(pb2_module.DESCRIPTOR.services_by_name)
    assert services, f"{pb2_module.__name__} defines no service"
    for service in services:
        for name in (f"{service}Servicer", f"{service}Stub", f"add_{service}Servicer_to_server"):
            assert hasattr(grpc_module, name), f"{grpc_module.__name__} lacks {name}"


@pytest.mark.parametrize("path", GRPC_MODULES, ids=lambda path: path.parts[-3])
def test_each_service_is_named_service_in_package_gaming_name_v1(path: Path) -> None:
    _, pb2_module = _import(path)
    assert pb2_module.DESCRIPTOR.package == f"gaming.{path.parts[-3]}.v1"
    for service in pb2_module.DESCRIPTOR.services_by_name:
        assert service.endswith("Service"), service


def test_descriptor_set_holds_every_gaming_file_and_the_http_annotations() -> None:
    descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(
        (GAMING / "descriptor_set.binpb").read_bytes()
    )
    names = {file.name for file in descriptor_set.file}
    sources = {path.relative_to(GAMING.parent).as_posix() for path in GAMING.rglob("*.proto")}
    assert sources, "no .proto sources found"
    assert sources <= names, f"missing from the descriptor set: {sorted(sources - names)}"
    assert "google/api/annotations.proto" in names
