"""The inpatient sequence 2401 → 2301 → 2303 → 2402 → 2304 → 2305 against the simulator over
HTTP: a retired employee (deductible 800.00, fund ratio 85 % + 5 %), amounts to the cent."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

CARD = "D44039900002"
LINES = (  # code, hospital code, cnt, pric, sumamt
    ("001201000010000", "B0101", "5", "50.00", "250.00"),      # bed, class A
    ("001204000010000", "N0101", "5", "30.00", "150.00"),      # nursing, class A
    ("003306000010000", "S0331", "1", "1200.00", "1200.00"),   # appendectomy, class A
    ("002703000010000", "R0270", "1", "280.00", "280.00"),     # CT, class B, over ceiling 260
    ("C01020000001", "M0001", "10", "4.80", "48.00"),          # infusion set, class B
    ("ZA12BAF0123010100003", "Z0012", "30", "1.15", "34.50"),  # Chinese patent med., class B
)
EXPECTED = {
    "medfee_sumamt": D("1962.50"), "fulamt_ownpay_amt": D("0.00"),
    "overlmt_selfpay": D("20.00"), "preselfpay_amt": D("34.25"), "inscp_scp_amt": D("1908.25"),
    "act_pay_dedc": D("800.00"),
    # (1908.25 - 800.00) × 0.90 = 997.425 → 997.43 (half up)
    "hifp_pay": D("997.43"), "fund_pay_sumamt": D("997.43"), "psn_part_amt": D("965.07"),
    "acct_pay": D("965.07"), "psn_cash_pay": D("0.00"), "balc": D("2595.73"),
}


async def _admitted(kit, dest):
    info = await kit.call(dest, "1101", {"data": {"mdtrt_cert_type": "03",
                                                  "mdtrt_cert_no": CARD}}, insuplc=None)
    psn_no = info["baseinfo"]["psn_no"]
    assert info["insuinfo"][0]["balc"] == D("3560.80")
    adm = await kit.call(dest, "2401", {
        "mdtrtinfo": {
            "psn_no": psn_no, "insutype": "310", "coner_name": "联系人", "tel": "0755-0000000",
            "begntime": "2026-03-10 08:30:00", "mdtrt_cert_type": "03", "mdtrt_cert_no": CARD,
            "med_type": "21", "ipt_no": "ZY2026031000042", "medrcdno": "BA0042",
            "atddr_no": "D0301", "chfpdr_name": "周医生", "adm_diag_dscr": "急性阑尾炎",
            "adm_dept_codg": "WK01", "adm_dept_name": "普外科", "adm_bed": "12",
            "dscg_maindiag_code": "K35.8", "dscg_maindiag_name": "急性阑尾炎"},
        "diseinfo": [{"diag_type": "1", "diag_srt_no": "1", "diag_code": "K35.8",
                      "diag_name": "急性阑尾炎", "diag_dept": "普外科",
                      "dise_dor_no": "D0301", "dise_dor_name": "周医生",
                      "diag_time": "2026-03-10 08:40:00", "vali_flag": "1"}],
    })
    mdtrt_id = adm["data"]["mdtrt_id"]
    fees = await kit.call(dest, "2301", {"feedetail": [
        {"feedetl_sn": f"F{i:03d}", "mdtrt_id": mdtrt_id, "psn_no": psn_no, "med_type": "21",
         "fee_ocur_time": "2026-03-11 10:00:00", "med_list_codg": code,
         "medins_list_codg": hosp, "det_item_fee_sumamt": amt, "cnt": cnt, "pric": pric,
         "bilg_dept_codg": "WK01", "bilg_dept_name": "普外科", "bilg_dr_codg": "D0301",
         "bilg_dr_name": "周医生", "drord_no": f"YZ{i}"}
        for i, (code, hosp, cnt, pric, amt) in enumerate(LINES, start=1)]})
    return psn_no, mdtrt_id, fees


def _settle_data(psn_no, mdtrt_id, scope=None, mid="0"):
    data = {"psn_no": psn_no, "mdtrt_cert_type": "03", "mdtrt_cert_no": CARD,
            "medfee_sumamt": "1962.50", "psn_setlway": "01", "mdtrt_id": mdtrt_id,
            "insutype": "310", "mid_setl_flag": mid, "acct_used_flag": "1", "invono": ""}
    if scope:
        data.update({k: str(scope[k]) for k in ("fulamt_ownpay_amt", "overlmt_selfpay",
                                                "preselfpay_amt", "inscp_scp_amt")})
    return {"data": data}


async def test_inpatient_sequence_adds_up_to_the_cent(nhsa, kit):
    dest = await nhsa()
    psn_no, mdtrt_id, fees = await _admitted(kit, dest)
    ct = next(r for r in fees["result"] if r["feedetl_sn"] == "F004")
    assert (ct["overlmt_amt"], ct["preselfpay_amt"], ct["inscp_scp_amt"]) == (
        D("20.00"), D("26.00"), D("234.00"))

    pre = await kit.call(dest, "2303", _settle_data(psn_no, mdtrt_id))
    await kit.call(dest, "2402", {"dscginfo": {
        "mdtrt_id": mdtrt_id, "psn_no": psn_no, "insutype": "310",
        "endtime": "2026-03-15 10:00:00", "dise_codg": "K35.8", "dise_name": "急性阑尾炎",
        "dscg_way": "1"}, "diseinfo": []})
    settled = await kit.call(dest, "2304", _settle_data(psn_no, mdtrt_id, pre["setlinfo"]))
    info = settled["setlinfo"]
    for name, value in EXPECTED.items():
        assert info[name] == value, name
        assert pre["setlinfo"][name] == value, name
    assert settled["setldetail"] == [{
        "fund_pay_type": "310100", "inscp_scp_amt": D("1908.25"), "crt_payb_lmt_amt": D("0.00"),
        "fund_payamt": D("997.43"), "fund_pay_type_name": "职工基本医疗保险统筹基金",
        "setl_proc_info": ""}]

    cancel = await kit.call(dest, "2305", {"data": {"psn_no": psn_no, "mdtrt_id": mdtrt_id,
                                                    "setl_id": info["setl_id"]}})
    assert cancel["setlinfo"]["fund_pay_sumamt"] == D("-997.43")
    assert cancel["setlinfo"]["acct_pay"] == D("-965.07")
    assert cancel["setlinfo"]["balc"] == D("3560.80")
    # The fees are free again: the stay can be settled anew.
    again = await kit.call(dest, "2304", _settle_data(psn_no, mdtrt_id, pre["setlinfo"]))
    assert again["setlinfo"]["fund_pay_sumamt"] == D("997.43")


async def test_final_settlement_before_discharge_is_refused(nhsa, kit):
    dest = await nhsa()
    psn_no, mdtrt_id, _ = await _admitted(kit, dest)
    pre = await kit.call(dest, "2303", _settle_data(psn_no, mdtrt_id))
    with pytest.raises(Exception, match="discharge first"):
        await kit.call(dest, "2304", _settle_data(psn_no, mdtrt_id, pre["setlinfo"]))
    mid = await kit.call(dest, "2304", _settle_data(psn_no, mdtrt_id, pre["setlinfo"], mid="1"))
    assert mid["setlinfo"]["medfee_sumamt"] == D("1962.50")


async def test_inpatient_fee_cancel_and_wrong_scope_amounts(nhsa, kit):
    dest = await nhsa()
    psn_no, mdtrt_id, _ = await _admitted(kit, dest)
    await kit.call(dest, "2302", {"data": [{"feedetl_sn": "F006", "mdtrt_id": mdtrt_id,
                                            "psn_no": psn_no}]})
    pre = await kit.call(dest, "2303", {"data": {**_settle_data(psn_no, mdtrt_id)["data"],
                                                 "medfee_sumamt": "1928.00"}})
    assert pre["setlinfo"]["medfee_sumamt"] == D("1928.00")
    scope = {**pre["setlinfo"], "inscp_scp_amt": D("1.00")}
    body = _settle_data(psn_no, mdtrt_id, scope, mid="1")
    body["data"]["medfee_sumamt"] = "1928.00"
    with pytest.raises(Exception, match=r"inscp_scp_amt 1\.00"):
        await kit.call(dest, "2304", body)
