"""payment: per-account balances and an idempotent, append-only ledger (gaming.payment.v1).

How money moves safely:

- Each account is ONE KV entry (``acct.<account>`` in ``payment_accounts``) holding its balances,
  its transaction counter, its last ``recent_transactions`` transactions (default 100), the last
  ``remembered_keys`` idempotency keys it has seen (default 1000) and the refunded total of each
  refunded charge. Deposit, Charge and Refund rewrite that entry by compare-and-set, retrying
  from a fresh read on a conflict, so the balance change, the transaction and the idempotency
  record commit together, on any number of replicas.
- A key seen again with the same parameters replays the first result (``replayed`` = true)
  without moving money; with other parameters it fails ALREADY_EXISTS. A failed call
  (insufficient funds...) records nothing, so its key stays free.
- Transactions leaving the entry's window are first copied to ``payment_ledger``
  (``tx.<account>.<sequence>``); ListTransactions and Refund read older transactions there.

Documented limits (deviations from the proto's wording):

- Keys are remembered per account for its last ``remembered_keys`` mutations, not for a fixed
  24 hours: the bound keeps the entry small (every mutation rewrites it). An account doing more
  than 1000 mutations a day would forget keys sooner.
- Idempotency keys are scoped to the account (for Refund: the charge's account).
- The refunded totals (about 12 bytes per refunded charge) are never pruned, so charges stay
  refundable forever; an account with tens of thousands of refunded charges grows its entry.
- Ids (account, actor) are at most 128 characters; currency codes are 3 to 8 of [A-Z0-9],
  starting with a letter. A deposit that would overflow int64 fails FAILED_PRECONDITION.

Settings (``deps.settings``, all optional positive integers): ``recent_transactions``,
``remembered_keys``, ``cas_attempts`` (default 100), ``accounts_max_bytes`` (default 256 MiB), ``ledger_max_bytes``
(default 1 GiB).
"""

from __future__ import annotations

from gaming.payment.v1 import payment_pb2_grpc

from servicers.dependencies import Dependencies
from servicers.payment._ledger import (
    DEFAULT_ATTEMPTS,
    DEFAULT_RECENT_TRANSACTIONS,
    DEFAULT_REMEMBERED_KEYS,
    Ledger,
    Limits,
)
from servicers.payment._servicer import PaymentServicer
from servicers.service_settings import positive_int

__all__ = ["SERVICE_NAMES", "TARGET", "PaymentServicer", "add_to_server", "create"]

TARGET = "payment"
SERVICE_NAMES = ("gaming.payment.v1.PaymentService",)

ACCOUNTS_BUCKET = "payment_accounts"
LEDGER_BUCKET = "payment_ledger"
_MiB = 1024 * 1024


def _setting(deps: Dependencies, name: str, default: int) -> int:
    return positive_int(deps.settings, name, default, service=TARGET)


async def create(deps: Dependencies) -> PaymentServicer:
    """Open (or create) the payment buckets and return a ready servicer."""
    limits = Limits(
        recent_transactions=_setting(deps, "recent_transactions", DEFAULT_RECENT_TRANSACTIONS),
        remembered_keys=_setting(deps, "remembered_keys", DEFAULT_REMEMBERED_KEYS),
        attempts=_setting(deps, "cas_attempts", DEFAULT_ATTEMPTS),
    )
    # history=1: compare-and-set needs only the latest revision, and the ledger is append-only.
    accounts = await deps.storage.key_value(
        ACCOUNTS_BUCKET, history=1, max_bytes=_setting(deps, "accounts_max_bytes", 256 * _MiB)
    )
    ledger = await deps.storage.key_value(
        LEDGER_BUCKET, history=1, max_bytes=_setting(deps, "ledger_max_bytes", 1024 * _MiB)
    )
    return PaymentServicer(Ledger(accounts, ledger, clock=deps.clock, limits=limits))


add_to_server = payment_pb2_grpc.add_PaymentServiceServicer_to_server
