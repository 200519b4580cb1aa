"""Server reflection for the whole mesh, so ``grpcurl list/describe/call`` work at the ingress.

``list_services`` names every service discovery has a live target for, plus the ingress's own
health and reflection. File questions (by symbol, by file name, by extension) are answered from
the descriptors each target's own reflection gave (``gateway.schemas``), the owning target
first; whatever those cannot answer is forwarded to the targets' reflection over NATS.

Served as ``grpc.reflection.v1alpha`` (what grpcio-reflection and grpcurl 1.8.6 speak) and as
``grpc.reflection.v1`` (what newer grpcurl tries first). The two protos differ only in their
package, so their messages are the same bytes on the wire and one servicer answers both.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gateway.descriptor_index import DescriptorIndex
from gateway.discovery import Discovery
from gateway.schemas import Schemas

V1ALPHA_SERVICE = "grpc.reflection.v1alpha.ServerReflection"
V1_SERVICE = "grpc.reflection.v1.ServerReflection"
_V1ALPHA_PREFIX = ".grpc.reflection.v1alpha."
_V1_PREFIX = ".grpc.reflection.v1."


def v1_file() -> descriptor_pb2.FileDescriptorProto:
    """``grpc/reflection/v1/reflection.proto``, derived from the v1alpha file grpcio ships."""
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = "grpc/reflection/v1/reflection.proto"
    proto.package = "grpc.reflection.v1"
    proto.ClearField("options")  # v1alpha's language options name v1alpha packages

    def rename(type_name: str) -> str:
        return _V1_PREFIX + type_name[len(_V1ALPHA_PREFIX):] if type_name.startswith(_V1ALPHA_PREFIX) else type_name

    for message in proto.message_type:
        for field in message.field:
            field.type_name = rename(field.type_name)
    for service in proto.service:
        for method in service.method:
            method.input_type = rename(method.input_type)
            method.output_type = rename(method.output_type)
    return proto


def own_index() -> DescriptorIndex:
    """The descriptors of what the ingress serves itself: health and both reflections."""
    index = DescriptorIndex()
    for descriptor in (health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR):
        proto = descriptor_pb2.FileDescriptorProto()
        descriptor.CopyToProto(proto)
        index.add(proto.SerializeToString())
    index.add(v1_file().SerializeToString())
    return index


def _not_found(request: Any, what: str) -> Any:
    return reflection_pb2.ServerReflectionResponse(
        original_request=request,
        error_response=reflection_pb2.ErrorResponse(
            error_code=grpc.StatusCode.NOT_FOUND.value[0], error_message=f"{what} not found"
        ),
    )


def _files(request: Any, files: list[bytes]) -> Any:
    return reflection_pb2.ServerReflectionResponse(
        original_request=request,
        file_descriptor_response=reflection_pb2.FileDescriptorResponse(file_descriptor_proto=files),
    )


class MeshReflection(reflection_pb2_grpc.ServerReflectionServicer):  # type: ignore[misc]
    """The ServerReflectionInfo stream, for every service in the mesh.

    Args:
        discovery: which services exist and who serves them.
        schemas: each target's descriptors.
        own_services: services the ingress serves itself (listed alongside the mesh's).
    """

    def __init__(self, discovery: Discovery, schemas: Schemas, own_services: Iterable[str]) -> None:
        self._discovery = discovery
        self._schemas = schemas
        self._own_services = tuple(own_services)
        self._own = own_index()

    def __repr__(self) -> str:
        return f"<gateway.MeshReflection own={list(self._own_services)}>"

    async def ServerReflectionInfo(self, request_iterator: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        """Answer each question on the stream in turn."""
        async for request in request_iterator:
            yield await self.answer(request)

    async def answer(self, request: Any) -> Any:
        """The response to one ServerReflectionRequest."""
        kind = request.WhichOneof("message_request")
        if kind == "list_services":
            names = sorted({*self._discovery.services(), *self._own_services})
            return reflection_pb2.ServerReflectionResponse(
                original_request=request,
                list_services_response=reflection_pb2.ListServiceResponse(
                    service=[reflection_pb2.ServiceResponse(name=name) for name in names]
                ),
            )
        if kind == "file_by_filename":
            name = request.file_by_filename
            return await self._file(request, lambda index: name if name in index else None, (), name)
        if kind == "file_containing_symbol":
            symbol = request.file_containing_symbol
            return await self._file(request, lambda index: index.file_containing_symbol(symbol),
                                    self._owners(symbol), f"symbol {symbol}")
        if kind == "file_containing_extension":
            ext = request.file_containing_extension
            return await self._file(
                request, lambda index: index.file_containing_extension(ext.containing_type, ext.extension_number),
                self._owners(ext.containing_type), f"extension {ext.extension_number} of {ext.containing_type}",
            )
        if kind == "all_extension_numbers_of_type":
            return await self._extension_numbers(request, request.all_extension_numbers_of_type)
        return reflection_pb2.ServerReflectionResponse(
            original_request=request,
            error_response=reflection_pb2.ErrorResponse(
                error_code=grpc.StatusCode.INVALID_ARGUMENT.value[0], error_message="empty reflection request"
            ),
        )

    def _owners(self, symbol: str) -> tuple[str, ...]:
        """Targets of services that ``symbol`` is, or is inside of (``pkg.Svc.Method``)."""
        symbol = symbol.lstrip(".")
        owners = []
        for service in self._discovery.services():
            if symbol == service or symbol.startswith(service + "."):
                target = self._discovery.target_of(service)
                if target is not None:
                    owners.append(target)
        return tuple(owners)

    def _candidates(self, owners: tuple[str, ...]) -> list[str]:
        rest = sorted(t for t in self._discovery.targets() if t not in owners)
        return [*owners, *rest]

    async def _file(self, request: Any, find: Any, owners: tuple[str, ...], what: str) -> Any:
        found = find(self._own)
        if found is not None:
            return _files(request, self._own.with_dependencies(found))
        candidates = self._candidates(owners)
        for target in candidates:
            index = await self._schemas.loaded(target)
            if index is not None and (found := find(index)) is not None:
                return _files(request, index.with_dependencies(found))
        # Not in any service's files (a type no method uses, say): the targets may still know it.
        answers = await asyncio.gather(*(self._schemas.ask(target, request) for target in candidates))
        for answer in answers:
            if answer is not None and answer.WhichOneof("message_response") == "file_descriptor_response":
                return _files(request, list(answer.file_descriptor_response.file_descriptor_proto))
        return _not_found(request, what)

    async def _extension_numbers(self, request: Any, containing_type: str) -> Any:
        numbers = self._own.extension_numbers(containing_type)
        for target in self._candidates(self._owners(containing_type)):
            index = await self._schemas.loaded(target)
            found = None if index is None else index.extension_numbers(containing_type)
            if found is not None:
                numbers = sorted({*(numbers or ()), *found})
        if numbers is None:
            return _not_found(request, f"type {containing_type}")
        return reflection_pb2.ServerReflectionResponse(
            original_request=request,
            all_extension_numbers_response=reflection_pb2.ExtensionNumberResponse(
                base_type_name=containing_type.lstrip("."), extension_number=numbers
            ),
        )


def add_to_server(servicer: MeshReflection, server: Any) -> None:
    """Serve ``servicer`` as v1alpha and as v1 on a grpc.aio server."""
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(V1_SERVICE, {"ServerReflectionInfo": v1}),))
