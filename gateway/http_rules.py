"""The proto descriptors Envoy's JSON transcoder is given, and what they say about our services.

``protos/gaming/descriptor_set.binpb`` (written by codegen) holds every gaming file and its
imports. Envoy renders a failed call's ``google.rpc.Status`` as JSON, and so needs the types its
``details`` may hold (``google.rpc.BadRequest``, ...): no gaming proto imports those files, so
:func:`transcoder_descriptor_set` appends them from the installed googleapis protos.
No I/O beyond reading the descriptor file.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from google.api import annotations_pb2
from google.protobuf import any_pb2, descriptor_pb2, duration_pb2
from google.protobuf.descriptor import FileDescriptor
from google.rpc import error_details_pb2, status_pb2

__all__ = ["DESCRIPTOR_SET_PATH", "HttpService", "http_services", "load_descriptor_set", "transcoder_descriptor_set"]


def _descriptor_set_path() -> Path:
    # Found through the installed ``gaming`` package (codegen writes the set inside it) without
    # importing any generated code; the source tree's copy otherwise.
    spec = importlib.util.find_spec("gaming")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))) / "descriptor_set.binpb"
    return Path(__file__).resolve().parent.parent / "protos" / "gaming" / "descriptor_set.binpb"


DESCRIPTOR_SET_PATH = _descriptor_set_path()

# Dependencies first: Envoy builds the files in order, and each needs its imports built already.
_STATUS_FILES: tuple[FileDescriptor, ...] = (
    any_pb2.DESCRIPTOR,
    duration_pb2.DESCRIPTOR,
    status_pb2.DESCRIPTOR,
    error_details_pb2.DESCRIPTOR,
)


@dataclass(frozen=True, slots=True)
class HttpService:
    """A gRPC service with at least one ``google.api.http`` rule.

    Attributes:
        name: full service name, ``gaming.settings.v1.SettingsService``.
        server_streaming: bare names of its server-streaming methods with HTTP rules (SSE).
    """

    name: str
    server_streaming: tuple[str, ...]


def load_descriptor_set(path: Path = DESCRIPTOR_SET_PATH) -> descriptor_pb2.FileDescriptorSet:
    """Parse a serialized ``FileDescriptorSet`` (``buf build -o`` / ``protoc -o`` output)."""
    return descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())


def transcoder_descriptor_set(base: descriptor_pb2.FileDescriptorSet) -> bytes:
    """``base`` plus the google.rpc status and error-detail files it lacks, serialized for
    Envoy's ``proto_descriptor_bin``."""
    merged = descriptor_pb2.FileDescriptorSet()
    merged.CopyFrom(base)
    present = {file.name for file in merged.file}
    for file in _STATUS_FILES:
        if file.name not in present:
            # Appended after base: no base file imports them (else base would hold them), and
            # their own imports come earlier in _STATUS_FILES or in base.
            file.CopyToProto(merged.file.add())
            present.add(file.name)
    return merged.SerializeToString()


def http_services(
    descriptors: descriptor_pb2.FileDescriptorSet, package_prefix: str = "gaming."
) -> tuple[HttpService, ...]:
    """Services under ``package_prefix`` with at least one ``google.api.http`` rule, by name."""
    found: list[HttpService] = []
    for file in descriptors.file:
        if not file.package.startswith(package_prefix):
            continue
        for service in file.service:
            annotated = [method for method in service.method if method.options.HasExtension(annotations_pb2.http)]
            if annotated:
                streaming = tuple(m.name for m in annotated if m.server_streaming and not m.client_streaming)
                found.append(HttpService(f"{file.package}.{service.name}", streaming))
    return tuple(sorted(found, key=lambda service: service.name))
