"""HL7 v2.5 messages a Chinese HIS sends: ADT (admit, register, update, discharge) and DFT^P03."""

from __future__ import annotations

import itertools
import time
from datetime import datetime

from engine.hl7 import escape
from simulators.patients import Charge, Patient, Visit

_seq = itertools.count(1)


def control_id(prefix: str = "H") -> str:
    """A control id unique per sender: 20 characters, the MSH-10 length limit in v2.5."""
    return f"{prefix}{datetime.now():%y%m%d%H%M%S}{next(_seq) % 10**7:07d}"


def _msh(kind: str, trigger: str, structure: str, cid: str, facility: str) -> str:
    now = time.strftime("%Y%m%d%H%M%S")
    return (f"MSH|^~\\&|HIS|{facility}|HISBRIDGE|{facility}|{now}||{kind}^{trigger}^{structure}|"
            f"{cid}|P|2.5|||AL|NE||UNICODE UTF-8")


def _pid(p: Patient, facility: str) -> str:
    e = escape
    return (
        f"PID|1||{p.mrn}^^^{facility}^MR~{p.id_card}^^^CHN^NNCHN~{p.insurance_card}^^^NHSA^HC||"
        f"{e(p.family)}^{e(p.given)}^^^^^L||{p.birth:%Y%m%d}|{p.sex}|||"
        f"{e(p.street)}^^{e(p.city)}^{e(p.province)}^{p.postcode}^CHN^H||"
        f"^PRN^PH^^^^^^^^^{p.phone}"
    )


def _pv1(v: Visit, facility: str) -> str:
    doc = f"{v.doctor[0]}^{v.doctor[1]}^{v.doctor[2]}"
    location = f"{v.dept_code}^{v.bed or '01'}^01^{facility}"
    return f"PV1|1|{v.kind}|{location}||||{doc}|||{v.dept_code}||||||||{doc}||{v.number}"


def adt(trigger: str, p: Patient, v: Visit, *, facility: str = "SYFYY",
        cid: str | None = None) -> str:
    """ADT^A01 (admit), A04 (register), A08 (update) or A03 (discharge)."""
    cid = cid or control_id()
    now = time.strftime("%Y%m%d%H%M%S")
    segs = [_msh("ADT", trigger, "ADT_A01" if trigger != "A03" else "ADT_A03", cid, facility),
            f"EVN|{trigger}|{now}", _pid(p, facility), _pv1(v, facility)]
    return "\r".join(segs) + "\r"


def dft(p: Patient, v: Visit, charges: list[Charge], *, facility: str = "SYFYY",
        cid: str | None = None) -> str:
    cid = cid or control_id()
    now = time.strftime("%Y%m%d%H%M%S")
    segs = [_msh("DFT", "P03", "DFT_P03", cid, facility), f"EVN|P03|{now}", _pid(p, facility),
            _pv1(v, facility)]
    doc = f"{v.doctor[0]}^{v.doctor[1]}^{v.doctor[2]}"
    for n, c in enumerate(charges, start=1):
        segs.append(
            f"FT1|{n}|{c.transaction_id}||{now}|{now}|CG|"
            f"{c.code}^{escape(c.name)}^LOCAL^{c.insurance_code}^{escape(c.name)}^NHSA|||"
            f"{c.quantity}|{c.unit_price}^CNY|{c.amount}^CNY|{v.dept_code}^{escape(v.dept_name)}"
            f"||||||||{doc}"
        )
    return "\r".join(segs) + "\r"
