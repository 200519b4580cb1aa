"""body-broker-integration: the game engine's bridge to the AI core
(``gaming.body_broker_integration.v1.BodyBrokerIntegrationService``).

IngestEvents takes the engine's events on one bidi stream and answers each with an
acknowledgement, in order, echoing its sequence (``_ingest``: a window of 64 events in flight,
advertised as the credit of every acknowledgement; the server stops reading while it is full,
so the transport's flow control holds back an engine that sends faster than the downstream
services take events). Each event is checked (``_events``: a bad one is rejected in its
acknowledgement and the stream goes on), then applied (``_forwarding``): player and entity
events become world events on world-state, and every accepted event is published on the event
bus. An event is applied once per idempotency key: the bridge records it (24 h), and the ids it
goes by downstream derive from the key, so world-state and the bus deduplicate a resend too.
world-state or the event bus being unreachable ends the stream with UNAVAILABLE naming it; the
engine reconnects and resends what was not acknowledged.

SyncPlayer (``_snapshot``) builds a snapshot from the bridge's presence record, state-manager
(required: NOT_FOUND for an unknown player), world-state (required: the avatar's position and
revision), quest-system (active quests) and payment (balance); the last two are optional: when
they fail the snapshot comes without them and the trailing metadata says
``degraded-sources: payment,quest-system``. The four are asked side by side, each with a share of
the caller's deadline (``servicers._downstream``).

Deviations from the proto, on purpose: an engine exceeding its credit is held back by flow
control instead of failed with RESOURCE_EXHAUSTED unless ``credit_overrun=fail`` (the brief asks
for backpressure); SyncPlayer answers without quest-system or payment instead of UNAVAILABLE (the
brief asks for a flagged partial answer). UNAUTHENTICATED is the host's auth interceptor's to
answer; the servicer sees no credentials.

Settings (``deps.settings``):
    publish_events: "true" (default) or "false": publish accepted events on the event bus.
    event_topic_prefix: first topic token of published events (default ``engine``).
    primary_currency: the currency of the snapshot's balance (default ``GOLD``).
    downstream_timeout_s: seconds one world-state or event-bus call may take while ingesting
        (default 5; the stream's own deadline, if any, still caps it).
    credit_overrun: "hold" (default) or "fail", see above.
    bucket_max_bytes: the presence bucket's limit (default 256 MiB); the events bucket gets a
        quarter of it.
"""

from __future__ import annotations

import math
import re

from gaming.body_broker_integration.v1 import body_broker_integration_pb2_grpc

from servicers.body_broker_integration._ingest import WINDOW, Overrun
from servicers.body_broker_integration._records import EVENT_TTL
from servicers.body_broker_integration._servicer import BodyBrokerIntegrationServicer
from servicers.dependencies import Dependencies
from servicers.service_settings import bucket_max_bytes

__all__ = ["SERVICE_NAMES", "TARGET", "WINDOW", "BodyBrokerIntegrationServicer", "Overrun", "add_to_server", "create"]

TARGET = "body-broker-integration"
SERVICE_NAMES = ("gaming.body_broker_integration.v1.BodyBrokerIntegrationService",)

PRESENCE_BUCKET = "body_broker_presence"
EVENTS_BUCKET = "body_broker_events"
# A presence record is under 200 bytes; an applied-event record under 50, kept a day.
PRESENCE_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_TIMEOUT = 5.0
_TOKEN = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
_CURRENCY = re.compile(r"[A-Z][A-Z0-9]{2,7}")


async def create(deps: Dependencies) -> BodyBrokerIntegrationServicer:
    """Open the two buckets and return a ready servicer.

    Raises:
        ValueError: a setting is malformed (fail at start-up, not at the first event).
    """
    settings = deps.settings
    publish = settings.get("publish_events", "true").lower()
    if publish not in ("true", "false"):
        raise ValueError(f"body-broker-integration publish_events must be true or false, not {publish!r}")
    prefix = settings.get("event_topic_prefix", "engine")
    if not _TOKEN.fullmatch(prefix):
        raise ValueError(f"body-broker-integration event_topic_prefix {prefix!r} is not a topic")
    currency = settings.get("primary_currency", "GOLD")
    if not _CURRENCY.fullmatch(currency):
        raise ValueError(f"body-broker-integration primary_currency {currency!r} is not a currency code")
    timeout_text = settings.get("downstream_timeout_s", str(DEFAULT_TIMEOUT))
    try:
        timeout = float(timeout_text)
    except ValueError:
        timeout = math.nan
    if not (math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"body-broker-integration downstream_timeout_s must be positive, not {timeout_text!r}")
    try:
        overrun = Overrun(settings.get("credit_overrun", Overrun.HOLD.value))
    except ValueError:
        raise ValueError("body-broker-integration credit_overrun must be hold or fail") from None
    limit = bucket_max_bytes(settings, PRESENCE_MAX_BYTES)
    presence = await deps.storage.key_value(PRESENCE_BUCKET, history=1, max_bytes=limit)
    applied = await deps.storage.key_value(EVENTS_BUCKET, history=1, ttl=EVENT_TTL, max_bytes=max(limit // 4, 1 << 20))
    return BodyBrokerIntegrationServicer(
        presence, applied, channel=deps.channel, clock=deps.clock, call_timeout=timeout,
        topic_prefix=prefix if publish == "true" else None, currency=currency, overrun=overrun,
    )


add_to_server = body_broker_integration_pb2_grpc.add_BodyBrokerIntegrationServiceServicer_to_server
