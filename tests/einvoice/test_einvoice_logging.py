"""No patient data in the logs at INFO or above, whatever the e-invoice platform does.

Settlement documents of generated patients go through a running engine (HTTP source →
``einvoice_outpatient`` mapping → e-invoice destination) to the simulated platform with its
faults switched on one at a time (an invoice committed whose answer never comes, a broken
signature, broken Base64, 5xx, busy), and to a scripted platform that quotes the payer: a
signed refusal naming the patient, and an answer whose signature is wrong claiming a refusal
that names them too. A document the mapping cannot read, and one whose amounts do not add up,
are refused before anything is sent.
"""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from adapters.einvoice.envelope import response_signature
from engine.runtime import Engine
from simulators.einvoice import EinvoiceSimulator
from simulators.patients import PatientFactory
from tests.broken_peer import BrokenPeer, Reply
from tests.conftest import REPO, engine_config, wait_for
from tests.log_check import assert_no_patient_data

DOCUMENT = REPO / "mappings" / "fixtures" / "einvoice_outpatient" / "insured_wechat.in.json"
ISSUE_OP = "invoiceEBillOutpatient"


def _quoting_platform(key: str) -> Any:
    """A platform that signs its refusals properly and quotes the payer in them; every
    second answer is signed wrongly (its claim names the payer too)."""
    calls = [0]

    def answer(request: web.Request, body: bytes) -> Reply:
        del request
        calls[0] += 1
        sent = json.loads(body)
        data = json.loads(base64.b64decode(sent["data"]))
        message = f"付款方{data.get('payer')}(电话{data.get('contact', {}).get('tel')})信息有误"
        sign = response_signature(result="E1001", message=message, noise=sent["noise"],
                                  key=key)
        if calls[0] % 2 == 0:
            sign = "0" * 32
        return Reply(json.dumps({"result": "E1001", "message": message, "noise": sent["noise"],
                                 "sign": sign}, ensure_ascii=False).encode())

    return answer


async def test_einvoice_logs_name_ids_never_patients(
    tmp_path: Path, engines: list[Engine], simulator: EinvoiceSimulator,
    key_file: tuple[str, Path], control: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    key, key_path = key_file
    async with BrokenPeer(_quoting_platform(key)) as peer:
        account = f'appid = "HOSP0001"\n        key = "file:{key_path}"'
        engine = Engine(engine_config(tmp_path, f"""
            [[channels]]
            name = "invoices"
            source = {{ type = "http", listen = "127.0.0.1:0", content_type = "json" }}
            [[channels.destinations]]
            type = "einvoice"
            name = "platform"
            mapping = "einvoice_outpatient"
            operation = "outpatient"
            url = "{simulator.url}"
            {account}
            timeout = 0.5
            retry = {{ max_attempts = 3, initial_delay = 0.01, max_delay = 0.05 }}

            [[channels.destinations]]
            type = "einvoice"
            name = "quoting"
            mapping = "einvoice_outpatient"
            operation = "outpatient"
            url = "{peer.url}"
            {account}
            lookup_before_issue = "never"
            timeout = 1.0
            retry = {{ max_attempts = 2, initial_delay = 0.01, max_delay = 0.05 }}
        """))
        await engine.start()
        engines.append(engine)
        url = f"http://127.0.0.1:{engine.source_port('invoices')}/"
        factory = PatientFactory(seed=37)
        values: list[str] = []
        posted = 0

        async def settle(n: int, **changes: Any) -> None:
            nonlocal posted
            p = factory.patient()
            values.extend([p.family + p.given, p.id_card, p.phone, p.mrn, p.street])
            doc = json.loads(DOCUMENT.read_text(encoding="utf-8"))
            doc["settlement_id"] = f"SETL-LOG-{n:04d}"
            doc["patient"].update(name=p.family + p.given, mrn=p.mrn, id_card=p.id_card,
                                  phone=p.phone)
            doc.update(changes)
            async with aiohttp.ClientSession() as http, http.post(
                    url, data=json.dumps(doc, ensure_ascii=False).encode(),
                    headers={"Content-Type": "application/json"}) as r:
                assert r.status in (200, 202), await r.text()
            posted += 2  # one delivery per destination

        def finished() -> bool:
            return engine.metrics.sent.total() + engine.metrics.dead_lettered.total() >= posted

        faults: list[dict[str, Any]] = [
            {"kind": "commit_then_timeout", "operation": ISSUE_OP, "times": 1, "seconds": 5},
            {"kind": "bad_signature", "operation": ISSUE_OP, "times": 1},
            {"kind": "broken_base64", "operation": ISSUE_OP, "times": 1},
            {"kind": "server_error", "status": 503, "operation": ISSUE_OP, "times": 1},
            {"kind": "busy", "operation": ISSUE_OP, "times": 1},
        ]
        for n, fault in enumerate(faults):
            await control.faults(fault)
            await settle(n)
            await wait_for(finished, timeout=10)
        await settle(10)  # no fault
        without_id = {"settlement_id": None}
        await settle(11, **without_id)
        await settle(12, total=1.0)  # the amounts do not add up
        await wait_for(finished, timeout=10)

    bills = [await control.bills(f"SETL-LOG-{n:04d}") for n in range(len(faults))]
    assert [b["count"] for b in bills] == [1] * len(faults)
    assert engine.metrics.dead_lettered.total() >= 8
    loud = assert_no_patient_data(caplog.records, values)
    assert any("untrusted answer" in r.getMessage() for r in loud)
