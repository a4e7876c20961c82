"""HL7 v2.5 messages a Chinese HIS sends: ADT (admit, register, update, discharge) and DFT^P03.

Fields follow HL7 v2.5 positions: PV1-7 attending and PV1-17 admitting doctor, PV1-19 the
visit number, PV1-44/45 admission and discharge times, PV1-47 total charges and PV1-49 total
payments; FT1-3 the batch id, FT1-6 the transaction type (CG charge, PY payment), FT1-11 the
extended amount and FT1-12 the unit price, FT1-24 who entered a payment.

An insured visit (``Visit.coverage``, registered with the insurance platform by the front
desk) carries what the engine needs to upload its fees (2204) in every message of the visit:

- PV1-50 (Alternate Visit ID): the insurance visit id ``mdtrt_id``, assigning authority
  ``NHSA`` (``M0000000001^^^NHSA``);
- PID-3, one more repetition: the insured person number ``psn_no``, assigning authority
  ``NHSA``, identifier type ``SN`` (HL7 table 0203 "subscriber number": assigned by the
  insurer to the insured person), beside the social-security card (type ``HC``);
- IN1 (after PV1 in an ADT, after the FT1 lines in a DFT^P03, as the v2.5 structures order
  them): IN1-2 the insurance type (``310^职工基本医疗保险``), IN1-3 the insured area
  ``insuplc_admdvs`` (the local medical-security bureau is the "insurance company"), IN1-4
  its name.
"""

from __future__ import annotations

import itertools
import time
from datetime import datetime
from decimal import Decimal

from engine.hl7 import escape
from simulators.patients import Charge, Coverage, Patient, Payment, Visit

_seq = itertools.count(1)


def control_id(prefix: str = "H") -> str:
    """A control id unique per sender: 20 characters, the MSH-10 length limit in v2.5."""
    return f"{prefix}{datetime.now():%y%m%d%H%M%S}{next(_seq) % 10**7:07d}"


def _msh(kind: str, trigger: str, structure: str, cid: str, facility: str) -> str:
    now = time.strftime("%Y%m%d%H%M%S")
    return (f"MSH|^~\\&|HIS|{facility}|HISBRIDGE|{facility}|{now}||{kind}^{trigger}^{structure}|"
            f"{cid}|P|2.5|||AL|NE||UNICODE UTF-8")


# The insured areas the demo's persons belong to (IN1-4, the "insurance company" name).
AREA_NAMES = {"440300": "深圳市医疗保障局", "440100": "广州市医疗保障局"}
INSUTYPE_NAMES = {"310": "职工基本医疗保险", "390": "城乡居民基本医疗保险"}


def _pid(p: Patient, facility: str, coverage: Coverage | None = None) -> str:
    e = escape
    insured = f"~{coverage.psn_no}^^^NHSA^SN" if coverage else ""
    return (
        f"PID|1||{p.mrn}^^^{facility}^MR~{p.id_card}^^^CHN^NNCHN~{p.insurance_card}^^^NHSA^HC"
        f"{insured}||"
        f"{e(p.family)}^{e(p.given)}^^^^^L||{p.birth:%Y%m%d}|{p.sex}|||"
        f"{e(p.street)}^^{e(p.city)}^{e(p.province)}^{p.postcode}^CHN^H||"
        f"^PRN^PH^^^^^^^^^{p.phone}"
    )


def _pv1(v: Visit, facility: str, *, discharged: str = "", total: Decimal | None = None,
         paid: Decimal | None = None) -> str:
    doc = f"{v.doctor[0]}^{v.doctor[1]}^{v.doctor[2]}"
    fields = [""] * 51
    fields[1] = "1"
    fields[2] = v.kind
    fields[3] = f"{v.dept_code}^{v.bed or '01'}^01^{facility}"
    fields[7] = doc
    fields[10] = v.dept_code
    fields[17] = doc
    fields[19] = v.number
    fields[44] = f"{v.started:%Y%m%d%H%M%S}"
    fields[45] = discharged
    fields[47] = f"{total}" if total is not None else ""
    fields[49] = f"{paid}" if paid is not None else ""
    fields[50] = f"{escape(v.coverage.mdtrt_id)}^^^NHSA" if v.coverage else ""
    return "PV1" + "|".join(fields).rstrip("|")


def _in1(c: Coverage) -> str:
    """The insurance segment of an insured visit (see the module docstring)."""
    e = escape
    plan = c.insutype_name or INSUTYPE_NAMES.get(c.insutype, "")
    return (f"IN1|1|{e(c.insutype)}^{e(plan)}|{e(c.insuplc_admdvs)}|"
            f"{e(AREA_NAMES.get(c.insuplc_admdvs, ''))}")


def adt(trigger: str, p: Patient, v: Visit, *, facility: str = "SYFYY",
        cid: str | None = None) -> str:
    """ADT^A01 (admit), A04 (register), A08 (update) or A03 (discharge)."""
    cid = cid or control_id()
    now = time.strftime("%Y%m%d%H%M%S")
    segs = [_msh("ADT", trigger, "ADT_A01" if trigger != "A03" else "ADT_A03", cid, facility),
            f"EVN|{trigger}|{now}", _pid(p, facility, v.coverage),
            _pv1(v, facility, discharged=now if trigger == "A03" else "")]
    if v.coverage is not None:
        segs.append(_in1(v.coverage))
    return "\r".join(segs) + "\r"


def dft(p: Patient, v: Visit, charges: list[Charge], *, facility: str = "SYFYY",
        cid: str | None = None, payment: Payment | None = None, batch: str = "") -> str:
    """DFT^P03: one FT1 CG line per charge; with ``payment``, a PY line and PV1-49 say the
    batch was paid in full (what ``mappings/einvoice_dft_paid.toml`` invoices). An insured
    visit's batch carries its coverage (PV1-50, PID-3 ``SN``, IN1) for the fee upload."""
    cid = cid or control_id()
    now = time.strftime("%Y%m%d%H%M%S")
    total = sum((c.amount for c in charges), Decimal("0.00"))
    segs = [_msh("DFT", "P03", "DFT_P03", cid, facility), f"EVN|P03|{now}",
            _pid(p, facility, v.coverage),
            _pv1(v, facility, total=total, paid=payment.amount if payment else None)]
    doc = f"{v.doctor[0]}^{v.doctor[1]}^{v.doctor[2]}"
    for n, c in enumerate(charges, start=1):
        segs.append(
            f"FT1|{n}|{c.transaction_id}|{batch}|{now}|{now}|CG|"
            f"{c.code}^{escape(c.name)}^LOCAL^{c.insurance_code}^{escape(c.name)}^NHSA|||"
            f"{c.quantity}|{c.amount}^CNY|{c.unit_price}^CNY|{v.dept_code}^{escape(v.dept_name)}"
            f"||||||||{doc}"
        )
    if payment is not None:
        cashier = f"{payment.cashier[0]}^{escape(payment.cashier[1])}"
        segs.append(
            f"FT1|{len(charges) + 1}|{payment.transaction_id}|{batch}|{now}|{now}|PY|"
            f"{payment.channel}^{escape(payment.channel_name)}|||1|{payment.amount}^CNY|"
            f"{payment.amount}^CNY||||||||||||{cashier}"
        )
    if v.coverage is not None:
        segs.append(_in1(v.coverage))
    return "\r".join(segs) + "\r"


def batch_frame(messages: list[bytes], *, facility: str = "SYFYY",
                batch_id: str | None = None) -> bytes:
    """Messages as one HL7 batch: BHS (sender, time, control id), the messages, BTS (count)."""
    header = "|".join(["BHS", "^~\\&", "HIS", facility, "HISBRIDGE", "",
                       time.strftime("%Y%m%d%H%M%S"), "", "", "", batch_id or control_id("B")])
    body = b"".join(m.rstrip(b"\r") + b"\r" for m in messages)
    return header.encode() + b"\r" + body + f"BTS|{len(messages)}\r".encode()
