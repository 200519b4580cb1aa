"""The catalogue's targets are the protos' ``option (gaming.common.v1.target)``, and only those.

The protos are compiled here from the ``.proto`` sources (not read from generated code), so a
service without the option, two services with one target, a catalogue entry the protos do not
back, or a servicer module that calls itself something else all fail, whether or not codegen ran.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import grpc_tools
import pytest
from gaming.common.v1 import common_pb2
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2, descriptor_pool

from mesh import catalogue
from tests._non_catalogue import NON_CATALOGUE

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
# Lowercase words joined by dashes (docs/architecture.md); also a valid NATS subject token.
TARGET_NAME = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")


def _compile_sources(out: Path) -> descriptor_pb2.FileDescriptorSet:
    sources = sorted(p.relative_to(PROTOS).as_posix() for p in (PROTOS / "gaming").rglob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    command = [sys.executable, "-m", "grpc_tools.protoc", "-Iprotos", "-Iprotos/third_party", f"-I{well_known}",
               f"--descriptor_set_out={out}", *sources]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    # common_pb2 is imported above, so the target option parses as a known extension.
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[descriptor_pb2.FileDescriptorProto,
                                                                          descriptor_pb2.ServiceDescriptorProto]]:
    """Every service of the gaming protos by full name, with the file that defines it."""
    compiled = _compile_sources(tmp_path_factory.mktemp("protos") / "sources.binpb")
    found = {f"{file.package}.{service.name}": (file, service) for file in compiled.file for service in file.service}
    assert found, "no services compiled"
    return found


def _target(service: descriptor_pb2.ServiceDescriptorProto) -> str | None:
    options = service.options
    return options.Extensions[common_pb2.target] if options.HasExtension(common_pb2.target) else None


def test_every_service_declares_a_well_formed_target(services) -> None:
    lacking = sorted(name for name, (_, service) in services.items() if _target(service) is None)
    assert not lacking, f"services without option (gaming.common.v1.target): {lacking}"
    malformed = {name: _target(s) for name, (_, s) in services.items() if not TARGET_NAME.fullmatch(_target(s) or "")}
    assert not malformed, malformed


def test_no_two_services_share_a_target(services) -> None:
    targets = [_target(service) for _, service in services.values()]
    assert len(set(targets)) == len(targets), sorted(targets)


def test_the_catalogue_is_exactly_the_protos_targets(services) -> None:
    declared = {name: _target(service) for name, (_, service) in services.items()}
    assert set(NON_CATALOGUE) <= set(declared), "services left out of the catalogue that the protos lack"
    in_catalogue = set(declared) - set(NON_CATALOGUE)
    assert set(catalogue.MODULES) == in_catalogue, "services in the protos but not the catalogue, or the reverse"
    assert {declared[name]: module for name, module in catalogue.MODULES.items()} == catalogue.CATALOGUE
    assert list(catalogue.CALLS) == list(catalogue.STORAGE) == list(catalogue.CATALOGUE)


def test_each_service_lives_where_the_catalogue_looks_for_it(services) -> None:
    # catalogue.proto_target imports gaming.<name>.v1.<name>_pb2 to find gaming.<name>.v1.<Service>.
    for name, (file, _) in services.items():
        short = file.package.removeprefix("gaming.").removesuffix(".v1")
        assert file.package == f"gaming.{short}.v1", name
        assert file.name == f"gaming/{short}/v1/{short}.proto", name


@pytest.mark.parametrize("target", list(catalogue.CATALOGUE))
def test_each_servicer_module_serves_its_service_under_the_protos_target(target: str) -> None:
    # The servicer modules still spell TARGET and SERVICE_NAMES out; they must say what the protos say.
    module = catalogue.load(target)
    if module is None:
        pytest.skip(f"{target} is not built")
    service = {module: name for name, module in catalogue.MODULES.items()}[catalogue.CATALOGUE[target]]
    assert target == module.TARGET
    assert service in module.SERVICE_NAMES


def test_http_paths_begin_with_the_services_target(services) -> None:
    # HTTP/JSON paths name the target (/v1/weather-manager/...): a renamed target moves them too.
    wrong = []
    for name, (_, service) in services.items():
        prefix = f"/v1/{_target(service)}/"
        for method in service.method:
            if not method.options.HasExtension(annotations_pb2.http):
                continue
            rule = method.options.Extensions[annotations_pb2.http]
            for binding in (rule, *rule.additional_bindings):
                path = _path(binding)
                if not path.startswith(prefix):
                    wrong.append(f"{name}/{method.name}: {path}")
    assert not wrong, wrong


def _path(rule: http_pb2.HttpRule) -> str:
    pattern = rule.WhichOneof("pattern")
    return rule.custom.path if pattern == "custom" else str(getattr(rule, pattern or "get"))


def test_a_service_without_the_option_is_refused_by_name() -> None:
    pool = descriptor_pool.DescriptorPool()
    file = descriptor_pb2.FileDescriptorProto(name="probe.proto", package="probe.v1", syntax="proto3")
    file.service.add(name="BareService")
    named = file.service.add(name="NamedService")
    named.options.Extensions[common_pb2.target] = "probe-target"
    pool.Add(file)

    assert catalogue.service_target(pool.FindServiceByName("probe.v1.NamedService")) == "probe-target"
    with pytest.raises(catalogue.MissingTarget, match=r"probe\.v1\.BareService"):
        catalogue.service_target(pool.FindServiceByName("probe.v1.BareService"))
