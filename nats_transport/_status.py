"""The one table mapping transport and asyncio failures to gRPC status codes.

Everything below the channel and the server raises or observes plain exceptions; these helpers
are the only place they become gRPC codes, so the mapping is data and can be read in one go.
"""

from __future__ import annotations

import asyncio

import grpc
from nats import errors as nats_errors

from nats_transport._framing import FrameTooLarge, FramingError

# grpc.StatusCode by its numeric value (grpc.StatusCode.X.value is (int, str)).
CODE_BY_NUMBER: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}


def code_from_number(number: int) -> grpc.StatusCode:
    """The StatusCode for a wire number; unknown numbers are UNKNOWN, as gRPC specifies."""
    return CODE_BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


# Exceptions from NATS or asyncio, in the order they are tested, and the status they become.
FAILURE_TABLE: tuple[tuple[type[BaseException], grpc.StatusCode, str], ...] = (
    (nats_errors.NoRespondersError, grpc.StatusCode.UNAVAILABLE, "no server is serving this target"),
    (nats_errors.ConnectionClosedError, grpc.StatusCode.UNAVAILABLE, "NATS connection closed"),
    (nats_errors.ConnectionDrainingError, grpc.StatusCode.UNAVAILABLE, "NATS connection draining"),
    (nats_errors.ConnectionReconnectingError, grpc.StatusCode.UNAVAILABLE, "NATS reconnecting"),
    (nats_errors.StaleConnectionError, grpc.StatusCode.UNAVAILABLE, "NATS connection stale"),
    (nats_errors.OutboundBufferLimitError, grpc.StatusCode.UNAVAILABLE, "NATS outbound buffer full"),
    (nats_errors.MaxPayloadError, grpc.StatusCode.RESOURCE_EXHAUSTED, "message exceeds NATS max_payload"),
    (nats_errors.TimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"),
    (asyncio.TimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"),
    (nats_errors.Error, grpc.StatusCode.UNAVAILABLE, "NATS error"),
    (ConnectionError, grpc.StatusCode.UNAVAILABLE, "connection error"),
)


def status_for_exception(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status a caller sees for a transport failure (never leaks handler internals)."""
    for kind, code, message in FAILURE_TABLE:
        if isinstance(exc, kind):
            return code, message
    return grpc.StatusCode.UNKNOWN, "Unexpected error in the transport"


def status_for_framing_error(exc: FramingError) -> grpc.StatusCode:
    """RESOURCE_EXHAUSTED for a message over the size limit, INTERNAL for malformed bytes."""
    return grpc.StatusCode.RESOURCE_EXHAUSTED if isinstance(exc, FrameTooLarge) else grpc.StatusCode.INTERNAL


# Handler-side outcomes.
HANDLER_EXCEPTION = (grpc.StatusCode.UNKNOWN, "Exception calling application")
UNIMPLEMENTED_METHOD = (grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
UNDECODABLE_REQUEST = (grpc.StatusCode.INTERNAL, "Exception deserializing request!")
UNSERIALIZABLE_RESPONSE = (grpc.StatusCode.INTERNAL, "Exception serializing response!")
OVERLOADED = (grpc.StatusCode.RESOURCE_EXHAUSTED, "Concurrent RPC limit exceeded!")
SHUTTING_DOWN = (grpc.StatusCode.UNAVAILABLE, "server is shutting down")

# Client-side outcomes of a call that heard nothing in time (what circuit breakers count).
NO_SERVER = (grpc.StatusCode.UNAVAILABLE, "no server is serving this target")
SERVER_SILENT = (grpc.StatusCode.UNAVAILABLE, "the server stopped answering (no keepalive)")
CONNECTION_LOST_DURING_CALL = (grpc.StatusCode.UNAVAILABLE, "the connection to NATS was lost during the call")
