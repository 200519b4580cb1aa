"""A server for the slow-consumer test: its streams send as fast as flow control lets them.

Usage: python _flood_server.py NATS_URL TARGET WINDOW

Serves ``EventBusService`` over ``nats_transport.aio.server`` with a stream window of WINDOW
bytes: ``Subscribe`` streams 1 KiB events for ever, counting per stream (by consumer name) what
the handler has handed to the transport, and ``Publish`` answers at once (the other callers).
On ``chaos.<TARGET>.stats`` it answers with those counts as JSON, its resident memory, and its
NATS reconnects. Prints "ready" once it takes calls; runs until killed.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import nats
from gaming.event_bus.v1 import event_bus_pb2, event_bus_pb2_grpc
from nats.aio.msg import Msg

import nats_transport.aio
from nats_transport import ServerOptions

PAYLOAD = b"x" * 1024
# The server gives up on a stream whose client sent nothing (not even a PING) for this long.
KEEPALIVE_INTERVAL = 0.5
KEEPALIVE_TIMEOUT = 2.0


class Flood(event_bus_pb2_grpc.EventBusServiceServicer):
    def __init__(self) -> None:
        self.streams: dict[str, dict[str, Any]] = {}
        self.published = 0

    async def Subscribe(self, request: Any, context: Any) -> Any:
        counts: dict[str, Any] = {"messages": 0, "bytes": 0, "ended": None, "ended_at": None}
        self.streams[request.consumer_name] = counts

        def ended(_: Any) -> None:
            # Called the moment the server ends the call (the generator is closed later).
            counts["ended"] = "cancelled" if context.cancelled() else "finished"
            counts["ended_at"] = time.monotonic()
            counts["why"] = str(context.details())

        context.add_done_callback(ended)
        while True:
            response = event_bus_pb2.SubscribeResponse(
                event=event_bus_pb2.Event(sequence=counts["messages"] + 1, payload=PAYLOAD))
            # Counted before it is handed over: the handler waits inside the yield once the
            # transport holds as much as it may buffer.
            counts["messages"] += 1
            counts["bytes"] += 5 + response.ByteSize()  # as framed on the wire
            yield response

    async def Publish(self, request: Any, context: Any) -> Any:
        self.published += 1
        return event_bus_pb2.PublishResponse(sequence=self.published)


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def main(url: str, target: str, window: int) -> None:
    nc = await nats.connect(url, name="chaos-flood", max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    server = nats_transport.aio.server(nc, target, options=ServerOptions(
        stream_window=window, keepalive_interval=KEEPALIVE_INTERVAL, keepalive_timeout=KEEPALIVE_TIMEOUT))
    flood = Flood()  # type: ignore[abstract]  # Ack and PublishBatch: left UNIMPLEMENTED
    event_bus_pb2_grpc.add_EventBusServiceServicer_to_server(flood, server)

    async def stats(msg: Msg) -> None:
        await msg.respond(json.dumps({
            "streams": flood.streams, "published": flood.published, "rss": rss_bytes(),
            "reconnects": nc.stats["reconnects"], "now": time.monotonic(),
        }).encode())

    await nc.subscribe(f"chaos.{target}.stats", cb=stats)
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
