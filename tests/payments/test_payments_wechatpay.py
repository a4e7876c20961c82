"""WeChat Pay end to end: our client and callback source against the simulator, real HTTP."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from adapters.payments.bills import BillError
from adapters.payments.errors import RefundExceedsPaid
from adapters.payments.model import OrderRequest, OrderState, RefundState, Submit
from adapters.payments.notify import PaymentNotifySource
from adapters.payments.service import PaymentService
from adapters.payments.source import PaymentNotifyConfig
from adapters.wechatpay.bill import parse_trade_bill
from adapters.wechatpay.client import WechatPayClient
from adapters.wechatpay.settings import WechatPaySettings
from engine.errors import ConfigError, TransientError
from engine.settings import Secret
from simulators.payments.core import CHINA
from simulators.payments.wechatpay_bill import TradeBillBook
from tests.payments.gateway_rig import (
    WECHATPAY_APPID,
    WECHATPAY_MCHID,
    Harness,
    WechatPayRig,
    wechatpay_rig,
)


@pytest.fixture
async def wx(harness: Harness) -> AsyncIterator[WechatPayRig]:
    async with wechatpay_rig(harness) as rig:
        yield rig


async def test_create_pay_notify_query_refund_refund_notify(wx: WechatPayRig,
                                                            eventually: Any) -> None:
    order = await wx.service.create_order("WX20240001", 1230, "门诊缴费", "native")
    assert order.submit is Submit.ACCEPTED
    assert order.state is OrderState.CREATED
    assert order.extra["code_url"] == "weixin://wxpay/bizpayurl?pr=WX20240001"

    await wx.control.pay("WX20240001")
    await eventually(lambda: wx.is_("WX20240001", OrderState.PAID))
    assert len(wx.channel.messages) == 1
    message = wx.channel.messages[0]
    event = orjson.loads(message.body)
    assert event["event"] == "payment"
    assert event["amount_fen"] == 1230
    assert event["amount"] == "12.30"
    assert event["order_state"] == "paid"
    assert message.dedup_key == "wechatpay:payment:WX20240001:ok"
    assert message.correlation_id == "WX20240001"

    synced = await wx.service.sync("WX20240001")
    assert synced.state is OrderState.PAID
    assert synced.gateway_trade_no.startswith("4200")

    first = await wx.service.refund("WX20240001", "WX20240001R1", 230, "部分退费")
    assert first.state in (RefundState.PROCESSING, RefundState.SUCCESS)
    await eventually(lambda: wx.refund_is("WX20240001R1", RefundState.SUCCESS))
    order = await _order(wx, "WX20240001")
    assert order.state is OrderState.PAID
    assert order.refunded_fen == 230

    await wx.service.refund("WX20240001", "WX20240001R2", 1000)
    await eventually(lambda: wx.is_("WX20240001", OrderState.REFUNDED))
    order = await _order(wx, "WX20240001")
    assert order.refunded_fen == 1230
    moves = [(t.from_state, t.to_state) for t in await wx.store.transitions("wechatpay",
                                                                             "WX20240001")]
    assert moves == [("created", "paid"), ("paid", "refunding"), ("refunding", "paid"),
                     ("paid", "refunding"), ("refunding", "refunded")]
    await eventually(lambda: _count(wx, 3))
    kinds = [orjson.loads(m.body)["event"] for m in wx.channel.messages]
    assert kinds == ["payment", "refund", "refund"]
    stats = await wx.control.stats()
    assert stats["charges"] == 1
    assert stats["refunds_created"] == 2
    assert stats["refunded_fen"] == 1230


async def test_callback_the_engine_cannot_take_is_answered_fail_and_retried(
        wx: WechatPayRig, eventually: Any) -> None:
    wx.channel.refuse_next = 2
    await wx.service.create_order("WX20240015", 660, "检查费", "native")
    await wx.control.pay("WX20240015")

    async def delivered() -> bool:
        records = await wx.control.notifications()
        return bool(records) and records[0]["delivered"] == 1

    await eventually(delivered)
    record = (await wx.control.notifications())[0]
    assert record["attempts"] == 3  # two answered 500 (retried on schedule), then success
    assert len(wx.channel.messages) == 1
    moves = await wx.store.transitions("wechatpay", "WX20240015")
    assert [(t.from_state, t.to_state) for t in moves] == [("created", "paid")]
    events = await wx.store.events("wechatpay", "WX20240015")
    assert [(e["changed"], e["forwarded"]) for e in events] == [(True, True)]


async def test_forged_stale_unknown_and_wrong_amount_callbacks_are_refused(
        wx: WechatPayRig, http: aiohttp.ClientSession) -> None:
    await wx.service.create_order("WX20240003", 1000, "药费", "native")
    url = wx.source.url
    cases = {
        "bad_signature": {"forge": True},
        "stale": {"skew": -301},
        "unknown_order": {"out_trade_no": "WX-NOT-OURS"},
        "amount_mismatch": {"amount": 1},
        "undecryptable": {"wrong_key": True},
        "wrong_merchant": {"mchid": "1999999999"},
    }
    for reason, fields in cases.items():
        answer = await wx.control.notify(url=url, **{"out_trade_no": "WX20240003", **fields})
        assert answer["status"] == 400, reason
        refusal = orjson.loads(answer["body"])
        assert refusal["code"] == "FAIL" and refusal["message"].split(":")[0] == reason
    async with http.post(url, data=b'{"id":"x"}') as resp:
        assert resp.status == 400
    async with http.post(url, data=b"x" * 70_000) as resp:
        assert resp.status == 400
    audits = await wx.store.audits("wechatpay")
    assert [a.reason for a in audits] == [*cases, "missing_signature", "too_large"]
    assert audits[2].out_trade_no == "WX-NOT-OURS"
    assert all(a.remote == "127.0.0.1" for a in audits)
    assert await wx.state("WX20240003") is OrderState.CREATED
    assert await wx.store.transitions("wechatpay", "WX20240003") == []
    assert wx.channel.messages == []
    # Four minutes 59 seconds old is still inside WeChat Pay's window.
    answer = await wx.control.notify(url=url, out_trade_no="WX20240003", skew=-299)
    assert answer["status"] == 200
    assert await wx.state("WX20240003") is OrderState.PAID


async def test_lost_create_response_is_resolved_by_query_with_one_charge(
        wx: WechatPayRig, eventually: Any) -> None:
    await wx.control.faults(drop_after_commit=1)
    order = await wx.service.create_order("WX20240004", 880, "住院预交金", "native")
    assert order.submit is Submit.ACCEPTED  # found by the query, not created twice
    assert order.extra["code_url"].endswith("WX20240004")
    stats = await wx.control.stats()
    assert stats["orders_created"] == 1
    assert stats["query_calls"] == 1
    await wx.control.pay("WX20240004")
    await eventually(lambda: wx.is_("WX20240004", OrderState.PAID))
    stats = await wx.control.stats()
    assert stats["charges"] == 1
    assert stats["orders_created"] == 1


async def test_timed_out_create_and_refund_are_resolved_by_query_before_any_retry(
        wx: WechatPayRig, eventually: Any) -> None:
    impatient = WechatPayClient(wx.client.settings.model_copy(update={"timeout": 0.2}))
    await impatient.start()
    service = PaymentService(impatient, wx.store)
    try:
        await wx.control.faults(latency=0.4)  # the gateway acts, but after our deadline
        with pytest.raises(TransientError):  # the create timed out, then so did the query
            await service.create_order("WX20240016", 450, "检查费", "native")
        assert (await _order(wx, "WX20240016")).submit is Submit.IN_DOUBT
        await wx.control.faults(latency=0)

        async def late_calls_done() -> bool:  # the gateway finishes what we gave up on
            stats = await wx.control.stats()
            return (stats["create_calls"], stats["query_calls"]) == (1, 1)

        await eventually(late_calls_done)
        order = await service.create_order("WX20240016", 450, "检查费", "native")
        assert order.submit is Submit.ACCEPTED
        stats = await wx.control.stats()
        assert stats["orders_created"] == 1
        assert stats["query_calls"] == 2  # the one that timed out, the one that answered

        await wx.control.pay("WX20240016")
        await eventually(lambda: wx.is_("WX20240016", OrderState.PAID))
        # The refund settles (and its notice comes) a second after the gateway takes it, so
        # the notice cannot settle it before we have looked at what the timeout left.
        wx.sim.refund_delay = 1000.0  # times time_factor 0.001
        await wx.control.faults(latency=0.4)
        with pytest.raises(TransientError):
            await service.refund("WX20240016", "WX20240016R1", 450)
        refund = await wx.store.refund("wechatpay", "WX20240016R1")
        assert refund is not None
        assert refund.state is RefundState.IN_DOUBT
        await wx.control.faults(latency=0)

        async def late_refund_done() -> bool:
            return bool((await wx.control.stats())["refunds_created"] == 1)

        await eventually(late_refund_done)
        refund = await service.refund("WX20240016", "WX20240016R1", 450)
        assert refund.state in (RefundState.PROCESSING, RefundState.SUCCESS)
        assert (await wx.control.stats())["refunds_created"] == 1
        await eventually(lambda: wx.is_("WX20240016", OrderState.REFUNDED))
    finally:
        await impatient.close()


async def test_5xx_on_create_is_queried_then_sent_once_more(wx: WechatPayRig) -> None:
    await wx.control.faults(fail_5xx=1)
    order = await wx.service.create_order("WX20240005", 100, "挂号费", "jsapi",
                                          {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"})
    assert order.submit is Submit.ACCEPTED
    assert order.extra["prepay_id"].startswith("wx")
    assert (await wx.control.stats())["orders_created"] == 1
    params = wx.client.jsapi_parameters(order.extra["prepay_id"])
    assert params["package"] == "prepay_id=" + order.extra["prepay_id"]
    assert params["signType"] == "RSA"


async def test_stored_order_is_queried_before_it_is_sent_again(wx: WechatPayRig) -> None:
    # A previous process stored the order and sent it, then died before the answer.
    request = OrderRequest("WX20240006", 300, "治疗费", "native", 1.0)
    await wx.store.create_order("wechatpay", request)
    await wx.client.create(request)
    order = await wx.service.create_order("WX20240006", 300, "治疗费", "native")
    assert order.submit is Submit.ACCEPTED
    stats = await wx.control.stats()
    assert stats["query_calls"] == 1  # queried first; then, unpaid, asked again for the QR
    assert stats["orders_created"] == 1
    assert order.extra["code_url"].endswith("WX20240006")


async def test_create_that_cannot_connect_stays_pending(wx: WechatPayRig) -> None:
    await wx.sim.stop()
    with pytest.raises(TransientError, match="cannot connect"):
        await wx.service.create_order("WX20240014", 300, "治疗费", "native")
    order = await _order(wx, "WX20240014")
    assert order.submit is Submit.PENDING  # stored before the call


async def test_lost_refund_response_is_resolved_by_query(wx: WechatPayRig, eventually: Any) -> None:
    await _paid(wx, "WX20240007", 1000, eventually)
    await wx.control.faults(drop_after_commit=1)
    refund = await wx.service.refund("WX20240007", "WX20240007R1", 400)
    assert refund.state in (RefundState.PROCESSING, RefundState.SUCCESS)
    assert (await wx.control.stats())["refunds_created"] == 1
    await eventually(lambda: wx.refund_is("WX20240007R1", RefundState.SUCCESS))
    assert (await wx.control.stats())["refunded_fen"] == 400


async def test_concurrent_refunds_never_exceed_the_payment(wx: WechatPayRig,
                                                           eventually: Any) -> None:
    await _paid(wx, "WX20240008", 1000, eventually)
    results = await asyncio.gather(
        *(wx.service.refund("WX20240008", f"WX20240008R{i}", 300) for i in range(5)),
        return_exceptions=True)
    refused = [r for r in results if isinstance(r, RefundExceedsPaid)]
    assert len(refused) == 2
    assert (await wx.control.stats())["refunds_created"] == 3
    await eventually(lambda: _sim_refunded(wx, 900))
    with pytest.raises(RefundExceedsPaid):
        await wx.service.refund("WX20240008", "WX20240008R9", 101)
    await wx.service.refund("WX20240008", "WX20240008R10", 100)
    await eventually(lambda: wx.is_("WX20240008", OrderState.REFUNDED))
    assert (await wx.control.stats())["refunded_fen"] == 1000
    # The same refund again is the same refund, not a second one.
    again = await wx.service.refund("WX20240008", "WX20240008R10", 100)
    assert again.state is RefundState.SUCCESS
    assert (await wx.control.stats())["refunds_created"] == 4


async def test_refund_notice_before_payment_notice(wx: WechatPayRig, eventually: Any) -> None:
    await wx.control.faults(refund_before_payment=True)
    await wx.service.create_order("WX20240009", 2000, "手术费", "native")
    await wx.control.pay("WX20240009")
    order = await wx.service.sync("WX20240009")  # the notice is held back: learn it by query
    assert order.state is OrderState.PAID
    await wx.service.refund("WX20240009", "WX20240009R1", 2000)
    await eventually(lambda: wx.is_("WX20240009", OrderState.REFUNDED))

    async def both_delivered() -> bool:
        return all(r["delivered"] >= 1 for r in await wx.control.notifications())

    await eventually(both_delivered)
    await eventually(lambda: _count(wx, 2))
    kinds = [orjson.loads(m.body)["event"] for m in wx.channel.messages]
    assert kinds == ["refund", "payment"]
    moves = await wx.store.transitions("wechatpay", "WX20240009")
    assert [(t.from_state, t.to_state) for t in moves] == [
        ("created", "paid"), ("paid", "refunding"), ("refunding", "refunded")]


async def test_trade_bill_parses_to_the_simulator_totals(wx: WechatPayRig, eventually: Any) -> None:
    for no, amount in (("WX20240010", 1230), ("WX20240011", 1), ("WX20240012", 99999)):
        await _paid(wx, no, amount, eventually)
    await wx.service.refund("WX20240012", "WX20240012R1", 12345)
    await eventually(lambda: wx.refund_is("WX20240012R1", RefundState.SUCCESS))
    totals = await wx.control.bill_totals()
    bill = await wx.client.trade_bill(totals["date"])
    assert bill.totals.lines == totals["lines"] == 4
    assert bill.totals.paid == Decimal(totals["paid"]) == Decimal("1012.30")
    assert bill.totals.refunded == Decimal(totals["refunded"]) == Decimal("123.45")
    assert bill.totals.fees == Decimal(totals["fees"])
    assert {line.out_trade_no for line in bill.lines} == {"WX20240010", "WX20240011",
                                                          "WX20240012"}
    refund_line = next(x for x in bill.lines if x.kind == "refund")
    assert refund_line.out_refund_no == "WX20240012R1"
    empty = await wx.client.trade_bill((dt.datetime.now(CHINA) - dt.timedelta(days=3))
                                       .date().isoformat())
    assert empty.totals.lines == 0


def test_trade_bill_parser_rejects_inconsistent_or_malformed_bills() -> None:
    good = TradeBillBook(WECHATPAY_APPID, WECHATPAY_MCHID).csv("2024-05-01")
    assert good.startswith(b"\xef\xbb\xbf")
    assert parse_trade_bill(good).totals.lines == 0
    with pytest.raises(BillError, match="header"):
        parse_trade_bill(b"a,b,c\n")
    with pytest.raises(BillError, match="UTF-8"):
        parse_trade_bill("交易时间".encode("gbk"))
    with pytest.raises(BillError, match="summary"):
        parse_trade_bill(good.split("总交易单数".encode())[0])
    lying = good.replace(b"`0.0,`0.00,`0.00", b"`1.0,`0.00,`0.00")
    with pytest.raises(BillError, match="do not add up"):
        parse_trade_bill(lying)
    with pytest.raises(BillError, match="not a number"):
        parse_trade_bill(good.replace(b"`0.00,`0.00,`0.0", b"`x,`0.00,`0.0"))


async def test_logs_hold_no_key_material(wx: WechatPayRig, eventually: Any,
                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    await wx.control.faults(drop_after_commit=1)
    await _paid(wx, "WX20240013", 700, eventually)
    await wx.control.notify(url=wx.source.url, out_trade_no="WX20240013", forge=True)
    text = caplog.text
    assert "in doubt" in text  # the logs did record something
    assert wx.client.settings.apiv3_key.get() not in text
    body = "".join(wx.client.settings.merchant_private_key.get().splitlines()[1:-1])
    assert body[:40] not in text
    assert "PRIVATE KEY" not in text


def test_notify_config_requires_the_gateway_account_and_references() -> None:
    base = {"type": "payment_notify", "gateway": "wechatpay"}
    with pytest.raises(ValueError, match="wechatpay"):
        PaymentNotifyConfig.model_validate(base)
    account = {"mchid": WECHATPAY_MCHID, "appid": WECHATPAY_APPID, "merchant_serial": "1",
               "merchant_private_key": "-----BEGIN PRIVATE KEY-----",
               "apiv3_key": "${WX_APIV3}", "platform_certificates": ["file:/x.pem"]}
    with pytest.raises(ValueError, match="by reference"):
        PaymentNotifyConfig.model_validate({**base, "wechatpay": account})
    account["merchant_private_key"] = "file:/etc/merchant.pem"
    config = PaymentNotifyConfig.model_validate({**base, "wechatpay": account})
    assert config.path == "/notify"
    assert "file:/etc/merchant.pem" in repr(config)
    # Payment state is kept in the engine's store: a database of its own is refused, not
    # silently ignored.
    with pytest.raises(ValueError, match=r"kept in the engine's store \(store.path\)"):
        PaymentNotifyConfig.model_validate({**base, "wechatpay": account,
                                            "database": "data/payments.db"})


# -- helpers ------------------------------------------------------------------------------


async def _order(wx: WechatPayRig, no: str) -> Any:
    order = await wx.store.order("wechatpay", no)
    assert order is not None
    return order


async def _count(wx: WechatPayRig, n: int) -> bool:
    return len(wx.channel.messages) >= n


async def _sim_refunded(wx: WechatPayRig, fen: int) -> bool:
    return (await wx.control.stats())["refunded_fen"] == fen


async def _paid(wx: WechatPayRig, no: str, amount: int, eventually: Any) -> None:
    await wx.service.create_order(no, amount, "费用", "native")
    await wx.control.pay(no)
    await eventually(lambda: wx.is_(no, OrderState.PAID))


async def test_source_without_its_keys_starts_and_refuses_callbacks(
        tmp_path: Path, channel: Any, http: aiohttp.ClientSession) -> None:
    # A fresh machine: the key files are not there yet. The source listens anyway and answers
    # every callback with a failure (the gateway retries); nothing reaches the channel.
    settings = WechatPaySettings(
        mchid=WECHATPAY_MCHID, appid=WECHATPAY_APPID, merchant_serial="1",
        merchant_private_key=Secret(f"file:{tmp_path / 'missing.pem'}"),
        apiv3_key=Secret(f"file:{tmp_path / 'missing.key'}"),
        platform_certificates=[Secret(f"file:{tmp_path / 'missing-cert.pem'}")])
    config = PaymentNotifyConfig(type="payment_notify", gateway="wechatpay",
                                 listen="127.0.0.1:0", wechatpay=settings)
    # Without an engine, the source opens a database of its own.
    source = PaymentNotifySource(channel="payments", verifier=config.verifier(),
                                 listen=config.listen, database=str(tmp_path / "p.db"))
    await source.start(channel)
    try:
        headers = {"Wechatpay-Timestamp": "1", "Wechatpay-Nonce": "n", "Wechatpay-Serial": "s",
                   "Wechatpay-Signature": "x", "Content-Type": "application/json"}
        async with http.post(source.url, data=b"{}", headers=headers) as r:
            assert r.status >= 500
            assert (await r.json())["code"] == "FAIL"
        assert channel.messages == []
    finally:
        await source.stop()
    # Keys that are there but unusable still fail the start.
    for name in ("missing.pem", "missing-cert.pem"):
        (tmp_path / name).write_text("placeholder")
    (tmp_path / "missing.key").write_text("short")
    with pytest.raises(ConfigError, match="32 bytes"):
        await source.start(channel)


async def test_simulator_refuses_bad_fault_settings(wx: WechatPayRig) -> None:
    with pytest.raises(RuntimeError, match="unknown fault"):
        await wx.control.faults(explode=True)
    with pytest.raises(RuntimeError, match="whole number"):
        await wx.control.faults(fail_5xx=-1)
    with pytest.raises(RuntimeError, match="no such order"):
        await wx.control.pay("WX-NOT-THERE")
    faults = await wx.control.faults(latency=0.25, duplicate_notifications=0)
    assert (faults["latency"], faults["duplicate_notifications"]) == (0.25, 1)
