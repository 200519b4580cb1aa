"""Debugging commands: ``mesh services`` (what runs, from ``$SRV``) and ``mesh call`` (any method
over NATS, JSON in and out, using the target's own server reflection)."""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import os
import sys
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import Any

import grpc
import nats
import nats.errors
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.rpc import error_details_pb2  # noqa: F401 - registers the detail types for printing
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
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
        if not msg.data:
            continue  # NATS's "no responders" status (nothing serves $SRV), not an answer
        try:
            answers.append(json.loads(msg.data))
        except ValueError:
            continue  # not a Services API answer: whoever sent it, it describes no service
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


class UsageError(LookupError):
    """The call cannot be made as asked (no such service or method, a bad body): exit 2."""


async def _method(channel: Any, service: str, name: str) -> Any:
    """The method's descriptor, from the target's reflection; UsageError naming what exists."""
    try:
        pool = await load_pool(channel, service)
        service_descriptor = pool.FindServiceByName(service)
    except (LookupError, KeyError):
        served = await _served_services(channel)
        raise UsageError(f"the target does not serve {service!r}{_suggestion(service, served)}; "
                         f"it serves: {', '.join(served) or 'nothing'}") from None
    descriptor = service_descriptor.methods_by_name.get(name)
    if descriptor is None:
        methods = sorted(service_descriptor.methods_by_name)
        raise UsageError(f"{service} has no method {name!r}{_suggestion(name, methods)}; "
                         f"its methods: {', '.join(methods)}")
    return descriptor


async def _served_services(channel: Any) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo()
    try:
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        reply = await call.read()
    finally:
        call.cancel()
    if reply is grpc.aio.EOF:
        return []
    return sorted(s.name for s in reply.list_services_response.service
                  if not s.name.startswith(("grpc.reflection.", "grpc.health.")))


def _suggestion(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _json_lines(lines: Iterable[str], request_class: Any) -> Iterator[Any]:
    """Requests of a client or bidi stream: one JSON object per non-empty line."""
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                yield json_format.Parse(line, request_class())
            except json_format.ParseError as err:
                raise UsageError(f"stdin line {number}: {err}") from None


async def call_json(nc: Client, target: str, method: str, body: str, deadline: float | None,
                    metadata: Sequence[tuple[str, str]] = (), requests: Iterable[str] | None = None,
                    ) -> AsyncIterator[str]:
    """Call ``pkg.Service/Method`` on ``target`` with a JSON request; yield each JSON response as
    it arrives. Client and bidi streams send one request per line of ``requests`` (stdin)."""
    service, _, name = method.lstrip("/").partition("/")
    if not service or not name:
        raise UsageError(f"{method!r} is not package.Service/Method")
    channel = nats_transport.aio.channel(nc, target)
    descriptor = await _method(channel, service, name)
    request_class = message_factory.GetMessageClass(descriptor.input_type)
    response_class = message_factory.GetMessageClass(descriptor.output_type)
    path = f"/{service}/{name}"
    serialize, deserialize = request_class.SerializeToString, response_class.FromString
    options: dict[str, Any] = {"timeout": deadline, "metadata": tuple(metadata) or None}
    if descriptor.client_streaming:
        stream_of = _json_lines(requests if requests is not None else sys.stdin, request_class)
        if descriptor.server_streaming:
            call = channel.stream_stream(path, serialize, deserialize)(stream_of, **options)
            async for reply in call:
                yield _compact(reply)
            return
        reply = await channel.stream_unary(path, serialize, deserialize)(stream_of, **options)
        yield json_format.MessageToJson(reply)
        return
    try:
        request = json_format.Parse(body or "{}", request_class())
    except json_format.ParseError as err:
        raise UsageError(f"the body is not a {descriptor.input_type.full_name}: {err}") from None
    if descriptor.server_streaming:
        async for reply in channel.unary_stream(path, serialize, deserialize)(request, **options):
            yield _compact(reply)
        return
    yield json_format.MessageToJson(await channel.unary_unary(path, serialize, deserialize)(request, **options))


def _compact(message: Any) -> str:
    # Streams print one JSON object per line (JSON lines), so they can be piped as they come.
    return json.dumps(json_format.MessageToDict(message), separators=(",", ":"))


async def _call(args: argparse.Namespace) -> int:
    nc = await _connect(args)
    try:
        metadata = list(args.header)
        bearer = args.bearer or os.environ.get("MESH_BEARER_TOKEN")
        if bearer:
            metadata.append(("authorization", f"Bearer {bearer}"))
        async for reply in call_json(nc, args.target, args.method, args.body, args.timeout, metadata):
            print(reply, flush=True)
    except grpc.aio.AioRpcError as err:
        print(f"mesh call: {err.code().name}: {err.details()}", file=sys.stderr)
        for line in _detail_lines(err):
            print(f"  {line}", file=sys.stderr)
        if err.code() == grpc.StatusCode.UNAVAILABLE:
            await _hint_targets(nc, args.target)
        return 1
    except UsageError as err:
        print(f"mesh call: error: {err}", file=sys.stderr)
        return 2
    finally:
        await nc.close()
    return 0


def _detail_lines(err: grpc.aio.AioRpcError) -> list[str]:
    """The rich error details (google.rpc.Status.details), one JSON line each."""
    try:
        status = rpc_status.from_call(err)
    except ValueError:
        return []
    if status is None:
        return []
    lines = []
    for detail in status.details:
        try:
            lines.append(json.dumps(json_format.MessageToDict(detail), separators=(",", ":")))
        except (TypeError, KeyError):  # a detail type this process does not know
            lines.append(json.dumps({"@type": detail.type_url}))
    return lines


async def _hint_targets(nc: Client, target: str) -> None:
    answers = await discover(nc, 0.3)
    targets = sorted({a.get("name", "") for a in answers} - {""})
    if target not in targets:
        print(f"  no replica of {target!r} answers{_suggestion(target, targets)}; "
              f"running: {', '.join(targets) or 'none'} (mesh services)", file=sys.stderr)


def _header(text: str) -> tuple[str, str]:
    key, sep, value = text.partition(":")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not key:value")
    return key.strip().lower(), value.strip()


def add_services_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser)
    parser.add_argument("--wait", type=float, default=0.5, help="seconds to gather answers (default: 0.5)")
    parser.add_argument("--json", action="store_true", help="print the raw $SRV.INFO answers")


def add_call_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser)
    parser.add_argument("target", help="the target, e.g. settings")
    parser.add_argument("method", help="package.Service/Method, e.g. gaming.settings.v1.SettingsService/Get")
    parser.add_argument("body", nargs="?", default="{}",
                        help="the request as JSON (default: {}); client and bidi streams read one "
                             "JSON request per line from stdin instead")
    parser.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds (default: 10)")
    parser.add_argument("-H", "--header", type=_header, action="append", default=[], metavar="KEY:VALUE",
                        help="request metadata (repeatable)")
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
