"""A grpc.aio.Server that takes its calls from NATS instead of an HTTP/2 port."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import grpc
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from nats_transport import _envelope as env
from nats_transport import _framing, _status
from nats_transport._connection_guard import guard_connection, subscribe_direct
from nats_transport._context import (
    AbortError,
    AioServicerContext,
    CallState,
    SyncServicerContext,
    current_deadline,
    current_trace,
    initial_headers,
)
from nats_transport._discovery import EndpointStats, ServiceEndpointInfo, ServicesApi
from nats_transport._envelope import Kind
from nats_transport._handler_io import (
    FAILED,
    StreamIO,
    SyncRequestIterator,
    deserialize,
    read_request,
    serialize,
    sync_reader,
    sync_writer,
)
from nats_transport._keepalive import parse_interval, server_ping, server_stream_terms
from nats_transport._metadata import (
    CALL_HEADER,
    KEEPALIVE_HEADER,
    STREAM_HEADER,
    TIMEOUT_HEADER,
    TRACE_HEADERS,
    WINDOW_HEADER,
    MetadataError,
    decode_timeout,
    decode_window,
    from_headers,
)
from nats_transport._options import ServerOptions
from nats_transport._stream import (
    END,
    StreamEndpoint,
    StreamFailure,
    failure_of_cancel,
    headers_size,
    publish_quietly,
)
from nats_transport._subjects import cancel_subject, check_token, method_of, server_wildcard, stream_prefix_of
from nats_transport._thread_pool import ThreadPool
from nats_transport._unary_calls import CANCELLED_BY_CLIENT, UnaryCalls

log = logging.getLogger("nats_transport.server")


@dataclass(slots=True)
class TransportStats:
    """Counters of one server since it started (read them; the server updates them).

    Attributes:
        rejected: calls refused at the concurrency limit.
        bytes_received: NATS payload bytes of calls and stream messages received.
        bytes_sent: payload bytes of unary replies and of finished streams sent.
        credit_stalls: times a finished stream's sender waited for flow-control credit.
        unary_cancelled: unary handlers cancelled because their client gave the call up.
        cancels_ignored: cancel messages naming no unary call in progress here when they came
            (calls of other replicas, calls already finished, malformed messages).
    """

    rejected: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    credit_stalls: int = 0
    unary_cancelled: int = 0
    cancels_ignored: int = 0


class _HandlerCallDetails(NamedTuple):
    method: str
    invocation_metadata: Sequence[tuple[str, Any]]


class _CallFailed(Exception):
    """Ends a call early with a status, before any handler runs."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class Server(grpc.aio.Server):  # type: ignore[misc]
    """Serves gRPC handlers for one target; its replicas share calls through a queue group."""

    def __init__(
        self,
        nc: Client,
        target: str,
        *,
        interceptors: Sequence[Any] | None = None,
        options: ServerOptions,
    ) -> None:
        self._nc = guard_connection(nc)
        self._target = check_token(target, "target")
        self._options = options
        self._interceptors = tuple(interceptors or ())
        self._generic_handlers: list[grpc.GenericRpcHandler] = []
        self._registered: dict[str, grpc.RpcMethodHandler] = {}
        self._services: dict[str, list[str]] = {}
        self._prefix_len = len(options.subject_prefix) + len(target) + 2
        self._call_sub: Subscription | None = None
        self._stream_sub: Subscription | None = None
        self._cancel_sub: Subscription | None = None
        self._stream_prefix = ""
        self._streams: dict[str, StreamEndpoint] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)
        self._pool = ThreadPool(options.thread_pool_size, f"grpc-nats-{target}")
        self._started = False
        self._stopping = False
        self._refusing = False  # set once the call subscription is drained
        self._terminated = asyncio.Event()
        self._services_api: ServicesApi | None = None
        self._unary = UnaryCalls(nc)
        # The PING interval of a unary call whose client sent no keepalive header (the 1.0 default).
        self._default_ping = server_ping(options.keepalive_interval, None)
        self._resolve: Callable[[Any], Any] | None = None  # the interceptor chain, built at start
        self._async_behaviour: dict[Any, bool] = {}
        self.endpoint_stats: dict[str, EndpointStats] = {}
        self.stats = TransportStats()

    def __repr__(self) -> str:
        state = "stopping" if self._stopping else "serving" if self._started else "new"
        return f"<nats_transport.aio.Server target={self._target!r} {state} in_flight={len(self._tasks)}>"

    @property
    def target(self) -> str:
        """The logical server name replicas share."""
        return self._target

    @property
    def in_flight(self) -> int:
        """Calls being handled now."""
        return len(self._tasks)

    # -- grpc.aio.Server API --------------------------------------------------------------

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        """Add handlers that pick methods themselves (as grpc.aio.Server)."""
        for handler in generic_rpc_handlers:
            self._generic_handlers.append(handler)
            name = getattr(handler, "service_name", None)
            if callable(name):
                self._services.setdefault(name(), [])
            # grpc.method_handlers_generic_handler keeps "/svc/method" keys: list them for $SRV.
            for path in getattr(handler, "_method_handlers", None) or {}:
                service, _, method = path.lstrip("/").partition("/")
                methods = self._services.setdefault(service, [])
                if method and method not in methods:
                    methods.append(method)

    def add_registered_method_handlers(self, service_name: str, method_handlers: dict[str, Any]) -> None:
        """Add a service's method handlers by name (as generated ``add_*_to_server`` does)."""
        for method, handler in method_handlers.items():
            self._registered[f"/{service_name}/{method}"] = handler
        self._services.setdefault(service_name, []).extend(
            m for m in method_handlers if m not in self._services.get(service_name, [])
        )

    def add_insecure_port(self, address: str) -> int:
        """Not applicable: a NATS server listens on subjects, not ports."""
        raise RuntimeError(
            f"nats_transport servers take calls from NATS subject {self._call_wildcard()!r}; "
            "they open no port"
        )

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        """Not applicable: secure the NATS connection instead (TLS options of nats.connect)."""
        raise RuntimeError("nats_transport servers open no port; configure TLS on the NATS connection")

    async def start(self) -> None:
        """Subscribe to this target's calls (queue group = target) and to the per-call inbox."""
        if self._started:
            return
        self._started = True
        self._resolve = self._build_chain()
        self._stream_prefix = stream_prefix_of(self._nc.new_inbox())
        self._stream_sub = await subscribe_direct(self._nc, f"{self._stream_prefix}.*", self._on_stream_message)
        # Before the calls: a call must never arrive here while its cancel could not.
        self._cancel_sub = await self._nc.subscribe(
            cancel_subject(self._options.subject_prefix, self._target), cb=self._on_cancel
        )
        self._call_sub = await subscribe_direct(self._nc, self._call_wildcard(), self._on_call, queue=self._target)
        self._services_api = ServicesApi(
            self._nc,
            name=self._target,
            version=self._options.version,
            endpoints=self._endpoint_infos,
            stats=lambda: self.endpoint_stats,
        )
        await self._services_api.start()
        await self._nc.flush()

    async def stop(self, grace: float | None) -> None:
        """Refuse new calls at once (queue-group peers take them), finish in-flight ones
        within ``grace`` seconds, then cancel what is left."""
        if self._stopping:
            await self._terminated.wait()
            return
        self._stopping = True
        if self._call_sub is not None:
            # Drain, not unsubscribe: calls the server already routed to us before it saw the
            # UNSUB are still served (within the grace period) instead of silently dropped.
            await _quiet_drain(self._call_sub)
        self._refusing = True
        if self._services_api is not None:
            await self._services_api.stop()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace or 0)
            # Streams still open get a status (UNAVAILABLE, so clients retry elsewhere) rather
            # than silence until their keepalive timeout.
            for endpoint in list(self._streams.values()):
                endpoint.fail(StreamFailure(*_status.SHUTTING_DOWN))
            await self._unary.abandon_all(_status.SHUTTING_DOWN)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
            self._tasks = {task for task in self._tasks if not task.done()}
        for endpoint in list(self._streams.values()):
            endpoint.close()
        if self._stream_sub is not None:
            await _quiet_unsubscribe(self._stream_sub)
        if self._cancel_sub is not None:
            await _quiet_unsubscribe(self._cancel_sub)
        self._unary.close()
        self._pool.shutdown()
        self._terminated.set()

    async def wait_for_termination(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109 - grpc.aio's signature
        """Wait until stopped; return False if ``timeout`` passed first (as grpc.aio)."""
        try:
            await asyncio.wait_for(self._terminated.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # -- discovery ------------------------------------------------------------------------

    def _call_wildcard(self) -> str:
        return server_wildcard(self._options.subject_prefix, self._target)

    def _endpoint_infos(self) -> list[ServiceEndpointInfo]:
        infos = []
        for service, methods in sorted(self._services.items()):
            for method in methods:
                infos.append(
                    ServiceEndpointInfo(
                        name=f"{service}.{method}",
                        subject=f"{self._options.subject_prefix}.{self._target}.{service}.{method}",
                        queue_group=self._target,
                        service=service,
                    )
                )
        return infos

    def _record(self, state: CallState) -> None:
        """Count a finished call for ``$SRV.STATS``."""
        name = state.method[1:].replace("/", ".")
        stats = self.endpoint_stats.get(name)
        if stats is None:
            stats = self.endpoint_stats[name] = EndpointStats()
        stats.num_requests += 1
        stats.processing_time_ns += time.monotonic_ns() - state.started_ns
        if state.code not in (None, grpc.StatusCode.OK):
            stats.num_errors += 1
            stats.last_error = f"{state.code.name}: {state.details or ''}"

    # -- dispatch -------------------------------------------------------------------------

    def _find_handler(self, call_details: Any) -> Any:
        handler = self._registered.get(call_details.method)
        if handler is not None:
            return handler
        for generic in self._generic_handlers:
            handler = generic.service(call_details)
            if handler is not None:
                return handler
        return None

    def _build_chain(self) -> Callable[[Any], Any] | None:
        """The interceptors wrapped around handler lookup, once; None when there are none."""
        if not self._interceptors:
            return None

        async def resolve(call_details: Any) -> Any:
            return self._find_handler(call_details)

        continuation: Callable[[Any], Any] = resolve
        for interceptor in reversed(self._interceptors):
            continuation = _wrap_interceptor(interceptor, continuation)
        return continuation

    async def _lookup(self, method: str, metadata: Sequence[tuple[str, Any]]) -> Any:
        details = _HandlerCallDetails(method, metadata)
        if self._resolve is None:
            return self._find_handler(details)
        return await self._resolve(details)

    def _is_async(self, behaviour: Any) -> bool:
        known = self._async_behaviour.get(behaviour)
        if known is None:
            known = self._async_behaviour[behaviour] = _is_async(behaviour)
        return known

    def _admit(self, msg: Msg) -> bool:
        limit = self._options.maximum_concurrent_rpcs
        if self._refusing:
            self._spawn(self._reply_status(msg, *_status.SHUTTING_DOWN))
            return False
        if limit is not None and len(self._tasks) >= limit:
            self.stats.rejected += 1
            self._spawn(self._reply_status(msg, *_status.OVERLOADED))
            return False
        return True

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _on_call(self, msg: Msg) -> None:
        # Called from the connection's reader (subscribe_direct): each call gets its own task.
        if not msg.reply:
            return  # nobody to answer; a publish without reply is not a call
        self.stats.bytes_received += len(msg.data)
        if not self._admit(msg):
            return
        headers = msg.headers
        if headers and headers.get(STREAM_HEADER):
            self._spawn(self._serve_stream(msg))
        else:
            # The unary fast path removes itself from _tasks when it ends (a done callback would
            # cost a trip through the event loop per call); stop() sweeps any it cancelled
            # before they began.
            self._tasks.add(asyncio.get_running_loop().create_task(self._serve_unary(msg)))

    def _on_stream_message(self, msg: Msg) -> None:
        endpoint = self._streams.get(msg.subject[len(self._stream_prefix) + 1 :])
        self.stats.bytes_received += len(msg.data)
        if endpoint is not None:
            endpoint.receive(msg.data, msg.headers)

    async def _on_cancel(self, msg: Msg) -> None:
        """A client gave up a unary call (wire spec §5): cancel its handler if it runs here."""
        # Whoever may publish here can send anything: never raise, never answer.
        try:
            reply = msg.headers.get(CALL_HEADER) if msg.headers else None
            if reply:
                failure = failure_of_cancel(msg.data, _CLIENT_CANCELLED)
                if failure.code == grpc.StatusCode.OK:
                    failure = _CLIENT_CANCELLED
                if self._unary.cancel(reply, failure.code, failure.details):
                    self.stats.unary_cancelled += 1
                    return
        except Exception as exc:
            log.debug("malformed cancel message ignored: %r", exc)
        self.stats.cancels_ignored += 1

    def _ping_interval(self, headers: dict[str, str] | None) -> float | None:
        """The PING interval of a unary call: what its client asked for (wire spec §5)."""
        if headers:
            asked = headers.get(KEEPALIVE_HEADER)
            if asked is not None:
                return server_ping(self._options.keepalive_interval, parse_interval(asked))
        return self._default_ping

    async def _reply_status(self, msg: Msg, code: grpc.StatusCode, details: str) -> None:
        body = _framing.encode_trailers(_framing.Trailers(code.value[0], details))
        if msg.headers and msg.headers.get(STREAM_HEADER):
            # A stream's client waits for stream messages: answer in that form.
            body = env.pack(Kind.DATA, 0, body)
        await publish_quietly(self._nc, msg.reply, body)

    def _call_state(self, msg: Msg, method: str) -> CallState:
        headers = msg.headers
        deadline = None
        metadata: tuple[tuple[str, Any], ...] = ()
        if headers:
            timeout = headers.get(TIMEOUT_HEADER)
            if timeout is not None:
                try:
                    deadline = time.monotonic() + decode_timeout(timeout)
                except ValueError as exc:
                    raise _CallFailed(grpc.StatusCode.INTERNAL, str(exc)) from exc
            try:
                metadata = from_headers(headers)
            except MetadataError as exc:
                raise _CallFailed(grpc.StatusCode.INTERNAL, str(exc)) from exc
        return CallState(method, metadata, deadline, peer=f"nats:{msg.reply}")

    async def _prepare(self, msg: Msg) -> tuple[CallState, Any]:
        method = method_of(msg.subject, self._prefix_len)
        if method is None:
            raise _CallFailed(*_status.UNIMPLEMENTED_METHOD)
        state = self._call_state(msg, method)
        # Interceptors get grpc's metadatum objects (.key/.value), made only when there are any.
        metadata = state.invocation_metadatum() if self._resolve else state.invocation_metadata
        handler = await self._lookup(method, metadata)
        if handler is None:
            raise _CallFailed(*_status.UNIMPLEMENTED_METHOD)
        return state, handler

    # -- unary fast path ------------------------------------------------------------------

    async def _serve_unary(self, msg: Msg) -> None:
        try:
            await self._serve_unary_call(msg)
        finally:
            self._tasks.discard(asyncio.current_task())  # always in a task: current_task() is it

    async def _serve_unary_call(self, msg: Msg) -> None:
        try:
            state, handler = await self._prepare(msg)
            if handler.request_streaming or handler.response_streaming:
                raise _CallFailed(
                    grpc.StatusCode.INTERNAL,
                    f"{state.method} is a streaming method; open it with the {STREAM_HEADER} header",
                )
            try:
                frames = _framing.decode_complete(msg.data, self._options.max_message_size)
            except _framing.FrameTooLarge as exc:
                raise _CallFailed(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)) from exc
            except _framing.FramingError as exc:
                raise _CallFailed(grpc.StatusCode.INTERNAL, f"malformed request: {exc}") from exc
            if len(frames) != 1 or frames[0][0] != _framing.MESSAGE_FLAG:
                raise _CallFailed(grpc.StatusCode.INTERNAL, "a unary request must be exactly one message frame")
        except _CallFailed as failed:
            await self._reply_status(msg, failed.code, failed.details)
            return
        task = asyncio.current_task()
        assert task is not None
        call = self._unary.begin(msg.reply, self._ping_interval(msg.headers), state, task)
        if call.cancelled:  # its cancel overtook it: the handler never runs
            self.stats.unary_cancelled += 1
            self._record(state)
            return
        try:
            response = await self._run_unary(state, handler, frames[0][1], msg.headers)
        finally:
            self._unary.end(call)
            await call.settle()
        if call.cancelled:  # its client gave it up: nothing more goes to it (wire spec §5)
            self._record(state)
            return
        await self._send_unary_reply(msg.reply, state, response, call.seq)

    async def _run_unary(
        self, state: CallState, handler: Any, payload: bytes, headers: dict[str, str] | None
    ) -> bytes | None:
        """Run a unary-response handler; return the serialized response or None (status set)."""
        request = deserialize(handler.request_deserializer, payload, state)
        if request is FAILED:
            return None
        runner = handler.unary_unary
        response = await self._invoke(state, runner, request, headers, None)
        if response is FAILED or state.code not in (None, grpc.StatusCode.OK):
            return None
        return serialize(handler.response_serializer, response, state)

    async def _send_unary_reply(self, reply: str, state: CallState, response: bytes | None, seq: int) -> None:
        state.finish()
        headers = initial_headers(state)
        if headers and headers_size(headers) + 1024 > self._nc.max_payload:
            # Too big to travel: publishing it would make nats-server drop our connection.
            headers, response = None, None
            state.code = grpc.StatusCode.RESOURCE_EXHAUSTED
            state.details = "initial metadata exceeds the connection's max_payload"
        trailers = state.trailers(default_code=grpc.StatusCode.OK if response is not None else grpc.StatusCode.UNKNOWN)
        parts: list[bytes] = []
        if response is not None and trailers.code == 0:
            if len(response) > self._options.max_message_size:
                trailers = _framing.Trailers(
                    grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
                    f"response of {len(response)} bytes exceeds the limit of {self._options.max_message_size}",
                )
            else:
                parts.append(_framing.encode_message(response))
        if trailers.code != 0 or trailers.message or trailers.metadata or trailers.details or not parts:
            parts.append(_framing.encode_trailers(trailers))
        if trailers.code != 0 and state.code in (None, grpc.StatusCode.OK):
            state.code = _status.code_from_number(trailers.code)
        self._record(state)
        body = b"".join(parts)
        room = self._nc.max_payload - (headers_size(headers) if headers else 0)
        if len(body) <= room and seq == 0:
            self.stats.bytes_sent += len(body)
            await publish_quietly(self._nc, reply, body, headers)
            return
        # Too big for one NATS message (or keepalives already went out): send it as numbered
        # DATA chunks ending with a trailer frame, so the client can reassemble in order.
        if not body.endswith(_framing.encode_trailers(trailers)):
            body += _framing.encode_trailers(trailers)
        chunk = self._nc.max_payload - env.ENVELOPE_SIZE - 512
        first = True
        for piece in _framing.split(body, chunk - (headers_size(headers) if headers else 0)):
            await publish_quietly(self._nc, reply, env.pack(Kind.DATA, seq, piece), headers if first else None)
            first = False
            seq += 1

    async def _invoke(
        self,
        state: CallState,
        behaviour: Any,
        request: Any,
        headers: dict[str, str] | None,
        stream: StreamIO | None,
    ) -> Any:
        """Run a handler with the call's deadline, trace context and failure mapping."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        current_deadline.set(state.deadline)
        if headers and ("traceparent" in headers or "tracestate" in headers):  # TRACE_HEADERS, unrolled
            current_trace.set(tuple((k, headers[k]) for k in TRACE_HEADERS if k in headers))
        deadline_handle = None
        if state.deadline is not None:
            deadline_handle = loop.call_at(
                loop.time() + max(state.deadline - time.monotonic(), 0.0), _expire, state, task
            )
        writer = stream.write if stream is not None else None
        reader = stream if stream is not None else None
        try:
            if self._is_async(behaviour):
                context: Any = AioServicerContext(state, writer, reader, task)
                result = behaviour(request, context)
                if inspect.isasyncgen(result):
                    assert stream is not None
                    async for item in result:
                        await stream.write(item)
                    return None
                return await result
            sync_context = SyncServicerContext(state, sync_writer(stream, loop), sync_reader(stream, loop), loop)
            if request is stream and stream is not None:
                request = SyncRequestIterator(stream, loop)  # plain functions iterate blocking
            # One copy per call, of the deadline and trace set above: the handler's thread runs
            # in it (and each step of its response iterator), never in this task's own context.
            ctx = contextvars.copy_context()
            pool = self._pool
            if stream is not None and stream.response_streaming:
                iterator = await pool.run(behaviour, request, sync_context, context=ctx)
                sentinel = object()
                while True:
                    item = await pool.run(_next_or, iterator, sentinel, context=ctx)
                    if item is sentinel:
                        return None
                    await stream.write(item)
            return await pool.run(behaviour, request, sync_context, context=ctx)
        except AbortError:
            return FAILED
        except asyncio.CancelledError:
            if state.code is None:
                state.code = grpc.StatusCode.DEADLINE_EXCEEDED if state.expired else grpc.StatusCode.CANCELLED
                state.details = "Deadline Exceeded" if state.code == grpc.StatusCode.DEADLINE_EXCEEDED else "Cancelled"
            if state.code == grpc.StatusCode.DEADLINE_EXCEEDED or state.cancelled:
                return FAILED
            raise
        except StreamFailure as failure:
            state.code, state.details = failure.code, failure.details
            return FAILED
        except MetadataError as exc:
            state.code, state.details = grpc.StatusCode.INTERNAL, str(exc)
            return FAILED
        except Exception:
            log.exception("exception calling application method %s", state.method)
            if state.code is None or state.code == grpc.StatusCode.OK:
                state.code, state.details = _status.HANDLER_EXCEPTION
            return FAILED
        finally:
            if deadline_handle is not None:
                deadline_handle.cancel()

    # -- stream mode ----------------------------------------------------------------------

    async def _serve_stream(self, msg: Msg) -> None:
        headers = msg.headers or {}
        refusal = None
        try:  # absent or 0: the client takes our own window size, as 1.0 allowed
            client_window = decode_window(headers.get(WINDOW_HEADER)) or self._options.stream_window
        except ValueError as exc:  # refused after ACCEPT, as any bad header is (wire spec §6.3)
            client_window, refusal = self._options.stream_window, _CallFailed(grpc.StatusCode.INTERNAL, str(exc))
        keepalive = server_stream_terms(self._options, parse_interval(headers.get(KEEPALIVE_HEADER)))
        call_id = str(next(self._ids))
        state_box: list[CallState] = []
        task = asyncio.current_task()
        assert task is not None

        def on_failure(failure: StreamFailure) -> None:
            if state_box:
                state_box[0].code = state_box[0].code or failure.code
                state_box[0].details = state_box[0].details or failure.details
                state_box[0].cancel()
            task.cancel()

        def on_control(kind: int, payload: memoryview, _headers: dict[str, str] | None) -> None:
            if kind == Kind.HALF_CLOSE:
                endpoint.inbound.put_nowait(END)
            elif kind == Kind.CANCEL:
                # The client has ended the call: cancel the handler and send nothing more, not
                # even trailers (wire spec §6.7); closing the endpoint silences it.
                endpoint.fail(failure_of_cancel(payload, _CLIENT_CANCELLED), tell_peer=False)

        endpoint = StreamEndpoint(
            self._nc,
            window=self._options.stream_window,
            max_message=self._options.max_message_size,
            max_chunk=self._nc.max_payload - env.ENVELOPE_SIZE,
            keepalive_interval=keepalive.ping,
            keepalive_timeout=keepalive.timeout,
            on_failure=on_failure,
            on_control=on_control,
        )
        self._streams[call_id] = endpoint
        try:
            endpoint.start(msg.reply, client_window)
            endpoint.send_control(
                Kind.ACCEPT,
                env.CREDIT.pack(self._options.stream_window) + f"{self._stream_prefix}.{call_id}".encode(),
                None if keepalive.answer is None else {KEEPALIVE_HEADER: keepalive.answer},
            )
            endpoint.receive(msg.data, None)
            try:
                if refusal is not None:
                    raise refusal
                state, handler = await self._prepare(msg)
            except _CallFailed as failed:
                endpoint.queue_final(
                    Kind.DATA, _framing.encode_trailers(_framing.Trailers(failed.code.value[0], failed.details))
                )
                await endpoint.flushed()
                return
            state.endpoint = endpoint
            state_box.append(state)
            await self._run_stream(state, handler, endpoint, msg.headers)
        except asyncio.CancelledError:
            pass  # the client cancelled or vanished; nobody is waiting for a status
        finally:
            endpoint.close()
            self.stats.bytes_sent += endpoint.bytes_sent
            self.stats.credit_stalls += endpoint.credit_stalls
            self._streams.pop(call_id, None)
            if state_box:
                state_box[0].finish()

    async def _run_stream(
        self, state: CallState, handler: Any, endpoint: StreamEndpoint, headers: dict[str, str] | None
    ) -> None:
        stream = StreamIO(state, endpoint, handler, self._options.max_message_size)
        if handler.request_streaming:
            request: Any = stream
            behaviour = handler.stream_stream if handler.response_streaming else handler.stream_unary
        else:
            first = await read_request(endpoint, state)
            if first is FAILED:
                request = FAILED
            elif first is None:
                state.code = state.code or grpc.StatusCode.INTERNAL
                state.details = state.details or "the client half-closed without sending the request"
                request = FAILED
            else:
                request = deserialize(handler.request_deserializer, first, state)
            behaviour = handler.unary_stream if handler.response_streaming else handler.unary_unary
        result: Any = FAILED
        if request is not FAILED:
            result = await self._invoke(state, behaviour, request, headers, stream)
        if not handler.response_streaming and result is not FAILED and state.code in (None, grpc.StatusCode.OK):
            serialized = serialize(handler.response_serializer, result, state)
            if serialized is not None:
                await stream.write_bytes(serialized)
        if state.code is None and result is FAILED:
            state.code = grpc.StatusCode.UNKNOWN
        self._record(state)
        if not state.initial_metadata_sent:
            headers = initial_headers(state)
            if headers and headers_size(headers) + 1024 > endpoint.max_payload:
                headers = None
                state.code = grpc.StatusCode.RESOURCE_EXHAUSTED
                state.details = "initial metadata exceeds the connection's max_payload"
            endpoint.headers_to_send = headers
        state.finish()
        endpoint.queue_final(Kind.DATA, _framing.encode_trailers(state.trailers()))
        await endpoint.flushed()


_CLIENT_CANCELLED = StreamFailure(grpc.StatusCode.CANCELLED, CANCELLED_BY_CLIENT)


def _next_or(iterator: Any, default: Any) -> Any:
    return next(iterator, default)


def _expire(state: CallState, task: asyncio.Task[Any]) -> None:
    state.code = grpc.StatusCode.DEADLINE_EXCEEDED
    state.details = "Deadline Exceeded"
    state.expired = True
    state.cancel()
    task.cancel()


def _is_async(behaviour: Any) -> bool:
    return inspect.iscoroutinefunction(behaviour) or inspect.isasyncgenfunction(behaviour)


def _wrap_interceptor(interceptor: Any, continuation: Callable[[Any], Any]) -> Callable[[Any], Any]:
    async def call(details: Any) -> Any:
        if inspect.iscoroutinefunction(interceptor.intercept_service):
            return await interceptor.intercept_service(continuation, details)

        # A grpc.ServerInterceptor is synchronous: give it a synchronous continuation that
        # resolves the rest of the chain on this loop.
        # A grpc.ServerInterceptor is synchronous and so is its continuation: run it in a thread
        # whose continuation resolves the rest of the chain on this loop, keeping the order.
        loop = asyncio.get_running_loop()

        def sync_continuation(call_details: Any) -> Any:
            return asyncio.run_coroutine_threadsafe(continuation(call_details), loop).result()

        return await asyncio.to_thread(interceptor.intercept_service, sync_continuation, details)

    return call


async def _quiet_drain(sub: Subscription) -> None:
    try:
        await sub.drain()  # type: ignore[no-untyped-call]
    except Exception as exc:  # connection already closed or draining
        log.debug("subscription drain failed: %s", exc)


async def _quiet_unsubscribe(sub: Subscription) -> None:
    try:
        await sub.unsubscribe()
    except Exception as exc:  # connection already closed
        log.debug("unsubscribe failed: %s", exc)
