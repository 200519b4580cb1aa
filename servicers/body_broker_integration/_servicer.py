"""BodyBrokerIntegrationService: the engine's event stream in, player snapshots out."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from gaming.body_broker_integration.v1 import body_broker_integration_pb2 as pb
from gaming.body_broker_integration.v1 import body_broker_integration_pb2_grpc
from google.protobuf import timestamp_pb2

from servicers._downstream import flag_degraded, time_left
from servicers.body_broker_integration._events import MAX_ID_CHARS
from servicers.body_broker_integration._forwarding import Forwarder
from servicers.body_broker_integration._ingest import WINDOW, Flow, IngestStream, Overrun
from servicers.body_broker_integration._snapshot import Snapshots, assemble
from servicers.errors import invalid_argument
from servicers.storage import KeyValue


class BodyBrokerIntegrationServicer(body_broker_integration_pb2_grpc.BodyBrokerIntegrationServiceServicer):
    """Applies engine events to the AI core (``_forwarding``, through ``_ingest``'s window) and
    answers snapshots (``_snapshot``)."""

    def __init__(
        self,
        presence: KeyValue,
        applied: KeyValue,
        *,
        channel: Callable[[str], Any],
        clock: Callable[[], float],
        call_timeout: float,
        topic_prefix: str | None,
        currency: str,
        overrun: Overrun,
        window: int = WINDOW,
    ) -> None:
        self._presence = presence
        self._applied = applied
        self._clock = clock
        self._overrun = overrun
        self._window = window
        self.flow = Flow()
        self._forwarder = Forwarder(self._presence, channel=channel, clock=clock, call_timeout=call_timeout,
                                    topic_prefix=topic_prefix)
        self._snapshots = Snapshots(channel, currency=currency)

    def __repr__(self) -> str:
        return (f"<BodyBrokerIntegrationServicer streams={self.flow.streams} held={self.flow.held} "
                f"window={self._window} overrun={self._overrun.value}>")

    async def IngestEvents(  # type: ignore[override]  # grpc.aio also takes a coroutine that writes; the stub knows only generators
        self,
        request_iterator: AsyncIterator[pb.IngestEventsRequest],
        context: grpc.aio.ServicerContext[pb.IngestEventsRequest, pb.IngestEventsResponse],
    ) -> None:
        """One acknowledgement per event, in order, each granting ``WINDOW`` credit.

        Written with ``context.write`` rather than as a generator: the requests are read by a
        task of their own (``_ingest``), which a generator handler could not pace.
        """
        stream = IngestStream(request_iterator, context, forwarder=self._forwarder, applied=self._applied,
                              overrun=self._overrun, flow=self.flow, window=self._window)
        await stream.run()

    async def SyncPlayer(
        self,
        request: pb.SyncPlayerRequest,
        context: grpc.aio.ServicerContext[pb.SyncPlayerRequest, pb.SyncPlayerResponse],
    ) -> pb.SyncPlayerResponse:
        """The player's snapshot; partial (and flagged) when quest-system or payment is down."""
        if not request.player_id:
            raise invalid_argument("player_id", "is required")
        if len(request.player_id) > MAX_ID_CHARS:
            raise invalid_argument("player_id", f"must be at most {MAX_ID_CHARS} characters")
        remaining = time_left(context)
        known = await self._forwarder.presence(request.player_id)
        parts = await self._snapshots.parts(request.player_id, known.region_id if known else "", remaining)
        flag_degraded(context, parts.degraded)
        now = timestamp_pb2.Timestamp()
        now.FromNanoseconds(round(self._clock() * 1e9))
        return pb.SyncPlayerResponse(snapshot=assemble(request.player_id, known, parts, now))
