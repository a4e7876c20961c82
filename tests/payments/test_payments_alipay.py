"""Alipay end to end: our client and callback source against the simulator, real HTTP."""

from __future__ import annotations

import asyncio
import io
import zipfile
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import orjson
import pytest

from adapters.alipay.bill import parse_bill_zip
from adapters.payments.bills import BillError
from adapters.payments.errors import GatewayRejected, RefundExceedsPaid
from adapters.payments.model import OrderState, RefundState, Submit
from simulators.payments.alipay import AlipaySimulator
from tests.payments.gateway_rig import ALIPAY_SELLER, AlipayRig, Harness, alipay_rig

AUTH_CODE = "286543210987654321"



@pytest.fixture
async def ali(harness: Harness) -> AsyncIterator[AlipayRig]:
    async with alipay_rig(harness) as rig:
        yield rig


async def test_precreate_pay_notify_query_refund_refund_notify(ali: AlipayRig,
                                                               eventually: Any) -> None:
    order = await ali.service.create_order("AL20240001", 1230, "门诊缴费", "precreate")
    assert order.extra["qr_code"] == "https://qr.alipay.com/simAL20240001"
    await ali.control.pay("AL20240001")
    await eventually(lambda: ali.is_("AL20240001", OrderState.PAID))
    assert orjson.loads(ali.channel.messages[0].body)["amount"] == "12.30"

    order = await ali.service.sync("AL20240001")
    assert order.state is OrderState.PAID
    assert order.gateway_trade_no.endswith(order.gateway_trade_no[-8:])

    refund = await ali.service.refund("AL20240001", "AL20240001R1", 300, "退一项检查")
    assert refund.state is RefundState.SUCCESS  # Alipay refunds synchronously
    order = await ali.service.sync("AL20240001")
    assert order.refunded_fen == 300
    assert order.state is OrderState.PAID
    await ali.service.refund("AL20240001", "AL20240001R2", 930)
    order = await ali.service.sync("AL20240001")  # TRADE_CLOSED after a full refund: still paid
    assert order.state is OrderState.REFUNDED

    async def three() -> bool:
        return len(ali.channel.messages) == 3

    await eventually(three)
    events = [orjson.loads(m.body) for m in ali.channel.messages]
    assert [e["event"] for e in events] == ["payment", "refund", "refund"]
    assert [e.get("refund_fen") for e in events[1:]] == [300, 930]
    moves = await ali.store.transitions("alipay", "AL20240001")
    assert [(t.from_state, t.to_state) for t in moves] == [
        ("created", "paid"), ("paid", "refunding"), ("refunding", "paid"),
        ("paid", "refunding"), ("refunding", "refunded")]
    stats = await ali.control.stats()
    assert stats["charges"] == 1
    assert stats["refunds_created"] == 2


async def test_barcode_pay_with_lost_response_ends_paid_with_one_charge(
        ali: AlipayRig, eventually: Any) -> None:
    await ali.control.faults(drop_after_commit=1)
    order = await ali.service.create_order("AL20240002", 4560, "药费", "barcode",
                                           {"auth_code": AUTH_CODE})
    assert order.state is OrderState.PAID
    assert order.submit is Submit.ACCEPTED
    stats = await ali.control.stats()
    assert stats["charges"] == 1
    assert stats["query_calls"] == 1
    await eventually(lambda: _messages(ali, 1))
    await ali.sim.notifier.idle()
    moves = await ali.store.transitions("alipay", "AL20240002")
    # Whichever came first, the query or the notify, the order moved once.
    assert [(t.from_state, t.to_state) for t in moves] == [("created", "paid")]
    assert len(ali.channel.messages) == 1


async def test_barcode_pay_answered_directly(ali: AlipayRig) -> None:
    order = await ali.service.create_order("AL20240003", 100, "挂号费", "barcode",
                                           {"auth_code": AUTH_CODE})
    assert order.state is OrderState.PAID
    moves = await ali.store.transitions("alipay", "AL20240003")
    assert len(moves) == 1
    assert moves[0].cause in ("paid (response)", "paid (notify)")
    with pytest.raises(GatewayRejected, match="AUTH_CODE_INVALID"):
        await ali.service.create_order("AL20240004", 100, "挂号费", "barcode",
                                       {"auth_code": "123"})
    assert (await ali.store.order("alipay", "AL20240004")).state is OrderState.CLOSED


async def test_unavailable_gateway_on_precreate_is_queried_then_sent_again(ali: AlipayRig) -> None:
    await ali.control.faults(fail_5xx=1)  # code 20000: the outcome is unknown
    order = await ali.service.create_order("AL20240005", 990, "检验费", "precreate")
    assert order.submit is Submit.ACCEPTED
    stats = await ali.control.stats()
    assert stats["query_calls"] == 1
    assert stats["orders_created"] == 1


async def test_forged_unknown_and_wrong_amount_notifies_are_refused(
        ali: AlipayRig, http: aiohttp.ClientSession) -> None:
    await ali.service.create_order("AL20240007", 1000, "药费", "precreate")
    url = ali.source.url
    cases = {
        "bad_signature": {"forge": True},
        "unknown_order": {"out_trade_no": "AL-NOT-OURS"},
        "amount_mismatch": {"amount": 1},
        "wrong_merchant": {"app_id": "2021000000000099"},
        "unknown_refund": {"kind": "refund", "out_refund_no": "NOPE", "refund_total": 100},
    }
    for reason, fields in cases.items():
        answer = await ali.control.notify(url=url, **{"out_trade_no": "AL20240007", **fields})
        assert answer["status"] == 400, reason
        assert answer["body"].split(":")[0] == f"fail {reason}", reason
    async with http.post(url, data=b"out_trade_no=AL20240007&total_amount=10.00") as resp:
        assert await resp.text() == "fail missing_signature: field sign is missing"
    audits = [a.reason for a in await ali.store.audits("alipay")]
    assert audits == [*cases, "missing_signature"]
    assert await ali.is_("AL20240007", OrderState.CREATED)
    assert ali.channel.messages == []


async def test_refund_notify_with_a_refunded_total_beyond_the_order_is_refused(
        ali: AlipayRig, eventually: Any) -> None:
    await ali.service.create_order("AL20240008", 1000, "药费", "precreate")
    await ali.control.pay("AL20240008")
    await eventually(lambda: ali.is_("AL20240008", OrderState.PAID))
    await ali.service.refund("AL20240008", "AL20240008R1", 200)
    answer = await ali.control.notify(url=ali.source.url, out_trade_no="AL20240008",
                                      kind="refund", out_refund_no="AL20240008R1",
                                      refund_total=100_000)
    assert answer["status"] == 400
    assert (await ali.store.audits("alipay"))[-1].reason == "amount_mismatch"


async def test_concurrent_refunds_never_exceed_the_payment(ali: AlipayRig, eventually: Any) -> None:
    await ali.service.create_order("AL20240009", 1000, "住院押金", "precreate")
    await ali.control.pay("AL20240009")
    await eventually(lambda: ali.is_("AL20240009", OrderState.PAID))
    results = await asyncio.gather(
        *(ali.service.refund("AL20240009", f"AL20240009R{i}", 400) for i in range(4)),
        return_exceptions=True)
    assert sum(isinstance(r, RefundExceedsPaid) for r in results) == 2
    stats = await ali.control.stats()
    assert stats["refunds_created"] == 2
    assert stats["refunded_fen"] == 800


async def test_lost_refund_answer_is_resolved_by_query(ali: AlipayRig, eventually: Any) -> None:
    await ali.service.create_order("AL20240010", 1000, "药费", "precreate")
    await ali.control.pay("AL20240010")
    await eventually(lambda: ali.is_("AL20240010", OrderState.PAID))
    await ali.control.faults(drop_after_commit=1)
    refund = await ali.service.refund("AL20240010", "AL20240010R1", 1000)
    assert refund.state is RefundState.SUCCESS
    stats = await ali.control.stats()
    assert stats["refunds_created"] == 1
    assert stats["refunded_fen"] == 1000


async def test_bill_zip_parses_to_the_simulator_totals(ali: AlipayRig, eventually: Any) -> None:
    for no, amount in (("AL20240011", 1230), ("AL20240012", 1), ("AL20240013", 88888)):
        await ali.service.create_order(no, amount, "费用", "precreate")
        await ali.control.pay(no)
        await eventually(lambda no=no: ali.is_(no, OrderState.PAID))
    await ali.service.refund("AL20240013", "AL20240013R1", 8888)
    totals = await ali.control.bill_totals()
    bill = await ali.client.trade_bill(totals["date"])
    assert bill.totals.lines == totals["lines"] == 4
    assert bill.totals.paid == Decimal(totals["paid"]) == Decimal("901.19")
    assert bill.totals.refunded == Decimal(totals["refunded"]) == Decimal("88.88")
    assert bill.totals.fees == Decimal(totals["fees"])
    refund = next(x for x in bill.lines if x.kind == "refund")
    assert (refund.out_trade_no, refund.out_refund_no) == ("AL20240013", "AL20240013R1")


def test_bill_parser_rejects_bad_archives() -> None:
    sim = AlipaySimulator.__new__(AlipaySimulator)
    sim.seller_id, sim.ledger = ALIPAY_SELLER, []
    good = sim.bill_zip("2024-05-01")
    assert parse_bill_zip(good).totals.lines == 0
    with pytest.raises(BillError, match="not a zip"):
        parse_bill_zip(b"PK-not-really")

    def rezip(transform: Any) -> bytes:
        src = zipfile.ZipFile(io.BytesIO(good))
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as dst:
            for info in src.infolist():
                data = src.read(info)
                dst.writestr(info.filename, transform(info.filename, data))
        return out.getvalue()

    def detail_only(fn: Any) -> Any:
        return lambda name, data: fn(data) if "汇总" not in name else data

    lying = rezip(detail_only(lambda d: d.replace("交易合计：0笔".encode("gbk"),
                                                  "交易合计：2笔".encode("gbk"))))
    with pytest.raises(BillError, match="counts"):
        parse_bill_zip(lying)
    utf8 = rezip(detail_only(lambda d: d.decode("gbk").encode("utf-8")))
    with pytest.raises(BillError, match="GBK"):
        parse_bill_zip(utf8)


# -- helpers ------------------------------------------------------------------------------


async def _messages(ali: AlipayRig, n: int) -> bool:
    return len(ali.channel.messages) >= n


def test_bill_zip_with_gbk_member_names_is_read() -> None:
    """Alipay's zips name members in GBK without the UTF-8 flag."""
    sim = AlipaySimulator.__new__(AlipaySimulator)
    sim.seller_id, sim.ledger = ALIPAY_SELLER, []
    utf8_named = zipfile.ZipFile(io.BytesIO(sim.bill_zip("2024-05-01")))
    out = io.BytesIO()
    names = [i.filename.encode("gbk") for i in utf8_named.infolist()]
    placeholders = [(b"X" * (len(n) - 1)) + str(k).encode() for k, n in enumerate(names)]
    with zipfile.ZipFile(out, "w") as archive:
        for info, placeholder in zip(utf8_named.infolist(), placeholders, strict=True):
            archive.writestr(placeholder.decode(), utf8_named.read(info))
    raw = out.getvalue()
    for name, placeholder in zip(names, placeholders, strict=True):
        raw = raw.replace(placeholder, name)  # same length: the archive stays valid
    assert not zipfile.ZipFile(io.BytesIO(raw)).infolist()[0].flag_bits & 0x800
    assert parse_bill_zip(raw).totals.lines == 0
