"""A synchronous grpc.Channel over NATS: it owns a NATS connection on a background loop thread.

Calls are submitted to that loop; the calling thread blocks on a concurrent future. The
caller's contextvars (inherited deadline, trace context) travel with each call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import grpc
import nats
from nats.aio.client import Client

from nats_transport import _client
from nats_transport._circuit import breaker_for
from nats_transport._connection_guard import WATCHDOG_CONNECT_OPTIONS, guard_connection
from nats_transport._framing import Trailers
from nats_transport._metadata import MetadataTuple
from nats_transport._options import ChannelOptions
from nats_transport._retry import CallPolicy, throttle_for
from nats_transport._service_config import ServiceConfig, parse_service_config
from nats_transport._status import code_from_number
from nats_transport._subjects import call_subject, check_token
from nats_transport.aio._calls import StreamCall, attempt_unary, trailing_of

T = TypeVar("T")


class RpcError(grpc.RpcError, grpc.Call, grpc.Future):  # type: ignore[misc]
    """A failed call: an RpcError that is also a Call and a Future, as grpcio's errors are."""

    def __init__(self, trailers: Trailers, initial: tuple[MetadataTuple, ...] = ()) -> None:
        super().__init__(trailers.message)
        self._trailers = trailers
        self._initial = initial

    def __repr__(self) -> str:
        return f"<nats_transport.RpcError code={self.code().name} details={self.details()!r}>"

    __str__ = __repr__

    def code(self) -> grpc.StatusCode:
        return code_from_number(self._trailers.code)

    def details(self) -> str:
        return self._trailers.message

    def initial_metadata(self) -> tuple[MetadataTuple, ...]:
        return self._initial

    def trailing_metadata(self) -> tuple[MetadataTuple, ...]:
        return trailing_of(self._trailers)

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float | None:
        return None

    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return bool(self._trailers.code == grpc.StatusCode.CANCELLED.value[0])

    def running(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def result(self, timeout: float | None = None) -> Any:
        raise self

    def exception(self, timeout: float | None = None) -> RpcError:
        return self

    def traceback(self, timeout: float | None = None) -> None:
        return None

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        fn(self)


class _UnaryCall(grpc.Call, grpc.Future):  # type: ignore[misc]
    """A unary call in flight (what ``future()`` returns, and ``with_call()``'s second item)."""

    def __init__(self, future: concurrent.futures.Future[_client.Outcome], deadline: float | None,
                 deserializer: Callable[[bytes], Any] | None) -> None:
        self._future = future
        self._deadline = deadline
        self._deserializer = deserializer

    def _outcome(self, timeout: float | None = None) -> _client.Outcome:
        try:
            return self._future.result(timeout)
        except concurrent.futures.CancelledError:
            return _client.failed(grpc.StatusCode.CANCELLED, "Locally cancelled by application!")
        except concurrent.futures.TimeoutError:
            raise grpc.FutureTimeoutError() from None

    def result(self, timeout: float | None = None) -> Any:
        outcome = self._outcome(timeout)
        if outcome.trailers.code != 0 or outcome.response is None:
            raise RpcError(outcome.trailers, outcome.initial_metadata)
        data = outcome.response
        return data if self._deserializer is None else self._deserializer(data)

    def exception(self, timeout: float | None = None) -> RpcError | None:
        outcome = self._outcome(timeout)
        return RpcError(outcome.trailers, outcome.initial_metadata) if outcome.trailers.code else None

    def traceback(self, timeout: float | None = None) -> Any:
        error = self.exception(timeout)
        return error.__traceback__ if error is not None else None

    def code(self) -> grpc.StatusCode:
        return code_from_number(self._outcome().trailers.code)

    def details(self) -> str:
        return self._outcome().trailers.message

    def initial_metadata(self) -> tuple[MetadataTuple, ...]:
        return self._outcome().initial_metadata

    def trailing_metadata(self) -> tuple[MetadataTuple, ...]:
        return trailing_of(self._outcome().trailers)

    def cancel(self) -> bool:
        return self._future.cancel()

    def cancelled(self) -> bool:
        return self._future.cancelled()

    def running(self) -> bool:
        return self._future.running()

    def done(self) -> bool:
        return self._future.done()

    def is_active(self) -> bool:
        return not self._future.done()

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(self._deadline - time.monotonic(), 0.0)

    def add_callback(self, callback: Callable[[], None]) -> bool:
        if self._future.done():
            return False
        self._future.add_done_callback(lambda _: callback())
        return True

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        self._future.add_done_callback(lambda _: fn(self))


class _StreamIterator(grpc.Call, grpc.Future):  # type: ignore[misc]
    """Responses of a streaming call as a blocking iterator that is also a Call and a Future."""

    def __init__(self, channel: Channel, call: StreamCall, response_streaming: bool) -> None:
        self._channel = channel
        self._call = call
        self._response_streaming = response_streaming

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            message = self._channel._run(self._call.read())
        except (grpc.aio.AioRpcError, asyncio.CancelledError, concurrent.futures.CancelledError) as err:
            # grpcio's sync iterators raise an RpcError (CANCELLED) after cancel(), never
            # asyncio's CancelledError.
            raise self._error() from err
        if message is grpc.aio.EOF:
            raise StopIteration
        return message

    def _error(self) -> RpcError:
        trailers = self._call._trailers or Trailers(grpc.StatusCode.UNKNOWN.value[0], "call failed")
        return RpcError(trailers, self._call._initial)

    def _wait(self) -> Trailers:
        return self._channel._run(self._call._wait_done())

    def result(self, timeout: float | None = None) -> Any:
        try:
            return self._channel._run(self._call._unary_response(), timeout)
        except (grpc.aio.AioRpcError, asyncio.CancelledError, concurrent.futures.CancelledError) as err:
            raise self._error() from err

    def exception(self, timeout: float | None = None) -> RpcError | None:
        trailers = self._wait()
        return RpcError(trailers, self._call._initial) if trailers.code else None

    def traceback(self, timeout: float | None = None) -> None:
        return None

    def code(self) -> grpc.StatusCode:
        return code_from_number(self._wait().code)

    def details(self) -> str:
        return self._wait().message

    def initial_metadata(self) -> tuple[MetadataTuple, ...]:
        return self._channel._run(self._call._initial_metadata())

    def trailing_metadata(self) -> tuple[MetadataTuple, ...]:
        return trailing_of(self._wait())

    def cancel(self) -> bool:
        return bool(self._channel._run(_call_soon(self._call.cancel)))

    def cancelled(self) -> bool:
        return self._call.cancelled()

    def running(self) -> bool:
        return not self._call.done()

    def done(self) -> bool:
        return self._call.done()

    def is_active(self) -> bool:
        return not self._call.done()

    def time_remaining(self) -> float | None:
        return self._call.time_remaining()

    def add_callback(self, callback: Callable[[], None]) -> bool:
        if self._call.done():
            return False
        self._channel._loop.call_soon_threadsafe(self._call.add_done_callback, lambda _: callback())
        return True

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        self._channel._loop.call_soon_threadsafe(self._call.add_done_callback, lambda _: fn(self))


async def _call_soon(fn: Callable[[], Any]) -> Any:
    return fn()


class _MultiCallable(
    grpc.UnaryUnaryMultiCallable,  # type: ignore[misc]
    grpc.UnaryStreamMultiCallable,  # type: ignore[misc]
    grpc.StreamUnaryMultiCallable,  # type: ignore[misc]
    grpc.StreamStreamMultiCallable,  # type: ignore[misc]
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

    def _unary_future(self, request: Any, timeout: float | None, metadata: Any,
                      wait_for_ready: bool | None = None) -> _UnaryCall:
        deadline = _client.effective_deadline(self._timeout(timeout))
        data = request if self._serializer is None else self._serializer(request)
        channel = self._channel
        future = channel._submit(attempt_unary(
            channel._nc_checked(), channel._options, self._subject, data, metadata, deadline,
            self._policy, wait_for_ready,
        ))
        return _UnaryCall(future, deadline, self._deserializer)

    def _stream(self, request: Any, timeout: float | None, metadata: Any) -> _StreamIterator:
        request_streaming, response_streaming = self._kind
        channel = self._channel
        deadline = _client.effective_deadline(self._timeout(timeout))

        async def start() -> StreamCall:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            return StreamCall(
                channel._nc_checked(), channel._options, self._subject, self._serializer, self._deserializer,
                remaining, metadata,
                request=None if request_streaming else request,
                request_streaming=request_streaming, response_streaming=response_streaming,
                policy=self._policy,
            )

        call = channel._submit(start()).result()
        if request_streaming:
            # A blocking request iterator must not run on the loop thread: feed it from here.
            threading.Thread(target=channel._feed, args=(call, request), daemon=True,
                             name="grpc-nats-request-feeder").start()
        return _StreamIterator(channel, call, response_streaming)

    def __call__(self, request: Any, timeout: float | None = None, metadata: Any = None,
                 credentials: Any = None, wait_for_ready: bool | None = None, compression: Any = None) -> Any:
        self._channel._check_thread()
        if self._kind == (False, False):
            return self._unary_future(request, timeout, metadata, wait_for_ready).result()
        iterator = self._stream(request, timeout, metadata)
        return iterator if self._kind[1] else iterator.result()

    def with_call(self, request: Any, timeout: float | None = None, metadata: Any = None,
                  credentials: Any = None, wait_for_ready: bool | None = None, compression: Any = None) -> Any:
        self._channel._check_thread()
        if self._kind == (False, False):
            call: Any = self._unary_future(request, timeout, metadata, wait_for_ready)
        else:
            call = self._stream(request, timeout, metadata)
        return call.result(), call

    def future(self, request: Any, timeout: float | None = None, metadata: Any = None,
               credentials: Any = None, wait_for_ready: bool | None = None, compression: Any = None) -> Any:
        if self._kind == (False, False):
            return self._unary_future(request, timeout, metadata, wait_for_ready)
        return self._stream(request, timeout, metadata)


class Channel(grpc.Channel):  # type: ignore[misc]
    """A grpc.Channel calling ``target`` over NATS, for synchronous programs."""

    def __init__(self, servers: str | Sequence[str], target: str, *, options: ChannelOptions,
                 connect_options: dict[str, Any] | None = None,
                 service_config: str | Mapping[str, Any] | ServiceConfig | None = None) -> None:
        self._target = check_token(target, "target")
        self._options = options
        self._service_config = parse_service_config(service_config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name=f"grpc-nats-channel-{target}")
        self._thread.start()
        servers_list = [servers] if isinstance(servers, str) else list(servers)
        kwargs = {"max_reconnect_attempts": -1, **WATCHDOG_CONNECT_OPTIONS, **(connect_options or {})}
        try:
            self._nc: Client | None = guard_connection(self._run(nats.connect(servers_list, **kwargs)))
        except BaseException:
            self._stop_loop()
            raise
        self._closed = False

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
        if threading.current_thread() is self._thread:
            raise RuntimeError(
                "a blocking call on a nats_transport.Channel from its own event-loop thread would "
                "deadlock; use nats_transport.aio.channel in async code"
            )

    def _submit(self, coro: Any) -> concurrent.futures.Future[Any]:
        if self._closed:
            coro.close()
            raise RuntimeError("the channel is closed")
        # The task starts in a copy of the caller's context, so the inherited deadline and trace
        # context (contextvars) of a handler thread reach the call.
        context = contextvars.copy_context()
        result: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def start() -> None:
            task = self._loop.create_task(coro)

            def done(t: asyncio.Task[Any]) -> None:
                if result.cancelled():
                    return
                if t.cancelled():
                    result.cancel()
                elif t.exception() is not None:
                    result.set_exception(t.exception())
                else:
                    result.set_result(t.result())

            task.add_done_callback(done)
            result.add_done_callback(lambda f: self._loop.call_soon_threadsafe(task.cancel) if f.cancelled() else None)

        self._loop.call_soon_threadsafe(start, context=context)
        return result

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        self._check_thread()
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _feed(self, call: StreamCall, requests: Any) -> None:
        try:
            for request in requests:
                if call.done():
                    return
                self._run(call._write(request))
            self._run(call.done_writing())
        except Exception:  # the call ended (its status tells why) or the iterator failed
            if not call.done():
                self._run(_call_soon(call.cancel))

    def unary_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                    _registered_method: bool = False) -> Any:
        return _MultiCallable(self, method, request_serializer, response_deserializer, (False, False))

    def unary_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: bool = False) -> Any:
        return _MultiCallable(self, method, request_serializer, response_deserializer, (False, True))

    def stream_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: bool = False) -> Any:
        return _MultiCallable(self, method, request_serializer, response_deserializer, (True, False))

    def stream_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                      _registered_method: bool = False) -> Any:
        return _MultiCallable(self, method, request_serializer, response_deserializer, (True, True))

    def subscribe(self, callback: Callable[[grpc.ChannelConnectivity], None], try_to_connect: bool = False) -> None:
        """Report the current state once (NATS reconnects on its own; see get_state in aio)."""
        nc = self._nc
        ready = nc is not None and nc.is_connected
        callback(grpc.ChannelConnectivity.READY if ready else grpc.ChannelConnectivity.TRANSIENT_FAILURE)

    def unsubscribe(self, callback: Callable[[grpc.ChannelConnectivity], None]) -> None:
        """Nothing to undo: ``subscribe`` keeps no callback."""

    def close(self) -> None:
        """Drain the NATS connection and stop the loop thread."""
        if self._closed:
            return
        self._closed = True
        if self._nc is not None:
            # Closing a broken connection must not raise from close().
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._nc.close(), self._loop).result(5)
            self._nc = None
        self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
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
