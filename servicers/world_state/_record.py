"""How one region is stored: a single KV value holding the region, its entities and its recent events.

Keeping a whole region in one value is what makes an event atomic: applying it is one
compare-and-set of that value. The value is a ``RegionRecord`` of
``protos/gaming/world_state/storage/v1/world_state_records.proto``: the public API has no message
for "region + entities + recent events", and the storage shape is this service's business, not
the API's.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

from gaming.world_state.storage.v1 import world_state_records_pb2
from gaming.world_state.v1 import world_state_pb2


def region_key(region_id: str) -> str:
    """The KV key of a region: its id in base64url without padding (ids may hold any character,
    KV keys only ``[A-Za-z0-9_=-]``)."""
    return base64.urlsafe_b64encode(region_id.encode()).rstrip(b"=").decode()


@dataclass(slots=True)
class RegionRecord:
    """A region as stored, decoded for one read-modify-write.

    Attributes:
        region: the region; ``region.revision.value`` counts the events applied to it.
        entities: the region's entities by id.
        history: the most recent applied events (with the entity after each), oldest first;
            they answer replays of an event id and let a watch resume.
        history_base: every event with a revision above this is in ``history``.
    """

    region: world_state_pb2.Region
    entities: dict[str, world_state_pb2.Entity] = field(default_factory=dict)
    history: list[world_state_pb2.WatchRegionResponse] = field(default_factory=list)
    history_base: int = 0

    @property
    def revision(self) -> int:
        """The region's revision: the number of events applied to it."""
        return self.region.revision.value

    def find_event(self, event_id: str) -> world_state_pb2.WatchRegionResponse | None:
        """The retained event recorded under ``event_id``, if any."""
        for item in reversed(self.history):
            if item.applied_event.event_id == event_id:
                return item
        return None

    def encode(self) -> bytes:
        """The stored form (entities sorted by id, so equal regions encode equally)."""
        message = world_state_records_pb2.RegionRecord(history_base=self.history_base)
        message.region.CopyFrom(self.region)
        message.entities.extend(self.entities[entity_id] for entity_id in sorted(self.entities))
        message.history.extend(self.history)
        return message.SerializeToString()

    @classmethod
    def decode(cls, data: bytes) -> RegionRecord:
        """Parse a stored value."""
        message = world_state_records_pb2.RegionRecord.FromString(data)
        region = world_state_pb2.Region()
        region.CopyFrom(message.region)
        entities: dict[str, world_state_pb2.Entity] = {}
        for entity in message.entities:
            copy = world_state_pb2.Entity()
            copy.CopyFrom(entity)
            entities[copy.entity_id] = copy
        history = []
        for item in message.history:
            kept = world_state_pb2.WatchRegionResponse()
            kept.CopyFrom(item)
            history.append(kept)
        return cls(region, entities, history, message.history_base)
