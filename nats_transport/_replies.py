"""What a server publishes to end a call, and the size limits every sender keeps: pure code, no I/O.

NATS counts a message's header block against the connection's ``max_payload`` as well as its
body, and nats-server drops the whole connection of a client that publishes more; nats-py checks
only the body. So every message that carries headers is measured here first: a call's opening
metadata on the client, initial metadata on the server.

A unary reply is bare gRPC frames when it fits one NATS message and no keepalive PING went
first; otherwise numbered DATA envelopes carry it in chunks ending with the trailer frame (wire
spec §5). The server only publishes what these functions return.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

from nats_transport import _envelope as env
from nats_transport import _framing
from nats_transport._envelope import Kind
from nats_transport._framing import Trailers

if TYPE_CHECKING:  # _context imports the stream endpoint, which imports this module
    from nats_transport._context import CallState

Message = tuple[bytes, dict[str, str] | None]
"""One NATS message to publish: its body and its headers."""

METADATA_RESERVE = 1024
"""Bytes of ``max_payload`` kept for the body of a message that carries initial metadata."""

CHUNK_SLACK = 512
"""Bytes of ``max_payload`` left unused by each chunk of a unary reply, as a margin."""

METADATA_TOO_LARGE = (grpc.StatusCode.RESOURCE_EXHAUSTED, "initial metadata exceeds the connection's max_payload")

_RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
_OK = grpc.StatusCode.OK


def headers_size(headers: dict[str, str]) -> int:
    """Bytes a header block takes on the wire (it counts against max_payload)."""
    return 12 + sum(len(k) + len(v) + 4 for k, v in headers.items())


def initial_metadata_fits(headers: dict[str, str], max_payload: int) -> bool:
    """Whether initial metadata can travel on a message that also carries a body."""
    return headers_size(headers) + METADATA_RESERVE <= max_payload


def call_metadata_refusal(headers: dict[str, str], max_payload: int, size: int | None = None) -> str | None:
    """Why a call's opening message cannot carry ``headers`` (None: it can): the headers of a
    stream opening, with its envelope and an empty frame, must fit in ``max_payload``.
    ``size``: ``headers_size(headers)``, if the caller has it already."""
    if size is None:
        size = headers_size(headers)
    if size + env.ENVELOPE_SIZE + _framing.HEADER_SIZE > max_payload:
        return f"metadata of {size} bytes exceeds the connection's max_payload of {max_payload}"
    return None


def message_too_large(what: str, size: int, limit: int) -> str:
    """The details of a RESOURCE_EXHAUSTED for a ``what`` ("request", "response") over the limit."""
    return f"{what} of {size} bytes exceeds the limit of {limit}"


def stream_chunk_size(max_payload: int) -> int:
    """The most DATA payload one stream-mode message may carry (before any headers on it)."""
    return max_payload - env.ENVELOPE_SIZE


def status_frame(code: grpc.StatusCode, details: str) -> bytes:
    """The trailer frame of a call that ends with ``code`` and ``details`` and nothing else."""
    return _framing.encode_trailers(Trailers(code.value[0], details))


def status_reply(code: grpc.StatusCode, details: str, seq: int | None) -> bytes:
    """A reply that is only a status: a bare trailer frame for a unary client that has had no
    PING; otherwise one DATA envelope numbered ``seq`` carrying it (a stream's client, or a unary
    client that has had ``seq`` PINGs)."""
    frame = status_frame(code, details)
    return frame if seq is None else env.pack(Kind.DATA, seq, frame)


def unary_reply(
    state: CallState,
    response: bytes | None,
    headers: dict[str, str] | None,
    max_payload: int,
    max_message: int,
    seq: int,
) -> tuple[list[Message], Trailers | None]:
    """The messages that answer a unary call, in order, and the status they carry (None: OK
    with no details or trailing metadata, so no trailer frame goes).

    ``response`` is the serialized response (None when the call failed: ``state`` says how),
    ``headers`` the call's initial metadata and ``seq`` the PINGs already sent on its reply
    subject. A response over ``max_message`` and initial metadata too big to travel end the call
    RESOURCE_EXHAUSTED instead.
    """
    code = state.code
    if headers and not initial_metadata_fits(headers, max_payload):
        # Publishing it would make nats-server drop our connection: the status goes without it.
        headers = None
        exhausted = Trailers(_RESOURCE_EXHAUSTED, METADATA_TOO_LARGE[1], state.status_details, state.trailing_metadata)
        status: Trailers | None = exhausted
        body = _framing.encode_trailers(exhausted)
    elif response is None:
        status = state.trailers(default_code=grpc.StatusCode.UNKNOWN)
        body = _framing.encode_trailers(status)
    elif code is not None and code is not _OK:  # set by the handler, which also returned a response
        status = state.trailers()
        body = _framing.encode_trailers(status)
    elif len(response) > max_message:
        status = Trailers(_RESOURCE_EXHAUSTED, message_too_large("response", len(response), max_message))
        body = _framing.encode_trailers(status)
    elif state.details or state.trailing_metadata or state.status_details:
        status = state.trailers()
        body = _framing.encode_message(response) + _framing.encode_trailers(status)
    else:
        status = None
        body = _framing.encode_message(response)
    if seq == 0 and len(body) <= max_payload - (headers_size(headers) if headers else 0):
        return [(body, headers)], status
    if status is None:  # numbered chunks always end with a trailer frame
        body += _framing.encode_trailers(Trailers(0))
    return reply_chunks(body, headers, max_payload, seq), status


def reply_chunks(body: bytes, headers: dict[str, str] | None, max_payload: int, seq: int) -> list[Message]:
    """``body`` as DATA envelopes numbered from ``seq``, each fitting ``max_payload``; the first
    carries ``headers`` (initial metadata), which its room is reduced by."""
    size = stream_chunk_size(max_payload) - CHUNK_SLACK - (headers_size(headers) if headers else 0)
    messages: list[Message] = []
    for piece in _framing.split(body, size):
        messages.append((env.pack(Kind.DATA, seq, piece), None if messages else headers))
        seq += 1
    return messages
