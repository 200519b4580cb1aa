"""PaymentService over gRPC: request validation, and the ledger's answers mapped to statuses."""

from __future__ import annotations

import re
from collections.abc import Awaitable
from typing import Any, TypeVar

from gaming.common.v1 import common_pb2
from gaming.payment.v1 import payment_pb2, payment_pb2_grpc

from servicers import paging
from servicers.auth.call_identity import recorded_actor
from servicers.errors import invalid_argument, revision_conflict
from servicers.payment._ledger import Ledger, Mutation
from servicers.payment._records import fingerprint, page_token, parse_page_token, query_fingerprint
from servicers.storage import RevisionConflict

_T = TypeVar("_T")

# ISO 4217 codes and in-game codes alike ("USD", "GEM", "GOLD2").
_CURRENCY = re.compile(r"[A-Z][A-Z0-9]{2,7}")
_CURRENCY_RULE = "3 to 8 uppercase letters or digits starting with a letter, e.g. USD or GEM"
MAX_ID_CHARS = 128  # account ids and actor ids; bounds what one account entry can hold
MAX_KEY_CHARS = 128  # common.v1.IdempotencyKey: 1 to 128 printable ASCII characters
MAX_DESCRIPTION_CHARS = 256


async def _answer(work: Awaitable[_T]) -> _T:
    """Await the ledger: its refusals and store failures reach the error boundary as they are; a
    lost race still lost after the ledger's retries is the account's revision conflict."""
    try:
        return await work
    except RevisionConflict as conflict:
        raise revision_conflict(conflict, "account") from conflict


def _check_id(field: str, value: str, *, required: bool = True) -> None:
    if required and not value:
        raise invalid_argument(field, "required")
    if len(value) > MAX_ID_CHARS:
        raise invalid_argument(field, f"at most {MAX_ID_CHARS} characters")


def _check_currency(field: str, code: str) -> None:
    if not _CURRENCY.fullmatch(code):
        raise invalid_argument(field, f"malformed currency code {code!r}: {_CURRENCY_RULE}")


def _check_amount(amount: common_pb2.Money) -> None:
    if amount.amount_minor <= 0:
        raise invalid_argument("amount.amount_minor", "must be positive")
    _check_currency("amount.currency_code", amount.currency_code)


def _check_mutation(method: str, request: Any) -> Mutation:
    """Validate what every mutating request carries; return it as a Mutation."""
    key: str = request.idempotency_key.key
    if not key:
        raise invalid_argument("idempotency_key.key", "required")
    if len(key) > MAX_KEY_CHARS or not all(" " <= char <= "~" for char in key):
        raise invalid_argument("idempotency_key.key", f"1 to {MAX_KEY_CHARS} printable ASCII characters")
    if len(request.description) > MAX_DESCRIPTION_CHARS:
        raise invalid_argument("description", f"at most {MAX_DESCRIPTION_CHARS} characters")
    _check_id("actor_id", request.actor_id, required=False)
    return Mutation(key=key, fingerprint=fingerprint(method, request), description=request.description,
                    actor_id=recorded_actor(request.actor_id))


class PaymentServicer(payment_pb2_grpc.PaymentServiceServicer):
    """Balances and an idempotent ledger per account (see the ``servicers.payment`` docstring)."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def __repr__(self) -> str:
        return f"<PaymentServicer ledger={self._ledger!r}>"

    async def Balance(self, request: payment_pb2.BalanceRequest, context: Any) -> payment_pb2.BalanceResponse:
        """An account's balance in one currency; zero if never funded."""
        _check_id("account_id", request.account_id)
        _check_currency("currency_code", request.currency_code)
        amount, last = await _answer(self._ledger.balance(request.account_id, request.currency_code))
        return payment_pb2.BalanceResponse(
            balance=common_pb2.Money(currency_code=request.currency_code, amount_minor=amount),
            read_time=self._ledger.now(),
            last_transaction_id=last,
        )

    async def Deposit(self, request: payment_pb2.DepositRequest, context: Any) -> payment_pb2.DepositResponse:
        """Credit an account, once per idempotency key."""
        _check_id("account_id", request.account_id)
        if not request.HasField("amount"):
            raise invalid_argument("amount", "required")
        _check_amount(request.amount)
        mutation = _check_mutation("Deposit", request)
        applied = await _answer(self._ledger.deposit(request.account_id, request.amount, mutation))
        return payment_pb2.DepositResponse(transaction=applied.transaction, replayed=applied.replayed)

    async def Charge(self, request: payment_pb2.ChargeRequest, context: Any) -> payment_pb2.ChargeResponse:
        """Debit an account if its balance covers the amount, once per idempotency key."""
        _check_id("account_id", request.account_id)
        if not request.HasField("amount"):
            raise invalid_argument("amount", "required")
        _check_amount(request.amount)
        mutation = _check_mutation("Charge", request)
        applied = await _answer(self._ledger.charge(request.account_id, request.amount, mutation))
        return payment_pb2.ChargeResponse(transaction=applied.transaction, replayed=applied.replayed)

    async def Refund(self, request: payment_pb2.RefundRequest, context: Any) -> payment_pb2.RefundResponse:
        """Refund all (amount unset) or part of a charge, never more than was charged."""
        if not request.original_transaction_id:
            raise invalid_argument("original_transaction_id", "required")
        amount = request.amount if request.HasField("amount") else None
        if amount is not None:
            _check_amount(amount)
        mutation = _check_mutation("Refund", request)
        applied = await _answer(self._ledger.refund(request.original_transaction_id, amount, mutation))
        return payment_pb2.RefundResponse(refund=applied.transaction, original_transaction=applied.original,
                                          replayed=applied.replayed)

    async def ListTransactions(self, request: payment_pb2.ListTransactionsRequest,
                               context: Any) -> payment_pb2.ListTransactionsResponse:
        """One page of an account's ledger, newest first; the token is bound to the query."""
        _check_id("account_id", request.account_id)
        if request.currency_code:
            _check_currency("currency_code", request.currency_code)
        size = paging.page_size(request.page)
        query = query_fingerprint(request.account_id, request.currency_code)
        before = 0
        if request.page.page_token:
            token = parse_page_token(request.page.page_token)
            if token is None:
                raise invalid_argument("page.page_token", "not a page token of this service")
            if token[0] != query:
                raise invalid_argument("page.page_token", "belongs to another query")
            before = token[1]
        page, next_before, total = await _answer(
            self._ledger.transactions(request.account_id, request.currency_code, size, before)
        )
        return payment_pb2.ListTransactionsResponse(
            transactions=page,
            page=common_pb2.PageResponse(next_page_token=page_token(query, next_before) if next_before else "",
                                         total_size=total),
        )
