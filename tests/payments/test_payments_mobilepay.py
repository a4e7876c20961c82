"""Insurance mobile payment end to end (6201/6202/6203/6301, SM2/SM4) against the simulator."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from adapters.mobilepay import crypto
from adapters.mobilepay.client import MobilePayClient, fen_of
from adapters.payments.errors import GatewayRejected, RefundExceedsPaid
from adapters.payments.model import Order, OrderState, RefundState, Submit
from engine.errors import PermanentError
from engine.settings import Secret
from tests.payments.gateway_rig import MOBILEPAY_AUTH as AUTH
from tests.payments.gateway_rig import Harness, MobilePayRig, mobilepay_rig


@pytest.fixture
async def mp(harness: Harness) -> AsyncIterator[MobilePayRig]:
    async with mobilepay_rig(harness) as rig:
        yield rig


async def test_upload_confirm_notify_query_refund_refund_notify(mp: MobilePayRig,
                                                                eventually: Any) -> None:
    order = await mp.service.create_order("MP20240001", 12345, "门诊医保缴费", "mobile",
                                          {"psn_no": AUTH["psn_no"]})
    assert order.extra["pay_ord_id"].startswith("ORD")
    assert order.extra["pay_token"]
    await mp.control.pay("MP20240001")  # the patient confirms in the insurance app
    await eventually(lambda: mp.is_("MP20240001", OrderState.PAID))
    event = orjson.loads(mp.channel.messages[0].body)
    assert (event["event"], event["amount"]) == ("payment", "123.45")
    assert (await mp.service.sync("MP20240001")).state is OrderState.PAID

    refund = await mp.service.refund("MP20240001", "MP20240001R1", 2345, "退药")
    assert refund.state in (RefundState.PROCESSING, RefundState.SUCCESS)  # notify may win
    await eventually(lambda: mp.refund_is("MP20240001R1", RefundState.SUCCESS))
    await mp.service.refund("MP20240001", "MP20240001R2", 10000)
    await eventually(lambda: mp.is_("MP20240001", OrderState.REFUNDED))

    async def three() -> bool:
        return len(mp.channel.messages) == 3

    await eventually(three)
    assert [orjson.loads(m.body)["event"] for m in mp.channel.messages] == [
        "payment", "refund", "refund"]
    stats = await mp.control.stats()
    assert (stats["charges"], stats["refunds_created"], stats["refunded_fen"]) == (1, 2, 12345)


async def test_6202_with_lost_answer_ends_paid_with_one_charge(mp: MobilePayRig,
                                                               eventually: Any) -> None:
    await mp.service.create_order("MP20240002", 5000, "住院结算", "mobile", AUTH)
    await mp.control.faults(drop_after_commit=1)
    order = await mp.service.pay("MP20240002")
    assert order.state is OrderState.PAID
    stats = await mp.control.stats()
    assert (stats["charges"], stats["query_calls"]) == (1, 1)
    await mp.sim.notifier.idle()
    moves = await mp.store.transitions("mobilepay", "MP20240002")
    assert [(t.from_state, t.to_state) for t in moves] == [("created", "paid")]


async def test_6202_answered_directly_and_not_repeated(mp: MobilePayRig) -> None:
    await mp.service.create_order("MP20240003", 800, "门诊", "mobile", AUTH)
    order = await mp.service.pay("MP20240003")
    assert order.state is OrderState.PAID
    again = await mp.service.pay("MP20240003")  # already paid: nothing is sent
    assert again.state is OrderState.PAID
    assert (await mp.control.stats())["charges"] == 1


async def test_lost_6201_answer_is_queried_then_uploaded_again_for_the_token(
        mp: MobilePayRig) -> None:
    await mp.control.faults(drop_after_commit=1)
    order = await mp.service.create_order("MP20240004", 300, "门诊", "mobile", AUTH)
    assert order.submit is Submit.ACCEPTED
    assert order.extra["pay_token"]
    stats = await mp.control.stats()
    assert (stats["orders_created"], stats["uploads"], stats["query_calls"]) == (1, 2, 1)


async def test_busy_platform_is_in_doubt_then_resolved(mp: MobilePayRig) -> None:
    await mp.control.faults(fail_5xx=1)
    order = await mp.service.create_order("MP20240005", 300, "门诊", "mobile", AUTH)
    assert order.submit is Submit.ACCEPTED
    assert (await mp.control.stats())["orders_created"] == 1


async def test_forged_undecryptable_unknown_and_wrong_amount_notifications_are_refused(
        mp: MobilePayRig, http: aiohttp.ClientSession) -> None:
    await mp.service.create_order("MP20240007", 1000, "门诊", "mobile", AUTH)
    cases = {
        "bad_signature": {"forge": True},
        "undecryptable": {"wrong_secret": True},
        "wrong_merchant": {"app_id": "OTHERAPP00000000000"},
        "unknown_order": {"out_trade_no": "MP-NOT-OURS"},
        "amount_mismatch": {"amount": 999},
    }
    for reason, fields in cases.items():
        answer = await mp.control.notify(url=mp.source.url,
                                         **{"out_trade_no": "MP20240007", **fields})
        assert answer["status"] == 400, reason
        refusal = orjson.loads(answer["body"])
        assert refusal["code"] == 1 and refusal["message"].split(":")[0] == reason, reason
    async with http.post(mp.source.url, data=b"{}") as resp:
        assert resp.status == 400
    assert [a.reason for a in await mp.store.audits("mobilepay")] == [
        *cases, "missing_signature"]
    assert await mp.is_("MP20240007", OrderState.CREATED)


async def test_refunds_never_exceed_the_payment(mp: MobilePayRig, eventually: Any) -> None:
    await mp.service.create_order("MP20240008", 1000, "门诊", "mobile", AUTH)
    await mp.service.pay("MP20240008")
    results = await asyncio.gather(
        *(mp.service.refund("MP20240008", f"MP20240008R{i}", 600) for i in range(3)),
        return_exceptions=True)
    assert sum(isinstance(r, RefundExceedsPaid) for r in results) == 2
    assert (await mp.control.stats())["refunds_created"] == 1


async def test_requests_with_a_wrong_key_are_refused_by_the_platform(
        mp: MobilePayRig, tmp_path: Path) -> None:
    wrong_private, _ = crypto.new_keypair()
    wrong = tmp_path / "wrong.hex"
    wrong.write_text(wrong_private)
    client = MobilePayClient(mp.client.settings.model_copy(update={
        "private_key": Secret(f"file:{wrong}")}))
    await client.start()
    try:
        with pytest.raises(GatewayRejected, match="1401"):
            await client.query(_dummy_order())
    finally:
        await client.close()
    assert (await mp.control.stats())["refused_signatures"] == 1


async def test_logs_hold_no_keys_or_patient_numbers(mp: MobilePayRig, eventually: Any,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    await mp.service.create_order("MP20240009", 1000, "门诊", "mobile", AUTH)
    await mp.control.faults(drop_after_commit=1)
    await mp.service.pay("MP20240009")
    text = caplog.text
    assert "in doubt" in text
    hospital_key = mp.client.settings.private_key.get()
    for secret in (hospital_key, mp.sim.app_secret, AUTH["psn_no"], AUTH["pay_auth_no"]):
        assert secret not in text


def _dummy_order() -> Order:
    return Order("mobilepay", "MP-NONE", 1, "", "mobile", OrderState.CREATED, Submit.PENDING,
                 "", 0, 0, 0.0, "", {})


@pytest.mark.parametrize(("value", "fen"), [
    ("12.34", 1234), (Decimal("12.34"), 1234), (12, 1200), ("0.01", 1), (0, 0),
])
def test_answer_amounts_read_as_fen(value: object, fen: int) -> None:
    assert fen_of(value, "feeSumamt") == fen


@pytest.mark.parametrize("value", [12.34, True, None, "12.345", "十二", [12]])
def test_answer_amounts_that_are_not_yuan_are_refused(value: object) -> None:
    with pytest.raises(PermanentError, match="mobile payment answer has no valid feeSumamt"):
        fen_of(value, "feeSumamt")


@pytest.mark.parametrize("value", ["-1.00", -3, Decimal("-0.01")])
def test_negative_answer_amounts_are_refused(value: object) -> None:
    with pytest.raises(PermanentError, match="mobile payment answer's feeSumamt is negative"):
        fen_of(value, "feeSumamt")
