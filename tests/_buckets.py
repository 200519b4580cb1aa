"""Delete the KV buckets a test created, so their reserved size goes back to the shared server.

JetStream reserves each bucket's ``max_bytes`` against the server's storage limit when the
bucket is created, and the session's nats-server outlives every test: buckets left behind add
up until creating one fails with "insufficient storage resources".
"""

from __future__ import annotations

from nats.aio.client import Client


async def delete_buckets(nc: Client, prefix: str) -> None:
    """Delete every KV bucket whose name starts with ``prefix`` (its stream is ``KV_<name>``)."""
    js = nc.jetstream()
    names: list[str] = []
    offset = 0
    while True:
        page = await js.streams_info(offset)
        if not page:
            break
        offset += len(page)
        names.extend(name for info in page if (name := info.config.name or "").startswith(f"KV_{prefix}"))
    for name in names:
        await js.delete_stream(name)
