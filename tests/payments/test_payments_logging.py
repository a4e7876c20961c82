"""No patient or payer data in the logs at INFO or above, and none in the audit of refused
callbacks, whatever the gateways send.

Each gateway's rig (simulator, our callback source, our client, the payment service) feeds a
channel of a running engine whose HIS endpoint refuses the events, quoting the patient. The
traffic is what a day brings: an order whose description names the patient, paid by a payer
whose account the gateway reports (openid, buyer id, card number, insurance person number),
its notifications replayed, a refund whose answer is lost after it committed, a create
answered 5xx, and crafted callbacks: forged, stale, for the wrong amount, for an order or a
refund we never made.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from adapters.payments.model import OrderState
from engine.errors import HisbridgeError
from engine.runtime import Engine
from simulators.patients import PatientFactory
from simulators.payments.unionpay import TEST_CARD
from tests.conftest import engine_config, wait_for
from tests.log_check import assert_no_patient_data
from tests.payments.gateway_rig import MOBILEPAY_AUTH, RIGS, Harness

ALIPAY_BUYER = ("2088102177846880", "sim***@example.com")  # what the simulator reports
PATIENT = PatientFactory(seed=29).patient()
NAME = PATIENT.family + PATIENT.given


@pytest.fixture
async def his() -> AsyncIterator[tuple[str, list[bytes]]]:
    """The HIS: refuses every payment event, quoting the patient it belongs to."""
    received: list[bytes] = []

    async def take(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(status=422, text=f"缴费记录不存在: 患者{NAME} {PATIENT.id_card}")

    app = web.Application()
    app.router.add_post("/his/payments", take)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/his/payments", received
    await runner.cleanup()


@pytest.mark.parametrize("gateway", sorted(RIGS))
async def test_payment_logs_and_audit_name_ids_never_payers(
    gateway: str, tmp_path: Path, engines: list[Engine], his: tuple[str, list[bytes]],
    http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    his_url, received = his
    engine = Engine(engine_config(tmp_path, f"""
        [[channels]]
        name = "payments"
        source = {{ type = "http", listen = "127.0.0.1:0", content_type = "json" }}
        [[channels.destinations]]
        type = "http"
        name = "his"
        url = "{his_url}"
        retry = {{ max_attempts = 2, initial_delay = 0.01 }}
    """))
    await engine.start()
    engines.append(engine)
    patient, name = PATIENT, NAME
    openid = "oPAYER" + secrets.token_hex(10)
    payer = {"wechatpay": [openid], "alipay": list(ALIPAY_BUYER), "unionpay": [TEST_CARD],
             "mobilepay": list(MOBILEPAY_AUTH.values())}[gateway]
    values = [name, patient.id_card, patient.phone, patient.street, *payer]

    harness = Harness(tmp_path / gateway, engine.db, http, engine.channels["payments"].ingest)
    async with RIGS[gateway](harness) as rig:
        kind, extra = (("jsapi", {"openid": openid}) if gateway == "wechatpay"
                        else (rig.kind, rig.extra))
        description = f"{name} 门诊缴费 {patient.phone}"
        await rig.control.faults(duplicate_notifications=3)
        await rig.service.create_order("LOGORD0001", 1000, description, kind, extra or None)
        await rig.control.pay("LOGORD0001")
        await wait_for(lambda: len(received) >= 1, timeout=5)
        assert await rig.state("LOGORD0001") is OrderState.PAID

        # A refund committed by the gateway whose answer is lost, then found by query.
        await rig.control.faults(drop_after_commit=1)
        with contextlib.suppress(HisbridgeError):
            await rig.service.refund("LOGORD0001", "LOGORD0001R1", 300, f"退费 {name}")
        # A create answered 5xx, then made again.
        await rig.control.faults(fail_5xx=1)
        for _ in range(2):
            with contextlib.suppress(HisbridgeError):
                await rig.service.create_order("LOGORD0002", 500, description, kind,
                                               extra or None)

        url = rig.source.url
        crafted: list[dict[str, Any]] = [
            {"out_trade_no": "LOGORD0001", "forge": True},
            {"out_trade_no": "LOGORD0002", "amount": 499},
            {"out_trade_no": "LOGORD9999"},
        ]
        if gateway != "mobilepay":
            crafted.append({"out_trade_no": "LOGORD0001", "kind": "refund",
                            "out_refund_no": "LOGORD0001R9", "refund_total": 100, "refund": 100})
        if gateway == "wechatpay":
            crafted += [{"out_trade_no": "LOGORD0001", "skew": -900},
                        {"out_trade_no": "LOGORD0001", "wrong_key": True}]
        for fields in crafted:
            answer = await rig.control.notify(url=url, **fields)
            assert answer["status"] >= 400, (fields, answer)
        await rig.sim.notifier.idle()

        audits = await rig.store.audits(rig.gateway)
        reasons = {a.reason for a in audits}
        assert {"unknown_order", "amount_mismatch"} <= reasons, reasons
        assert reasons & {"bad_signature", "undecryptable"}, reasons
        for entry in audits:
            for value in values:
                assert value not in f"{entry.detail} {entry.out_trade_no} {entry.remote}", (
                    value, entry)

    await wait_for(lambda: engine.metrics.dead_lettered.total() >= len(received) >= 2,
                   timeout=5)
    assert_no_patient_data(caplog.records, values)

