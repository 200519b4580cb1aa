"""A synchronous grpc.Channel over NATS: it owns a NATS connection on a background loop thread.

Calls are handed to that loop through its inbox (``_loop_bridge``); the calling thread blocks
on a lock until the call ends. The caller's contextvars (inherited deadline, trace context)
travel with each call. Closing the channel ends the calls still in flight CANCELLED, as
grpcio's does.
"""

from __future__ import annotations

import _thread
import asyncio
import concurrent.futures
import contextlib
import contextvars
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import nats
from nats.aio.client import Client

from nats_transport import _client
from nats_transport._circuit import breaker_for
from nats_transport._connection_guard import WATCHDOG_CONNECT_OPTIONS, guard_connection
from nats_transport._loop_bridge import Awaited, LoopInbox
from nats_transport._options import ChannelOptions
from nats_transport._retry import CallPolicy, throttle_for
from nats_transport._service_config import ServiceConfig, parse_service_config
from nats_transport._subjects import call_subject, check_token
from nats_transport._sync_calls import RpcError, StreamIterator, UnaryCall, as_coroutine
from nats_transport.aio._call_base import SERIALIZE_FAILED, internal
from nats_transport.aio._calls import UnaryUnaryCall
from nats_transport.aio._stream_call import StreamCall

__all__ = ["Channel", "RpcError", "channel"]

T = TypeVar("T")
_TRequest = TypeVar("_TRequest")
_TResponse = TypeVar("_TResponse")

if TYPE_CHECKING:
    # grpc's multi-callables are generic in grpc's stubs only: subscripted at runtime, they raise.
    _UnaryUnaryMultiCallable = grpc.UnaryUnaryMultiCallable[Any, Any]
    _UnaryStreamMultiCallable = grpc.UnaryStreamMultiCallable[Any, Any]
    _StreamUnaryMultiCallable = grpc.StreamUnaryMultiCallable[Any, Any]
    _StreamStreamMultiCallable = grpc.StreamStreamMultiCallable[Any, Any]
else:
    _UnaryUnaryMultiCallable = grpc.UnaryUnaryMultiCallable
    _UnaryStreamMultiCallable = grpc.UnaryStreamMultiCallable
    _StreamUnaryMultiCallable = grpc.StreamUnaryMultiCallable
    _StreamStreamMultiCallable = grpc.StreamStreamMultiCallable


class _MultiCallable(
    _UnaryUnaryMultiCallable,
    _UnaryStreamMultiCallable,
    _StreamUnaryMultiCallable,
    _StreamStreamMultiCallable,
):
    def __init__(self, channel: Channel, method: str, serializer: Any, deserializer: Any,
                 kind: tuple[bool, bool]) -> None:
        self._channel = channel
        self._subject = call_subject(channel._options.subject_prefix, channel.target, method)
        self._serializer = serializer
        self._deserializer = deserializer
        self._kind = kind
        self._policy = channel._policy(method)

    def _timeout(self, timeout: float | None) -> float | None:
        limit = self._policy.config.timeout
        # The service config's timeout caps the call's own, as in grpcio.
        return timeout if limit is None else limit if timeout is None else min(timeout, limit)

    def _serialized(self, request: Any) -> bytes:
        """The one request of a call, serialized here in the calling thread: as in grpcio, a
        serializer that fails raises INTERNAL before anything starts."""
        try:
            return request if self._serializer is None else self._serializer(request)  # type: ignore[no-any-return]
        except Exception as exc:
            raise RpcError(internal(SERIALIZE_FAILED)) from exc

    def _unary_future(self, request: Any, timeout: float | None, metadata: Any,
                      wait_for_ready: bool | None = None) -> UnaryCall:
        channel = self._channel
        nc = channel._nc_checked()
        deadline = _client.effective_deadline(self._timeout(timeout))
        payload = self._serialized(request)

        def start() -> UnaryUnaryCall:  # on the loop thread, in the caller's context
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            return UnaryUnaryCall(nc, channel._options, self._subject, payload, None, self._deserializer,
                                  remaining, metadata, self._policy, wait_for_ready)

        return UnaryCall(channel, start, deadline)

    def _stream(self, request: Any, timeout: float | None, metadata: Any) -> StreamIterator:
        request_streaming, response_streaming = self._kind
        channel = self._channel
        deadline = _client.effective_deadline(self._timeout(timeout))
        serializer = self._serializer
        if not request_streaming:
            request, serializer = self._serialized(request), None

        async def start() -> StreamCall:  # on the loop thread, in the caller's context
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            call = StreamCall(
                channel._nc_checked(), channel._options, self._subject, serializer, self._deserializer,
                remaining, metadata,
                request=None if request_streaming else request,
                request_streaming=request_streaming, response_streaming=response_streaming,
                policy=self._policy,
            )
            channel._track_stream(call)
            return call

        call = channel._run(start())
        if request_streaming:
            # A blocking request iterator must not run on the loop thread: feed it from here.
            threading.Thread(target=channel._feed, args=(call, request), daemon=True,
                             name="grpc-nats-request-feeder").start()
        return StreamIterator(channel, call, response_streaming)

    def __call__(self, request: Any, timeout: float | None = None, metadata: Any = None,
                 credentials: Any = None, wait_for_ready: bool | None = None, compression: Any = None) -> Any:
        self._channel._check_thread()
        if self._kind == (False, False):
            return _blocking_result(self._unary_future(request, timeout, metadata, wait_for_ready))
        iterator = self._stream(request, timeout, metadata)
        return iterator if self._kind[1] else _blocking_result(iterator)

    def with_call(self, request: Any, timeout: float | None = None, metadata: Any = None,
                  credentials: Any = None, wait_for_ready: bool | None = None, compression: Any = None) -> Any:
        self._channel._check_thread()
        if self._kind == (False, False):
            call: Any = self._unary_future(request, timeout, metadata, wait_for_ready)
        else:
            call = self._stream(request, timeout, metadata)
        return _blocking_result(call), call

    def future(self, request: Any, timeout: float | None = None, metadata: Any = None,
               credentials: Any = None, wait_for_ready: bool | None = None, compression: Any = None) -> Any:
        if self._kind == (False, False):
            return self._unary_future(request, timeout, metadata, wait_for_ready)
        return self._stream(request, timeout, metadata)


def _blocking_result(call: UnaryCall | StreamIterator) -> Any:
    """The result of a call the calling thread blocks on. If the wait is interrupted (Ctrl-C),
    the call is cancelled, as grpcio's blocking calls are: nobody is left to read its answer."""
    try:
        return call.result()
    except BaseException:
        if not call.done():  # a call that ended raised its own error: nothing to cancel
            call.cancel()
        raise


class Channel(grpc.Channel):
    """A grpc.Channel calling ``target`` over NATS, for synchronous programs."""

    def __init__(self, servers: str | Sequence[str], target: str, *, options: ChannelOptions,
                 connect_options: dict[str, Any] | None = None,
                 service_config: str | Mapping[str, Any] | ServiceConfig | None = None) -> None:
        self._target = check_token(target, "target")
        self._options = options
        self._service_config = parse_service_config(service_config)
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._inbox = LoopInbox(self._loop)
        # What close() must end: unary calls begun on the loop, streaming calls, and the waits
        # of threads on coroutines (a stream's reads). Changed on the loop thread only.
        self._unary_calls: set[UnaryCall] = set()
        self._streams: set[StreamCall] = set()
        self._closed_streams: set[StreamCall] = set()  # the streams close() ended, for their errors
        self._awaiting: set[Awaited[Any]] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name=f"grpc-nats-channel-{target}")
        self._thread.start()
        self._loop_thread_id = self._thread.ident
        servers_list = [servers] if isinstance(servers, str) else list(servers)
        kwargs = {"max_reconnect_attempts": -1, **WATCHDOG_CONNECT_OPTIONS, **(connect_options or {})}
        self._nc: Client | None = None
        try:
            self._nc = guard_connection(self._run(nats.connect(servers_list, **kwargs)))
        except BaseException:
            self._closed = True
            self._stop_loop()
            raise

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<nats_transport.Channel target={self._target!r} {state}>"

    @property
    def target(self) -> str:
        """The logical server this channel calls."""
        return self._target

    def _policy(self, method: str) -> CallPolicy:
        """How calls of ``method`` are attempted (see the aio channel's twin)."""
        config = self._service_config
        breaker = self._options.circuit_breaker
        return CallPolicy(
            config.for_method(method),
            throttle_for(self._target, config.throttling),
            None if breaker is None else breaker_for(self._nc_checked(), self._target, breaker),
        )

    def _nc_checked(self) -> Client:
        if self._nc is None or self._closed:
            raise RuntimeError("the channel is closed")
        return self._nc

    def _check_thread(self) -> None:
        if _thread.get_ident() == self._loop_thread_id:
            raise RuntimeError(
                "a blocking call on a nats_transport.Channel from its own event-loop thread would "
                "deadlock; use nats_transport.aio.channel in async code"
            )

    def _call_soon(self, fn: Callable[[T], None], arg: T) -> None:
        """Run ``fn(arg)`` on the loop thread in a copy of the caller's context, so the inherited
        deadline and trace context (contextvars) of a handler thread reach the call.

        Raises RuntimeError once the channel is closed. What is handed over as the loop stops
        runs on the closing thread (or, later still, on the calling one): ``fn`` must look at
        ``_closed``, or which thread it is on, before it touches the loop.
        """
        if self._closed:
            raise RuntimeError("the channel is closed")
        self._inbox.submit(fn, arg, contextvars.copy_context())

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop in a copy of the caller's context and wait for its result.

        Raises RuntimeError once the channel is closed, ``concurrent.futures.CancelledError`` if
        the coroutine's task was cancelled (or the channel closed under it) and TimeoutError
        after ``timeout`` seconds (the coroutine runs on).
        """
        self._check_thread()
        awaited = Awaited(coro)
        try:
            self._call_soon(self._start_awaited, awaited)
        except RuntimeError:
            awaited.refuse(RuntimeError("the channel is closed"))
        return awaited.result(timeout)

    def _start_awaited(self, awaited: Awaited[Any]) -> None:
        if _thread.get_ident() != self._loop_thread_id:
            # Run by the inbox on another thread: the loop has stopped, nothing would run it.
            awaited.refuse(RuntimeError("the channel is closed"))
            return
        # Handed over before close() and started while it runs: it runs, and ends with what
        # it waits on (close cancels the streams), or is let go once the loop has stopped.
        self._awaiting.add(awaited)
        awaited.start(self._loop).add_done_callback(lambda _: self._awaiting.discard(awaited))

    def _track_stream(self, call: StreamCall) -> None:  # on the loop thread
        """Keep ``call`` until it ends, for close() to cancel."""
        self._streams.add(call)
        call.add_done_callback(self._streams.discard)

    def _feed(self, call: StreamCall, requests: Any) -> None:
        try:
            for request in requests:
                if call.done() or self._closed:
                    return
                self._run(call.write(request))
            if not self._closed:
                self._run(call.done_writing())
        except Exception:  # the call ended (its status tells why) or the iterator failed
            if not call.done() and not self._closed:
                with contextlib.suppress(RuntimeError):  # closed meanwhile
                    self._run(as_coroutine(call.cancel))

    def unary_unary(
        self,
        method: str,
        request_serializer: Callable[[_TRequest], bytes] | None = None,
        response_deserializer: Callable[[bytes], _TResponse] | None = None,
        _registered_method: bool = False,
    ) -> grpc.UnaryUnaryMultiCallable[_TRequest, _TResponse]:
        return _MultiCallable(self, method, request_serializer, response_deserializer, (False, False))

    def unary_stream(
        self,
        method: str,
        request_serializer: Callable[[_TRequest], bytes] | None = None,
        response_deserializer: Callable[[bytes], _TResponse] | None = None,
        _registered_method: bool = False,
    ) -> grpc.UnaryStreamMultiCallable[_TRequest, _TResponse]:
        return _MultiCallable(self, method, request_serializer, response_deserializer, (False, True))

    def stream_unary(
        self,
        method: str,
        request_serializer: Callable[[_TRequest], bytes] | None = None,
        response_deserializer: Callable[[bytes], _TResponse] | None = None,
        _registered_method: bool = False,
    ) -> grpc.StreamUnaryMultiCallable[_TRequest, _TResponse]:
        return _MultiCallable(self, method, request_serializer, response_deserializer, (True, False))

    def stream_stream(
        self,
        method: str,
        request_serializer: Callable[[_TRequest], bytes] | None = None,
        response_deserializer: Callable[[bytes], _TResponse] | None = None,
        _registered_method: bool = False,
    ) -> grpc.StreamStreamMultiCallable[_TRequest, _TResponse]:
        return _MultiCallable(self, method, request_serializer, response_deserializer, (True, True))

    def subscribe(self, callback: Callable[[grpc.ChannelConnectivity], None], try_to_connect: bool = False) -> None:
        """Report the current state once (NATS reconnects on its own; see get_state in aio)."""
        nc = self._nc
        ready = nc is not None and nc.is_connected
        callback(grpc.ChannelConnectivity.READY if ready else grpc.ChannelConnectivity.TRANSIENT_FAILURE)

    def unsubscribe(self, callback: Callable[[grpc.ChannelConnectivity], None]) -> None:
        """Nothing to undo: ``subscribe`` keeps no callback."""

    def close(self) -> None:
        """End the calls in flight (CANCELLED, "Channel closed!", as grpcio's channel does),
        close the NATS connection and stop the loop thread."""
        if self._closed:
            return
        self._closed = True  # from here on, what reaches the loop ends instead of starting
        shutdown = Awaited(self._shut_down())
        self._inbox.submit(shutdown.start, self._loop, contextvars.Context())
        # Closing a broken connection must not raise from close().
        with contextlib.suppress(Exception):
            shutdown.result(5)
        self._nc = None
        self._stop_loop()

    async def _shut_down(self) -> None:
        for unary in list(self._unary_calls):
            unary.end_by_close()
        for stream in list(self._streams):
            if not stream.done():
                # Noted first: a thread that sees it end must see why. The loop thread alone
                # ends calls, so it is still running here.
                self._closed_streams.add(stream)
                stream.cancel()  # the server hears of it; threads reading it see it end
        if self._nc is not None:
            await self._nc.close()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        # What the loop will never run now: unary calls handed over as it stopped end here,
        # and threads still waiting on a coroutine (a read of a stream cancelled above whose
        # task had not finished) are let go.
        self._inbox.close()
        for awaited in list(self._awaiting):
            awaited.refuse(concurrent.futures.CancelledError())
        if not self._loop.is_running():
            self._loop.close()

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def channel(servers: str | Sequence[str], target: str, *, options: ChannelOptions | None = None,
            service_config: str | Mapping[str, Any] | ServiceConfig | None = None,
            **connect_options: Any) -> Channel:
    """A grpc.Channel whose calls go to ``target`` over NATS, for synchronous code.

    Args:
        servers: NATS URL(s).
        target: the logical server to call.
        options: transport settings.
        service_config: a gRPC service config, as for ``nats_transport.aio.channel``.
        **connect_options: passed to ``nats.connect`` (``tls``, ``user_credentials``,
            ``nkeys_seed``, ``user``/``password``, ``token``, ``inbox_prefix``, ...).

    Raises:
        ServiceConfigError: the service config is malformed or invalid (a ValueError).
    """
    config = parse_service_config(service_config)  # refused before a connection is made
    return Channel(servers, target, options=options or ChannelOptions(), connect_options=connect_options,
                   service_config=config)
