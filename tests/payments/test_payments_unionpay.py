"""UnionPay 5.1.0 end to end: our client and callback source against the simulator."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import orjson
import pytest

from adapters.payments.bills import BillError
from adapters.payments.errors import RefundExceedsPaid
from adapters.payments.model import OrderState, RefundState, Submit
from adapters.unionpay.bill import parse_settlement_text
from engine.errors import PermanentError
from simulators.payments.core import china_now
from simulators.payments.unionpay import TEST_CARD
from tests.payments.gateway_rig import Harness, UnionPayRig, unionpay_rig


@pytest.fixture
async def up(harness: Harness) -> AsyncIterator[UnionPayRig]:
    async with unionpay_rig(harness) as rig:
        yield rig


async def _paid(up: UnionPayRig, no: str, amount: int, eventually: Any) -> None:
    await up.service.create_order(no, amount, "费用", "qrcode")
    await up.control.pay(no)
    await eventually(lambda: up.is_(no, OrderState.PAID))


async def test_consume_pay_notify_query_refund_refund_notify(up: UnionPayRig, eventually: Any,
                                                             caplog: pytest.LogCaptureFixture
                                                             ) -> None:
    caplog.set_level(logging.DEBUG)
    order = await up.service.create_order("UP20240001", 1230, "门诊缴费", "qrcode")
    assert order.extra["qr_code"].endswith("UP20240001")
    paid = await up.control.pay("UP20240001")
    await eventually(lambda: up.is_("UP20240001", OrderState.PAID))
    order = await up.service.sync("UP20240001")
    assert order.gateway_trade_no == paid["query_id"]
    event = orjson.loads(up.channel.messages[0].body)
    assert event["card"] == "621626*********0018"
    assert event["amount"] == "12.30"

    refund = await up.service.refund("UP20240001", "UP20240001R1", 230)
    assert refund.state in (RefundState.PROCESSING, RefundState.SUCCESS)  # notify may win
    await eventually(lambda: up.refund_is("UP20240001R1", RefundState.SUCCESS))
    await up.service.refund("UP20240001", "UP20240001R2", 1000)
    await eventually(lambda: up.is_("UP20240001", OrderState.REFUNDED))
    moves = await up.store.transitions("unionpay", "UP20240001")
    assert [(t.from_state, t.to_state) for t in moves] == [
        ("created", "paid"), ("paid", "refunding"), ("refunding", "paid"),
        ("paid", "refunding"), ("refunding", "refunded")]

    async def three() -> bool:
        return len(up.channel.messages) == 3

    await eventually(three)
    refunds = [orjson.loads(m.body) for m in up.channel.messages[1:]]
    assert [(e["out_trade_no"], e["out_refund_no"], e["refund_fen"]) for e in refunds] == [
        ("UP20240001", "UP20240001R1", 230), ("UP20240001", "UP20240001R2", 1000)]
    stats = await up.control.stats()
    assert (stats["charges"], stats["refunds_created"], stats["refunded_fen"]) == (1, 2, 1230)
    # The full card number reaches neither the logs, the events nor the channel.
    assert TEST_CARD not in caplog.text
    assert all(TEST_CARD.encode() not in m.body for m in up.channel.messages)
    stored = await up.store.events("unionpay", "UP20240001")
    assert TEST_CARD not in str(stored)


async def test_lost_consume_answer_ends_with_one_order_and_one_charge(up: UnionPayRig,
                                                                      eventually: Any) -> None:
    await up.control.faults(drop_after_commit=1)
    order = await up.service.create_order("UP20240002", 500, "检查费", "qrcode")
    assert order.submit is Submit.ACCEPTED
    assert order.extra["qr_code"].endswith("UP20240002")
    stats = await up.control.stats()
    assert (stats["orders_created"], stats["query_calls"]) == (1, 1)
    await up.control.pay("UP20240002")
    await eventually(lambda: up.is_("UP20240002", OrderState.PAID))
    assert (await up.control.stats())["charges"] == 1


async def test_unavailable_gateway_is_in_doubt_then_resolved(up: UnionPayRig) -> None:
    await up.control.faults(fail_5xx=1)
    order = await up.service.create_order("UP20240003", 500, "检查费", "qrcode")
    assert order.submit is Submit.ACCEPTED
    assert (await up.control.stats())["orders_created"] == 1


async def test_forged_untrusted_unknown_and_wrong_amount_notifications_are_refused(
        up: UnionPayRig) -> None:
    await up.service.create_order("UP20240005", 1000, "药费", "qrcode")
    cases = {
        "bad_signature": {"forge": True},
        "untrusted_certificate": {"untrusted": True},
        "unknown_order": {"out_trade_no": "UPNOTOURS1"},
        "amount_mismatch": {"amount": 999},
        "wrong_merchant": {"mer_id": "777290058119999"},
        "unknown_refund": {"kind": "refund", "out_refund_no": "UPNOSUCHREFUND"},
    }
    for reason, fields in cases.items():
        answer = await up.control.notify(url=up.source.url,
                                         **{"out_trade_no": "UP20240005", **fields})
        assert answer["status"] == 400, reason
        assert answer["body"].split(":")[0] == reason, reason
    assert [a.reason for a in await up.store.audits("unionpay")] == list(cases)
    assert await up.is_("UP20240005", OrderState.CREATED)
    assert up.channel.messages == []


async def test_refunds_never_exceed_the_payment_even_when_answers_are_lost(
        up: UnionPayRig, eventually: Any) -> None:
    await _paid(up, "UP20240006", 1000, eventually)
    await up.control.faults(drop_after_commit=1)
    results = await asyncio.gather(
        *(up.service.refund("UP20240006", f"UP20240006R{i}", 300) for i in range(5)),
        return_exceptions=True)
    assert sum(isinstance(r, RefundExceedsPaid) for r in results) == 2
    assert (await up.control.stats())["refunds_created"] == 3

    async def settled() -> bool:
        return (await up.control.stats())["refunded_fen"] == 900

    await eventually(settled)
    accepted = [f"UP20240006R{i}" for i, r in enumerate(results)
                if not isinstance(r, BaseException)]
    assert len(accepted) == 3
    for no in accepted:
        await eventually(lambda no=no: up.refund_is(no, RefundState.SUCCESS))
    await eventually(lambda: _refunded(up, "UP20240006", 900))
    assert await up.is_("UP20240006", OrderState.PAID)


async def _refunded(up: UnionPayRig, no: str, fen: int) -> bool:
    order = await up.store.order("unionpay", no)
    return order is not None and order.refunded_fen == fen


async def test_settlement_file_parses_to_the_simulator_totals(up: UnionPayRig,
                                                              eventually: Any) -> None:
    for no, amount in (("UP20240007", 1230), ("UP20240008", 1), ("UP20240009", 77777)):
        await _paid(up, no, amount, eventually)
    await up.service.refund("UP20240009", "UP20240009R1", 7777)
    await eventually(lambda: up.refund_is("UP20240009R1", RefundState.SUCCESS))
    totals = await up.control.bill_totals()
    bill = await up.client.settlement_file(china_now().date())
    assert bill.totals.lines == totals["lines"] == 4
    assert bill.totals.paid == Decimal(totals["paid"]) == Decimal("790.08")
    assert bill.totals.refunded == Decimal(totals["refunded"]) == Decimal("77.77")
    assert bill.totals.fees == Decimal(totals["fees"])
    assert all("0018" in m for m in [up.sim.settlement_text(totals["date"])])
    assert TEST_CARD not in up.sim.settlement_text(totals["date"])


def test_settlement_parser_rejects_inconsistent_files() -> None:
    good = ("H|777290058110048|20240501|1\nD|01|UP1|Q1||20240501101010|100|1|6216****0018\n"
            "T|1|100|0|0|1\n")
    assert parse_settlement_text(good).totals.paid == Decimal("1.00")
    with pytest.raises(BillError, match="T record"):
        parse_settlement_text(good.rsplit("T|", 1)[0])
    with pytest.raises(BillError, match="do not add up"):
        parse_settlement_text(good.replace("T|1|100|", "T|1|101|"))
    with pytest.raises(BillError, match="count"):
        parse_settlement_text(good.replace("|20240501|1", "|20240501|2"))
    with pytest.raises(BillError, match="fen"):
        parse_settlement_text(good.replace("|100|1|", "|1.00|1|"))


async def test_order_ids_outside_unionpay_rules_are_refused_before_sending(up: UnionPayRig) -> None:
    with pytest.raises(PermanentError, match="8-40"):
        await up.service.create_order("UP-2024_10", 100, "费用", "qrcode")
    assert (await up.control.stats())["consume_calls"] == 0
