"""SyncPlayer: a player's snapshot from four services asked side by side.

- state-manager ``Get`` (required): the player must exist there; NOT_FOUND is an unknown player,
  any failure to answer is UNAVAILABLE naming state-manager.
- world-state ``ListEntities`` (required) of the region the bridge last placed the player in,
  ``player_avatar`` entities, paged until the player's avatar is found: its position and revision
  (``state_revision``). A region that no longer exists, or an avatar not found (the player is
  offline), leaves the last position the bridge heard. Failing to answer is UNAVAILABLE.
- quest-system ``List`` of ACTIVE quests (optional) and payment ``Balance`` in the primary
  currency (optional): when either fails, the snapshot is sent without that part, and the
  trailing metadata names it (``degraded-sources``), as the brief for this service asks (the
  proto would fail the call instead).

Each call gets its share of the caller's remaining time (``servicers._downstream``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from gaming.body_broker_integration.v1 import body_broker_integration_pb2 as pb
from gaming.common.v1 import common_pb2
from gaming.payment.v1 import payment_pb2, payment_pb2_grpc
from gaming.quest.v1 import quest_pb2, quest_pb2_grpc
from gaming.state_manager.v1 import state_manager_pb2, state_manager_pb2_grpc
from gaming.world_state.v1 import world_state_pb2 as ws
from gaming.world_state.v1 import world_state_pb2_grpc

from servicers._downstream import OPTIONAL, REQUIRED, DependencyError, budget, describe, gather_all
from servicers.body_broker_integration._events import AVATAR_KIND

_log = logging.getLogger(__name__)

STATE_MANAGER = "state-manager"
WORLD_STATE = "world-state"
QUEST_SYSTEM = "quest-system"
PAYMENT = "payment"
_AVATAR_PAGE = 1000
# A player holds at most 25 open quests, so one page holds every active one.
_QUEST_PAGE = 100


@dataclass
class Parts:
    """What the calls found; ``degraded`` names the optional sources that did not answer."""

    avatar: ws.Entity | None
    active_quest_ids: list[str] | None
    balance: common_pb2.Money | None
    degraded: list[str] = field(default_factory=list)


class Snapshots:
    """Asks the four sources for one player's parts."""

    def __init__(self, channel: Callable[[str], Any], *, currency: str) -> None:
        self._channel = channel
        self._currency = currency

    def __repr__(self) -> str:
        return f"<Snapshots currency={self._currency!r}>"

    async def parts(self, player_id: str, region_id: str, remaining: float | None) -> Parts:
        """Every part, asked side by side.

        Raises:
            DependencyError: NOT_FOUND for an unknown player, UNAVAILABLE naming state-manager
                or world-state.
        """
        _, avatar, quests, balance = await gather_all(
            self._state(player_id, budget(remaining, REQUIRED)),
            self._avatar(player_id, region_id, budget(remaining, REQUIRED)),
            self._active_quests(player_id, budget(remaining, OPTIONAL)),
            self._balance(player_id, budget(remaining, OPTIONAL)),
        )
        degraded = [name for name, part in ((QUEST_SYSTEM, quests), (PAYMENT, balance)) if part is None]
        return Parts(avatar, quests, balance, degraded)

    async def _state(self, player_id: str, seconds: float) -> None:
        stub = state_manager_pb2_grpc.StateManagerServiceStub(self._channel(STATE_MANAGER))
        try:
            await stub.Get(state_manager_pb2.GetRequest(player_id=player_id), timeout=seconds)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                raise DependencyError(grpc.StatusCode.NOT_FOUND, f"player {player_id!r} is unknown",
                                      "PLAYER_NOT_FOUND") from err
            raise DependencyError.down(STATE_MANAGER, err) from err

    async def _avatar(self, player_id: str, region_id: str, seconds: float) -> ws.Entity | None:
        if not region_id:
            return None  # never placed: nothing to ask
        deadline = time.monotonic() + seconds
        stub = world_state_pb2_grpc.WorldStateServiceStub(self._channel(WORLD_STATE))
        token = ""
        while True:
            request = ws.ListEntitiesRequest(
                region_id=region_id, kind=AVATAR_KIND,
                page=common_pb2.PageRequest(page_size=_AVATAR_PAGE, page_token=token),
            )
            try:
                page = await stub.ListEntities(request, timeout=max(deadline - time.monotonic(), 0.0))
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.NOT_FOUND:
                    return None  # the region is gone: so is the avatar
                raise DependencyError.down(WORLD_STATE, err) from err
            for entity in page.entities:
                if entity.entity_id == player_id:
                    found: ws.Entity = entity
                    return found
            token = page.page.next_page_token
            if not token:
                return None

    async def _active_quests(self, player_id: str, seconds: float) -> list[str] | None:
        stub = quest_pb2_grpc.QuestServiceStub(self._channel(QUEST_SYSTEM))
        request = quest_pb2.ListRequest(player_id=player_id, status_filter=quest_pb2.QUEST_STATUS_ACTIVE,
                                        page=common_pb2.PageRequest(page_size=_QUEST_PAGE))
        try:
            reply = await stub.List(request, timeout=seconds)
        except grpc.aio.AioRpcError as err:
            _log.warning("snapshot without quests: quest-system failed: %s", describe(err))
            return None
        return [item.quest_id for item in reply.quests]

    async def _balance(self, player_id: str, seconds: float) -> common_pb2.Money | None:
        stub = payment_pb2_grpc.PaymentServiceStub(self._channel(PAYMENT))
        try:
            reply = await stub.Balance(payment_pb2.BalanceRequest(account_id=player_id, currency_code=self._currency),
                                       timeout=seconds)
        except grpc.aio.AioRpcError as err:
            _log.warning("snapshot without a balance: payment failed: %s", describe(err))
            return None
        money: common_pb2.Money = reply.balance
        return money


def assemble(player_id: str, known: pb.PlayerSnapshot | None, parts: Parts, now: Any) -> pb.PlayerSnapshot:
    """The snapshot: presence from the bridge, refined by what the sources said."""
    snapshot = pb.PlayerSnapshot(player_id=player_id, snapshot_time=now)
    if known is not None:
        snapshot.region_id = known.region_id
        snapshot.online = known.online
        if known.HasField("position"):
            snapshot.position.CopyFrom(known.position)
    if parts.avatar is not None:
        snapshot.position.CopyFrom(parts.avatar.position)
        snapshot.state_revision.CopyFrom(parts.avatar.revision)
    if parts.active_quest_ids is not None:
        snapshot.active_quest_ids.extend(parts.active_quest_ids)
    if parts.balance is not None:
        snapshot.balance.CopyFrom(parts.balance)
    return snapshot
