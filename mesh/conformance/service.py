"""The servicer of ``gaming.conformance.v1.ConformanceService`` (docs/conformance.md).

It is written against grpc.aio's servicer API only, so it runs on any gRPC server; over NATS,
``mesh conformance`` hosts it. Each method does exactly what its request says and nothing
clever, so that what a client observes is the transport's doing: the statuses, metadata,
deadlines, cancellations, credits and PINGs of the wire protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any, NoReturn

import grpc
from gaming.conformance.v1 import conformance_pb2 as pb
from gaming.conformance.v1 import conformance_pb2_grpc
from google.rpc import error_details_pb2, status_pb2

from mesh.conformance.records import CallRecord, CallRecords

__all__ = ["ERROR_DOMAIN", "RETRY_DELAY_MS", "SERVICE_NAME", "ConformanceServicer", "RequestedException",
           "pattern"]

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ConformanceService"].full_name
# The ErrorInfo domain and the RetryInfo delay of every error Fail and ServerStream send.
ERROR_DOMAIN = "conformance.gaming"
RETRY_DELAY_MS = 1500
DEFAULT_MAX_MESSAGE = 4 * 1024 * 1024

_CODES = {code.value[0]: code for code in grpc.StatusCode}
_KEY = re.compile(r"[0-9a-z_.-]+")
_RESERVED = ("grpc-", "nats-grpc-", ":")
_BLOCK = bytes(range(251))


class RequestedException(RuntimeError):
    """Raised by Fail when the client asks for an exception in the handler; the server logs
    the exceptions of handlers, and ``mesh conformance`` leaves this one out."""


def pattern(size: int) -> bytes:
    """``size`` bytes of the payload pattern: byte i is ``i % 251``."""
    repeats, rest = divmod(size, len(_BLOCK))
    return _BLOCK * repeats + _BLOCK[:rest]


def _method(name: str) -> str:
    return f"/{SERVICE_NAME}/{name}"


class ConformanceServicer(conformance_pb2_grpc.ConformanceServiceServicer):
    """Does what each request asks; records calls named with ``conformance-call-id``.

    Args:
        max_message_size: the server's maximum message size: responses larger than this are
            refused with RESOURCE_EXHAUSTED before they are built.
    """

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE) -> None:
        self._max_message = max_message_size
        self.records = CallRecords()

    @contextlib.contextmanager
    def _tracked(self, context: Any, name: str) -> Iterator[CallRecord]:
        record = self.records.start(context, _method(name))
        try:
            yield record
        except asyncio.CancelledError:
            record.cancel(deadline=_by_deadline(context))
            raise
        finally:
            record.end()  # no-op once cancelled

    async def Echo(self, request: pb.EchoRequest, context: Any) -> pb.EchoResponse:
        """The payload back, with the request metadata and remaining time the handler saw."""
        with self._tracked(context, "Echo"):
            headers, trailers = await _reply_metadata(context, request.reply_metadata)
            await context.send_initial_metadata(headers)
            context.set_trailing_metadata(trailers)
            reply = pb.EchoResponse(payload=request.payload)
            for key, value in context.invocation_metadata() or ():
                reply.request_metadata.add(key=key, value=value if isinstance(value, bytes) else value.encode())
            remaining = context.time_remaining()
            if remaining is not None:
                reply.time_remaining.FromNanoseconds(int(remaining * 1e9))
            return reply

    async def Fail(self, request: pb.FailRequest, context: Any) -> pb.FailResponse:
        """Ends with the status asked for and its details, or raises."""
        with self._tracked(context, "Fail"):
            if request.raise_exception:
                raise RequestedException("Fail was asked to raise an exception")
            headers, trailers = await _reply_metadata(context, request.reply_metadata)
            await context.send_initial_metadata(headers)
            await _fail(context, request.code, request.message, request.reason, trailers, "code")

    async def Sleep(self, request: pb.SleepRequest, context: Any) -> pb.SleepResponse:
        """Answers after ``duration_ms``, unless cancelled first."""
        with self._tracked(context, "Sleep"):
            await asyncio.sleep(request.duration_ms / 1000)
            return pb.SleepResponse(slept_ms=request.duration_ms)

    # The two methods below write with context.write (grpc.aio's other streaming style) instead of
    # yielding: a cancel then reaches the handler as CancelledError wherever it waits, credit
    # included, and a message counts as sent once the transport has taken it.

    async def ServerStream(self, request: pb.ServerStreamRequest, context: Any) -> None:  # type: ignore[override]
        """``count`` messages of ``size`` bytes, ``interval_ms`` apart, then OK or ``fail_code``."""
        with self._tracked(context, "ServerStream") as record:
            if request.size > self._max_message:
                await _invalid(context, "size", f"must be at most {self._max_message} bytes")
            headers, trailers = await _reply_metadata(context, request.reply_metadata)
            if headers:
                await context.send_initial_metadata(headers)
            payload = pattern(request.size)
            for index in range(request.count):
                if request.interval_ms:
                    await asyncio.sleep(request.interval_ms / 1000)
                await context.write(pb.ServerStreamResponse(index=index, payload=payload))
                record.sent += 1
            if request.fail_code:
                await _fail(context, request.fail_code, request.fail_message, "STREAM_FAILED", trailers, "fail_code")
            context.set_trailing_metadata(trailers)

    async def ClientStream(self, request_iterator: AsyncIterator[pb.ClientStreamRequest],
                           context: Any) -> pb.ClientStreamResponse:
        """Counts, measures and hashes what arrives, until the half-close or ``respond_after``."""
        with self._tracked(context, "ClientStream") as record:
            digest = hashlib.sha256()
            total = 0
            respond_after = 0
            async for message in request_iterator:
                record.received += 1
                if record.received == 1:
                    respond_after = message.respond_after
                digest.update(message.payload)
                total += len(message.payload)
                if record.received == respond_after:
                    break  # answer now: the client may still be sending
            return pb.ClientStreamResponse(count=record.received, total_bytes=total, sha256=digest.digest())

    async def BidiEcho(self, request_iterator: AsyncIterator[pb.BidiEchoRequest],  # type: ignore[override]
                       context: Any) -> None:
        """Each payload back at once; after the half-close, one message with the count."""
        with self._tracked(context, "BidiEcho") as record:
            async for message in request_iterator:
                index = record.received
                record.received += 1
                await context.write(pb.BidiEchoResponse(index=index, payload=message.payload))
                record.sent += 1
            await context.write(pb.BidiEchoResponse(index=record.received, half_closed=True))
            record.sent += 1

    async def Large(self, request: pb.LargeRequest, context: Any) -> pb.LargeResponse:
        """A payload of ``response_size`` bytes, and the size and hash of the one received."""
        with self._tracked(context, "Large"):
            if request.response_size > self._max_message:
                # Such a response could not be sent anyway (the transport would refuse it with
                # this same code); refused before it is built, so it costs no memory.
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    f"a response of {request.response_size} payload bytes exceeds the limit "
                                    f"of {self._max_message}")
            reply = pb.LargeResponse(payload=pattern(request.response_size))
            if request.payload:  # left out otherwise, so that a response can be exactly the limit
                reply.received_size = len(request.payload)
                reply.received_sha256 = hashlib.sha256(request.payload).digest()
            return reply

    async def GetCallRecord(self, request: pb.GetCallRecordRequest, context: Any) -> pb.GetCallRecordResponse:
        """What the server saw of the call named ``call_id``."""
        return self.records.lookup(request.call_id)


Metadata = list[tuple[str, str | bytes]]


def _by_deadline(context: Any) -> bool:
    """Whether the handler was cancelled because the deadline passed, not by the client."""
    # nats_transport sets DEADLINE_EXCEEDED before it cancels the handler; a server that does
    # not is judged by the clock, to within a millisecond, since timers may fire a hair early.
    if context.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return True
    remaining = context.time_remaining()
    return remaining is not None and remaining <= 0.001


async def _reply_metadata(context: Any, reply: pb.ReplyMetadata) -> tuple[Metadata, Metadata]:
    """The headers and trailers a request asks for, as grpc metadata; INVALID_ARGUMENT naming
    the first entry that metadata cannot carry."""
    lists: list[Metadata] = []
    for field, entries in (("headers", reply.headers), ("trailers", reply.trailers)):
        kept: Metadata = []
        for number, entry in enumerate(entries):
            where = f"reply_metadata.{field}[{number}]"
            if not _KEY.fullmatch(entry.key) or entry.key.startswith(_RESERVED):
                await _invalid(context, f"{where}.key", "must match [0-9a-z_.-]+ and not be reserved")
            if entry.key.endswith("-bin"):
                kept.append((entry.key, entry.value))
            elif all(0x20 <= byte <= 0x7E for byte in entry.value):
                kept.append((entry.key, entry.value.decode("ascii")))
            else:
                await _invalid(context, f"{where}.value", "text values must be printable ASCII; use a -bin key")
        lists.append(kept)
    return lists[0], lists[1]


async def _fail(context: Any, number: int, message: str, reason: str, trailers: Metadata, field: str) -> NoReturn:
    """End the call with status ``number`` and its details: ErrorInfo, BadRequest, RetryInfo."""
    code = _CODES.get(number)
    if code is None or code == grpc.StatusCode.OK:
        await _invalid(context, field, "must be a status code from 1 to 16")
    status = status_pb2.Status(code=number, message=message)
    info = error_details_pb2.ErrorInfo(reason=reason or "CONFORMANCE", domain=ERROR_DOMAIN,
                                       metadata={"code": str(number)})
    bad = error_details_pb2.BadRequest()
    bad.field_violations.add(field=field, description="the client asked for this status")
    retry = error_details_pb2.RetryInfo()
    retry.retry_delay.FromMilliseconds(RETRY_DELAY_MS)
    for detail in (info, bad, retry):
        status.details.add().Pack(detail)
    context.set_trailing_metadata([*trailers, ("grpc-status-details-bin", status.SerializeToString())])
    await context.abort(code, message)
    raise AssertionError("abort returned")  # abort always raises; this keeps NoReturn honest


async def _invalid(context: Any, field: str, description: str) -> NoReturn:
    """End the call with INVALID_ARGUMENT and a BadRequest naming ``field``."""
    message = f"{field}: {description}"
    bad = error_details_pb2.BadRequest()
    bad.field_violations.add(field=field, description=description)
    status = status_pb2.Status(code=grpc.StatusCode.INVALID_ARGUMENT.value[0], message=message)
    status.details.add().Pack(bad)
    context.set_trailing_metadata([("grpc-status-details-bin", status.SerializeToString())])
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
    raise AssertionError("abort returned")
