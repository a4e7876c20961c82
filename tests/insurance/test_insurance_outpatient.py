"""The outpatient sequence 9001 → 1101 → 2201 → 2203 → 2204 → 2206 → 2207 → 2208 against the
simulator over HTTP, amounts checked to the cent for an employee with a full account, one
with too little in the account, and a resident (no account, 50 % fund ratio)."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

AMOUNTS = ("medfee_sumamt", "fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt",
           "inscp_scp_amt", "hifp_pay", "fund_pay_sumamt", "psn_part_amt", "acct_pay",
           "psn_cash_pay", "balc")

# (card, balance before, expected figures after 2207)
CASES = [
    pytest.param("D44039900001", D("1000.00"), {
        "medfee_sumamt": D("146.20"), "fulamt_ownpay_amt": D("88.00"),
        "overlmt_selfpay": D("1.20"), "preselfpay_amt": D("3.50"),
        "inscp_scp_amt": D("53.50"), "hifp_pay": D("37.45"), "fund_pay_sumamt": D("37.45"),
        "psn_part_amt": D("108.75"), "acct_pay": D("108.75"), "psn_cash_pay": D("0.00"),
        "balc": D("891.25"),
    }, id="employee-account-pays-all"),
    pytest.param("D44039900004", D("12.30"), {
        "medfee_sumamt": D("146.20"), "fulamt_ownpay_amt": D("88.00"),
        "overlmt_selfpay": D("1.20"), "preselfpay_amt": D("3.50"),
        "inscp_scp_amt": D("53.50"), "hifp_pay": D("37.45"), "fund_pay_sumamt": D("37.45"),
        "psn_part_amt": D("108.75"), "acct_pay": D("12.30"), "psn_cash_pay": D("96.45"),
        "balc": D("0.00"),
    }, id="employee-account-short"),
    pytest.param("D44039900003", D("0.00"), {
        "medfee_sumamt": D("146.20"), "fulamt_ownpay_amt": D("88.00"),
        "overlmt_selfpay": D("1.20"), "preselfpay_amt": D("5.25"),
        "inscp_scp_amt": D("51.75"), "hifp_pay": D("25.88"), "fund_pay_sumamt": D("25.88"),
        "psn_part_amt": D("120.32"), "acct_pay": D("0.00"), "psn_cash_pay": D("120.32"),
        "balc": D("0.00"),
    }, id="resident-no-account"),
]


@pytest.mark.parametrize(("card", "balance", "expected"), CASES)
async def test_outpatient_sequence_adds_up_to_the_cent(nhsa, kit, card, balance, expected):
    dest = await nhsa()

    # 1101 (the 9001 sign-in happens first, once).
    info = await kit.call(dest, "1101", {"data": {"mdtrt_cert_type": "03",
                                                  "mdtrt_cert_no": card}}, insuplc=None)
    assert (await kit.state())["sign_ins"] == 1
    psn_no = info["baseinfo"]["psn_no"]
    insutype = info["insuinfo"][0]["insutype"]
    assert info["insuinfo"][0]["balc"] == balance

    # 2201 registration, 2203 visit info.
    reg = await kit.call(dest, "2201", {"data": {
        "psn_no": psn_no, "insutype": insutype, "begntime": "2026-03-15 09:10:00",
        "mdtrt_cert_type": "03", "mdtrt_cert_no": card, "ipt_otp_no": "MZ20260315001",
        "atddr_no": "D0217", "dr_name": "刘建国", "dept_code": "KQNK", "dept_name": "口腔内科",
        "caty": "A12"}})
    mdtrt_id = reg["data"]["mdtrt_id"]
    assert await kit.call(dest, "2203", {
        "mdtrtinfo": {"mdtrt_id": mdtrt_id, "psn_no": psn_no, "med_type": "11",
                      "begntime": "2026-03-15 09:10:00", "dise_codg": "K04.0"},
        "diseinfo": [{"diag_type": "1", "diag_srt_no": "1", "diag_code": "K04.0",
                      "diag_name": "牙髓炎", "diag_dept": "口腔内科", "dise_dor_no": "D0217",
                      "dise_dor_name": "刘建国", "diag_time": "2026-03-15 09:12:00",
                      "vali_flag": "1"}]}) is None

    # 2204 fee upload: each line priced.
    fees = await kit.call(dest, "2204", kit.fees(psn_no, mdtrt_id, "B001"))
    lines = {r["feedetl_sn"]: r for r in fees["result"]}
    assert lines["B001-2"]["overlmt_amt"] == D("1.20")  # 24 × (0.55 - 0.50 ceiling)
    assert lines["B001-4"]["fulamt_ownpay_amt"] == D("88.00")  # class C
    assert sum(r["det_item_fee_sumamt"] for r in fees["result"]) == D("146.20")

    # 2206 pre-settlement and 2207 settlement agree, and add up.
    pre = await kit.call(dest, "2206", kit.settle_input(psn_no, insutype, mdtrt_id, "B001",
                                                        card, "146.20"))
    assert pre["setlinfo"]["setl_id"] == ""
    settled = await kit.call(dest, "2207", kit.settle_input(
        psn_no, insutype, mdtrt_id, "B001", card, "146.20", pre["setlinfo"]))
    info = settled["setlinfo"]
    for name in AMOUNTS:
        assert info[name] == expected[name], name
        assert pre["setlinfo"][name] == expected[name], name
    assert info["medfee_sumamt"] == info["fund_pay_sumamt"] + info["psn_part_amt"]
    assert info["psn_part_amt"] == info["acct_pay"] + info["psn_cash_pay"]
    if expected["hifp_pay"]:
        assert settled["setldetail"][0]["fund_payamt"] == expected["hifp_pay"]
    after = await kit.call(dest, "1101", {"data": {"mdtrt_cert_type": "03",
                                                   "mdtrt_cert_no": card}}, insuplc=None)
    assert after["insuinfo"][0]["balc"] == expected["balc"]

    # 2208 cancellation: negative figures, balance restored.
    cancel = await kit.call(dest, "2208", {"data": {"setl_id": info["setl_id"],
                                                    "mdtrt_id": mdtrt_id, "psn_no": psn_no}})
    back = cancel["setlinfo"]
    assert back["setl_id"] != info["setl_id"]
    for name in AMOUNTS[:-1]:
        assert back[name] == -expected[name], name
    assert back["balc"] == balance
    again = await kit.call(dest, "1101", {"data": {"mdtrt_cert_type": "03",
                                                   "mdtrt_cert_no": card}}, insuplc=None)
    assert again["insuinfo"][0]["balc"] == balance

    state = await kit.state()
    assert (state["settlements"], state["valid_settlements"], state["cancellations"]) == (1, 0, 1)
    assert state["sign_ins"] == 1  # the sign_no was kept for every call


async def test_undo_in_order_2208_2205_2202(nhsa, kit):
    dest = await nhsa()
    settle, _ = await kit.presettled(dest, "D44039900001")
    d = settle["data"]
    out = await kit.call(dest, "2207", settle)
    # The visit cannot be cancelled while it has fees, nor fees while settled.
    with pytest.raises(Exception, match="cancel the settlement first"):
        await kit.call(dest, "2205", {"data": {"mdtrt_id": d["mdtrt_id"], "chrg_bchno":
                                               d["chrg_bchno"], "psn_no": d["psn_no"]}})
    await kit.call(dest, "2208", {"data": {"setl_id": out["setlinfo"]["setl_id"],
                                           "mdtrt_id": d["mdtrt_id"], "psn_no": d["psn_no"]}})
    await kit.call(dest, "2205", {"data": {"mdtrt_id": d["mdtrt_id"],
                                           "chrg_bchno": d["chrg_bchno"], "psn_no": d["psn_no"]}})
    await kit.call(dest, "2202", {"data": {"psn_no": d["psn_no"], "mdtrt_id": d["mdtrt_id"],
                                           "ipt_otp_no": "MZ1"}})
    assert (await kit.state())["fees"] == 0


async def test_settling_a_settled_batch_is_refused(nhsa, kit):
    dest = await nhsa()
    settle, _ = await kit.presettled(dest, "D44039900001")
    await kit.call(dest, "2207", settle)
    with pytest.raises(Exception, match="no unsettled fees") as info:
        await kit.call(dest, "2207", settle)
    assert type(info.value).__name__ == "Refused"
    assert (await kit.state())["settlements"] == 1


async def test_suspended_insurance_cannot_register(nhsa, kit):
    dest = await nhsa()
    with pytest.raises(Exception, match="insurance suspended"):
        await kit.visit(dest, "D44039900006")
