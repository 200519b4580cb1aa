"""The ledger's bookkeeping over account entries: deposits, charges, refunds and listings.

Every mutation is a read-modify-write of the account's one entry, committed by compare-and-set
and retried from a fresh read when another writer (this replica or another) got there first.
That is what makes concurrent charges safe: a charge is decided against the balance of the
revision it replaces, so two charges can never both spend the same funds, and an idempotency key
recorded in that same entry is seen by every later attempt.

The ledger raises ``Refusal`` for answers the caller must get (insufficient funds, unknown
transaction...) as an ``RpcError``, ``StorageUnavailable`` (worded for the ledger) when the KV
store fails, and ``RevisionConflict`` when the account stayed contended for every attempt.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeAlias

import grpc
from gaming.common.v1 import common_pb2
from gaming.payment.v1 import payment_pb2
from google.protobuf import timestamp_pb2

from servicers.errors import RpcError, invalid_argument, rpc_error
from servicers.named_store import NamedStore
from servicers.payment._records import (
    Account,
    Balance,
    KeyUse,
    account_key,
    archive_key,
    parse_transaction_id,
    transaction_id,
)
from servicers.storage import Entry, KeyValue, RevisionConflict

INT64_MAX = 2**63 - 1
DEFAULT_RECENT_TRANSACTIONS = 100
DEFAULT_REMEMBERED_KEYS = 1000
DEFAULT_ATTEMPTS = 100
_ARCHIVE_BATCH = 64  # archived transactions read concurrently while listing

Transaction: TypeAlias = payment_pb2.Transaction
TransactionType: TypeAlias = payment_pb2.TransactionType.ValueType


class Refusal(RpcError):
    """A request the ledger will not apply, as the status the caller gets.

    With ``field`` (the request field at fault) it is INVALID_ARGUMENT with a BadRequest naming
    it; otherwise ``code`` with an ErrorInfo ``reason``.
    """

    def __init__(self, code: grpc.StatusCode, message: str, *, reason: str | None = None,
                 field: str | None = None) -> None:
        answer = invalid_argument(field, message) if field else rpc_error(code, message, reason)
        super().__init__(answer.code, answer.message, answer.details)
        self.field = field


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Bounds of an account entry, and of the compare-and-set retries.

    Attributes:
        recent_transactions: transactions kept in the account entry; older ones are read from the
            ledger bucket.
        remembered_keys: idempotency keys remembered per account; a retry with an older key
            applies again.
        attempts: compare-and-set attempts before a call fails with ABORTED.
    """

    recent_transactions: int = DEFAULT_RECENT_TRANSACTIONS
    remembered_keys: int = DEFAULT_REMEMBERED_KEYS
    attempts: int = DEFAULT_ATTEMPTS

    def __post_init__(self) -> None:
        if self.recent_transactions < 1 or self.remembered_keys < 1 or self.attempts < 1:
            raise ValueError("payment limits must be positive")


@dataclass(frozen=True, slots=True, kw_only=True)
class Mutation:
    """The parts of a mutating call that every transaction records."""

    key: str
    fingerprint: bytes
    description: str
    actor_id: str


@dataclass(frozen=True, slots=True)
class Applied:
    """What a mutation did (or did the first time, when ``replayed``)."""

    transaction: Transaction
    original: Transaction | None = None
    replayed: bool = False


def as_seen(transaction: Transaction, refunded: int) -> Transaction:
    """A stored transaction as callers see it: a charge gets its refunded total and status."""
    if transaction.type != payment_pb2.TRANSACTION_TYPE_CHARGE:
        return transaction
    seen = Transaction()
    seen.CopyFrom(transaction)
    seen.refunded_amount.CopyFrom(common_pb2.Money(currency_code=transaction.amount.currency_code,
                                                   amount_minor=refunded))
    if refunded >= transaction.amount.amount_minor:
        seen.status = payment_pb2.TRANSACTION_STATUS_REFUNDED
    elif refunded > 0:
        seen.status = payment_pb2.TRANSACTION_STATUS_PARTIALLY_REFUNDED
    return seen


class Ledger:
    """Balances and transactions of every account, over two KV buckets (see ``_records``)."""

    def __init__(self, accounts: KeyValue, archive: KeyValue, *, clock: Callable[[], float],
                 limits: Limits) -> None:
        # A store outage is UNAVAILABLE, as payment.proto promises, with a message naming the store.
        self._accounts = NamedStore(accounts, "the ledger store is unavailable")
        self._archive = NamedStore(archive, "the ledger store is unavailable")
        self._clock = clock
        self._limits = limits

    def __repr__(self) -> str:
        return f"<Ledger accounts={self._accounts!r} archive={self._archive!r} limits={self._limits!r}>"

    def now(self) -> timestamp_pb2.Timestamp:
        """The server time, from the injected clock."""
        stamp = timestamp_pb2.Timestamp()
        stamp.FromNanoseconds(int(self._clock() * 1e9))
        return stamp

    # -- reads ------------------------------------------------------------------------------------

    async def balance(self, account_id: str, currency_code: str) -> tuple[int, str]:
        """(balance, id of the last transaction in that currency or ""); zero if never funded."""
        account = await self._load(account_id)
        balance = account.balances.get(currency_code)
        if balance is None:
            return 0, ""
        return balance.amount_minor, transaction_id(account_id, balance.last_sequence)

    async def transactions(self, account_id: str, currency_code: str, page_size: int,
                           before: int) -> tuple[list[Transaction], int, int]:
        """One page, newest first, of transactions older than sequence ``before`` (0: from the
        newest). Returns the page, the ``before`` of the next page (0 if this was the last) and
        the total count (-1 when filtered by currency, which would need a full scan)."""
        account = await self._load(account_id)
        sequence = account.last_sequence if before == 0 else min(before - 1, account.last_sequence)
        found: list[tuple[int, Transaction]] = []
        # One more than the page, to know whether a next page exists.
        while sequence >= 1 and len(found) <= page_size:
            if sequence >= account.first_recent:
                numbers = list(range(sequence, account.first_recent - 1, -1))
                batch = [self._recent(account, number) for number in numbers]
            else:
                wanted = _ARCHIVE_BATCH if currency_code else min(page_size + 1 - len(found), _ARCHIVE_BATCH)
                numbers = list(range(sequence, max(sequence - wanted, 0), -1))
                batch = await asyncio.gather(*(self._archived(account_id, number) for number in numbers))
            for number, transaction in zip(numbers, batch, strict=True):
                if not currency_code or transaction.amount.currency_code == currency_code:
                    found.append((number, as_seen(transaction, account.refunded.get(number, 0))))
            sequence -= len(numbers)
        page = [transaction for _, transaction in found[:page_size]]
        next_before = found[page_size - 1][0] if len(found) > page_size else 0
        return page, next_before, -1 if currency_code else account.last_sequence

    # -- mutations --------------------------------------------------------------------------------

    async def deposit(self, account_id: str, amount: common_pb2.Money, mutation: Mutation) -> Applied:
        """Credit ``amount``."""

        async def step(account: Account) -> Applied:
            replay = await self._replay(account_id, account, mutation)
            if replay is not None:
                return replay
            return Applied(await self._record(account_id, account, mutation, payment_pb2.TRANSACTION_TYPE_DEPOSIT,
                                              amount.currency_code, amount.amount_minor))

        return await self._commit(account_id, step)

    async def charge(self, account_id: str, amount: common_pb2.Money, mutation: Mutation) -> Applied:
        """Debit ``amount`` if the balance covers it (FAILED_PRECONDITION otherwise, nothing recorded)."""

        async def step(account: Account) -> Applied:
            replay = await self._replay(account_id, account, mutation)
            if replay is not None:
                return replay
            balance = account.balances.get(amount.currency_code, Balance()).amount_minor
            if balance < amount.amount_minor:
                raise Refusal(grpc.StatusCode.FAILED_PRECONDITION,
                              f"insufficient funds: balance {balance} {amount.currency_code}, "
                              f"charge {amount.amount_minor}", reason="INSUFFICIENT_FUNDS")
            charge = await self._record(account_id, account, mutation, payment_pb2.TRANSACTION_TYPE_CHARGE,
                                        amount.currency_code, -amount.amount_minor)
            return Applied(as_seen(charge, 0))

        return await self._commit(account_id, step)

    async def refund(self, charge_id: str, amount: common_pb2.Money | None, mutation: Mutation) -> Applied:
        """Refund ``amount`` of a charge (None: all that remains refundable)."""
        parsed = parse_transaction_id(charge_id)
        if parsed is None:
            raise _not_found(charge_id)
        account_id, sequence = parsed

        async def step(account: Account) -> Applied:
            # The key is looked up first: a retry of a refund that emptied the charge replays.
            replay = await self._replay(account_id, account, mutation)
            if replay is not None:
                return replay
            if sequence > account.last_sequence:
                raise _not_found(charge_id)
            charge = await self._transaction(account_id, account, sequence)
            if charge.type != payment_pb2.TRANSACTION_TYPE_CHARGE:
                raise Refusal(grpc.StatusCode.FAILED_PRECONDITION, f"transaction {charge_id} is not a charge",
                              reason="NOT_A_CHARGE")
            currency = charge.amount.currency_code
            if amount is not None and amount.currency_code != currency:
                raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, f"the charge is in {currency}",
                              field="amount.currency_code")
            refunded = account.refunded.get(sequence, 0)
            remaining = charge.amount.amount_minor - refunded
            if remaining <= 0:
                raise Refusal(grpc.StatusCode.FAILED_PRECONDITION, f"charge {charge_id} is already fully refunded",
                              reason="ALREADY_REFUNDED")
            value = remaining if amount is None else amount.amount_minor
            if value > remaining:
                raise Refusal(grpc.StatusCode.FAILED_PRECONDITION,
                              f"refund of {value} exceeds the {remaining} {currency} still refundable",
                              reason="REFUND_EXCEEDS_CHARGE")
            account.refunded[sequence] = refunded + value
            refund = await self._record(account_id, account, mutation, payment_pb2.TRANSACTION_TYPE_REFUND,
                                        currency, value, original_id=charge_id, refunded_after=refunded + value)
            return Applied(refund, as_seen(charge, refunded + value))

        return await self._commit(account_id, step)

    # -- the machinery ----------------------------------------------------------------------------

    async def _commit(self, account_id: str, step: Callable[[Account], Awaitable[Applied]]) -> Applied:
        """Run ``step`` on a fresh read of the account and write the result by compare-and-set,
        until a write wins (or ``attempts`` are spent: the last conflict is raised)."""
        key = account_key(account_id)
        for attempt in range(self._limits.attempts):
            entry = await self._get(self._accounts, key)
            account = Account.decode(entry.value) if entry else Account()
            applied = await step(account)
            if applied.replayed:
                return applied
            try:
                await self._accounts.update(key, account.encode(), entry.revision if entry else 0)
            except RevisionConflict:
                if attempt + 1 == self._limits.attempts:
                    raise
                # Jittered, growing backoff: contenders spread out instead of colliding again.
                await asyncio.sleep(random.uniform(0, min(0.002 * 2**attempt, 0.05)))
                continue
            return applied
        raise AssertionError("unreachable: the last attempt returns or raises")  # pragma: no cover

    async def _record(self, account_id: str, account: Account, mutation: Mutation, kind: TransactionType,
                      currency: str, delta: int, *, original_id: str = "", refunded_after: int = 0) -> Transaction:
        """Append a transaction moving the balance by ``delta``, and remember its key. Transactions
        pushed out of the entry's window are archived first, so none is ever lost."""
        balance = account.balances.get(currency, Balance())
        after = balance.amount_minor + delta
        if after > INT64_MAX:
            raise Refusal(grpc.StatusCode.FAILED_PRECONDITION, f"the {currency} balance would overflow",
                          reason="BALANCE_OVERFLOW")
        sequence = account.last_sequence + 1
        transaction = Transaction(
            transaction_id=transaction_id(account_id, sequence),
            account_id=account_id,
            type=kind,
            status=payment_pb2.TRANSACTION_STATUS_COMPLETED,
            amount=common_pb2.Money(currency_code=currency, amount_minor=abs(delta)),
            balance_after=common_pb2.Money(currency_code=currency, amount_minor=after),
            description=mutation.description,
            original_transaction_id=original_id,
            idempotency_key=mutation.key,
            audit=common_pb2.AuditInfo(actor_id=mutation.actor_id, update_time=self.now()),
        )
        evicted = account.append(transaction, self._limits.recent_transactions)
        account.balances[currency] = Balance(after, sequence)
        account.remember(mutation.key, KeyUse(mutation.fingerprint, sequence, refunded_after),
                         self._limits.remembered_keys)
        # Stored transactions never change, so writing one again (after a lost compare-and-set)
        # writes the same bytes: harmless.
        for number, old in evicted:
            await self._archive.put(archive_key(account_id, number), old.SerializeToString(deterministic=True))
        return transaction

    async def _replay(self, account_id: str, account: Account, mutation: Mutation) -> Applied | None:
        """The first result of this idempotency key, None if the key is new to this account."""
        use = account.keys.get(mutation.key)
        if use is None:
            return None
        if use.fingerprint != mutation.fingerprint:
            raise Refusal(grpc.StatusCode.ALREADY_EXISTS,
                          f"idempotency key {mutation.key!r} was already used with different parameters",
                          reason="IDEMPOTENCY_KEY_REUSED")
        transaction = await self._transaction(account_id, account, use.sequence)
        if transaction.type != payment_pb2.TRANSACTION_TYPE_REFUND:
            return Applied(as_seen(transaction, 0), replayed=True)  # a charge starts unrefunded
        original = parse_transaction_id(transaction.original_transaction_id)
        assert original is not None, "a stored refund names a valid charge"
        charge = await self._transaction(account_id, account, original[1])
        return Applied(transaction, as_seen(charge, use.refunded_after), replayed=True)

    async def _transaction(self, account_id: str, account: Account, sequence: int) -> Transaction:
        """A stored transaction: from the entry's window, else from the archive."""
        return self._recent(account, sequence) if sequence >= account.first_recent else \
            await self._archived(account_id, sequence)

    @staticmethod
    def _recent(account: Account, sequence: int) -> Transaction:
        transaction = account.recent_transaction(sequence)
        assert transaction is not None, "sequence within the window"
        return transaction

    async def _archived(self, account_id: str, sequence: int) -> Transaction:
        entry = await self._get(self._archive, archive_key(account_id, sequence))
        if entry is None:
            # Archiving precedes eviction, so this means the bucket lost data.
            raise Refusal(grpc.StatusCode.DATA_LOSS, f"ledger entry {transaction_id(account_id, sequence)} is missing",
                          reason="LEDGER_ENTRY_MISSING")
        return Transaction.FromString(entry.value)

    async def _load(self, account_id: str) -> Account:
        entry = await self._get(self._accounts, account_key(account_id))
        return Account.decode(entry.value) if entry else Account()

    @staticmethod
    async def _get(bucket: KeyValue, key: str) -> Entry | None:
        return await bucket.get(key)


def _not_found(charge_id: str) -> Refusal:
    return Refusal(grpc.StatusCode.NOT_FOUND, f"transaction {charge_id!r} does not exist",
                   reason="TRANSACTION_NOT_FOUND")
