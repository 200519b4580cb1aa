"""Payload sizes: representative messages of our services as protobuf bytes and as JSON.

Each message is built from the generated classes with the shapes our servicers return (32-hex
ids, RFC 3339 timestamps, enums, nested common types). JSON is ``json_format.MessageToJson``
as the gateway would send it: compact (no indentation, no spaces after separators), UTF-8.
"""

from __future__ import annotations

import base64
import hashlib
import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass

from gaming.ai_integration.v1 import ai_integration_pb2 as ai
from gaming.auth.v1 import auth_pb2 as auth
from gaming.common.v1 import common_pb2 as common
from gaming.event_bus.v1 import event_bus_pb2 as events
from gaming.npc_behavior.v1 import npc_behavior_pb2 as npc
from gaming.payment.v1 import payment_pb2 as payment
from gaming.quest.v1 import quest_pb2 as quest
from gaming.weather.v1 import weather_pb2 as weather
from gaming.world_state.v1 import world_state_pb2 as world
from google.protobuf import duration_pb2, json_format, timestamp_pb2
from google.protobuf.message import Message

from benchmarks import workload

_EPOCH = 1_795_000_000  # a fixed "now" (2026-11) so the sizes never change between runs


def _id(seed: str) -> str:
    """A 32-hex id, as ``uuid.uuid4().hex`` gives (deterministic here)."""
    return hashlib.md5(seed.encode()).hexdigest()  # an id, not security


def _time(offset: float = 0.0) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(_EPOCH * 10**9 + round(offset * 1e9))
    return stamp


def _audit(actor: str) -> common.AuditInfo:
    return common.AuditInfo(actor_id=actor, update_time=_time(12.345))


def _entity(i: int) -> world.Entity:
    return world.Entity(
        entity_id=_id(f"entity-{i}"),
        region_id="r-ashlands",
        kind=("npc", "item", "player")[i % 3],
        position=common.Vector3(x=120.5 + i * 3.25, y=14.0, z=-318.75 + i * 1.5),
        attributes=[
            common.Attribute(key="faction", value="ember-guard"),
            common.Attribute(key="health", value=str(80 + i)),
        ],
        revision=common.Revision(value=4_210 + i),
        create_time=_time(-3_600 + i),
        update_time=_time(-i * 0.25),
    )


def _perception(kind: npc.PerceptionKind.ValueType, i: int) -> npc.Perception:
    return npc.Perception(
        kind=kind,
        source_id=_id(f"source-{i}"),
        position=common.Vector3(x=101.25 + i, y=12.0, z=-40.5 - i),
        intensity=0.35 + 0.2 * i,
    )


def _action(kind: npc.ActionKind.ValueType, score: float, reason: str) -> npc.Action:
    return npc.Action(kind=kind, target_id=_id(f"target-{kind}"), utility_score=score, reason=reason)


def _weather(hour: int) -> weather.Weather:
    return weather.Weather(
        region_id="r-ashlands",
        game_time=_time(hour * 3_600),
        condition=weather.WEATHER_CONDITION_RAIN if hour % 4 else weather.WEATHER_CONDITION_CLOUDY,
        temperature_celsius=14.2 - hour * 0.35,
        wind=weather.Wind(speed_mps=6.4 + hour * 0.1, gust_mps=11.8, direction_degrees=227.5),
        precipitation_mm_per_hour=1.6 if hour % 4 else 0.0,
        humidity_percent=82.5,
        cloud_cover_percent=90.0 - hour,
        visibility_meters=6_500.0,
    )


def _transaction(seed: str, kind: payment.TransactionType.ValueType, amount: int, balance: int) -> payment.Transaction:
    return payment.Transaction(
        transaction_id=_id(seed),
        account_id=_id("account-7"),
        type=kind,
        status=payment.TRANSACTION_STATUS_COMPLETED,
        amount=common.Money(currency_code="GEM", amount_minor=amount),
        balance_after=common.Money(currency_code="GEM", amount_minor=balance),
        description="Ember Courier bundle",
        idempotency_key=_id(f"key-{seed}"),
        audit=_audit("p-0042"),
    )


def _token(seed: str, length: int) -> str:
    raw = b"".join(hashlib.sha256(f"{seed}{i}".encode()).digest() for i in range(length // 32 + 1))
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()[:length]


def _full_quest() -> quest.Quest:
    full = quest.Quest()
    full.CopyFrom(workload.QUEST)
    full.quest_id = _id("quest-1")
    full.objectives.add(objective_id="o-2", description="Light the beacon", required_count=3, current_count=1)
    full.rewards.add(money=common.Money(currency_code="GOLD", amount_minor=250))
    full.rewards.add(item=quest.ItemReward(item_id="item-ember-cloak", quantity=1))
    full.rewards.add(experience_points=1_200)
    full.revision.value = 17
    full.create_time.CopyFrom(_time(-600))
    full.expire_time.CopyFrom(_time(86_400))
    full.audit.CopyFrom(_audit("quest-system"))
    return full


def _samples() -> list[tuple[str, Message]]:
    """(name, message) pairs, requests and responses of several services."""
    step = common.Vector3(x=131, y=14, z=-314)
    move = world.WorldEvent(move=world.MoveEntity(entity_id=_id("entity-3"), position=step))
    return [
        ("quest GetQuestResponse (benchmark call)", workload.RESPONSE),
        ("quest GetQuestResponse (3 rewards, timestamps)", quest.GetQuestResponse(quest=_full_quest())),
        (
            "quest GenerateQuestRequest",
            quest.GenerateQuestRequest(
                player_id="p-0042", region_id="r-ashlands", difficulty=quest.DIFFICULTY_HARD,
                locale=common.LocaleTag(tag="en-GB"), idempotency_key=common.IdempotencyKey(key=_id("gen-1")),
            ),
        ),
        (
            "world_state ListEntitiesResponse (20 entities)",
            world.ListEntitiesResponse(
                entities=[_entity(i) for i in range(20)],
                page=common.PageResponse(next_page_token=_id("page-2"), total_size=143),
                region_revision=common.Revision(value=4_262),
            ),
        ),
        (
            "world_state ApplyEventRequest (move)",
            world.ApplyEventRequest(
                region_id="r-ashlands", event_id=common.IdempotencyKey(key=_id("event-9")), event=move,
                expected_region_revision=common.Revision(value=4_262), actor_id="p-0042",
            ),
        ),
        (
            "npc_behavior DecideRequest (3 perceptions)",
            npc.DecideRequest(
                state=npc.NpcState(
                    npc_id="npc-warden", health=0.82, energy=0.64, hunger=0.3,
                    position=common.Vector3(x=100.0, y=12.0, z=-42.5), mood=npc.MOOD_ALERT,
                    current_activity=npc.ACTION_KIND_PATROL,
                ),
                perceptions=[
                    _perception(npc.PERCEPTION_KIND_SEE_PLAYER, 0),
                    _perception(npc.PERCEPTION_KIND_HEAR_NOISE, 1),
                    _perception(npc.PERCEPTION_KIND_SEE_NPC, 2),
                ],
            ),
        ),
        (
            "npc_behavior DecideResponse (3 alternatives)",
            npc.DecideResponse(
                chosen=_action(npc.ACTION_KIND_TALK, 0.91, "player nearby and calm"),
                alternatives=[
                    _action(npc.ACTION_KIND_PATROL, 0.55, "route not finished"),
                    _action(npc.ACTION_KIND_EAT, 0.21, "hunger low"),
                    _action(npc.ACTION_KIND_IDLE, 0.05, "default"),
                ],
                decide_time=_time(),
            ),
        ),
        (
            "weather ForecastResponse (12 hourly points)",
            weather.ForecastResponse(
                region_id="r-ashlands", issue_time=_time(), seed=982_451_653,
                points=[weather.ForecastPoint(weather=_weather(h), precipitation_probability=0.1 + h / 20)
                        for h in range(12)],
            ),
        ),
        (
            "payment ChargeResponse",
            payment.ChargeResponse(transaction=_transaction("charge-1", payment.TRANSACTION_TYPE_CHARGE, -499, 12_051)),
        ),
        (
            "event_bus PublishRequest (96-byte payload)",
            events.PublishRequest(
                topic="world.r-ashlands.entity-moved", payload=bytes(range(96)),
                content_type="application/x-protobuf",
                attributes=[common.Attribute(key="region", value="r-ashlands")], message_id=_id("msg-1"),
            ),
        ),
        (
            "ai_integration GenerateResponse (~400 characters of text)",
            ai.GenerateResponse(
                text=(
                    "The warden squints at the ember in your hands. 'So the courier guild still sends runners "
                    "through the ashlands. Keep to the old road past the broken aqueduct; the storm will reach "
                    "the ridge before nightfall, and the tower bell rings only once for travellers. If the "
                    "beacon is dark when you arrive, light it yourself: the keepers left for the coast a "
                    "week ago and nobody has come back for them.'"
                ),
                finish_reason=ai.FINISH_REASON_STOP,
                usage=ai.TokenUsage(prompt_tokens=212, completion_tokens=96, total_tokens=308),
                model="local-7b-instruct", backend=ai.BACKEND_LOCAL,
                latency=duration_pb2.Duration(seconds=1, nanos=284_000_000),
            ),
        ),
        (
            "auth LoginResponse (signed tokens)",
            auth.LoginResponse(
                account_id=_id("account-7"), session_id=_id("session-3"),
                tokens=auth.SessionTokens(
                    access_token=_token("access", 171), access_token_expire_time=_time(900),
                    refresh_token=_token("refresh", 171), refresh_token_expire_time=_time(2_592_000),
                ),
                scopes=["player", "quests:write"],
            ),
        ),
    ]


@dataclass(frozen=True, slots=True)
class Size:
    """One message's sizes."""

    name: str
    protobuf: int
    json: int  # compact

    @property
    def ratio(self) -> float:
        return self.protobuf / self.json


def compact_json(message: Message) -> bytes:
    """``MessageToJson`` without indentation or spaces after separators, as UTF-8."""
    text = json_format.MessageToJson(message, indent=None, ensure_ascii=False)
    return json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False).encode()


def sizes() -> list[Size]:
    """Every sample's protobuf and compact JSON size."""
    return [Size(name, len(m.SerializeToString()), len(compact_json(m))) for name, m in _samples()]


Summary = Callable[[list[Size]], float]


def overall(rows: list[Size]) -> float:
    """All protobuf bytes over all JSON bytes."""
    return sum(r.protobuf for r in rows) / sum(r.json for r in rows)


def median_ratio(rows: list[Size]) -> float:
    return statistics.median(r.ratio for r in rows)
