"""payment over NATS: balances, idempotent deposits, charges and refunds, the paged ledger,
concurrent charges over two replicas, and state that outlives the servicer."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
import nats
import pytest
from gaming.common.v1 import common_pb2
from gaming.payment.v1 import payment_pb2 as pay
from gaming.payment.v1 import payment_pb2_grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nats.aio.client import Client

from mesh.jetstream_storage import JetStreamStorage
from nats_transport.testing import NatsServer
from servicers import payment
from servicers.dependencies import Dependencies
from servicers.storage import Entry, KeyValue, RevisionConflict
from tests._serving import served

# Small buckets: the session's nats-server reserves max_bytes for every test's buckets.
SETTINGS = {"accounts_max_bytes": str(4 * 1024 * 1024), "ledger_max_bytes": str(4 * 1024 * 1024)}
NOW = 1_700_000_000.5
if TYPE_CHECKING:  # the async stub type exists only in the generated .pyi
    Stub: TypeAlias = payment_pb2_grpc.PaymentServiceAsyncStub


def no_channel(target: str) -> Any:
    raise AssertionError(f"payment calls no other service (asked for {target!r})")


def deps(storage: Any, **settings: str) -> Dependencies:
    return Dependencies(storage=storage, channel=no_channel, settings={**SETTINGS, **settings}, clock=lambda: NOW)


def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}_"


@contextlib.asynccontextmanager
async def bank(nc: Client, storage: Any, *, target: str | None = None, **settings: str) -> AsyncIterator[Stub]:
    servicer = await payment.create(deps(storage, **settings))
    async with served(nc, payment.add_to_server, servicer, target=target) as channel:
        yield payment_pb2_grpc.PaymentServiceStub(channel)


@pytest.fixture
async def stub(nc: Client, storage: JetStreamStorage) -> AsyncIterator[Stub]:
    async with bank(nc, storage) as stub:
        yield stub


def gems(amount: int, currency: str = "GEM") -> common_pb2.Money:
    return common_pb2.Money(currency_code=currency, amount_minor=amount)


def key(text: str | None = None) -> common_pb2.IdempotencyKey:
    return common_pb2.IdempotencyKey(key=text or uuid.uuid4().hex)


async def deposit(stub: Stub, account: str, amount: int, currency: str = "GEM", idem: str | None = None,
                  **fields: Any) -> pay.DepositResponse:
    return await stub.Deposit(pay.DepositRequest(account_id=account, amount=gems(amount, currency),
                                                 idempotency_key=key(idem), **fields), timeout=10)


async def charge(stub: Stub, account: str, amount: int, currency: str = "GEM", idem: str | None = None,
                 **fields: Any) -> pay.ChargeResponse:
    return await stub.Charge(pay.ChargeRequest(account_id=account, amount=gems(amount, currency),
                                               idempotency_key=key(idem), **fields), timeout=10)


async def refund(stub: Stub, charge_id: str, amount: int | None = None, currency: str = "GEM",
                 idem: str | None = None) -> pay.RefundResponse:
    request = pay.RefundRequest(original_transaction_id=charge_id, idempotency_key=key(idem), actor_id="support")
    if amount is not None:
        request.amount.CopyFrom(gems(amount, currency))
    return await stub.Refund(request, timeout=10)


async def balance(stub: Stub, account: str, currency: str = "GEM") -> int:
    response = await stub.Balance(pay.BalanceRequest(account_id=account, currency_code=currency), timeout=10)
    return response.balance.amount_minor


async def rpc_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def bad_field(err: grpc.aio.AioRpcError) -> str:
    """The field a rich INVALID_ARGUMENT names in its BadRequest detail."""
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    status = rpc_status.from_call(err)
    assert status is not None
    violations = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(violations)
    return violations.field_violations[0].field


def reason(err: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(err)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info.reason


async def ledger(stub: Stub, account: str, page_size: int = 1000, **fields: Any) -> list[pay.Transaction]:
    response = await stub.ListTransactions(pay.ListTransactionsRequest(
        account_id=account, page=common_pb2.PageRequest(page_size=page_size), **fields), timeout=10)
    return list(response.transactions)


# -- balances and deposits ---------------------------------------------------------------------------


async def test_an_account_never_funded_has_a_zero_balance_not_not_found(stub: Stub) -> None:
    response = await stub.Balance(pay.BalanceRequest(account_id="nobody", currency_code="USD"), timeout=10)
    assert response.balance == gems(0, "USD")
    assert response.last_transaction_id == ""
    assert response.read_time.ToNanoseconds() == int(NOW * 1e9)


async def test_a_deposit_credits_the_account_and_records_a_completed_transaction(stub: Stub) -> None:
    response = await deposit(stub, "alice", 500, description="store purchase 123", actor_id="store")
    tx = response.transaction
    assert not response.replayed
    assert tx.type == pay.TRANSACTION_TYPE_DEPOSIT
    assert tx.status == pay.TRANSACTION_STATUS_COMPLETED
    assert tx.account_id == "alice"
    assert tx.amount == gems(500)
    assert tx.balance_after == gems(500)
    assert tx.description == "store purchase 123"
    assert tx.audit.actor_id == ""  # claimed without a token: not recorded
    assert tx.audit.update_time.ToNanoseconds() == int(NOW * 1e9)
    assert not tx.HasField("refunded_amount")
    reply = await stub.Balance(pay.BalanceRequest(account_id="alice", currency_code="GEM"), timeout=10)
    assert reply.balance == gems(500)
    assert reply.last_transaction_id == tx.transaction_id


async def test_balances_are_kept_per_currency(stub: Stub) -> None:
    await deposit(stub, "bob", 100, "GEM")
    await deposit(stub, "bob", 250, "USD")
    await charge(stub, "bob", 40, "GEM")
    assert (await balance(stub, "bob", "GEM"), await balance(stub, "bob", "USD")) == (60, 250)


async def test_account_ids_with_any_characters_work(stub: Stub) -> None:
    account = "player/7 ü.ñ*>"
    first = await deposit(stub, account, 5)
    await charge(stub, account, 2)
    assert await balance(stub, account) == 3
    assert [tx.account_id for tx in await ledger(stub, account)] == [account, account]
    assert (await refund(stub, (await charge(stub, account, 1)).transaction.transaction_id)).refund.amount == gems(1)
    assert first.transaction.transaction_id != ""


# -- idempotency ---------------------------------------------------------------------------------------


async def test_a_repeated_deposit_key_returns_the_first_result_without_moving_money(stub: Stub) -> None:
    first = await deposit(stub, "carol", 300, idem="grant-1")
    await deposit(stub, "carol", 5)
    again = await deposit(stub, "carol", 300, idem="grant-1")
    assert again.replayed
    assert again.transaction == first.transaction
    assert await balance(stub, "carol") == 305


async def test_a_repeated_charge_key_returns_the_first_result_even_after_a_refund(stub: Stub) -> None:
    await deposit(stub, "dave", 100)
    first = await charge(stub, "dave", 60, idem="buy-sword", description="sword of dawn")
    await refund(stub, first.transaction.transaction_id, 10)
    again = await charge(stub, "dave", 60, idem="buy-sword", description="sword of dawn")
    assert again.replayed
    assert again.transaction == first.transaction
    assert again.transaction.status == pay.TRANSACTION_STATUS_COMPLETED
    assert await balance(stub, "dave") == 50


@pytest.mark.parametrize("change", [{"amount": 61}, {"description": "shield"}, {"currency": "USD"},
                                    {"actor_id": "someone else"}])
async def test_a_key_reused_with_other_parameters_is_already_exists(stub: Stub, change: dict[str, Any]) -> None:
    await deposit(stub, "erin", 100)
    await deposit(stub, "erin", 100, "USD")
    await charge(stub, "erin", 60, idem="k", description="sword")
    fields: dict[str, Any] = {"amount": 60, "description": "sword", **change}
    err = await rpc_error(charge(stub, "erin", idem="k", **fields))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    assert reason(err) == "IDEMPOTENCY_KEY_REUSED"
    assert await balance(stub, "erin") == 40


async def test_the_same_key_for_another_operation_is_already_exists(stub: Stub) -> None:
    await deposit(stub, "fay", 100, idem="shared")
    err = await rpc_error(charge(stub, "fay", 100, idem="shared"))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_idempotency_keys_are_scoped_to_the_account(stub: Stub) -> None:
    await deposit(stub, "gus", 10, idem="same")
    response = await deposit(stub, "hal", 10, idem="same")
    assert not response.replayed
    assert (await balance(stub, "gus"), await balance(stub, "hal")) == (10, 10)


async def test_keys_beyond_the_remembered_bound_are_forgotten_as_documented(nc: Client, storage: Any) -> None:
    async with bank(nc, storage, remembered_keys="2") as stub:
        await deposit(stub, "ivy", 1, idem="oldest")
        await deposit(stub, "ivy", 1, idem="middle")
        await deposit(stub, "ivy", 1, idem="newest")
        assert (await deposit(stub, "ivy", 1, idem="middle")).replayed
        assert not (await deposit(stub, "ivy", 1, idem="oldest")).replayed
        assert await balance(stub, "ivy") == 4


# -- charges -------------------------------------------------------------------------------------------


async def test_a_charge_debits_the_account_and_reports_the_resulting_balance(stub: Stub) -> None:
    await deposit(stub, "jan", 100)
    tx = (await charge(stub, "jan", 30, description="potion", actor_id="jan")).transaction
    assert tx.type == pay.TRANSACTION_TYPE_CHARGE
    assert tx.status == pay.TRANSACTION_STATUS_COMPLETED
    assert tx.amount == gems(30)
    assert tx.balance_after == gems(70)
    assert tx.refunded_amount == gems(0)
    assert await balance(stub, "jan") == 70


async def test_a_charge_may_spend_the_whole_balance(stub: Stub) -> None:
    await deposit(stub, "kim", 100)
    assert (await charge(stub, "kim", 100)).transaction.balance_after == gems(0)


async def test_insufficient_funds_is_failed_precondition_and_records_nothing(stub: Stub) -> None:
    await deposit(stub, "lee", 50)
    err = await rpc_error(charge(stub, "lee", 51, idem="too-much"))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason(err) == "INSUFFICIENT_FUNDS"
    assert await balance(stub, "lee") == 50
    assert len(await ledger(stub, "lee")) == 1
    # Nothing was recorded under the key either: once funded, the same call goes through.
    await deposit(stub, "lee", 1)
    assert not (await charge(stub, "lee", 51, idem="too-much")).replayed
    assert await balance(stub, "lee") == 0


async def test_a_charge_in_a_currency_never_funded_is_insufficient_funds(stub: Stub) -> None:
    await deposit(stub, "max", 50, "GEM")
    assert (await rpc_error(charge(stub, "max", 1, "USD"))).code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_deposit_that_would_overflow_the_balance_is_failed_precondition(stub: Stub) -> None:
    await deposit(stub, "rich", 2**63 - 1)
    err = await rpc_error(deposit(stub, "rich", 1))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason(err) == "BALANCE_OVERFLOW"


# -- refunds -------------------------------------------------------------------------------------------


async def test_partial_refunds_add_up_until_the_charge_is_fully_refunded(stub: Stub) -> None:
    await deposit(stub, "ned", 100)
    charged = (await charge(stub, "ned", 60)).transaction
    first = await refund(stub, charged.transaction_id, 20)
    assert first.refund.type == pay.TRANSACTION_TYPE_REFUND
    assert first.refund.amount == gems(20)
    assert first.refund.balance_after == gems(60)
    assert first.refund.original_transaction_id == charged.transaction_id
    assert first.refund.audit.actor_id == ""  # claimed without a token: not recorded
    assert first.original_transaction.status == pay.TRANSACTION_STATUS_PARTIALLY_REFUNDED
    assert first.original_transaction.refunded_amount == gems(20)
    rest = await refund(stub, charged.transaction_id)  # no amount: all that remains
    assert rest.refund.amount == gems(40)
    assert rest.original_transaction.status == pay.TRANSACTION_STATUS_REFUNDED
    assert rest.original_transaction.refunded_amount == gems(60)
    assert await balance(stub, "ned") == 100
    err = await rpc_error(refund(stub, charged.transaction_id, 1))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason(err) == "ALREADY_REFUNDED"


async def test_a_refund_cannot_exceed_what_remains_of_the_charge(stub: Stub) -> None:
    await deposit(stub, "oli", 100)
    charged = (await charge(stub, "oli", 60)).transaction
    await refund(stub, charged.transaction_id, 50)
    err = await rpc_error(refund(stub, charged.transaction_id, 11))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason(err) == "REFUND_EXCEEDS_CHARGE"
    assert await balance(stub, "oli") == 90


async def test_a_repeated_refund_key_replays_the_first_result(stub: Stub) -> None:
    await deposit(stub, "pam", 100)
    charged = (await charge(stub, "pam", 60)).transaction
    first = await refund(stub, charged.transaction_id, 60, idem="r-1")
    again = await refund(stub, charged.transaction_id, 60, idem="r-1")
    assert again.replayed
    assert (again.refund, again.original_transaction) == (first.refund, first.original_transaction)
    assert await balance(stub, "pam") == 100
    other = await rpc_error(refund(stub, charged.transaction_id, 59, idem="r-1"))
    assert other.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_refunding_a_deposit_or_a_refund_is_failed_precondition(stub: Stub) -> None:
    deposited = (await deposit(stub, "quin", 100)).transaction
    err = await rpc_error(refund(stub, deposited.transaction_id))
    assert (err.code(), reason(err)) == (grpc.StatusCode.FAILED_PRECONDITION, "NOT_A_CHARGE")
    charged = (await charge(stub, "quin", 10)).transaction
    refunded = (await refund(stub, charged.transaction_id, 5)).refund
    assert (await rpc_error(refund(stub, refunded.transaction_id))).code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_refund_in_another_currency_than_the_charge_is_invalid_argument(stub: Stub) -> None:
    await deposit(stub, "ros", 100)
    charged = (await charge(stub, "ros", 10)).transaction
    err = await rpc_error(refund(stub, charged.transaction_id, 5, "USD"))
    assert bad_field(err) == "amount.currency_code"


@pytest.mark.parametrize("charge_id", ["nope", "c2Ft.99", "c2Ft.0", "c2FtAA.1", "!!.1", "c2Ft.01"])
async def test_refunding_an_unknown_transaction_is_not_found(stub: Stub, charge_id: str) -> None:
    await deposit(stub, "sam", 100)  # "c2Ft" is base64url("sam"): the account exists
    err = await rpc_error(refund(stub, charge_id))
    assert err.code() == grpc.StatusCode.NOT_FOUND


# -- validation ----------------------------------------------------------------------------------------

MONEY = gems(10)
KEY = common_pb2.IdempotencyKey(key="k-1")


@pytest.mark.parametrize(("method", "request_message", "field"), [
    ("Balance", pay.BalanceRequest(currency_code="GEM"), "account_id"),
    ("Balance", pay.BalanceRequest(account_id="a", currency_code="gem"), "currency_code"),
    ("Balance", pay.BalanceRequest(account_id="a", currency_code=""), "currency_code"),
    ("Balance", pay.BalanceRequest(account_id="a" * 129, currency_code="GEM"), "account_id"),
    ("Deposit", pay.DepositRequest(amount=MONEY, idempotency_key=KEY), "account_id"),
    ("Deposit", pay.DepositRequest(account_id="a", idempotency_key=KEY), "amount"),
    ("Deposit", pay.DepositRequest(account_id="a", amount=gems(0), idempotency_key=KEY), "amount.amount_minor"),
    ("Deposit", pay.DepositRequest(account_id="a", amount=gems(-5), idempotency_key=KEY), "amount.amount_minor"),
    ("Deposit", pay.DepositRequest(account_id="a", amount=gems(5, "US"), idempotency_key=KEY), "amount.currency_code"),
    ("Deposit", pay.DepositRequest(account_id="a", amount=MONEY), "idempotency_key.key"),
    ("Deposit", pay.DepositRequest(account_id="a", amount=MONEY, idempotency_key=KEY, description="x" * 257),
     "description"),
    ("Charge", pay.ChargeRequest(amount=MONEY, idempotency_key=KEY), "account_id"),
    ("Charge", pay.ChargeRequest(account_id="a", amount=gems(0), idempotency_key=KEY), "amount.amount_minor"),
    ("Charge", pay.ChargeRequest(account_id="a", amount=gems(1, "usd"), idempotency_key=KEY), "amount.currency_code"),
    ("Charge", pay.ChargeRequest(account_id="a", amount=MONEY), "idempotency_key.key"),
    ("Charge", pay.ChargeRequest(account_id="a", amount=MONEY,
                                 idempotency_key=common_pb2.IdempotencyKey(key="k" * 129)), "idempotency_key.key"),
    ("Charge", pay.ChargeRequest(account_id="a", amount=MONEY,
                                 idempotency_key=common_pb2.IdempotencyKey(key="tab\tkey")), "idempotency_key.key"),
    ("Charge", pay.ChargeRequest(account_id="a", amount=MONEY, idempotency_key=KEY, description="x" * 257),
     "description"),
    ("Charge", pay.ChargeRequest(account_id="a", amount=MONEY, idempotency_key=KEY, actor_id="x" * 129), "actor_id"),
    ("Refund", pay.RefundRequest(idempotency_key=KEY), "original_transaction_id"),
    ("Refund", pay.RefundRequest(original_transaction_id="t", idempotency_key=KEY, amount=gems(0)),
     "amount.amount_minor"),
    ("Refund", pay.RefundRequest(original_transaction_id="t"), "idempotency_key.key"),
    ("Refund", pay.RefundRequest(original_transaction_id="t", idempotency_key=KEY, description="x" * 257),
     "description"),
    ("ListTransactions", pay.ListTransactionsRequest(), "account_id"),
    ("ListTransactions", pay.ListTransactionsRequest(account_id="a", page=common_pb2.PageRequest(page_size=-1)),
     "page.page_size"),
    ("ListTransactions", pay.ListTransactionsRequest(account_id="a", currency_code="$"), "currency_code"),
    ("ListTransactions", pay.ListTransactionsRequest(account_id="a", page=common_pb2.PageRequest(page_token="junk")),
     "page.page_token"),
])
async def test_bad_input_is_invalid_argument_naming_the_field(stub: Stub, method: str, request_message: Any,
                                                               field: str) -> None:
    err = await rpc_error(getattr(stub, method)(request_message, timeout=10))
    assert bad_field(err) == field


# -- the ledger ----------------------------------------------------------------------------------------


async def test_list_transactions_is_newest_first_with_charge_statuses_current(stub: Stub) -> None:
    await deposit(stub, "tia", 100)
    charged = (await charge(stub, "tia", 30)).transaction
    await refund(stub, charged.transaction_id, 10)
    transactions = await ledger(stub, "tia")
    assert [tx.type for tx in transactions] == [
        pay.TRANSACTION_TYPE_REFUND, pay.TRANSACTION_TYPE_CHARGE, pay.TRANSACTION_TYPE_DEPOSIT]
    assert [tx.balance_after.amount_minor for tx in transactions] == [80, 70, 100]
    assert transactions[1].status == pay.TRANSACTION_STATUS_PARTIALLY_REFUNDED
    assert transactions[1].refunded_amount == gems(10)


async def test_list_transactions_of_an_unknown_account_is_an_empty_last_page(stub: Stub) -> None:
    response = await stub.ListTransactions(pay.ListTransactionsRequest(account_id="ghost"), timeout=10)
    assert list(response.transactions) == []
    assert response.page == common_pb2.PageResponse(next_page_token="", total_size=0)


async def walk(stub: Stub, account: str, page_size: int, currency: str = "") -> list[list[pay.Transaction]]:
    pages, token = [], ""
    while True:
        response = await stub.ListTransactions(pay.ListTransactionsRequest(
            account_id=account, currency_code=currency,
            page=common_pb2.PageRequest(page_size=page_size, page_token=token)), timeout=10)
        pages.append(list(response.transactions))
        token = response.page.next_page_token
        if not token:
            return pages


async def test_pages_walk_the_whole_ledger_including_transactions_archived_out_of_the_account(
    nc: Client, storage: Any
) -> None:
    async with bank(nc, storage, recent_transactions="3") as stub:
        for amount in range(1, 12):
            await deposit(stub, "uma", amount, "GEM" if amount % 2 else "USD")
        pages = await walk(stub, "uma", 4)
        assert [len(page) for page in pages] == [4, 4, 3]
        assert [tx.amount.amount_minor for page in pages for tx in page] == list(range(11, 0, -1))
        response = await stub.ListTransactions(pay.ListTransactionsRequest(account_id="uma"), timeout=10)
        assert response.page.total_size == 11
        gem_pages = await walk(stub, "uma", 2, "GEM")
        assert [tx.amount.amount_minor for page in gem_pages for tx in page] == [11, 9, 7, 5, 3, 1]
        assert [len(page) for page in gem_pages] == [2, 2, 2]


async def test_an_archived_charge_can_still_be_refunded_and_replayed(nc: Client, storage: Any) -> None:
    async with bank(nc, storage, recent_transactions="2") as stub:
        await deposit(stub, "vic", 100)
        charged = await charge(stub, "vic", 40, idem="old-charge")
        for _ in range(3):
            await deposit(stub, "vic", 1)
        response = await refund(stub, charged.transaction.transaction_id, 15)
        assert response.original_transaction.refunded_amount == gems(15)
        assert (await charge(stub, "vic", 40, idem="old-charge")).transaction == charged.transaction
        transactions = await ledger(stub, "vic")
        archived = next(tx for tx in transactions if tx.transaction_id == charged.transaction.transaction_id)
        assert archived.status == pay.TRANSACTION_STATUS_PARTIALLY_REFUNDED
        assert await balance(stub, "vic") == 100 - 40 + 3 + 15


async def test_a_page_token_only_works_for_the_query_that_produced_it(stub: Stub) -> None:
    for _ in range(3):
        await deposit(stub, "wes", 1)
    first = await stub.ListTransactions(pay.ListTransactionsRequest(
        account_id="wes", page=common_pb2.PageRequest(page_size=1)), timeout=10)
    token = first.page.next_page_token
    assert token
    for other in (pay.ListTransactionsRequest(account_id="xan", page=common_pb2.PageRequest(page_token=token)),
                  pay.ListTransactionsRequest(account_id="wes", currency_code="GEM",
                                              page=common_pb2.PageRequest(page_token=token))):
        assert bad_field(await rpc_error(stub.ListTransactions(other, timeout=10))) == "page.page_token"


# -- concurrency and compare-and-set -------------------------------------------------------------------


async def test_fifty_concurrent_charges_over_two_replicas_never_overdraw_or_apply_a_key_twice(
    nats_server: NatsServer,
) -> None:
    bucket_prefix, target = prefix(), f"payment-{uuid.uuid4().hex[:8]}"
    connections = [await nats.connect(nats_server.url, max_reconnect_attempts=0) for _ in range(2)]
    handled = [0, 0]
    try:
        async with contextlib.AsyncExitStack() as stack:
            stubs = []
            for index, connection in enumerate(connections):
                servicer = await payment.create(deps(JetStreamStorage(connection, prefix=bucket_prefix)))
                charge_method = servicer.Charge

                async def counted(request: Any, context: Any, index: int = index, method: Any = charge_method) -> Any:
                    handled[index] += 1
                    return await method(request, context)

                servicer.Charge = counted  # type: ignore[method-assign]
                channel = await stack.enter_async_context(
                    served(connection, payment.add_to_server, servicer, target=target))
                stubs.append(payment_pb2_grpc.PaymentServiceStub(channel))
            funds = 1000
            await deposit(stubs[0], "zed", funds)
            # 25 keys, each sent twice (once through each connection): 25 * 70 = 1750 > funds.
            calls = [charge(stubs[n % 2], "zed", 70, idem=f"buy-{n // 2}") for n in range(50)]
            outcomes = await asyncio.gather(*calls, return_exceptions=True)

            applied: dict[str, str] = {}
            for n, outcome in enumerate(outcomes):
                if isinstance(outcome, grpc.aio.AioRpcError):
                    assert outcome.code() == grpc.StatusCode.FAILED_PRECONDITION, outcome
                    continue
                assert isinstance(outcome, pay.ChargeResponse), outcome
                tx_id = outcome.transaction.transaction_id
                assert applied.setdefault(f"buy-{n // 2}", tx_id) == tx_id  # both calls of a key: one charge
            charges = [tx for tx in await ledger(stubs[1], "zed") if tx.type == pay.TRANSACTION_TYPE_CHARGE]
            assert sorted(tx.idempotency_key for tx in charges) == sorted(applied)  # each key once
            assert len(charges) == funds // 70  # every charge the funds allowed, and no more
            assert await balance(stubs[0], "zed") == funds - 70 * len(charges) >= 0
            assert all(count > 0 for count in handled), handled  # both replicas took charges
    finally:
        for connection in connections:
            await connection.close()


class AlwaysContended:
    """A bucket whose compare-and-set always loses, as if another writer always got in first."""

    def __init__(self, inner: KeyValue) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def get(self, key: str) -> Entry | None:
        return await self._inner.get(key)

    async def update(self, key: str, value: bytes, revision: int) -> int:
        raise RevisionConflict(key, revision, revision + 1)


class ContendedStorage:
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    async def key_value(self, name: str, **limits: Any) -> Any:
        kv = await self._inner.key_value(name, **limits)
        return AlwaysContended(kv) if name.endswith("accounts") else kv


async def test_an_account_contended_past_every_retry_is_aborted_with_the_revision(nc: Client, storage: Any) -> None:
    async with bank(nc, ContendedStorage(storage), cas_attempts="3") as stub:
        err = await rpc_error(deposit(stub, "yan", 10))
        assert err.code() == grpc.StatusCode.ABORTED
        status = rpc_status.from_call(err)
        assert status is not None
        info = error_details_pb2.ErrorInfo()
        assert status.details[0].Unpack(info)
        assert info.reason == "REVISION_CONFLICT"
        assert info.metadata["current_revision"] == "1"


# -- durability and failures ---------------------------------------------------------------------------


async def test_a_restart_keeps_acknowledged_state(nc: Client, nats_server: NatsServer) -> None:
    bucket_prefix = prefix()
    async with bank(nc, JetStreamStorage(nc, prefix=bucket_prefix), recent_transactions="2") as stub:
        await deposit(stub, "amy", 100)
        charged = await charge(stub, "amy", 30, idem="before-restart")
        await deposit(stub, "amy", 5)
        await deposit(stub, "amy", 6)
    nc2 = await nats.connect(nats_server.url, max_reconnect_attempts=0)
    try:
        async with bank(nc2, JetStreamStorage(nc2, prefix=bucket_prefix), recent_transactions="2") as stub:
            assert await balance(stub, "amy") == 81
            again = await charge(stub, "amy", 30, idem="before-restart")
            assert again.replayed
            assert again.transaction == charged.transaction
            assert [tx.amount.amount_minor for tx in await ledger(stub, "amy")] == [6, 5, 30, 100]
    finally:
        await nc2.close()


async def test_an_unreachable_store_is_unavailable(nc: Client, nats_server: NatsServer) -> None:
    store_connection = await nats.connect(nats_server.url, max_reconnect_attempts=0)
    servicer = await payment.create(deps(JetStreamStorage(store_connection, prefix=prefix())))
    async with served(nc, payment.add_to_server, servicer) as channel:
        stub = payment_pb2_grpc.PaymentServiceStub(channel)
        await deposit(stub, "bea", 10)
        await store_connection.close()
        for call in (deposit(stub, "bea", 10), stub.Balance(pay.BalanceRequest(account_id="bea", currency_code="GEM"),
                                                            timeout=10), ledger(stub, "bea")):
            err = await rpc_error(call)
            assert err.code() == grpc.StatusCode.UNAVAILABLE
