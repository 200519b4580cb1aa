"""Debugging commands: ``mesh services`` (what runs, from ``$SRV``) and ``mesh call`` (any method
over NATS, JSON in and out, using the target's own server reflection)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

import grpc
import nats
import nats.errors
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from nats.aio.client import Client

import nats_transport.aio
from mesh.config import ConfigError
from mesh.connection import AccessDenied, NatsUnreachable, connect
from mesh.serve import add_connection_arguments, resolve_access

DEFAULT_URL = "nats://127.0.0.1:4222"


def add_common(parser: argparse.ArgumentParser) -> None:
    """The connection flags every tool takes (NATS URL, TLS, credentials, --identity)."""
    add_connection_arguments(parser)
    parser.add_argument("--connect-timeout", type=float, default=5.0, metavar="SECONDS",
                        help="give up reaching NATS after this long (default: %(default)s)")


async def _connect(args: argparse.Namespace) -> Client:
    access = resolve_access(args)
    return await connect(access, name="mesh:tool", connect_timeout=3, max_reconnect_attempts=0,
                         allow_reconnect=False, error_cb=_quiet, give_up_after=args.connect_timeout)


async def _quiet(_exc: Exception) -> None:
    # A tool reports one line when it gives up; nats-py's per-attempt errors would repeat it.
    return None


# -- mesh services ---------------------------------------------------------------------------


async def discover(nc: Client, wait: float = 0.5) -> list[dict[str, Any]]:
    """Every instance's ``$SRV.INFO`` answer, gathered for ``wait`` seconds."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish("$SRV.INFO", b"", reply=inbox)
    answers: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while (left := deadline - loop.time()) > 0:
        try:
            msg = await sub.next_msg(timeout=left)
        except nats.errors.TimeoutError:
            break
        answers.append(json.loads(msg.data))
    await sub.unsubscribe()
    return sorted(answers, key=lambda a: (a.get("name", ""), a.get("id", "")))


async def _services(args: argparse.Namespace) -> int:
    nc = await _connect(args)
    try:
        answers = await discover(nc, args.wait)
    finally:
        await nc.close()
    if args.json:
        print(json.dumps(answers, indent=2))
        return 0
    if not answers:
        print("no services answered $SRV.INFO", file=sys.stderr)
        return 1
    targets: dict[str, list[dict[str, Any]]] = {}
    for answer in answers:
        targets.setdefault(answer["name"], []).append(answer)
    width = max(len(t) for t in targets)
    for target, instances in targets.items():
        services = instances[0].get("metadata", {}).get("grpc.services", "")
        endpoints = len(instances[0].get("endpoints") or [])
        print(f"{target.ljust(width)}  {len(instances)} instance(s)  {endpoints} methods  {services}")
    return 0


# -- mesh call -------------------------------------------------------------------------------


async def load_pool(channel: Any, symbol: str) -> descriptor_pool.DescriptorPool:
    """A descriptor pool with the file defining ``symbol`` and its imports, from reflection."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    pool = descriptor_pool.DescriptorPool()
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    call = stub.ServerReflectionInfo()
    try:
        await call.write(reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol))
        wanted: list[str] = []
        while True:
            reply = await call.read()
            if reply is grpc.aio.EOF:
                break
            if reply.HasField("error_response"):
                raise LookupError(f"{symbol}: {reply.error_response.error_message}")
            for raw in reply.file_descriptor_response.file_descriptor_proto:
                proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
                files.setdefault(proto.name, proto)
                wanted.extend(d for d in proto.dependency if d not in files and d not in wanted)
            missing = [name for name in wanted if name not in files]
            if not missing:
                break
            wanted = missing[1:]
            await call.write(reflection_pb2.ServerReflectionRequest(file_by_filename=missing[0]))
    finally:
        await call.done_writing()
        call.cancel()
    added: set[str] = set()

    def add(name: str) -> None:
        if name in added:
            return
        proto = files[name]
        for dependency in proto.dependency:
            if dependency in files:
                add(dependency)
        pool.Add(proto)
        added.add(name)

    for name in files:
        add(name)
    return pool


async def call_json(nc: Client, target: str, method: str, body: str, deadline: float | None,
                    bearer: str | None = None) -> list[str]:
    """Call ``pkg.Service/Method`` on ``target`` with a JSON request; the JSON response(s)."""
    service, _, name = method.lstrip("/").partition("/")
    channel = nats_transport.aio.channel(nc, target)
    pool = await load_pool(channel, service)
    descriptor = pool.FindServiceByName(service).FindMethodByName(name)
    if descriptor is None:
        raise LookupError(f"{service} has no method {name!r}")
    request_class = message_factory.GetMessageClass(descriptor.input_type)
    response_class = message_factory.GetMessageClass(descriptor.output_type)
    request = json_format.Parse(body or "{}", request_class())
    path = f"/{service}/{name}"
    metadata = (("authorization", f"Bearer {bearer}"),) if bearer else None
    serialize, deserialize = request_class.SerializeToString, response_class.FromString
    if descriptor.client_streaming:
        raise ValueError("client-streaming methods are not supported by mesh call")
    if descriptor.server_streaming:
        stream = channel.unary_stream(path, serialize, deserialize)(request, timeout=deadline, metadata=metadata)
        return [json_format.MessageToJson(reply) async for reply in stream]
    reply = await channel.unary_unary(path, serialize, deserialize)(request, timeout=deadline, metadata=metadata)
    return [json_format.MessageToJson(reply)]


async def _call(args: argparse.Namespace) -> int:
    nc = await _connect(args)
    try:
        bearer = args.bearer or os.environ.get("MESH_BEARER_TOKEN")
        for reply in await call_json(nc, args.target, args.method, args.body, args.timeout, bearer):
            print(reply)
    except grpc.aio.AioRpcError as err:
        print(f"mesh call: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    except (LookupError, ValueError, json_format.ParseError) as err:
        print(f"mesh call: error: {err}", file=sys.stderr)
        return 2
    finally:
        await nc.close()
    return 0


def add_services_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser)
    parser.add_argument("--wait", type=float, default=0.5, help="seconds to gather answers (0.5)")
    parser.add_argument("--json", action="store_true", help="print the raw $SRV.INFO answers")


def add_call_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser)
    parser.add_argument("target", help="the target, e.g. settings")
    parser.add_argument("method", help="package.Service/Method, e.g. gaming.settings.v1.SettingsService/Get")
    parser.add_argument("body", nargs="?", default="{}", help="the request as JSON ({})")
    parser.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds (10)")
    parser.add_argument("--bearer", default=None, metavar="TOKEN",
                        help="access token sent as 'authorization: Bearer TOKEN' ($MESH_BEARER_TOKEN)")


def run_services(args: argparse.Namespace) -> int:
    """``mesh services``."""
    return _run(_services(args))


def run_call(args: argparse.Namespace) -> int:
    """``mesh call``."""
    return _run(_call(args))


def _run(coro: Any) -> int:
    try:
        return int(asyncio.run(coro))
    except ConfigError as error:
        coro.close()
        print(f"mesh: error: {error}", file=sys.stderr)
        return 2
    except (AccessDenied, NatsUnreachable) as refused:
        print(f"mesh: error: {refused}", file=sys.stderr)
        return 2
    except (OSError, nats.errors.Error) as exc:
        print(f"mesh: error: cannot reach NATS: {exc or type(exc).__name__}", file=sys.stderr)
        return 2
