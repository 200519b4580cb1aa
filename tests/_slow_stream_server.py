"""A server process for fault tests: streams slowly and forever until it is killed.

Usage: python tests/_slow_stream_server.py NATS_URL TARGET
Prints "ready" once it is taking calls.
"""

from __future__ import annotations

import asyncio
import sys

import nats
from gaming.event_bus.v1 import event_bus_pb2, event_bus_pb2_grpc

import nats_transport.aio
from nats_transport import ServerOptions


class SlowEvents(event_bus_pb2_grpc.EventBusServiceServicer):
    async def Subscribe(self, request, context):
        sequence = 0
        while True:
            sequence += 1
            yield event_bus_pb2.SubscribeResponse()
            await asyncio.sleep(0.05)


async def main(url: str, target: str) -> None:
    nc = await nats.connect(url)
    server = nats_transport.aio.server(
        nc, target, options=ServerOptions(keepalive_interval=0.2, keepalive_timeout=1.0)
    )
    event_bus_pb2_grpc.add_EventBusServiceServicer_to_server(SlowEvents(), server)
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
