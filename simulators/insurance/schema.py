"""Strict validation of what the national service receives, like a strict platform would.

The envelope and each transaction's ``input`` are described with four small specs (text,
number, object, array); a failure names the field and why, and becomes ``infcode = -1``
with that text as ``err_msg``. Written independently of the adapter's pydantic models on
purpose: the simulator must catch the adapter's mistakes, not share them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from simulators.insurance.platform import Reject


@dataclass(frozen=True)
class Text:
    required: bool = True
    max_len: int = 100
    pattern: str | None = None
    choices: tuple[str, ...] = ()

    def check(self, value: Any, path: str) -> None:
        if value is None or value == "":
            if self.required:
                raise Reject(f"{path}: required field missing")
            return
        if not isinstance(value, str):
            raise Reject(f"{path}: must be text")
        if len(value) > self.max_len:
            raise Reject(f"{path}: longer than {self.max_len} characters")
        if self.pattern and not re.fullmatch(self.pattern, value):
            raise Reject(f"{path}: malformed value {value[:40]!r}")
        if self.choices and value not in self.choices:
            raise Reject(f"{path}: must be one of {', '.join(self.choices)}")


@dataclass(frozen=True)
class Stamp:
    """A date (``%Y-%m-%d``) or datetime (``%Y-%m-%d %H:%M:%S``)."""

    fmt: str = "%Y-%m-%d %H:%M:%S"
    required: bool = True

    def check(self, value: Any, path: str) -> None:
        if value is None or value == "":
            if self.required:
                raise Reject(f"{path}: required field missing")
            return
        try:
            datetime.strptime(str(value), self.fmt)
        except ValueError:
            raise Reject(f"{path}: not a valid {self.fmt} time: {str(value)[:40]!r}") from None


@dataclass(frozen=True)
class Num:
    scale: int = 2
    required: bool = True
    minimum: Decimal | None = None

    def check(self, value: Any, path: str) -> None:
        if value is None or value == "":
            if self.required:
                raise Reject(f"{path}: required field missing")
            return
        if isinstance(value, bool) or not isinstance(value, (int, Decimal, str)):
            raise Reject(f"{path}: not a number")
        try:
            number = Decimal(str(value))
        except InvalidOperation:
            raise Reject(f"{path}: not a number: {str(value)[:40]!r}") from None
        exponent = number.as_tuple().exponent
        if not number.is_finite() or (isinstance(exponent, int) and -exponent > self.scale):
            raise Reject(f"{path}: not a number with at most {self.scale} decimals: {value}")
        if self.minimum is not None and number < self.minimum:
            raise Reject(f"{path}: must be at least {self.minimum}")


@dataclass(frozen=True)
class Obj:
    fields: dict[str, Any] = field(default_factory=dict)
    required: bool = True

    def check(self, value: Any, path: str) -> None:
        if value is None:
            if self.required:
                raise Reject(f"{path}: required node missing")
            return
        if not isinstance(value, dict):
            raise Reject(f"{path}: must be an object")
        for name, spec in self.fields.items():
            spec.check(value.get(name), f"{path}.{name}")


@dataclass(frozen=True)
class Arr:
    item: Obj
    min_len: int = 1
    required: bool = True

    def check(self, value: Any, path: str) -> None:
        if value is None:
            if self.required:
                raise Reject(f"{path}: required node missing")
            return
        if not isinstance(value, list):
            raise Reject(f"{path}: must be a list")
        if len(value) < self.min_len:
            raise Reject(f"{path}: needs at least {self.min_len} entries")
        for i, entry in enumerate(value):
            self.item.check(entry, f"{path}[{i}]")


ID = Text(max_len=30)
OPT = Text(required=False)
DT = Stamp()
DATE = Stamp("%Y-%m-%d")
AMT = Num(2)
CERT = Text(choices=("01", "02", "03"))
FLAG = Text(choices=("0", "1"))

ENVELOPE = Obj({
    "infno": Text(pattern=r"\d{4}"),
    "msgid": Text(max_len=30, pattern=r"[A-Z0-9]{12}\d{18}"),
    "mdtrtarea_admvs": Text(pattern=r"\d{6}"),
    "insuplc_admdvs": Text(required=False, pattern=r"\d{6}"),
    "recer_sys_code": Text(max_len=10),
    "infver": Text(max_len=6),
    "opter_type": Text(choices=("1", "2", "3")),
    "opter": Text(max_len=30),
    "opter_name": Text(max_len=50),
    "inf_time": DT,
    "fixmedins_code": Text(max_len=12, pattern=r"[A-Z0-9]{12}"),
    "fixmedins_name": Text(max_len=200),
    "sign_no": Text(required=False, max_len=30),
    "input": Obj(),
})

_DIAG = Obj({"diag_type": ID, "diag_code": ID, "diag_name": Text(max_len=200)})
_SETTLE = {
    "psn_no": ID, "mdtrt_cert_type": CERT, "mdtrt_cert_no": Text(max_len=50),
    "medfee_sumamt": AMT, "psn_setlway": ID, "mdtrt_id": ID, "insutype": ID,
    "acct_used_flag": FLAG,
}
_SCOPE = {"fulamt_ownpay_amt": AMT, "overlmt_selfpay": AMT, "preselfpay_amt": AMT,
          "inscp_scp_amt": AMT}
_FEE = Obj({
    "feedetl_sn": ID, "mdtrt_id": ID, "psn_no": ID, "fee_ocur_time": DT,
    "med_list_codg": Text(max_len=50), "medins_list_codg": Text(max_len=150),
    "det_item_fee_sumamt": Num(2, minimum=Decimal(0)), "cnt": Num(4), "pric": Num(6),
    "bilg_dept_codg": ID, "bilg_dept_name": Text(max_len=100), "chrg_bchno": OPT,
})

INPUTS: dict[str, Obj] = {
    "9001": Obj({"signIn": Obj({"opter_no": ID, "mac": Text(max_len=20),
                                "ip": Text(max_len=40)})}),
    "9002": Obj({"signOut": Obj({"sign_no": ID, "opter_no": ID})}),
    "1101": Obj({"data": Obj({"mdtrt_cert_type": CERT, "mdtrt_cert_no": Text(max_len=50),
                              "begntime": Stamp(required=False)})}),
    "2201": Obj({"data": Obj({
        "psn_no": ID, "insutype": ID, "begntime": DT, "mdtrt_cert_type": CERT,
        "mdtrt_cert_no": Text(max_len=50), "ipt_otp_no": ID, "dept_code": ID,
        "dept_name": Text(max_len=100)})}),
    "2202": Obj({"data": Obj({"psn_no": ID, "mdtrt_id": ID, "ipt_otp_no": ID})}),
    "2203": Obj({"mdtrtinfo": Obj({"mdtrt_id": ID, "psn_no": ID, "med_type": ID,
                                   "begntime": DT}),
                 "diseinfo": Arr(_DIAG, min_len=0, required=False)}),
    "2204": Obj({"feedetail": Arr(_FEE)}),
    "2205": Obj({"data": Obj({"mdtrt_id": ID, "chrg_bchno": ID, "psn_no": ID})}),
    "2206": Obj({"data": Obj({**_SETTLE, "med_type": ID, "chrg_bchno": ID})}),
    "2207": Obj({"data": Obj({**_SETTLE, **_SCOPE, "med_type": ID, "chrg_bchno": ID})}),
    "2208": Obj({"data": Obj({"setl_id": ID, "mdtrt_id": ID, "psn_no": ID})}),
    "2401": Obj({"mdtrtinfo": Obj({
        "psn_no": ID, "insutype": ID, "begntime": DT, "mdtrt_cert_type": CERT,
        "mdtrt_cert_no": Text(max_len=50), "med_type": ID, "ipt_no": ID,
        "adm_dept_codg": ID, "adm_dept_name": Text(max_len=100), "dscg_maindiag_code": ID,
        "dscg_maindiag_name": Text(max_len=300)}),
        "diseinfo": Arr(_DIAG, min_len=0, required=False)}),
    "2402": Obj({"dscginfo": Obj({"mdtrt_id": ID, "psn_no": ID, "insutype": ID,
                                  "endtime": DT, "dise_codg": ID,
                                  "dise_name": Text(max_len=300)}),
                 "diseinfo": Arr(_DIAG, min_len=0, required=False)}),
    "2301": Obj({"feedetail": Arr(_FEE)}),
    "2302": Obj({"data": Arr(Obj({"feedetl_sn": ID, "mdtrt_id": ID, "psn_no": ID}))}),
    "2303": Obj({"data": Obj({**_SETTLE, "mid_setl_flag": FLAG})}),
    "2304": Obj({"data": Obj({**_SETTLE, **_SCOPE, "mid_setl_flag": FLAG})}),
    "2305": Obj({"data": Obj({"setl_id": ID, "mdtrt_id": ID, "psn_no": ID})}),
    "3201": Obj({"data": Obj({
        "insutype": ID, "clr_type": ID, "setl_optins": Text(pattern=r"\d{6}"),
        "stmt_begndate": DATE, "stmt_enddate": DATE, "medfee_sumamt": AMT,
        "fund_pay_sumamt": AMT, "acct_pay": AMT,
        "fixmedins_setl_cnt": Num(0, minimum=Decimal(0))})}),
    "5203": Obj({"data": Obj({"psn_no": ID, "mdtrt_id": ID, "setl_id": OPT})}),
    "2601": Obj({"data": Obj({"psn_no": ID, "omsgid": Text(max_len=30), "oinfno":
                              Text(pattern=r"\d{4}")})}),
}


def check_envelope(doc: Any) -> None:
    ENVELOPE.check(doc, "envelope")


def check_input(infno: str, value: Any) -> None:
    spec = INPUTS.get(infno)
    if spec is None:
        raise Reject(f"交易编号 {infno} 不存在 (unknown infno)")
    spec.check(value, "input")


def person_of(infno: str, value: dict[str, Any]) -> str:
    """The ``psn_no`` the input names, if any (then ``insuplc_admdvs`` is required)."""
    for node in ("data", "mdtrtinfo", "dscginfo"):
        v = value.get(node)
        if isinstance(v, dict) and v.get("psn_no"):
            return str(v["psn_no"])
        if isinstance(v, list) and v and isinstance(v[0], dict) and v[0].get("psn_no"):
            return str(v[0]["psn_no"])
    fees = value.get("feedetail")
    if isinstance(fees, list) and fees and isinstance(fees[0], dict):
        return str(fees[0].get("psn_no") or "")
    return ""
