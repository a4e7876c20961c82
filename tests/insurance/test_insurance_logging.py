"""No insured person's data in the logs at INFO or above, whatever the platform does.

Realistic traffic goes through a running engine (HTTP source → channel → nhsa and SOAP
destinations) to the insurance simulator with its faults switched on (5xx, dropped
connections, settlements committed whose answer is lost or withheld), and to a scripted
platform that quotes the person the way real ones do: refusals whose ``err_msg`` names the
person and their card, a 5xx page echoing the request, an HTML answer to a settlement.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from engine.runtime import Engine
from simulators.insurance.catalogue import PERSONS
from tests.broken_peer import BrokenPeer, Reply
from tests.conftest import engine_config, wait_for
from tests.log_check import assert_no_patient_data

SIGN = 'auth = { scheme = "x-tif", paasid = "hisbridge-test", token = "${NHSA_TEST_TOKEN}" }'
INSTITUTION = """
fixmedins_code = "H44030500001"
fixmedins_name = "深圳市示例人民医院"
mdtrtarea_admvs = "440300"
opter = "0001"
opter_name = "收费员甲"
"""
SCOPE = {"fulamt_ownpay_amt": "0.00", "overlmt_selfpay": "0.00", "preselfpay_amt": "0.00",
         "inscp_scp_amt": "146.20"}


def _patient_values() -> list[str]:
    values = []
    for p in PERSONS:
        values += [p.name, p.certno, p.ss_card_no, p.evoucher]
        values += [p.emp_name] if p.emp_name else []
    return values


def _doc(infno: str, data: dict[str, Any], insuplc: str | None = "440300") -> dict[str, Any]:
    doc: dict[str, Any] = {"infno": infno, "input": {"data": data}}
    if insuplc:
        doc["insuplc_admdvs"] = insuplc
    return doc


def _quoting_platform(request: web.Request, body: bytes) -> Reply:
    """A platform that quotes the person in whatever it answers."""
    del request
    doc = json.loads(body)
    infno, data = doc["infno"], (doc.get("input") or {}).get("data") or {}
    person = next((p for p in PERSONS if data.get("mdtrt_cert_no") in (p.ss_card_no, p.certno)
                   or data.get("psn_no") == p.psn_no), PERSONS[2])
    quoted = f"人员{person.name}(身份证号{person.certno}, 社保卡号{person.ss_card_no})"
    if infno == "2207":  # a 5xx page that echoes the request
        return Reply(f"Internal Server Error: {person.name} {body.decode()}".encode(),
                     status=500, content_type="text/plain")
    if infno == "2208":  # an HTML page instead of JSON, after it may have taken effect
        return Reply(f"<html><body>{quoted} 撤销失败</body></html>".encode(),
                     content_type="text/html")
    if infno == "2206":  # the connection dies half way through an answer naming the person
        return Reply(json.dumps({"infcode": 0, "output": {"psn_name": person.name}},
                                ensure_ascii=False).encode(), cut_short=True)
    return Reply(json.dumps({"infcode": -1, "err_msg": f"{quoted}参保状态异常，不能享受医保待遇",
                             "output": None}, ensure_ascii=False).encode())


@pytest.fixture
async def quoting_peer() -> Any:
    async with BrokenPeer(_quoting_platform) as peer:
        yield peer


async def test_insurance_logs_name_ids_never_persons(
    tmp_path, engines, sim, kit, nhsa, quoting_peer, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    engine = Engine(engine_config(tmp_path, f"""
        [[channels]]
        name = "insurance"
        source = {{ type = "http", listen = "127.0.0.1:0", path = "/sim", content_type = "json" }}
        [[channels.destinations]]
        type = "nhsa"
        name = "platform"
        url = "{sim.url}"
        {INSTITUTION}
        {SIGN}
        timeouts = {{ "2207" = 0.5, "2208" = 0.5 }}
        in_doubt = {{ delay = 0.02, timeout = 2.0 }}
        retry = {{ max_attempts = 3, initial_delay = 0.01, max_delay = 0.05 }}

        [[channels]]
        name = "insurance-quoting"
        source = {{ type = "http", listen = "127.0.0.1:0", path = "/peer", content_type = "json" }}
        [[channels.destinations]]
        type = "nhsa"
        name = "quoting"
        url = "{quoting_peer.url}"
        {INSTITUTION}
        sign_in = {{ enabled = false }}
        timeout = 2.0
        in_doubt = {{ delay = 0.0, timeout = 1.0 }}
        retry = {{ max_attempts = 2, initial_delay = 0.01, max_delay = 0.05 }}

        [[channels]]
        name = "regional"
        [channels.source]
        type = "http"
        listen = "127.0.0.1:0"
        path = "/regional"
        content_type = "json"
        pass_headers = ["operation"]
        [[channels.destinations]]
        type = "soap"
        name = "regional"
        wsdl = "{sim.url}/regional/asmx?wsdl"
        code_path = "/output/code"
        message_path = "/output/message"
        message_part = "message"
        timeout = 3.0
        retry = {{ max_attempts = 1 }}
    """))
    await engine.start()
    engines.append(engine)
    direct = await nhsa(timeouts={"2207": 0.5})  # sets up visits the way the HIS would
    sent = 0

    async def post(channel: str, path: str, doc: Any, **headers: str) -> None:
        nonlocal sent
        url = f"http://127.0.0.1:{engine.source_port(channel)}{path}"
        async with aiohttp.ClientSession() as http, http.post(
                url, data=json.dumps(doc, ensure_ascii=False).encode(),
                headers={"Content-Type": "application/json", **headers}) as r:
            assert r.status in (200, 202), await r.text()
        sent += 1

    def finished() -> bool:
        return engine.metrics.sent.total() + engine.metrics.dead_lettered.total() >= sent

    # Every person's information, read by card: the answers carry names and ID numbers.
    await kit.faults({"error": {"status": 500, "times": 1, "infnos": ["1101"]},
                      "drop": {"times": 1, "infnos": ["1101"]}})
    for p in PERSONS:
        await post("insurance", "/sim", _doc("1101", {
            "mdtrt_cert_type": "03", "mdtrt_cert_no": p.ss_card_no, "psn_name": p.name}, None))
    await post("insurance", "/sim", _doc("1101", {  # nobody holds this card
        "mdtrt_cert_type": "02", "mdtrt_cert_no": PERSONS[0].certno[:-1] + "0"}, None))
    suspended = PERSONS[5]
    await post("insurance", "/sim", _doc("2201", {
        "psn_no": suspended.psn_no, "insutype": suspended.insutype,
        "begntime": "2026-03-15 09:10:00", "mdtrt_cert_type": "03",
        "mdtrt_cert_no": suspended.ss_card_no, "ipt_otp_no": "MZ-LOG-1", "atddr_no": "D0217",
        "dr_name": "刘建国", "dept_code": "KQNK", "dept_name": "口腔内科", "caty": "A12"}))
    await wait_for(finished, timeout=10)
    await kit.faults(None)

    # A settlement whose answer is lost after it committed: resolved by the 5203 query.
    settle, _ = await kit.presettled(direct, PERSONS[0].ss_card_no)
    await kit.faults({"commit_then": {"mode": "drop", "times": 1, "infnos": ["2207"]}})
    await post("insurance", "/sim", {"infno": "2207", "insuplc_admdvs": "440300",
                                     "input": settle})
    await wait_for(finished, timeout=10)
    # One whose answer is withheld while the query fails too: in doubt, resolved next attempt.
    settle, _ = await kit.presettled(direct, PERSONS[1].ss_card_no)
    await kit.faults({"commit_then": {"mode": "hang", "seconds": 5, "times": 1,
                                      "infnos": ["2207"]},
                      "error": {"status": 503, "times": 1, "infnos": ["5203"]}})
    await post("insurance", "/sim", {"infno": "2207", "insuplc_admdvs": "440300",
                                     "input": settle})
    await wait_for(finished, timeout=10)
    await kit.faults(None)
    state = await kit.state()
    assert state["settlements"] == 2

    # The platform that quotes the person in its refusals, error pages and broken answers.
    for p in PERSONS[2:4]:
        await post("insurance-quoting", "/peer", _doc("1101", {
            "mdtrt_cert_type": "03", "mdtrt_cert_no": p.ss_card_no}, None))
        await post("insurance-quoting", "/peer", _doc("2206", {
            "psn_no": p.psn_no, "mdtrt_cert_type": "03", "mdtrt_cert_no": p.ss_card_no,
            "med_type": "11", "medfee_sumamt": "146.20", "psn_setlway": "01",
            "mdtrt_id": "M1", "chrg_bchno": "B1", "insutype": p.insutype,
            "acct_used_flag": "1"}))
        await post("insurance-quoting", "/peer", {"infno": "2207", "insuplc_admdvs": "440300",
                                                  "input": kit.settle_input(
            p.psn_no, p.insutype, f"M-{p.psn_no}", "B1", p.ss_card_no, "146.20", SCOPE)})
        await post("insurance-quoting", "/peer", _doc("2208", {
            "setl_id": f"S-{p.psn_no}", "mdtrt_id": f"M-{p.psn_no}", "psn_no": p.psn_no}))

    # The regional SOAP service: a person's data in the answer, an unknown card refused.
    for card in (PERSONS[4].ss_card_no, "D44039999999"):
        await post("regional", "/regional", [card, "", "op1"], operation="GetPersonInfo")
    await post("regional", "/regional", {"personNo": PERSONS[4].psn_no, "hospNo": "ZY-LOG",
                                         "operCode": "op1"}, operation="InpatientRegister")
    await wait_for(finished, timeout=15)
    assert engine.metrics.dead_lettered.total() >= 8

    loud = assert_no_patient_data(caplog.records, _patient_values())
    assert any("answer lost" in r.getMessage() for r in loud)
