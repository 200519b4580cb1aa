"""An index over serialized ``FileDescriptorProto``s, as reflection hands them out. Pure code.

It answers what a reflection server answers (the file defining a symbol, a file by name with its
dependencies, extensions of a type) and what the ingress needs to route (each method's call
type), without building a ``DescriptorPool``: files from many targets can be indexed side by
side even when a pool would refuse to load them together.

Symbols are indexed as protobuf scopes them: messages and their nested types, enums and their
values (siblings of the enum), fields, services and, unlike grpcio-reflection, methods
(``pkg.Service.Method``), so ``grpcurl describe pkg.Service.Method`` works through the ingress.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import descriptor_pb2


@dataclass(frozen=True, slots=True)
class MethodKind:
    """A method's call type: whether requests and responses are streams."""

    client_streaming: bool
    server_streaming: bool

    @property
    def name(self) -> str:
        """unary, client_stream, server_stream or bidi_stream (Prometheus' ``grpc_type``)."""
        if self.client_streaming and self.server_streaming:
            return "bidi_stream"
        if self.client_streaming:
            return "client_stream"
        return "server_stream" if self.server_streaming else "unary"


UNARY = MethodKind(False, False)


class DescriptorIndex:
    """Files by name, the file defining each symbol, extensions by type, and method kinds.

    A file added twice keeps its first copy: targets built from one source tree share files
    such as ``google/protobuf/timestamp.proto``, and the first one seen is as good as any.
    """

    def __init__(self) -> None:
        self._files: dict[str, bytes] = {}
        self._dependencies: dict[str, tuple[str, ...]] = {}
        self._symbols: dict[str, str] = {}
        self._extensions: dict[tuple[str, int], str] = {}
        self._extension_numbers: dict[str, set[int]] = {}
        self._messages: set[str] = set()
        self._services: dict[str, dict[str, MethodKind]] = {}

    def __repr__(self) -> str:
        return f"<DescriptorIndex files={len(self._files)} services={sorted(self._services)}>"

    def __contains__(self, filename: object) -> bool:
        return filename in self._files

    @property
    def filenames(self) -> frozenset[str]:
        """Every file indexed."""
        return frozenset(self._files)

    @property
    def services(self) -> frozenset[str]:
        """Full names of the services the indexed files define."""
        return frozenset(self._services)

    def add(self, serialized: bytes) -> str:
        """Index one serialized ``FileDescriptorProto``; return its file name.

        Raises:
            google.protobuf.message.DecodeError: the bytes are not a FileDescriptorProto.
        """
        proto = descriptor_pb2.FileDescriptorProto.FromString(serialized)
        name = proto.name
        if name in self._files:
            return name
        self._files[name] = serialized
        self._dependencies[name] = tuple(proto.dependency)
        scope = f"{proto.package}." if proto.package else ""
        for message in proto.message_type:
            self._add_message(message, scope, name)
        for enum in proto.enum_type:
            self._add_enum(enum, scope, name)
        for extension in proto.extension:
            self._add_extension(extension, scope, name)
        for service in proto.service:
            full = scope + service.name
            self._symbols.setdefault(full, name)
            methods = self._services.setdefault(full, {})
            for method in service.method:
                self._symbols.setdefault(f"{full}.{method.name}", name)
                methods[method.name] = MethodKind(method.client_streaming, method.server_streaming)
        return name

    def _add_message(self, message: descriptor_pb2.DescriptorProto, scope: str, filename: str) -> None:
        full = scope + message.name
        self._symbols.setdefault(full, filename)
        self._messages.add(full)
        inner = full + "."
        for field in message.field:
            self._symbols.setdefault(inner + field.name, filename)
        for oneof in message.oneof_decl:
            self._symbols.setdefault(inner + oneof.name, filename)
        for nested in message.nested_type:
            self._add_message(nested, inner, filename)
        for enum in message.enum_type:
            self._add_enum(enum, inner, filename)
        for extension in message.extension:
            self._add_extension(extension, inner, filename)

    def _add_enum(self, enum: descriptor_pb2.EnumDescriptorProto, scope: str, filename: str) -> None:
        self._symbols.setdefault(scope + enum.name, filename)
        for value in enum.value:
            # C++ scoping: enum values are siblings of their enum, not its children.
            self._symbols.setdefault(scope + value.name, filename)

    def _add_extension(self, extension: descriptor_pb2.FieldDescriptorProto, scope: str, filename: str) -> None:
        self._symbols.setdefault(scope + extension.name, filename)
        extendee = extension.extendee.lstrip(".")
        self._extensions.setdefault((extendee, extension.number), filename)
        self._extension_numbers.setdefault(extendee, set()).add(extension.number)

    # -- questions reflection asks -----------------------------------------------------------

    def file_containing_symbol(self, symbol: str) -> str | None:
        """The name of the file defining ``symbol`` (leading dot allowed), or None."""
        return self._symbols.get(symbol.lstrip("."))

    def file_containing_extension(self, containing_type: str, number: int) -> str | None:
        """The name of the file defining extension ``number`` of ``containing_type``, or None."""
        return self._extensions.get((containing_type.lstrip("."), number))

    def extension_numbers(self, containing_type: str) -> list[int] | None:
        """Extension numbers of a message type known here (maybe none), or None if unknown."""
        name = containing_type.lstrip(".")
        if name not in self._messages:
            return None
        return sorted(self._extension_numbers.get(name, ()))

    def with_dependencies(self, filename: str) -> list[bytes]:
        """The file, then every file it imports transitively that is indexed, each once."""
        ordered: list[bytes] = []
        seen: set[str] = set()
        pending = [filename]
        while pending:
            name = pending.pop(0)
            if name in seen or name not in self._files:
                continue
            seen.add(name)
            ordered.append(self._files[name])
            pending.extend(self._dependencies[name])
        return ordered

    def missing_dependencies(self) -> set[str]:
        """Files imported by indexed files but not indexed themselves."""
        wanted = {dep for deps in self._dependencies.values() for dep in deps}
        return wanted - self._files.keys()

    # -- what routing needs --------------------------------------------------------------------

    def method_kind(self, service: str, method: str) -> MethodKind | None:
        """The call type of ``service``/``method``, or None if no indexed file defines it."""
        methods = self._services.get(service)
        return None if methods is None else methods.get(method)
