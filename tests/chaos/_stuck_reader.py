"""A client for the slow-consumer test that opens a server stream, reads one message, and then
reads no more; the test stops it with SIGSTOP, so it cannot even answer keepalives.

Usage: python _stuck_reader.py NATS_URL TARGET CONSUMER_NAME WINDOW

Prints "reading stopped" once the first message has arrived; runs until killed.
"""

from __future__ import annotations

import asyncio
import sys

import nats
from gaming.event_bus.v1 import event_bus_pb2, event_bus_pb2_grpc

import nats_transport.aio
from nats_transport import ChannelOptions


async def main(url: str, target: str, name: str, window: int) -> None:
    nc = await nats.connect(url, name="chaos-stuck-reader")
    # The keepalives of the test's own client: a PING every 0.5 s, so the server's timeout (2 s)
    # is what decides when it gives this stream up once the process is stopped.
    options = ChannelOptions(stream_window=window, keepalive_interval=0.5, keepalive_timeout=2.0)
    channel = nats_transport.aio.channel(nc, target, options=options)
    call = event_bus_pb2_grpc.EventBusServiceStub(channel).Subscribe(
        event_bus_pb2.SubscribeRequest(consumer_name=name))
    await call.read()
    print("reading stopped", flush=True)
    await asyncio.Event().wait()  # hold the stream open, unread, until killed


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
