"""How the simulated platform writes its answers: ``setlinfo``, ``setldetail``, a priced fee
line, the pre-settlement figures. Amounts stay ``Decimal``; the JSON writer keeps their scale.
"""

from __future__ import annotations

import sqlite3
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from simulators.insurance.policy import FUND_TYPE, ZERO

if TYPE_CHECKING:
    from simulators.insurance.platform import Computed


def now_text() -> str:
    return datetime.now().strftime("%Y-%m-%d %H:%M:%S")


def age(brdy: str) -> int:
    born = date.fromisoformat(brdy)
    today = date.today()
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


def fee_result(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "feedetl_sn": row["feedetl_sn"], "det_item_fee_sumamt": Decimal(row["sumamt"]),
        "cnt": Decimal(row["cnt"]), "pric": Decimal(row["pric"]),
        "pric_uplmt_amt": Decimal(row["uplmt"]), "selfpay_prop": Decimal(row["selfpay_prop"]),
        "fulamt_ownpay_amt": Decimal(row["fulamt"]), "overlmt_amt": Decimal(row["overlmt"]),
        "preselfpay_amt": Decimal(row["preselfpay"]), "inscp_scp_amt": Decimal(row["inscp"]),
        "chrgitm_lv": row["chrgitm_lv"], "med_chrgitm_type": row["med_chrgitm_type"],
        "lmt_used_flag": "0", "drt_reim_flag": "0", "memo": "",
    }


def setlinfo(row: sqlite3.Row, person: sqlite3.Row) -> dict[str, Any]:
    """``output.setlinfo`` for a settlement or cancellation record."""
    d = {k: Decimal(row[k]) for k in (
        "medfee_sumamt", "fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt",
        "inscp_scp_amt", "act_pay_dedc", "hifp_pay", "fund_pay_sumamt", "psn_part_amt",
        "acct_pay", "psn_cash_pay", "balc")}
    return {
        "mdtrt_id": row["mdtrt_id"], "setl_id": row["setl_id"], "psn_no": row["psn_no"],
        "psn_name": person["name"], "psn_cert_type": "01", "certno": person["certno"],
        "gend": person["gend"], "naty": "01", "brdy": person["brdy"],
        "age": Decimal(age(person["brdy"])), "insutype": row["insutype"],
        "psn_type": person["psn_type"], "cvlserv_flag": person["cvlserv_flag"],
        "setl_time": row["setl_time"], "mdtrt_cert_type": row["mdtrt_cert_type"],
        "med_type": row["med_type"], **d, "pool_prop_selfpay": Decimal(row["fund_ratio"]),
        "cvlserv_pay": ZERO, "hifes_pay": ZERO, "hifmi_pay": ZERO, "hifob_pay": ZERO,
        "maf_pay": ZERO, "oth_pay": ZERO, "hosp_part_amt": ZERO, "acct_mulaid_pay": ZERO,
        "medins_setl_id": row["msgid"], "clr_optins": row["setl_optins"], "clr_way": "1",
        "clr_type": row["clr_type"], "vali_flag": row["vali_flag"],
        "refd_setl_flag": "1" if row["record"] == "cancel" else "0",
    }


def setldetail(row: sqlite3.Row) -> list[dict[str, Any]]:
    hifp = Decimal(row["hifp_pay"])
    if not hifp:
        return []
    code, name = FUND_TYPE.get(row["insutype"], ("310100", "基本医疗保险统筹基金"))
    return [{
        "fund_pay_type": code, "inscp_scp_amt": Decimal(row["inscp_scp_amt"]),
        "crt_payb_lmt_amt": ZERO, "fund_payamt": hifp, "fund_pay_type_name": name,
        "setl_proc_info": "",
    }]


def presettlement(computed: Computed, *, med_type: str, cert_type: str) -> dict[str, Any]:
    """``output`` of 2206 / 2303: the figures without a settlement behind them."""
    f = computed.figures
    person = computed.person
    visit = computed.visit
    fund_code, fund_name = FUND_TYPE.get(visit["insutype"], ("310100", "基本医疗保险统筹基金"))
    info = {
        "mdtrt_id": visit["mdtrt_id"], "setl_id": "", "psn_no": person["psn_no"],
        "psn_name": person["name"], "psn_cert_type": "01", "certno": person["certno"],
        "gend": person["gend"], "naty": "01", "brdy": person["brdy"],
        "age": Decimal(age(person["brdy"])), "insutype": visit["insutype"],
        "psn_type": person["psn_type"], "cvlserv_flag": person["cvlserv_flag"],
        "setl_time": now_text(), "mdtrt_cert_type": cert_type, "med_type": med_type,
        "medfee_sumamt": f.medfee_sumamt, "fulamt_ownpay_amt": f.fulamt_ownpay_amt,
        "overlmt_selfpay": f.overlmt_selfpay, "preselfpay_amt": f.preselfpay_amt,
        "inscp_scp_amt": f.inscp_scp_amt, "act_pay_dedc": f.act_pay_dedc,
        "hifp_pay": f.hifp_pay, "pool_prop_selfpay": f.fund_ratio, "cvlserv_pay": ZERO,
        "hifes_pay": ZERO, "hifmi_pay": ZERO, "hifob_pay": ZERO, "maf_pay": ZERO,
        "oth_pay": ZERO, "fund_pay_sumamt": f.fund_pay_sumamt, "psn_part_amt": f.psn_part_amt,
        "acct_pay": f.acct_pay, "psn_cash_pay": f.psn_cash_pay, "hosp_part_amt": ZERO,
        "balc": f.balc, "acct_mulaid_pay": ZERO, "medins_setl_id": "",
        "clr_optins": person["insuplc_admdvs"], "clr_way": "1",
        "clr_type": "11" if visit["kind"] == "otp" else "21",
    }
    detail = [] if not f.hifp_pay else [{
        "fund_pay_type": fund_code, "inscp_scp_amt": f.inscp_scp_amt,
        "crt_payb_lmt_amt": ZERO, "fund_payamt": f.hifp_pay,
        "fund_pay_type_name": fund_name, "setl_proc_info": "",
    }]
    return {"setlinfo": info, "setldetail": detail}
