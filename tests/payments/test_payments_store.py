"""The payment store and state machine on their own (real SQLite, no network)."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from adapters.payments import states
from adapters.payments.errors import InvalidOrderState, OrderNotFound, RefundExceedsPaid
from adapters.payments.model import (
    EventKind,
    OrderRequest,
    OrderState,
    PaymentEvent,
    RefundState,
    Submit,
)
from adapters.payments.money import (
    AmountError,
    NegativeAmount,
    fen_to_yuan,
    format_yuan,
    mask_card,
    parse_fen,
    yuan_to_fen,
)
from adapters.payments.store import Applied, PaymentStore
from engine.database import Database
from engine.errors import PermanentError


@pytest.fixture
async def store(db: Database) -> PaymentStore:
    s = PaymentStore(db)
    await s.start()
    return s


def _paid(no: str, amount: int = 1000) -> PaymentEvent:
    return PaymentEvent("gw", EventKind.PAYMENT, no, amount, gateway_trade_no="T" + no)


async def _order(store: PaymentStore, no: str, amount: int = 1000) -> None:
    await store.create_order("gw", OrderRequest(no, amount, "d", "native", 1.0))


def test_amounts_convert_exactly_and_refuse_floats() -> None:
    assert yuan_to_fen("12.30") == 1230
    assert yuan_to_fen("0.01") == 1
    assert fen_to_yuan(1230) == fen_to_yuan(1230).quantize(fen_to_yuan(1))
    assert format_yuan(10) == "0.10"
    assert parse_fen("1230") == 1230
    for bad in ("12.345", "1e3", "", "abc", "12,30"):
        with pytest.raises(AmountError):
            yuan_to_fen(bad)
    with pytest.raises(AmountError):
        yuan_to_fen(12.3)  # type: ignore[arg-type]
    with pytest.raises(AmountError):
        parse_fen("12.30")
    assert mask_card("6216261000000000018") == "621626*********0018"
    assert mask_card("1234") == "****"


@pytest.mark.parametrize("text", ["²", "１２", "١٢", "1_000", "+12", " ", "0x10"])
def test_amounts_are_ascii_digits_only(text: str) -> None:
    # int() and Decimal() read several of these; an amount from a gateway must not.
    with pytest.raises(AmountError):
        parse_fen(text)
    with pytest.raises(AmountError):
        yuan_to_fen(text)


def test_negative_amounts_only_where_the_caller_allows_them() -> None:
    for parse in (lambda v, **k: yuan_to_fen(v, **k), lambda v, **k: parse_fen(v, **k)):
        with pytest.raises(NegativeAmount, match="a negative amount"):
            parse("-10")
        assert parse("-10", negative=True) in (-1000, -10)
    with pytest.raises(NegativeAmount):
        parse_fen(-1)
    with pytest.raises(NegativeAmount):
        yuan_to_fen(Decimal("-0.01"))
    assert yuan_to_fen("0") == parse_fen("0") == 0


@pytest.mark.parametrize("value", ["NaN", "Infinity", "1E+999999", "-1E+999999", "1E+13"])
def test_decimals_that_are_no_amount_are_refused(value: str) -> None:
    with pytest.raises(AmountError, match="not a yuan amount"):
        yuan_to_fen(Decimal(value))


def test_state_machine() -> None:
    assert states.after_payment(OrderState.CREATED, succeeded=True) is OrderState.PAID
    assert states.after_payment(OrderState.CLOSED, succeeded=True) is OrderState.PAID
    assert states.after_payment(OrderState.PAID, succeeded=True) is None
    assert states.after_payment(OrderState.REFUNDED, succeeded=True) is None
    assert states.after_payment(OrderState.CREATED, succeeded=False) is OrderState.CLOSED
    assert states.after_payment(OrderState.PAID, succeeded=False) is None
    assert states.after_refunds(OrderState.PAID, amount_fen=10, refunded_fen=0,
                                pending_fen=5) is OrderState.REFUNDING
    assert states.after_refunds(OrderState.REFUNDING, amount_fen=10, refunded_fen=10,
                                pending_fen=0) is OrderState.REFUNDED
    assert states.after_refunds(OrderState.REFUNDING, amount_fen=10, refunded_fen=5,
                                pending_fen=0) is OrderState.PAID
    assert states.after_refunds(OrderState.CREATED, amount_fen=10, refunded_fen=0,
                                pending_fen=0) is OrderState.CREATED


async def test_order_keys_are_idempotent_and_amounts_fixed(store: PaymentStore) -> None:
    await _order(store, "A1")
    again = await store.create_order("gw", OrderRequest("A1", 1000, "d", "native", 2.0))
    assert again.created_at == 1.0  # the stored request wins
    with pytest.raises(PermanentError, match="another amount"):
        await store.create_order("gw", OrderRequest("A1", 999, "d", "native", 3.0))
    order = await store.mark_submit("gw", "A1", Submit.ACCEPTED, extra={"code_url": "u"},
                                    gateway_trade_no="")
    assert order.extra == {"code_url": "u"}


async def test_events_apply_once_and_refusals_are_audited(store: PaymentStore) -> None:
    await _order(store, "A2")
    results = await asyncio.gather(*(store.apply_event(_paid("A2")) for _ in range(15)))
    outcomes = sorted(r.outcome.value for r in results)
    assert outcomes == ["changed"] + ["duplicate"] * 14
    assert len(await store.transitions("gw", "A2")) == 1
    wrong = await store.apply_event(_paid("A2", 1001), remote="10.0.0.9")
    assert wrong.outcome is Applied.REJECTED
    unknown = await store.apply_event(_paid("ZZ"))
    assert unknown.reason == "unknown_order"
    other_trade = await store.apply_event(
        PaymentEvent("gw", EventKind.PAYMENT, "A2", 1000, succeeded=False,
                     gateway_trade_no="OTHER"))
    assert other_trade.reason == "trade_mismatch"
    audits = await store.audits("gw")
    assert [(a.reason, a.remote) for a in audits] == [
        ("amount_mismatch", "10.0.0.9"), ("unknown_order", None), ("trade_mismatch", None)]


async def test_refund_reservations(store: PaymentStore) -> None:
    await _order(store, "A3")
    with pytest.raises(InvalidOrderState):
        await store.reserve_refund("gw", "A3", "R0", 100)
    with pytest.raises(OrderNotFound):
        await store.reserve_refund("gw", "NOPE", "R0", 100)
    await store.apply_event(_paid("A3"))
    results = await asyncio.gather(
        *(store.reserve_refund("gw", "A3", f"R{i}", 300) for i in range(5)),
        return_exceptions=True)
    assert sum(isinstance(r, RefundExceedsPaid) for r in results) == 2
    order = await store.order("gw", "A3")
    assert order is not None
    assert (order.state, order.pending_refund_fen, order.refundable_fen) == (
        OrderState.REFUNDING, 900, 100)
    with pytest.raises(PermanentError, match="already used"):
        await store.reserve_refund("gw", "A3", "R0", 200)
    failed = next(f"R{i}" for i, r in enumerate(results) if not isinstance(r, BaseException))
    await store.settle_refund("gw", failed, RefundState.FAILED, "refused")
    order = await store.order("gw", "A3")
    assert order is not None
    assert order.refundable_fen == 400  # a failed refund frees its amount
    # A success after a failure is a conflict for a person, not a state change.
    await store.settle_refund("gw", failed, RefundState.SUCCESS, "late")
    assert (await store.audits("gw"))[-1].reason == "refund_conflict"
    refund = await store.refund("gw", failed)
    assert refund is not None
    assert refund.state is RefundState.FAILED


async def test_refund_events_found_through_the_refund_and_checked(store: PaymentStore) -> None:
    await _order(store, "A4")
    await store.apply_event(_paid("A4"))
    await store.reserve_refund("gw", "A4", "R1", 400)
    too_much = PaymentEvent("gw", EventKind.REFUND, "", 0, out_refund_no="R1", refund_fen=401)
    assert (await store.apply_event(too_much)).reason == "amount_mismatch"
    cumulative_beyond = PaymentEvent("gw", EventKind.REFUND, "A4", 1000, out_refund_no="R1",
                                     refunded_total_fen=1001)
    assert (await store.apply_event(cumulative_beyond)).reason == "amount_mismatch"
    ok = PaymentEvent("gw", EventKind.REFUND, "", 0, out_refund_no="R1", refund_fen=400)
    result = await store.apply_event(ok)
    assert result.outcome is Applied.CHANGED
    assert result.event is not None
    assert result.event.out_trade_no == "A4"
    order = await store.order("gw", "A4")
    assert order is not None
    assert (order.state, order.refunded_fen) == (OrderState.PAID, 400)
