"""Debugging commands: ``mesh services`` (what runs, from ``$SRV``) and ``mesh call`` (any method
over NATS, JSON in and out, using the target's own server reflection)."""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import difflib
import json
import os
import sys
import threading
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Sequence
from typing import Any, TypeVar

import grpc
import nats
import nats.errors
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.rpc import error_details_pb2  # noqa: F401 - registers google.rpc's detail types for printing
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from nats.aio.client import Client

import nats_transport.aio
from mesh.config import ConfigError
from mesh.connection import AccessDenied, NatsUnreachable, connect
from mesh.serve import add_connection_arguments, resolve_access

DEFAULT_URL = "nats://127.0.0.1:4222"

T = TypeVar("T")


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


async def load_pool(channel: Any, symbol: str, deadline: float | None = None) -> descriptor_pool.DescriptorPool:
    """A descriptor pool with the file defining ``symbol`` and its imports, from reflection
    (``deadline``: seconds the reflection call may take)."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    pool = descriptor_pool.DescriptorPool()
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    call = stub.ServerReflectionInfo(timeout=deadline)
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


class CallFailed(Exception):
    """The call ended with an error status.

    Attributes:
        error: the status, as grpc.aio raised it.
        details: its rich details (google.rpc.Status.details), one JSON object each, unpacked
            with the target's own descriptors when this process does not know their types.
    """

    def __init__(self, error: grpc.aio.AioRpcError, details: list[str]) -> None:
        super().__init__(f"{error.code().name}: {error.details()}")
        self.error = error
        self.details = details


async def _method(channel: Any, service: str, name: str, deadline: float | None) -> Any:
    """The method's descriptor, from the target's reflection; UsageError naming what exists."""
    try:
        pool = await load_pool(channel, service, deadline)
        service_descriptor = pool.FindServiceByName(service)
    except (LookupError, KeyError):
        served = await _served_services(channel, deadline)
        raise UsageError(f"the target does not serve {service!r}{_suggestion(service, served)}; "
                         f"it serves: {', '.join(served) or 'nothing'}") from None
    descriptor = service_descriptor.methods_by_name.get(name)
    if descriptor is None:
        methods = sorted(service_descriptor.methods_by_name)
        raise UsageError(f"{service} has no method {name!r}{_suggestion(name, methods)}; "
                         f"its methods: {', '.join(methods)}")
    return descriptor


async def _served_services(channel: Any, deadline: float | None = None) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(timeout=deadline)
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


async def _not_a_method(channel: Any, method: str, deadline: float | None) -> str:
    """Why ``method`` (no ``/``: ``Get``, or ``pkg.Service.Get``) names no method, with the
    target's methods it may mean (looked up by reflection)."""
    plain = f"{method!r} is not package.Service/Method"
    try:
        methods = [f"{service}/{name}" for service in await _served_services(channel, deadline)
                   for name in (await load_pool(channel, service, deadline)).FindServiceByName(service).methods_by_name]
    except (grpc.aio.AioRpcError, LookupError, KeyError):
        return plain  # the target cannot list its methods (nobody serves it, say)
    named = [full for full in methods if method in (full.rpartition("/")[2], full.replace("/", "."))]
    if len(named) == 1:
        return f"{plain}; did you mean {named[0]!r}?"
    if named:
        return f"{plain}; it may be any of: {', '.join(sorted(named))}"
    by_name = {full.rpartition("/")[2]: full for full in methods}
    close = difflib.get_close_matches(method, list(by_name), n=1, cutoff=0.5)
    if close:
        return f"{plain}; did you mean {by_name[close[0]]!r}?"
    return f"{plain}; the target's methods: {', '.join(sorted(methods)) or 'none'}"


async def call_json(nc: Client, target: str, method: str, body: str, deadline: float | None,
                    metadata: Sequence[tuple[str, str]] = (), requests: AsyncIterable[str] | None = None,
                    ) -> AsyncIterator[str]:
    """Call ``pkg.Service/Method`` on ``target`` with a JSON request; yield each JSON response as
    it arrives. Client and bidi streams send one request per line of ``requests`` (default:
    stdin, read as it comes), while their responses are yielded.

    Raises:
        UsageError: no such service or method, or a request that is not JSON of its type.
        CallFailed: the call ended with an error status.
        grpc.aio.AioRpcError: the target's reflection failed (nobody serves the target, say).
    """
    channel = nats_transport.aio.channel(nc, target)
    service, _, name = method.lstrip("/").partition("/")
    if not service or not name:
        raise UsageError(await _not_a_method(channel, method, deadline))
    descriptor = await _method(channel, service, name, deadline)
    pool = descriptor.containing_service.file.pool
    request_class = message_factory.GetMessageClass(descriptor.input_type)
    response_class = message_factory.GetMessageClass(descriptor.output_type)
    path = f"/{service}/{name}"
    serialize, deserialize = request_class.SerializeToString, response_class.FromString
    options: dict[str, Any] = {"timeout": deadline, "metadata": tuple(metadata) or None}
    if not descriptor.client_streaming:
        try:
            request = json_format.Parse(body or "{}", request_class(), descriptor_pool=pool)
        except json_format.ParseError as err:
            raise UsageError(f"the body is not a {descriptor.input_type.full_name}: {_one_line(err)}") from None
    try:
        if descriptor.client_streaming:
            kind = channel.stream_stream if descriptor.server_streaming else channel.stream_unary
            # No request iterator: the call is written to here, so a bad line ends it at once.
            # A stream-stream or a stream-unary call: each branch below uses what its kind has.
            call: Any = kind(path, serialize, deserialize)(**options)
            lines = requests if requests is not None else _stdin_lines()
            writer = asyncio.ensure_future(_send_lines(call, lines, request_class, pool))
            try:
                if descriptor.server_streaming:
                    while (reply := await _unless_a_line_fails(call.read(), writer, call)) is not grpc.aio.EOF:
                        yield _compact(reply, pool)
                else:
                    reply = await _unless_a_line_fails(_response(call), writer, call)
                    yield json_format.MessageToJson(reply, descriptor_pool=pool)
            finally:
                _stop(writer)
        elif descriptor.server_streaming:
            async for reply in channel.unary_stream(path, serialize, deserialize)(request, **options):
                yield _compact(reply, pool)
        else:
            reply = await channel.unary_unary(path, serialize, deserialize)(request, **options)
            yield json_format.MessageToJson(reply, descriptor_pool=pool)
    except grpc.aio.AioRpcError as err:
        raise CallFailed(err, await _detail_lines(err, channel, pool)) from None


async def _response(call: Any) -> Any:
    return await call


async def _send_lines(call: Any, lines: AsyncIterable[str], request_class: Any,
                      pool: descriptor_pool.DescriptorPool) -> None:
    """Write one request per non-empty line as each line comes, then close the sending side."""
    number = 0
    async for line in lines:
        number += 1
        if not line.strip():
            continue
        try:
            request = json_format.Parse(line, request_class(), descriptor_pool=pool)
        except json_format.ParseError as err:
            raise UsageError(f"stdin line {number}: not JSON for {request_class.DESCRIPTOR.full_name}: "
                             f"{_one_line(err)}") from None
        await call.write(request)
    await call.done_writing()


def _one_line(error: Exception) -> str:
    # json_format puts the fields a message has on a line of their own; an error is one line.
    return " ".join(str(error).split())


async def _unless_a_line_fails(step: Awaitable[T], writer: asyncio.Future[None], call: Any) -> T:
    """The next reply (``step``), unless sending stdin fails first (a line that is not JSON):
    then the call is cancelled and that error raised, rather than waiting for replies to
    requests that were never sent."""
    reading = asyncio.ensure_future(step)
    if not writer.done():
        either: set[asyncio.Future[Any]] = {reading, writer}
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            reading.cancel()
            raise
    if not reading.done():  # the writer is done: sent everything, or failed
        problem = writer.exception()
        # A write refused because the call ended is not the story: the call's status is.
        if problem is not None and not isinstance(problem, grpc.aio.AioRpcError):
            call.cancel()
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await reading
            raise problem
    return await reading


def _stop(task: asyncio.Future[None]) -> None:
    # A writer still waiting for stdin when the call ends is cancelled; whatever it ended with
    # was reported (or made moot) by the call, so it must not be logged as never retrieved.
    task.cancel()
    task.add_done_callback(lambda done: done.cancelled() or done.exception())


# Lines of stdin read ahead of the call (a bound, so a huge file is not read into memory at once).
_STDIN_AHEAD = 64
_STDIN_CHUNK = 64 * 1024


async def _stdin_lines() -> AsyncIterator[str]:
    """The lines of stdin as they come, read by a daemon thread.

    A read of a terminal, or of a pipe someone writes slowly, blocks until a line comes: in a
    thread it never blocks the event loop, so replies print as they arrive and the deadline
    holds. The thread reads the raw descriptor (not ``sys.stdin``, whose lock a reader blocked
    at exit would hold) and may stay blocked there when the call ends first; as a daemon it does
    not keep the process alive.
    """
    if sys.stdin is None:
        # Started with descriptor 0 closed: 0 may now be any file this process opened (a socket).
        raise UsageError("stdin is closed; client and bidi streams read their requests from it")
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | OSError | None] = asyncio.Queue(maxsize=_STDIN_AHEAD)
    threading.Thread(target=_read_stdin, args=(sys.stdin.fileno(), loop, queue), name="mesh call stdin",
                     daemon=True).start()
    while (item := await queue.get()) is not None:
        if isinstance(item, OSError):
            raise UsageError(f"cannot read stdin: {item.strerror or item}")
        yield item


def _read_stdin(fd: int, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str | OSError | None]) -> None:
    def hand(item: str | OSError | None) -> bool:
        """Queue ``item`` on the loop, waiting for room; False once nobody will read it."""
        put = queue.put(item)
        try:
            asyncio.run_coroutine_threadsafe(put, loop).result()
        except RuntimeError:  # the loop is closed: the call is over
            put.close()
            return False
        except concurrent.futures.CancelledError:  # the loop is shutting down
            return False
        return True

    pending = b""
    try:
        while chunk := os.read(fd, _STDIN_CHUNK):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                if not hand(line.decode(errors="replace")):
                    return
    except OSError as exc:
        hand(exc)
        return
    if pending and not hand(pending.decode(errors="replace")):
        return
    hand(None)


def _compact(message: Any, pool: descriptor_pool.DescriptorPool | None = None) -> str:
    # Streams print one JSON object per line (JSON lines), so they can be piped as they come.
    return json.dumps(json_format.MessageToDict(message, descriptor_pool=pool), separators=(",", ":"))


async def _call(args: argparse.Namespace) -> int:
    try:
        json.loads(args.body)
    except ValueError as err:
        # Checked before reaching NATS; that it fits the method's request type needs the
        # target's reflection, so that is checked once connected.
        print(f"mesh call: error: the body argument is not JSON: {err}", file=sys.stderr)
        return 2
    nc = await _connect(args)
    try:
        metadata = list(args.header)
        bearer = args.bearer or os.environ.get("MESH_BEARER_TOKEN")
        if bearer:
            metadata.append(("authorization", f"Bearer {bearer}"))
        async for reply in call_json(nc, args.target, args.method, args.body, args.timeout, metadata):
            print(reply, flush=True)
    except (CallFailed, grpc.aio.AioRpcError) as failure:
        error = failure.error if isinstance(failure, CallFailed) else failure
        details = failure.details if isinstance(failure, CallFailed) else await _detail_lines(error)
        print(f"mesh call: {error.code().name}: {error.details()}", file=sys.stderr)
        for line in details:
            print(f"  {line}", file=sys.stderr)
        if error.code() == grpc.StatusCode.UNAVAILABLE:
            await _hint_targets(nc, args.target)
        return 1
    except UsageError as err:
        print(f"mesh call: error: {err}", file=sys.stderr)
        return 2
    finally:
        await nc.close()
    return 0


async def _detail_lines(err: grpc.aio.AioRpcError, channel: Any = None,
                        pool: descriptor_pool.DescriptorPool | None = None) -> list[str]:
    """The rich error details (google.rpc.Status.details), one JSON line each.

    A detail's type is looked up in the target's descriptors (``pool``, from reflection), then
    in this process's (google.rpc's types), then by asking the target's reflection for it: a
    service's own detail types (gaming.settings.v1.RevisionConflict) print in full even where
    this process was not built with its protos.
    """
    try:
        status = rpc_status.from_call(err)
    except ValueError:
        return []
    if status is None:
        return []
    lines = []
    for detail in status.details:
        lines.append(_detail_json(detail, await _pool_for(detail.TypeName(), pool, channel)))
    return lines


def _detail_json(detail: Any, pool: descriptor_pool.DescriptorPool | None) -> str:
    if pool is not None:
        with contextlib.suppress(TypeError, KeyError):  # an Any inside it of a type nobody knows
            return json.dumps(json_format.MessageToDict(detail, descriptor_pool=pool), separators=(",", ":"))
    return json.dumps({"@type": detail.type_url})


async def _pool_for(type_name: str, pool: descriptor_pool.DescriptorPool | None,
                    channel: Any) -> descriptor_pool.DescriptorPool | None:
    for candidate in (pool, descriptor_pool.Default()):
        if candidate is not None:
            with contextlib.suppress(KeyError):
                candidate.FindMessageTypeByName(type_name)
                return candidate
    if channel is None:
        return None
    try:
        # Bounded: the call already failed, its details must not wait on a target going away.
        found = await load_pool(channel, type_name, _DETAIL_LOOKUP_DEADLINE)
        found.FindMessageTypeByName(type_name)
    except (grpc.aio.AioRpcError, LookupError, KeyError, TypeError):
        return None
    return found


_DETAIL_LOOKUP_DEADLINE = 2.0


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
