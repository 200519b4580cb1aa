"""Request and response types of any method of the mesh, learned from the target's reflection.

A step given as JSON must become the method's protobuf request, and its answer JSON again, for
a method this service was never compiled against. Each target serves
``grpc.reflection.v1alpha.ServerReflection`` on the same channel as its methods, so ``Schemas``
asks it for the file that declares the service (with its imports), builds a private descriptor
pool, and makes message classes from it. What a target described is cached for ``ttl`` seconds:
a redeployed target with a changed API is picked up after that (or at once, for a service the
cache does not know yet).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

DEFAULT_TTL = 300.0


class SchemaError(Exception):
    """The method's types could not be learned; ``code`` is the status the step fails with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class MethodTypes:
    """A unary method's message classes, and the pool they come from (for JSON of Any fields)."""

    request: type[Message]
    response: type[Message]
    pool: descriptor_pool.DescriptorPool


@dataclass(slots=True)
class _Described:
    """What one target has described so far."""

    files: dict[str, descriptor_pb2.FileDescriptorProto]
    pool: descriptor_pool.DescriptorPool
    fetched_at: float


class Schemas:
    """Per-target cache of reflected descriptors."""

    def __init__(
        self, channel: Callable[[str], Any], *, ttl: float = DEFAULT_TTL, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._channel = channel
        self._ttl = ttl
        self._clock = clock
        self._targets: dict[str, _Described] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.fetches = 0  # reflection round trips made, for tests and the repr

    def __repr__(self) -> str:
        return f"<Schemas targets={sorted(self._targets)} fetches={self.fetches}>"

    async def method(self, target: str, service: str, name: str, budget: float) -> MethodTypes:
        """The types of ``/service/name`` on ``target``, asking its reflection (within ``budget``
        seconds, the gRPC deadline of that call) if needed.

        Raises:
            SchemaError: reflection failed (its status code, e.g. UNAVAILABLE), the target
                does not serve the method (UNIMPLEMENTED), or the method streams
                (INVALID_ARGUMENT: steps call unary methods).
        """
        known = self._fresh(target)
        if known is not None and _has_service(known.pool, service):
            return _types(known.pool, target, service, name)
        lock = self._locks.setdefault(target, asyncio.Lock())
        async with lock:
            # Another step may have fetched it while this one waited for the lock.
            known = self._fresh(target)
            if known is None or not _has_service(known.pool, service):
                files = dict(known.files) if known is not None else {}
                files.update(await self._fetch(target, service, budget))
                known = _Described(files, _build_pool(files), self._clock())
                self._targets[target] = known
        return _types(known.pool, target, service, name)

    def _fresh(self, target: str) -> _Described | None:
        known = self._targets.get(target)
        if known is not None and self._clock() - known.fetched_at > self._ttl:
            del self._targets[target]
            return None
        return known

    async def _fetch(self, target: str, service: str, budget: float) -> dict[str, descriptor_pb2.FileDescriptorProto]:
        self.fetches += 1
        stub = reflection_pb2_grpc.ServerReflectionStub(self._channel(target))
        call = stub.ServerReflectionInfo(timeout=budget)
        try:
            reply = await _ask(call, reflection_pb2.ServerReflectionRequest(file_containing_symbol=service))
            if reply.HasField("error_response"):
                raise SchemaError(grpc.StatusCode.UNIMPLEMENTED, f"target {target!r} does not serve {service}")
            files = _files(reply)
            # The answer should carry every import; ask by name for any that is missing.
            missing = [dep for proto in files.values() for dep in proto.dependency if dep not in files]
            while missing:
                name = missing.pop()
                if name in files:
                    continue
                reply = await _ask(call, reflection_pb2.ServerReflectionRequest(file_by_filename=name))
                if reply.HasField("error_response"):
                    raise SchemaError(grpc.StatusCode.INTERNAL, f"target {target!r} cannot describe {name}")
                for proto in _files(reply).values():
                    files.setdefault(proto.name, proto)
                    missing.extend(dep for dep in proto.dependency if dep not in files)
            await call.done_writing()
            return files
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.UNIMPLEMENTED:
                raise SchemaError(
                    grpc.StatusCode.UNIMPLEMENTED,
                    f"target {target!r} serves no reflection, which JSON requests need (send binary_request)",
                ) from err
            raise SchemaError(err.code(), f"reflection on {target!r} failed: {err.details()}") from err
        finally:
            call.cancel()


async def _ask(call: Any, request: reflection_pb2.ServerReflectionRequest) -> reflection_pb2.ServerReflectionResponse:
    await call.write(request)
    reply = await call.read()
    if reply is grpc.aio.EOF:
        # The stream ended without an answer: its status says why.
        code = await call.code()
        if code == grpc.StatusCode.OK:
            code = grpc.StatusCode.INTERNAL
        raise SchemaError(code, f"reflection ended without an answer: {await call.details()}")
    answer: reflection_pb2.ServerReflectionResponse = reply
    return answer


def _files(reply: reflection_pb2.ServerReflectionResponse) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    found = {}
    for raw in reply.file_descriptor_response.file_descriptor_proto:
        proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
        found[proto.name] = proto
    return found


def _build_pool(files: dict[str, descriptor_pb2.FileDescriptorProto]) -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(name: str) -> None:
        # Imports first: a pool refuses a file whose dependencies it does not hold yet.
        if name in added:
            return
        proto = files.get(name)
        if proto is None:
            raise SchemaError(grpc.StatusCode.INTERNAL, f"reflection did not describe {name}")
        for dependency in proto.dependency:
            add(dependency)
        try:
            pool.Add(proto)
        except (TypeError, ValueError) as err:  # what a pool raises for a file it cannot build
            raise SchemaError(grpc.StatusCode.INTERNAL, f"reflected {name} does not build: {err}") from err
        added.add(name)

    for name in sorted(files):
        add(name)
    return pool


def _has_service(pool: descriptor_pool.DescriptorPool, service: str) -> bool:
    try:
        pool.FindServiceByName(service)
    except KeyError:
        return False
    return True


def _types(pool: descriptor_pool.DescriptorPool, target: str, service: str, name: str) -> MethodTypes:
    method = pool.FindServiceByName(service).methods_by_name.get(name)
    if method is None:
        raise SchemaError(grpc.StatusCode.UNIMPLEMENTED, f"target {target!r} has no method {service}/{name}")
    if method.client_streaming or method.server_streaming:
        raise SchemaError(grpc.StatusCode.INVALID_ARGUMENT, f"{service}/{name} streams; steps call unary methods")
    return MethodTypes(
        message_factory.GetMessageClass(method.input_type),
        message_factory.GetMessageClass(method.output_type),
        pool,
    )
