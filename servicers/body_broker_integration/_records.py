"""What the bridge keeps in KV, as API messages (no message of its own is needed).

Bucket ``body_broker_presence`` (latest value only)::

    player.<player>   PlayerSnapshot: region, last position, online, update time
    entity.<entity>   gaming.world_state.v1.Entity (id and region only): where a spawned
                      entity lives, for an ENTITY_DESTROYED that names no region

Bucket ``body_broker_events`` (entries expire after ``EVENT_TTL``)::

    event.<digest>    IngestEventsResponse (accepted): the event with this idempotency key
                      was applied; a resend is acknowledged without applying it again

Ids are base64url (they may hold any character); ``<digest>`` is the idempotency key's SHA-256,
which also names the event downstream (``EventIds``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from servicers.storage import key_token

EVENT_TTL = 24 * 3600.0


def player_key(player_id: str) -> str:
    """The key of a player's presence."""
    return f"player.{key_token(player_id)}"


def entity_key(entity_id: str) -> str:
    """The key of a spawned entity's region."""
    return f"entity.{key_token(entity_id)}"


@dataclass(frozen=True, slots=True)
class EventIds:
    """The names one engine event goes by: in the bridge's store, and downstream.

    world-state remembers event ids per region and the event bus message ids for two minutes, so
    a resend that gets past the bridge's own record (applied, then the stream broke before the
    record was written) is still applied once.
    """

    digest: str

    @classmethod
    def of(cls, idempotency_key: str) -> EventIds:
        """The ids of the event sent under ``idempotency_key``."""
        return cls(hashlib.sha256(idempotency_key.encode()).hexdigest()[:40])

    @property
    def record_key(self) -> str:
        """The key of the bridge's "applied" record."""
        return f"event.{self.digest}"

    @property
    def message_id(self) -> str:
        """The event bus message id."""
        return f"bbi-{self.digest}"

    def world_event(self, step: str) -> str:
        """The world-state event id of one step (an engine event may take several)."""
        return f"bbi-{self.digest}-{step}"
