"""Call objects behave like grpcio's: one table of cases, each run against real grpcio over HTTP/2
and against ours over NATS, and the answers compared.

Every case starts calls of the four kinds on a channel, looks at the call object (or the error)
and returns what it saw as a dict. The aio rows run three ways: with no interceptor, with one that
passes the call through, and with one that rewraps it (hands back the response itself, or an
async generator of the responses): grpc.aio answers through different classes then
(InterceptedUnaryUnaryCall, UnaryUnaryCallResponse, UnaryStreamCallResponseIterator, ...), and
ours must answer as those do. The sync rows compare ``grpc.insecure_channel`` with
``nats_transport.channel``, bare and behind ``grpc.intercept_channel``.

Both servers (a grpc.aio server on a free loopback port and ours on NATS) run the same raw-bytes
handlers. Where an answer must differ, the table row says so and why (``Differs``), and pins both
sides' answers, so a fix on either side shows up here.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from nats.aio.client import Client

import nats_transport
from nats_transport.testing import NatsServer, free_port
from tests._waiting import wait_for, wait_until

SERVICE = "parity.Parity"
KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
INITIAL = (("x-initial", "i"),)
TRAILING = (("x-trailing", "t"),)
TIMEOUT = 30.0
Observation = dict[str, Any]


# -- the handlers both servers run ---------------------------------------------------------------


class Handlers:
    """Raw-bytes handlers of the four kinds. The (first) request says what to do: ``ok`` answers,
    ``fail`` aborts NOT_FOUND (a stream after its first response), ``hang`` waits until the call
    is cancelled; anything else answers as ``ok``. Initial metadata is sent and trailing metadata
    set first (not by ``hang``). Each call names itself in ``x-call`` metadata, so a test can wait
    until the server has it."""

    def __init__(self) -> None:
        self.started: set[str] = set()
        self.metadata_seen: dict[str, Any] = {}

    async def _begin(self, mode: bytes, context: Any) -> None:
        received = context.invocation_metadata()
        call_id = dict(received).get("x-call", "")
        # What the context hands out: its type, each item's type, the items (not the transport's
        # own user-agent).
        self.metadata_seen[call_id] = (type(received).__name__, tuple(
            (type(item).__name__, item.key, item.value) for item in received
            if item.key not in ("user-agent", "x-call")))
        if mode == b"hang":
            # No initial metadata: whether it reached the client before a cancel would be a race.
            self.started.add(call_id)
            await asyncio.Event().wait()  # nothing sets it: the call ends by cancellation
        await context.send_initial_metadata(INITIAL)
        context.set_trailing_metadata(TRAILING)
        self.started.add(call_id)
        if mode == b"fail":
            await context.abort(grpc.StatusCode.NOT_FOUND, "not here")

    async def unary_unary(self, request: bytes, context: Any) -> bytes:
        await self._begin(request, context)
        return b"pong"

    async def unary_stream(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        async for response in self._responses(request, context):
            yield response

    async def stream_unary(self, requests: AsyncIterator[bytes], context: Any) -> bytes:
        await self._begin(await anext(aiter(requests), b""), context)
        return b"pong"

    async def stream_stream(self, requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        async for response in self._responses(await anext(aiter(requests), b""), context):
            yield response

    async def _responses(self, mode: bytes, context: Any) -> AsyncIterator[bytes]:
        if mode != b"fail":
            await self._begin(mode, context)
            yield b"r1"
            yield b"r2"
            return
        # A stream fails after its first response: a grpc.aio server that aborts before any
        # sometimes sends its initial metadata with the status, and the client sees none.
        await self._begin(b"ok", context)
        yield b"r1"
        await context.abort(grpc.StatusCode.NOT_FOUND, "not here")

    def generic(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            "unary_unary": grpc.unary_unary_rpc_method_handler(self.unary_unary),
            "unary_stream": grpc.unary_stream_rpc_method_handler(self.unary_stream),
            "stream_unary": grpc.stream_unary_rpc_method_handler(self.stream_unary),
            "stream_stream": grpc.stream_stream_rpc_method_handler(self.stream_stream),
        })


# -- client interceptors -------------------------------------------------------------------------


class _Interceptor:
    """Passes the call through, or (``rewrap``) hands back the response itself, or an async
    generator of the responses, instead of the call. grpc.aio files an interceptor under the
    first kind it implements only, so each kind has its class."""

    def __init__(self, rewrap: bool) -> None:
        self.rewrap = rewrap
        self.calls = 0

    async def _intercept(self, continuation: Any, details: Any, request: Any, streaming: bool) -> Any:
        self.calls += 1
        call = await continuation(details, request)
        if not self.rewrap:
            return call
        return _relay(call) if streaming else await call


async def _relay(call: Any) -> AsyncIterator[Any]:
    async for response in call:
        yield response


class _UnaryUnary(_Interceptor, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self._intercept(continuation, details, request, streaming=False)


class _UnaryStream(_Interceptor, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self._intercept(continuation, details, request, streaming=True)


class _StreamUnary(_Interceptor, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self._intercept(continuation, details, request, streaming=False)


class _StreamStream(_Interceptor, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self._intercept(continuation, details, request, streaming=True)


class _EveryKind(_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream):
    """One object that intercepts calls of every kind, passing them through."""


def aio_interceptors(variant: str) -> list[Any]:
    """No interceptor (``plain``), one of each kind that passes calls through (``pass``) or
    rewraps them (``rewrap``), or one object for every kind (``every-kind``)."""
    if variant == "plain":
        return []
    if variant == "every-kind":
        return [_EveryKind(rewrap=False)]
    return [cls(rewrap=variant == "rewrap") for cls in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)]


class SyncPassThrough(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                      grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Passes every call through, for ``grpc.intercept_channel``."""

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(details, request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(details, request)

    def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(details, request_iterator)

    def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(details, request_iterator)


AIO_VARIANTS = ("plain", "pass", "rewrap")
SYNC_VARIANTS = ("plain", "pass")


# -- describing what a side did -------------------------------------------------------------------


def metadata(value: Any) -> Any:
    """Metadata as plain pairs (None stays None: some grpc.aio calls answer None)."""
    return None if value is None else tuple((key, val) for key, val in value)


def raised(exc: BaseException) -> tuple[Any, ...]:
    """An exception by its kind and, for RpcErrors, the status it carries."""
    if not isinstance(exc, grpc.RpcError):
        return ("raises", type(exc).__name__)
    faces = tuple(name for name, cls in (("AioRpcError", grpc.aio.AioRpcError), ("Call", grpc.Call),
                                         ("Future", grpc.Future)) if isinstance(exc, cls))
    return ("raises", "RpcError", faces, exc.code(), exc.details(),
            metadata(exc.initial_metadata()), metadata(exc.trailing_metadata()))


async def attempt(fn: Callable[[], Awaitable[Any]]) -> Any:
    try:
        return ("returns", await fn())
    except (Exception, asyncio.CancelledError) as exc:
        return raised(exc)


def attempt_sync(fn: Callable[[], Any]) -> Any:
    try:
        return ("returns", fn())
    except Exception as exc:
        return raised(exc)


def remaining(value: float | None) -> str:
    """time_remaining() by its shape: timings are not compared."""
    if value is None:
        return "None"
    return "0 < t <= timeout" if 0 < value <= TIMEOUT else f"out of range: {value}"


# -- starting calls ---------------------------------------------------------------------------------


@dataclass
class Side:
    """One channel (grpcio's or ours) with what the handlers behind it have seen."""

    channel: Any
    handlers: Handlers
    interceptors: list[Any] = field(default_factory=list)

    def start(self, kind: str, mode: bytes, *, serializer: Any = None, deserializer: Any = None,
              timeout: float | None = TIMEOUT, how: str = "__call__", metadata: Any = ()) -> tuple[Any, str]:
        """Start a call of ``kind`` sending ``mode``; returns it (or what starting it returns) and
        its ``x-call`` id."""
        call_id = uuid.uuid4().hex
        method = getattr(self.channel, kind)(f"/{SERVICE}/{kind}", request_serializer=serializer,
                                             response_deserializer=deserializer)
        request = mode if kind.startswith("unary") else iter([mode])
        starter = method if how == "__call__" else getattr(method, how)
        return starter(request, timeout=timeout, metadata=(("x-call", call_id), *metadata)), call_id


async def settle(call: Any, kind: str) -> Any:
    """What the caller gets: the response, or the list of responses, or what was raised."""
    if kind.endswith("unary"):
        return await attempt(lambda: call)

    async def responses() -> list[Any]:
        return [response async for response in call]

    return await attempt(responses)


async def status(call: Any) -> Observation:
    """Everything a finished call answers (code first: it waits for the end)."""
    code = await attempt(call.code)
    return {
        "code": code,
        "details": await attempt(call.details),
        "initial_metadata": await attempt(lambda: _metadata_of(call.initial_metadata())),
        "trailing_metadata": await attempt(lambda: _metadata_of(call.trailing_metadata())),
        "done": call.done(),
        "cancelled": call.cancelled(),
    }


async def _metadata_of(pending: Awaitable[Any]) -> Any:
    return metadata(await pending)


# -- the aio cases ------------------------------------------------------------------------------------


async def aio_success(side: Side, kind: str) -> Observation:
    call, _ = side.start(kind, b"ok")
    result = await settle(call, kind)
    return {"result": result, **await status(call), "cancel() after": call.cancel(),
            "cancelled() after": call.cancelled()}


async def aio_error(side: Side, kind: str) -> Observation:
    call, _ = side.start(kind, b"fail")
    result = await settle(call, kind)
    return {"result": result, **await status(call), "cancel() after": call.cancel()}


async def aio_cancel_in_flight(side: Side, kind: str) -> Observation:
    call, call_id = side.start(kind, b"hang")
    await wait_for(lambda: call_id in side.handlers.started)
    before = (call.done(), call.cancelled())
    cancel = call.cancel()
    observed = await status(call)
    return {"before": before, "cancel()": cancel, **observed, "result": await settle(call, kind),
            "cancel() again": call.cancel()}


async def aio_cancel_at_once(side: Side, kind: str) -> Observation:
    call, _ = side.start(kind, b"ok")
    cancel = call.cancel()
    return {"cancel()": cancel, **await status(call), "result": await settle(call, kind)}


async def aio_time_remaining(side: Side, kind: str) -> Observation:
    timed, _ = side.start(kind, b"ok")
    untimed, _ = side.start(kind, b"ok", timeout=None)
    during = attempt_sync(lambda: remaining(timed.time_remaining()))
    untimed_during = attempt_sync(lambda: remaining(untimed.time_remaining()))
    await settle(timed, kind)
    await settle(untimed, kind)
    return {"timed": during, "untimed": untimed_during}


async def aio_done_callbacks(side: Side, kind: str) -> Observation:
    calls: dict[str, tuple[Any, list[Any], list[Any]]] = {}
    for mode in (b"ok", b"fail", b"hang"):
        call, call_id = side.start(kind, mode)
        early: list[Any] = []
        late: list[Any] = []
        call.add_done_callback(early.append)
        if mode == b"hang":
            await wait_for(lambda call_id=call_id: call_id in side.handlers.started)
            call.cancel()
        await settle(call, kind)
        await wait_for(lambda early=early: bool(early))
        call.add_done_callback(late.append)
        calls[mode.decode()] = (call, early, late)
    # Counted after all three calls: a callback run twice has had every chance to show.
    return {f"{mode}: {when}": (len(seen), all(arg is call for arg in seen))
            for mode, (call, early, late) in calls.items() for when, seen in (("before", early), ("after", late))}


async def aio_servicer_metadata(side: Side, kind: str) -> Observation:
    call, call_id = side.start(kind, b"ok", metadata=(("x-text", "v"), ("x-bytes-bin", b"\x00\x01")))
    await settle(call, kind)
    return {"invocation_metadata()": side.handlers.metadata_seen[call_id]}


async def aio_interceptor_of_every_kind(side: Side, kind: str) -> Observation:
    call, _ = side.start(kind, b"ok")
    await settle(call, kind)
    return {"intercepted": [interceptor.calls for interceptor in side.interceptors]}


def _failing(data: Any) -> Any:
    raise ValueError("cannot (de)serialize this")


async def aio_bad_deserializer(side: Side, kind: str) -> Observation:
    call, _ = side.start(kind, b"ok", deserializer=_failing)
    return {"result": await settle(call, kind), **await status(call)}


async def aio_bad_serializer(side: Side, kind: str) -> Observation:
    call, _ = side.start(kind, b"ok", serializer=_failing)
    return {"result": await settle(call, kind), **await status(call)}


# -- the sync cases -------------------------------------------------------------------------------------


def sync_status(call: Any) -> Observation:
    return {
        "code": attempt_sync(call.code),
        "details": attempt_sync(call.details),
        "initial_metadata": attempt_sync(lambda: metadata(call.initial_metadata())),
        "trailing_metadata": attempt_sync(lambda: metadata(call.trailing_metadata())),
        "done": call.done(),
        "cancelled": call.cancelled(),
        "is_active": call.is_active(),
    }


def sync_result(call: Any, kind: str) -> Any:
    return attempt_sync(call.result if kind.endswith("unary") else lambda: list(call))


def sync_success(side: Side, kind: str) -> Observation:
    if kind.endswith("unary"):
        response, call = side.start(kind, b"ok", how="with_call")[0]
        result: Any = ("returns", response)
    else:
        call, _ = side.start(kind, b"ok")
        result = sync_result(call, kind)
    return {"result": result, **sync_status(call), "cancel() after": call.cancel(),
            "time_remaining": remaining(call.time_remaining())}


def sync_error(side: Side, kind: str) -> Observation:
    if kind.endswith("unary"):
        outcome = attempt_sync(lambda: side.start(kind, b"fail")[0])
        error = attempt_sync(lambda: side.start(kind, b"fail", how="future")[0].exception())[1]
        return {"__call__": outcome, "future().exception()": raised(error), **sync_status(error)}
    call, _ = side.start(kind, b"fail")
    return {"result": sync_result(call, kind), **sync_status(call), "cancel() after": call.cancel()}


def sync_cancel_in_flight(side: Side, kind: str) -> Observation:
    call, call_id = side.start(kind, b"hang", how="future" if kind.endswith("unary") else "__call__")
    wait_until(lambda: call_id in side.handlers.started, 5, "the handler starts")
    running = (call.done(), call.cancelled(), call.is_active(), remaining(call.time_remaining()))
    cancel = call.cancel()
    observed = {"before: done, cancelled, is_active, time_remaining": running, "cancel()": cancel,
                "result": sync_result(call, kind), **sync_status(call),
                "cancel() again": call.cancel()}
    if kind.endswith("unary"):
        observed["exception()"] = attempt_sync(call.exception)
    return observed


def sync_done_callbacks(side: Side, kind: str) -> Observation:
    calls: dict[str, tuple[Any, list[Any], list[Any]]] = {}
    for mode in (b"ok", b"fail"):
        call, _ = side.start(kind, mode, how="future" if kind.endswith("unary") else "__call__")
        early: list[Any] = []
        late: list[Any] = []
        call.add_done_callback(early.append)
        sync_result(call, kind)
        wait_until(lambda early=early: bool(early), 5, "the done callback runs")
        call.add_done_callback(late.append)
        wait_until(lambda late=late: bool(late), 5, "the late done callback runs")
        calls[mode.decode()] = (call, early, late)
    return {f"{mode}: {when}": (len(seen), all(arg is call for arg in seen))
            for mode, (call, early, late) in calls.items() for when, seen in (("before", early), ("after", late))}


def sync_bad_deserializer(side: Side, kind: str) -> Observation:
    if kind.endswith("unary"):
        return {"__call__": attempt_sync(lambda: side.start(kind, b"ok", deserializer=_failing)[0])}
    call, _ = side.start(kind, b"ok", deserializer=_failing)
    result = sync_result(call, kind)
    # Not the error's trailing metadata: grpcio's is the call itself, whose trailing metadata
    # changes when the server's status arrives after the failure.
    return {"result": result[:6], "code": call.code(), "details": call.details()}


def sync_bad_serializer(side: Side, kind: str) -> Observation:
    started = attempt_sync(lambda: side.start(kind, b"ok", serializer=_failing)[0])
    if kind.endswith("unary") or started[0] == "raises":
        return {"__call__": started}
    call = started[1]
    return {"result": sync_result(call, kind), "code": call.code(), "details": call.details()}


# -- the table -----------------------------------------------------------------------------------------

UNARY_RESPONSE = ("unary_unary", "stream_unary")
STREAM_RESPONSE = ("unary_stream", "stream_stream")
INTERCEPTED = ("pass", "rewrap")
OK = ("returns", grpc.StatusCode.OK)
INTERNAL = ("returns", grpc.StatusCode.INTERNAL)


def internal_error(details: str, initial: Any, trailing: Any) -> tuple[Any, ...]:
    return ("raises", "RpcError", ("AioRpcError",), grpc.StatusCode.INTERNAL, details, initial, trailing)


@dataclass(frozen=True)
class Differs:
    """A documented difference: why, where, and each side's answers for the keys it changes.
    ``loose`` keys follow from the difference and are not compared; every other key must match.

    ``stand_in``: grpc.aio cannot run the row at all, so ours is compared with grpc.aio's answers
    for that kind instead.
    """

    reason: str
    grpc: Observation
    ours: Observation = field(default_factory=dict)
    loose: tuple[str, ...] = ()
    kinds: tuple[str, ...] = KINDS
    variants: tuple[str, ...] | None = None  # None: all of its side's
    sync: bool = False  # a difference of the sync channels (else of the aio ones)
    stand_in: str | None = None

    def applies(self, sync: bool, kind: str, variant: str) -> bool:
        return self.sync == sync and kind in self.kinds and (self.variants is None or variant in self.variants)


@dataclass(frozen=True)
class Case:
    name: str
    aio: Callable[[Side, str], Awaitable[Observation]] | None = None
    sync: Callable[[Side, str], Observation] | None = None
    differs: tuple[Differs, ...] = ()
    aio_variants: tuple[str, ...] = AIO_VARIANTS


# For every row: grpc.aio leaves a stream-unary interceptor's own response bare
# (InterceptedStreamUnaryCall does not wrap it as InterceptedUnaryUnaryCall does in
# UnaryUnaryCallResponse), so every use of that call raises AttributeError there, even its
# __del__. Ours wraps it: it must answer as grpc.aio's unary-unary rewrapped call does.
BARE_STREAM_UNARY_RESPONSE = Differs(
    "grpc.aio cannot use a stream-unary interceptor's own response (AttributeError: grpcio's bug)",
    grpc={}, kinds=("stream_unary",), variants=("rewrap",), stand_in="unary_unary")

# grpc.aio's _common.deserialize logs a deserializer's exception and hands back None as the
# message (status OK); grpcio's sync channel fails the call INTERNAL. Ours does as the sync one.
DESERIALIZER_RAISES_AIO = (
    Differs("grpc.aio answers None, OK; ours INTERNAL, as grpcio's sync channel",
            grpc={"result": ("returns", None), "code": OK, "details": ("returns", "")},
            ours={"result": internal_error("Exception deserializing response!", INITIAL, TRAILING),
                  "code": INTERNAL, "details": ("returns", "Exception deserializing response!")},
            loose=("initial_metadata", "trailing_metadata"),  # None on grpc.aio's rewrapped unary
            kinds=UNARY_RESPONSE),
    Differs("grpc.aio answers None for each message, OK; ours fails the call at the first, INTERNAL "
            "(the server hears it), as grpcio's sync channel",
            grpc={"result": ("returns", [None, None]), "code": OK, "details": ("returns", ""),
                  "trailing_metadata": ("returns", TRAILING)},
            ours={"result": internal_error("Exception deserializing response!", INITIAL, ()),
                  "code": INTERNAL, "details": ("returns", "Exception deserializing response!"),
                  "trailing_metadata": ("returns", ())},
            kinds=STREAM_RESPONSE),
)

# grpc.aio's _common.serialize logs a serializer's exception and sends an empty message in its
# place (the handlers here answer that as "ok"); grpcio's sync channel fails the call INTERNAL
# before sending anything. Ours does as the sync one.
SERIALIZER_RAISES_AIO = (
    Differs("grpc.aio sends an empty request instead; ours fails INTERNAL, as grpcio's sync channel",
            grpc={"result": ("returns", b"pong"), "code": OK, "details": ("returns", "")},
            ours={"result": internal_error("Exception serializing request!", (), ()),
                  "code": INTERNAL, "details": ("returns", "Exception serializing request!")},
            loose=("initial_metadata", "trailing_metadata"), kinds=UNARY_RESPONSE),
    Differs("grpc.aio sends an empty request instead; ours fails INTERNAL, as grpcio's sync channel",
            grpc={"result": ("returns", [b"r1", b"r2"]), "code": OK, "details": ("returns", "")},
            ours={"result": internal_error("Exception serializing request!", (), ()),
                  "code": INTERNAL, "details": ("returns", "Exception serializing request!")},
            loose=("initial_metadata", "trailing_metadata"), kinds=STREAM_RESPONSE),
)

TABLE: tuple[Case, ...] = (
    Case("success: the response, status, metadata, done()/cancelled(), cancel() afterwards",
         aio_success, sync_success, differs=(
             Differs("grpcio's with_call() hands its call no deadline (grpc/_channel.py: "
                     "_end_unary_response_blocking(..., None)); ours keeps it, as future() does",
                     grpc={"time_remaining": "None"}, ours={"time_remaining": "0 < t <= timeout"},
                     kinds=UNARY_RESPONSE, sync=True),)),
    Case("error: what is raised, status, metadata, done()/cancelled(), cancel() afterwards",
         aio_error, sync_error),
    Case("cancel() while the handler runs: before, cancel(), status, metadata, the result, cancel() again",
         aio_cancel_in_flight, sync_cancel_in_flight),
    Case("cancel() at once, before the call (or its interceptors) got under way", aio_cancel_at_once),
    Case("time_remaining() of a call with and without a timeout", aio_time_remaining, differs=(
        Differs("grpc.aio's intercepted calls raise NotImplementedError (InterceptedCall.time_remaining); "
                "ours answer as the call beneath",
                grpc={"timed": ("raises", "NotImplementedError"), "untimed": ("raises", "NotImplementedError")},
                ours={"timed": ("returns", "0 < t <= timeout"), "untimed": ("returns", "None")},
                variants=INTERCEPTED),)),
    Case("add_done_callback() before and after the end (OK, error, cancelled): once, with the call",
         aio_done_callbacks, sync_done_callbacks),
    Case("a response deserializer that raises", aio_bad_deserializer, sync_bad_deserializer,
         differs=DESERIALIZER_RAISES_AIO),
    Case("a request serializer that raises", aio_bad_serializer, sync_bad_serializer,
         differs=SERIALIZER_RAISES_AIO),
    Case("the servicer context's invocation_metadata(): the same objects", aio_servicer_metadata),
    Case("one interceptor object of every kind", aio_interceptor_of_every_kind, aio_variants=("every-kind",),
         differs=(Differs("grpc.aio files an interceptor under the first kind it implements only "
                          "(grpc/aio/_channel.py: if/elif); ours runs it for every kind it implements",
                          grpc={"intercepted": [0]}, ours={"intercepted": [1]},
                          kinds=("unary_stream", "stream_unary", "stream_stream")),)),
)


def differences(case: Case) -> tuple[Differs, ...]:
    """The case's own documented differences, and those of every row."""
    return (*case.differs, BARE_STREAM_UNARY_RESPONSE)


def compare(case: Case, sync: bool, kind: str, variant: str, theirs: Observation, ours: Observation) -> None:
    for difference in differences(case):
        if not difference.applies(sync, kind, variant) or difference.stand_in:
            continue
        for key in {*difference.grpc, *difference.ours, *difference.loose}:
            pinned = (difference.grpc.get(key, theirs.get(key)), difference.ours.get(key, ours.get(key)))
            assert (theirs.pop(key, None), ours.pop(key, None)) == pinned, (
                f"{key}: the documented difference has changed ({difference.reason})")
    assert ours == theirs


# -- running it ------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def servers(nc: Client) -> AsyncIterator[tuple[Handlers, str, Handlers, str]]:
    """grpcio's server on a free loopback port and ours on NATS, each with its own handlers."""
    theirs, ours = Handlers(), Handlers()
    grpc_server = grpc.aio.server()
    grpc_server.add_generic_rpc_handlers((theirs.generic(),))
    address = f"127.0.0.1:{grpc_server.add_insecure_port(f'127.0.0.1:{free_port()}')}"
    await grpc_server.start()
    target = f"parity-{uuid.uuid4().hex[:12]}"
    nats_server = nats_transport.aio.server(nc, target)
    nats_server.add_generic_rpc_handlers((ours.generic(),))
    await nats_server.start()
    try:
        yield theirs, address, ours, target
    finally:
        await nats_server.stop(None)
        await grpc_server.stop(None)


async def observe(case: Case, channel: Any, handlers: Handlers, interceptors: list[Any], kind: str) -> Observation:
    """What the case saw on one side; a case that raised is an answer too."""
    assert case.aio is not None
    try:
        return await case.aio(Side(channel, handlers, interceptors), kind)
    except Exception as exc:
        return {"case": raised(exc)}


AIO_ROWS = [pytest.param(case, kind, variant, id=f"{case.aio.__name__}-{kind}-{variant}")
            for case in TABLE if case.aio is not None for kind in KINDS for variant in case.aio_variants]
SYNC_ROWS = [pytest.param(case, kind, variant, id=f"{case.sync.__name__}-{kind}-{variant}")
             for case in TABLE if case.sync is not None for kind in KINDS for variant in SYNC_VARIANTS]


@pytest.mark.parametrize(("case", "kind", "variant"), AIO_ROWS)
async def test_aio_call_objects_answer_as_grpc_aio_does(nc: Client, case: Case, kind: str, variant: str) -> None:
    stand_in = next((d for d in differences(case) if d.stand_in and d.applies(False, kind, variant)), None)
    async with servers(nc) as (grpc_handlers, address, our_handlers, target):
        async def run(channel: Any, handlers: Handlers, interceptors: list[Any], row_kind: str) -> Observation:
            try:
                return await observe(case, channel, handlers, interceptors, row_kind)
            finally:
                await channel.close()

        def grpc_side(row_kind: str) -> Awaitable[Observation]:
            interceptors = aio_interceptors(variant)
            channel = grpc.aio.insecure_channel(address, interceptors=interceptors)
            return run(channel, grpc_handlers, interceptors, row_kind)

        # A row grpc.aio cannot run is not run there (its broken calls raise even from __del__).
        theirs = await grpc_side(kind if stand_in is None or stand_in.stand_in is None else stand_in.stand_in)
        interceptors = aio_interceptors(variant)
        ours = await run(nats_transport.aio.channel(nc, target, interceptors=interceptors), our_handlers,
                         interceptors, kind)
    compare(case, False, kind, variant, theirs, ours)


def _sync_channel(channel: grpc.Channel, variant: str) -> grpc.Channel:
    return grpc.intercept_channel(channel, SyncPassThrough()) if variant == "pass" else channel


@pytest.mark.parametrize(("case", "kind", "variant"), SYNC_ROWS)
async def test_sync_call_objects_answer_as_grpc_does(
    nc: Client, nats_server: NatsServer, case: Case, kind: str, variant: str
) -> None:
    assert case.sync is not None
    sync_case = case.sync
    async with servers(nc) as (grpc_handlers, address, our_handlers, target):
        def run() -> tuple[Observation, Observation]:
            with grpc.insecure_channel(address) as grpc_channel, \
                    nats_transport.channel(nats_server.url, target) as our_channel:
                theirs = sync_case(Side(_sync_channel(grpc_channel, variant), grpc_handlers), kind)
                ours = sync_case(Side(_sync_channel(our_channel, variant), our_handlers), kind)
            return theirs, ours

        theirs, ours = await asyncio.to_thread(run)
    compare(case, True, kind, variant, theirs, ours)

