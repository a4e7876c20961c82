"""Malformed answers and malformed requests become clear errors, never crashes; the
simulator refuses what a strict platform would, with a message naming the field."""

from __future__ import annotations

import json

import aiohttp
import pytest

from adapters.nhsa.client import MalformedAnswer, Refused
from engine.errors import PermanentError, TransientError

PERSON = {"data": {"mdtrt_cert_type": "03", "mdtrt_cert_no": "D44039900001"}}


@pytest.mark.parametrize(("kind", "match"), [
    ("missing_output", r"1101 msgid=\w{30}: infcode 0 but the answer has no output"),
    ("non_numeric_amount", r"invalid output: output\.insuinfo\.0\.balc: .*got '12\.3O'"),
    ("not_json", r"1101 answer is not JSON .*502 Bad Gateway"),
])
async def test_malformed_answer_is_a_clear_permanent_error(nhsa, kit, kind, match):
    dest = await nhsa()
    await kit.faults({"malformed": {"kind": kind, "times": 1, "infnos": ["1101"]}})
    with pytest.raises(MalformedAnswer, match=match) as info:
        await dest.send(kit.envelope("1101", PERSON, insuplc=None))
    assert isinstance(info.value, PermanentError)
    # The next answer is fine again: nothing was left broken.
    assert (await kit.call(dest, "1101", PERSON, insuplc=None))["baseinfo"]["psn_no"]


async def test_non_numeric_amount_in_a_settlement_figure(nhsa, kit):
    dest = await nhsa()
    _, _ = await kit.presettled(dest, "D44039900001")  # warms up visit and fees
    settle, _ = await kit.presettled(dest, "D44039900004")
    await kit.faults({"malformed": {"kind": "non_numeric_amount", "times": 1,
                                    "infnos": ["2206"]}})
    body = {"data": {k: v for k, v in settle["data"].items()
                     if k not in ("fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt",
                                  "inscp_scp_amt", "invono")}}
    with pytest.raises(MalformedAnswer, match=r"output\.setlinfo\.fund_pay_sumamt"):
        await dest.send(kit.envelope("2206", body))


async def test_refusal_carries_the_platforms_message(nhsa, kit):
    dest = await nhsa(validate_input=False)
    with pytest.raises(Refused, match=r"input\.data\.mdtrt_cert_no: required field missing"):
        await dest.send(kit.envelope("1101", {"data": {"mdtrt_cert_type": "03"}},
                                     insuplc=None))
    with pytest.raises(Refused, match=r"feedetail\[0\]\.det_item_fee_sumamt: not a number"):
        await dest.send(kit.envelope("2204", {"feedetail": [{
            "feedetl_sn": "1", "mdtrt_id": "M1", "psn_no": "44039900000001",
            "fee_ocur_time": "2026-03-15 09:00:00", "med_list_codg": "001102000010000",
            "medins_list_codg": "Z1", "det_item_fee_sumamt": "ten", "cnt": 1, "pric": "10.00",
            "bilg_dept_codg": "K", "bilg_dept_name": "K"}]}))


async def test_invalid_input_is_refused_before_sending(nhsa, kit):
    dest = await nhsa()
    await kit.call(dest, "1101", PERSON, insuplc=None)
    before = (await kit.state())["messages"]
    with pytest.raises(PermanentError, match=r"1101 input invalid: input\.data\.mdtrt_cert_no"):
        await dest.send(kit.envelope("1101", {"data": {"mdtrt_cert_type": "03"}},
                                     insuplc=None))
    with pytest.raises(PermanentError, match=r"input\.feedetail\.0\.cnt: .*got '1,5'"):
        await dest.send(kit.envelope("2204", {"feedetail": [{
            "feedetl_sn": "1", "mdtrt_id": "M1", "psn_no": "P1",
            "fee_ocur_time": "2026-03-15 09:00:00", "med_list_codg": "C",
            "medins_list_codg": "H", "det_item_fee_sumamt": "1.00", "cnt": "1,5",
            "pric": "1", "bilg_dept_codg": "K", "bilg_dept_name": "K"}]}))
    with pytest.raises(PermanentError, match="body is not JSON"):
        await dest.send(kit.envelope("1101", b"{not json"))
    with pytest.raises(PermanentError, match="no transaction code"):
        await dest.send(kit.envelope("", PERSON))
    with pytest.raises(PermanentError, match="insuplc_admdvs is required"):
        await dest.send(kit.envelope("2201", {"data": {
            "psn_no": "44039900000001", "insutype": "310", "begntime": "2026-03-15 09:10:00",
            "mdtrt_cert_type": "03", "mdtrt_cert_no": "D44039900001", "ipt_otp_no": "MZ1",
            "dept_code": "K", "dept_name": "K"}}, insuplc=None))
    assert (await kit.state())["messages"] == before


async def test_request_document_form(nhsa, kit):
    dest = await nhsa()
    result = await dest.send(kit.envelope("", {"infno": "1101", "input": PERSON},
                                          insuplc=None))
    assert kit.decode(result)["baseinfo"]["psn_no"] == "44039900000001"


async def test_http_failures_are_transient(nhsa, kit):
    dest = await nhsa(timeouts={"1101": 0.3})
    await kit.faults({"error": {"status": 503, "times": 1, "infnos": ["1101"]}})
    with pytest.raises(TransientError, match="HTTP 503"):
        await dest.send(kit.envelope("1101", PERSON, insuplc=None))
    await kit.faults({"latency": {"seconds": 2, "times": 1, "infnos": ["1101"]}})
    with pytest.raises(TransientError, match=r"no answer within 0\.3s"):
        await dest.send(kit.envelope("1101", PERSON, insuplc=None))
    await kit.faults({"drop": {"times": 1, "infnos": ["1101"]}})
    with pytest.raises(TransientError, match="connection failed"):
        await dest.send(kit.envelope("1101", PERSON, insuplc=None))


async def test_unreachable_platform_is_transient(nhsa, kit, unused_tcp_port):
    dest = await nhsa(url=f"http://127.0.0.1:{unused_tcp_port}")
    with pytest.raises(TransientError, match="could not connect"):
        await dest.send(kit.envelope("1101", PERSON, insuplc=None))


async def test_simulator_refuses_malformed_envelopes(sim, kit, nhsa):
    dest = await nhsa()
    client = dest.client
    await dest.send(kit.envelope("1101", PERSON, insuplc=None))
    sign_no = client.session.current
    assert sign_no

    async def raw(envelope: dict) -> dict:
        headers = {"Content-Type": "application/json", **client.auth.headers(
            str(envelope.get("infno", "")))}
        async with aiohttp.ClientSession() as http, http.post(
                client.url, data=json.dumps(envelope), headers=headers) as r:
            return dict(await r.json())

    good = {
        "infno": "1101", "msgid": client.new_msgid(), "mdtrtarea_admvs": "440300",
        "insuplc_admdvs": "", "recer_sys_code": "HIS", "dev_no": "", "dev_safe_info": "",
        "cainfo": "", "signtype": "", "infver": "V1.0", "opter_type": "1", "opter": "0001",
        "opter_name": "甲", "inf_time": "2026-03-15 09:00:00",
        "fixmedins_code": "H44030500001", "fixmedins_name": "示例", "sign_no": sign_no,
        "input": PERSON,
    }
    assert (await raw(good))["infcode"] == "0"
    cases = [
        ({"msgid": good["msgid"]}, "duplicate msgid"),
        ({"msgid": "H4403050000120260315"}, "envelope.msgid: malformed value"),
        ({"inf_time": "2026/03/15"}, "envelope.inf_time: not a valid"),
        ({"opter_type": "9"}, "envelope.opter_type: must be one of 1, 2, 3"),
        ({"sign_no": "NOPE"}, "sign_no invalid or expired"),
        ({"fixmedins_code": "H99999999999"}, "unknown institution"),
        ({"infno": "1234"}, "unknown infno"),
        ({"input": {"data": {"mdtrt_cert_type": "07", "mdtrt_cert_no": "x"}}},
         "input.data.mdtrt_cert_type: must be one of 01, 02, 03"),
    ]
    for change, message in cases:
        envelope = {**good, "msgid": client.new_msgid(), **change}
        answer = await raw(envelope)
        assert answer["infcode"] == "-1", change
        assert message in answer["err_msg"], (change, answer["err_msg"])
    answer = await raw({**good, "msgid": client.new_msgid(), "infno": "2201", "input": {"data": {
        "psn_no": "44039900000001", "insutype": "310", "begntime": "2026-03-15 09:10:00",
        "mdtrt_cert_type": "03", "mdtrt_cert_no": "D4", "ipt_otp_no": "MZ1",
        "dept_code": "K", "dept_name": "K"}}})
    assert "insuplc_admdvs: required" in answer["err_msg"]
