"""What the payment service stores, and how its ids, keys and page tokens are spelled.

Two buckets:

- ``payment_accounts``, key ``acct.<account>``: one ``AccountRecord`` per account holding its
  balances, its transaction counter, its most recent transactions, the idempotency keys it has
  seen and the refunded total of every refunded charge. Every mutation rewrites this one entry
  by compare-and-set, so a balance change, its ledger entry and its idempotency record are
  applied together or not at all.
- ``payment_ledger``, key ``tx.<account>.<sequence>``: a transaction that has left the
  account entry's recent window, written (before the compare-and-set that drops it from the
  window) and never changed afterwards.

``<account>`` is the account id in base64url without padding: ids may hold any character, KV key
tokens may not. Stored transactions are immutable: a charge's status and refunded amount are
derived on read from the account's refunded totals, so the archive never needs an update that
would have to be atomic with the account entry.

The records, and the contents of page tokens, are the messages of
``protos/gaming/payment/storage/v1/payment_records.proto`` (a storage-only schema, never sent on
the wire as messages), wrapped in small dataclasses that the rest of the package works with.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, field
from typing import Any

from gaming.payment.storage.v1 import payment_records_pb2
from gaming.payment.v1 import payment_pb2
from google.protobuf.message import DecodeError


@dataclass(slots=True)
class Balance:
    """An account's balance in one currency, and the sequence of the last transaction in it."""

    amount_minor: int = 0
    last_sequence: int = 0


@dataclass(frozen=True, slots=True)
class KeyUse:
    """What an idempotency key did: enough to rebuild the first response on a replay.

    ``refunded_after`` is, for a refund, the charge's refunded total right after it.
    """

    fingerprint: bytes
    sequence: int
    refunded_after: int = 0


@dataclass(slots=True)
class Account:
    """One account entry. ``recent`` holds the transactions with sequences
    ``first_recent .. last_sequence``, oldest first; ``keys`` is oldest first too."""

    last_sequence: int = 0
    balances: dict[str, Balance] = field(default_factory=dict)
    recent: list[payment_pb2.Transaction] = field(default_factory=list)
    keys: dict[str, KeyUse] = field(default_factory=dict)
    refunded: dict[int, int] = field(default_factory=dict)

    @property
    def first_recent(self) -> int:
        """Sequence of the oldest transaction still in the entry (last_sequence + 1 if none)."""
        return self.last_sequence - len(self.recent) + 1

    def recent_transaction(self, sequence: int) -> payment_pb2.Transaction | None:
        """The transaction ``sequence`` if it is still in the entry."""
        if self.first_recent <= sequence <= self.last_sequence:
            return self.recent[sequence - self.first_recent]
        return None

    def append(self, transaction: payment_pb2.Transaction, keep: int) -> list[tuple[int, payment_pb2.Transaction]]:
        """Add the next transaction; return the (sequence, transaction) pairs that no longer fit
        in the last ``keep`` and must be archived before this entry is written."""
        first = self.first_recent
        self.recent.append(transaction)
        self.last_sequence += 1
        overflow = max(len(self.recent) - keep, 0)
        evicted = [(first + index, self.recent[index]) for index in range(overflow)]
        del self.recent[:overflow]
        return evicted

    def remember(self, key: str, use: KeyUse, keep: int) -> None:
        """Record an idempotency key, forgetting the oldest beyond the last ``keep``."""
        self.keys[key] = use
        for stale in list(self.keys)[: max(len(self.keys) - keep, 0)]:
            del self.keys[stale]

    @classmethod
    def decode(cls, data: bytes) -> Account:
        """The account stored as ``data``."""
        record = payment_records_pb2.AccountRecord.FromString(data)
        return cls(
            last_sequence=record.last_sequence,
            balances={b.currency_code: Balance(b.amount_minor, b.last_sequence) for b in record.balances},
            recent=list(record.recent),
            keys={k.key: KeyUse(k.fingerprint, k.sequence, k.refunded_after) for k in record.keys},
            refunded={r.charge_sequence: r.refunded_minor for r in record.refunds},
        )

    def encode(self) -> bytes:
        """The bytes to store."""
        record = payment_records_pb2.AccountRecord(last_sequence=self.last_sequence, recent=self.recent)
        for currency, balance in self.balances.items():
            record.balances.add(currency_code=currency, amount_minor=balance.amount_minor,
                                last_sequence=balance.last_sequence)
        for key, use in self.keys.items():
            record.keys.add(key=key, fingerprint=use.fingerprint, sequence=use.sequence,
                            refunded_after=use.refunded_after)
        for sequence, amount in self.refunded.items():
            record.refunds.add(charge_sequence=sequence, refunded_minor=amount)
        return record.SerializeToString(deterministic=True)


# -- ids and keys ----------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes | None:
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return data if _b64(data) == text else None  # only the canonical spelling


def account_key(account_id: str) -> str:
    """The account entry's key."""
    return f"acct.{_b64(account_id.encode())}"


def archive_key(account_id: str, sequence: int) -> str:
    """The key of an archived transaction."""
    return f"tx.{_b64(account_id.encode())}.{sequence}"


def transaction_id(account_id: str, sequence: int) -> str:
    """The public id of an account's ``sequence``-th transaction. Refund gets only this id, so it
    carries the account (whose entry holds the charge) and the position in its ledger."""
    return f"{_b64(account_id.encode())}.{sequence}"


def parse_transaction_id(text: str) -> tuple[str, int] | None:
    """(account id, sequence) of a transaction id, or None if the server never issued it."""
    token, _, number = text.partition(".")
    raw = _unb64(token)
    if raw is None or not number.isdigit() or number != str(int(number)) or int(number) < 1:
        return None
    try:
        return raw.decode(), int(number)
    except UnicodeDecodeError:
        return None


def fingerprint(method: str, request: Any) -> bytes:
    """What identifies a mutating call's parameters: the method and the request without its
    idempotency key, so a retry matches and any other parameter does not."""
    copy = type(request)()
    copy.CopyFrom(request)
    copy.ClearField("idempotency_key")
    digest = hashlib.sha256(method.encode() + b"\0" + copy.SerializeToString(deterministic=True))
    return digest.digest()[:16]


# -- page tokens -----------------------------------------------------------------------------------


def query_fingerprint(account_id: str, currency_code: str) -> bytes:
    """Ties a page token to the query that produced it."""
    return hashlib.sha256(f"{account_id}\0{currency_code}".encode()).digest()[:8]


def page_token(query: bytes, before_sequence: int) -> str:
    """An opaque token: the next page holds transactions older than ``before_sequence``."""
    return _b64(payment_records_pb2.PageToken(query=query, before_sequence=before_sequence).SerializeToString())


def parse_page_token(text: str) -> tuple[bytes, int] | None:
    """(query fingerprint, before_sequence) of a token, or None if it is not one of ours."""
    data = _unb64(text)
    if data is None:
        return None
    try:
        token = payment_records_pb2.PageToken.FromString(data)
    except DecodeError:
        return None
    if len(token.query) != 8 or token.before_sequence < 1:
        return None
    return token.query, token.before_sequence

