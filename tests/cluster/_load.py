"""Steady write load through the gRPC ingress: Charge on payment (idempotency keys) and
compare-and-set Update on state-manager, every call's outcome recorded, every acknowledged
write read back at the end.

A write that fails is retried as the same write (the same idempotency key, the same expected
revision) until it is acknowledged, as a careful client would; so at the end every account's
balance and every player's revision must match the acknowledged writes exactly: a lost write, or
one applied twice, shows.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from gaming.common.v1 import common_pb2
from gaming.payment.v1 import payment_pb2 as pay
from gaming.payment.v1 import payment_pb2_grpc
from gaming.state_manager.v1 import state_manager_pb2 as sm
from gaming.state_manager.v1 import state_manager_pb2_grpc
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mesh.supervisor import http_get

T = TypeVar("T")
OK = grpc.StatusCode.OK
# Codes after which the same write is tried again; anything else gives the write up.
RETRIED = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNKNOWN,
           grpc.StatusCode.INTERNAL, grpc.StatusCode.ABORTED}
DEPOSIT = 10**9
CHARGE = 1
# A client's pause before retrying a failed call: pacing, not a wait for something.
BACKOFF = 0.1
# Bound on one write (all its retries) and on each read-back.
WRITE_LIMIT = 60.0


@dataclass(frozen=True)
class Outcome:
    """One call's end: when (monotonic), which writer and method, and its status code."""

    at: float
    writer: str
    method: str
    code: grpc.StatusCode
    detail: str = ""
    resolved: bool = False  # an ABORTED explained by an earlier attempt of the same write landing

    @property
    def failed(self) -> bool:
        return self.code != OK and not self.resolved


@dataclass
class Load:
    """The writers, their outcomes, and what they had acknowledged."""

    channel: grpc.aio.Channel
    token: str
    payment_writers: int = 3
    state_writers: int = 3
    deadline: float = 5.0
    outcomes: list[Outcome] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    charges: dict[str, dict[str, str]] = field(default_factory=dict)  # account -> key -> transaction id
    players: dict[str, tuple[int, int]] = field(default_factory=dict)  # player -> (n, revision) acknowledged
    landed_unacknowledged: int = 0
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.metadata = (("authorization", f"Bearer {self.token}"),)
        self.payment = payment_pb2_grpc.PaymentServiceStub(self.channel)
        self.state = state_manager_pb2_grpc.StateManagerServiceStub(self.channel)
        run = uuid.uuid4().hex[:8]
        self.charges = {f"acct-{run}-{i}": {} for i in range(self.payment_writers)}
        self.players = {f"player-{run}-{i}": (0, 0) for i in range(self.state_writers)}

    @property
    def writers(self) -> list[str]:
        return [*self.charges, *self.players]

    def acknowledged(self, since: float = 0.0, until: float = float("inf")) -> int:
        """Writes acknowledged between two instants."""
        return sum(1 for o in self.outcomes if o.code == OK and o.method in ("Charge", "Update")
                   and since <= o.at < until)

    def successes_since(self, writer: str, since: float) -> int:
        return sum(1 for o in self.outcomes if o.writer == writer and o.code == OK and o.at >= since)

    async def prepare(self) -> None:
        """Fund every account (before the load, outside any kill)."""
        for account in self.charges:
            request = pay.DepositRequest(account_id=account, amount=_gems(DEPOSIT), actor_id="failover-test",
                                         idempotency_key=common_pb2.IdempotencyKey(key=uuid.uuid4().hex))
            await self._until_answered("setup", "Deposit", lambda r=request: self.payment.Deposit(
                r, timeout=self.deadline, metadata=self.metadata))

    def start(self) -> None:
        for account in self.charges:
            self._tasks.append(asyncio.create_task(self._charge_forever(account)))
        for player in self.players:
            self._tasks.append(asyncio.create_task(self._update_forever(player)))

    async def stop(self) -> None:
        """Let each writer finish the write it is on (bounded), then stop."""
        self._stopping.set()
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                self.violations.append(f"a writer stopped with {result!r}")

    async def _call(self, writer: str, method: str, call: Awaitable[T]) -> T | grpc.aio.AioRpcError:
        try:
            reply = await call
        except grpc.aio.AioRpcError as error:
            self.outcomes.append(Outcome(time.monotonic(), writer, method, error.code(), error.details() or ""))
            return error
        self.outcomes.append(Outcome(time.monotonic(), writer, method, OK))
        return reply

    def _resolve(self, writer: str, method: str, detail: str) -> None:
        """Mark ``writer``'s latest ``method`` outcome as explained (a writer makes one call at a time)."""
        index = max(i for i, o in enumerate(self.outcomes) if o.writer == writer and o.method == method)
        old = self.outcomes[index]
        self.outcomes[index] = Outcome(old.at, writer, method, old.code, detail, resolved=True)

    async def _until_answered(self, writer: str, method: str, call: Callable[[], Awaitable[T]]) -> T:
        """A read (or the set-up deposit), retried on the transient codes within WRITE_LIMIT."""
        limit = time.monotonic() + WRITE_LIMIT
        while True:
            reply = await self._call(writer, method, call())
            if not isinstance(reply, grpc.aio.AioRpcError):
                return reply
            if reply.code() not in RETRIED or time.monotonic() > limit:
                raise AssertionError(f"{method} for {writer}: {reply.code().name} {reply.details()}")
            await asyncio.sleep(BACKOFF)

    async def _charge_forever(self, account: str) -> None:
        while not self._stopping.is_set():
            key = uuid.uuid4().hex
            request = pay.ChargeRequest(account_id=account, amount=_gems(CHARGE), description="failover",
                                        actor_id="failover-test", idempotency_key=common_pb2.IdempotencyKey(key=key))
            limit = time.monotonic() + WRITE_LIMIT
            while True:
                reply = await self._call(account, "Charge", self.payment.Charge(
                    request, timeout=self.deadline, metadata=self.metadata))
                if not isinstance(reply, grpc.aio.AioRpcError):
                    self.charges[account][key] = reply.transaction.transaction_id
                    break
                if reply.code() not in RETRIED or time.monotonic() > limit:
                    self.violations.append(f"Charge {key} on {account} given up: {reply.code().name} {reply.details()}")
                    return
                await asyncio.sleep(BACKOFF)

    async def _update_forever(self, player: str) -> None:
        n, revision = 0, 0
        while not self._stopping.is_set():
            n += 1
            document = struct_pb2.Struct()
            document.update({"n": n, "writer": player})
            request = sm.UpdateRequest(player_id=player, document=document, actor_id="failover-test",
                                       expected_revision=common_pb2.Revision(value=revision))
            unanswered = False  # an earlier attempt of this write may have landed unseen
            limit = time.monotonic() + WRITE_LIMIT
            while True:
                reply = await self._call(player, "Update", self.state.Update(
                    request, timeout=self.deadline, metadata=self.metadata))
                if not isinstance(reply, grpc.aio.AioRpcError):
                    revision = reply.state.revision.value
                    break
                if reply.code() == grpc.StatusCode.ABORTED:
                    stored_n, stored_revision = await self._read_state(player)
                    if unanswered and stored_n == n:
                        # Our earlier attempt did land: an unacknowledged write, not a lost one.
                        self._resolve(player, "Update", "an earlier attempt landed")
                        self.landed_unacknowledged += 1
                        revision = stored_revision
                        break
                    self.violations.append(
                        f"Update of {player}: ABORTED at n={n}, expected revision {revision}, but the store "
                        f"holds n={stored_n} at revision {stored_revision} (an acknowledged write is missing)")
                    return
                if reply.code() not in RETRIED or time.monotonic() > limit:
                    self.violations.append(f"Update {n} of {player} given up: {reply.code().name} {reply.details()}")
                    return
                unanswered = True
                await asyncio.sleep(BACKOFF)
            self.players[player] = (n, revision)

    async def _read_state(self, player: str) -> tuple[int, int]:
        reply = await self._until_answered(player, "Get", lambda: self.state.Get(
            sm.GetRequest(player_id=player), timeout=self.deadline, metadata=self.metadata))
        return int(reply.state.document.fields["n"].number_value), reply.state.revision.value

    async def verify(self) -> int:
        """Read back every acknowledged write; violations are added; the number of writes checked."""
        checked = 0
        for account, acked in self.charges.items():
            balance = await self._until_answered("verify", "Balance", lambda a=account: self.payment.Balance(
                pay.BalanceRequest(account_id=a, currency_code="GEM"), timeout=self.deadline, metadata=self.metadata))
            expected = DEPOSIT - CHARGE * len(acked)
            if balance.balance.amount_minor != expected:
                self.violations.append(f"{account}: balance {balance.balance.amount_minor}, expected {expected} "
                                       f"after {len(acked)} acknowledged charges")
            ledger = await self._ledger(account)
            charged = {t.transaction_id: t.idempotency_key for t in ledger if t.type == pay.TRANSACTION_TYPE_CHARGE}
            missing = [key for key, tx in acked.items() if charged.get(tx) != key]
            if missing or len(charged) != len(acked):
                self.violations.append(f"{account}: {len(missing)} acknowledged charges missing from the ledger, "
                                       f"{len(charged)} charges recorded for {len(acked)} acknowledged")
            checked += len(acked)
        for player, (n, revision) in self.players.items():
            stored_n, stored_revision = await self._read_state(player)
            if (stored_n, stored_revision) != (n, revision):
                self.violations.append(f"{player}: stored n={stored_n} revision {stored_revision}, last "
                                       f"acknowledged n={n} revision {revision}")
            checked += n
        return checked

    async def _ledger(self, account: str) -> list[Any]:
        transactions: list[Any] = []
        token = ""
        while True:
            request = pay.ListTransactionsRequest(account_id=account,
                                                  page=common_pb2.PageRequest(page_size=1000, page_token=token))
            page = await self._until_answered("verify", "ListTransactions", lambda r=request: (
                self.payment.ListTransactions(r, timeout=self.deadline, metadata=self.metadata)))
            transactions.extend(page.transactions)
            token = page.page.next_page_token
            if not token:
                return transactions


def _gems(amount: int) -> common_pb2.Money:
    return common_pb2.Money(currency_code="GEM", amount_minor=amount)


@dataclass
class Watcher:
    """Samples what an operator would look at during a kill: the admin server's /readyz and the
    gRPC health of payment and state-manager through the ingress."""

    channel: grpc.aio.Channel
    admin_port: int
    seen: list[tuple[float, str, str]] = field(default_factory=list)  # (when, what, answer) when not ok
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        health = health_pb2_grpc.HealthStub(self.channel)
        services = ("gaming.payment.v1.PaymentService", "gaming.state_manager.v1.StateManagerService")
        while True:
            try:
                status, body = await http_get("127.0.0.1", self.admin_port, "/readyz", limit=2.0)
                if status != 200:
                    self.seen.append((time.monotonic(), "/readyz", f"{status} {body.strip()[:200]}"))
            except (OSError, TimeoutError) as error:
                self.seen.append((time.monotonic(), "/readyz", repr(error)))
            for service in services:
                try:
                    answer = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
                    if answer.status != health_pb2.HealthCheckResponse.SERVING:
                        self.seen.append((time.monotonic(), service, health_pb2.HealthCheckResponse.ServingStatus.Name(
                            answer.status)))
                except grpc.aio.AioRpcError as error:
                    self.seen.append((time.monotonic(), service, error.code().name))
            await asyncio.sleep(0.25)  # sampling period
