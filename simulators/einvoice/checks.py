"""Strict validation of the simulated platform's requests, with the platform's messages.

Written apart from the adapter's models on purpose: the simulator is a second, independent
reading of the protocol, so an adapter bug is caught here instead of being mirrored.
Every failure names the field path (``payChannelDetail[1].payChannelValue``) and never
echoes its value (it may be patient data).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

FIELD_INVALID = "E1001"
AMOUNTS_INCONSISTENT = "E1002"


class Refused(Exception):
    """A request the platform refuses: ``code`` is the answer's result, the text its message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _fail(message: str, code: str = FIELD_INVALID) -> Refused:
    return Refused(code, message)


def text(obj: dict[str, Any], key: str, path: str = "", *, max_len: int = 100,
         required: bool = True) -> str | None:
    value = obj.get(key)
    where = f"{path}{key}"
    if value is None or value == "":
        if required:
            raise _fail(f"{where} is required")
        return None
    if not isinstance(value, str):
        raise _fail(f"{where} must be a string")
    if len(value) > max_len:
        raise _fail(f"{where} is longer than {max_len} characters")
    return value


def amount(obj: dict[str, Any], key: str, path: str = "", *, required: bool = True,
           places: int = 2) -> Decimal:
    value = obj.get(key)
    where = f"{path}{key}"
    if value is None:
        if required:
            raise _fail(f"{where} is required")
        return Decimal(0)
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        raise _fail(f"{where} must be a number")
    number = Decimal(value)
    if not number.is_finite() or number < 0:
        raise _fail(f"{where} must not be negative")
    exponent = number.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -places:
        raise _fail(f"{where} has more than {places} decimal places")
    return number


def timestamp(obj: dict[str, Any], key: str) -> str:
    value = text(obj, key, max_len=17)
    assert value is not None
    if len(value) != 17 or not value.isdigit():
        raise _fail(f"{key} must be yyyyMMddHHmmssSSS")
    try:
        datetime.strptime(value[:14], "%Y%m%d%H%M%S")
    except ValueError:
        raise _fail(f"{key} is not a valid date and time") from None
    return value


def date(obj: dict[str, Any], key: str, path: str) -> str:
    value = text(obj, key, path, max_len=8)
    assert value is not None
    try:
        if len(value) != 8:
            raise ValueError
        datetime.strptime(value, "%Y%m%d")
    except ValueError:
        raise _fail(f"{path}{key} must be a date yyyyMMdd") from None
    return value


def objects(obj: dict[str, Any], key: str, *, required: bool = True) -> list[dict[str, Any]]:
    value = obj.get(key)
    if value is None or value == []:
        if required:
            raise _fail(f"{key} must list at least one entry")
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise _fail(f"{key} must be a list of objects")
    return value


def _total(items: Iterable[Decimal]) -> Decimal:
    return sum(items, Decimal(0))


@dataclass(frozen=True, slots=True)
class IssueFacts:
    bus_no: str
    bus_date_time: str
    total_amt: Decimal


def check_issue(kind: str, data: dict[str, Any]) -> IssueFacts:
    """Validate an issue request of ``kind`` (outpatient, inpatient, registration)."""
    bus_no = text(data, "busNo", max_len=60)
    assert bus_no is not None
    for key in ("busType", "payer", "placeCode", "payee", "author"):
        text(data, key)
    when = timestamp(data, "busDateTime")
    total = amount(data, "totalAmt")

    channels = objects(data, "payChannelDetail")
    paid = []
    for i, channel in enumerate(channels):
        path = f"payChannelDetail[{i}]."
        text(channel, "payChannelCode", path, max_len=20)
        paid.append(amount(channel, "payChannelValue", path))
    if _total(paid) != total:
        raise _fail(
            f"payChannelDetail payChannelValue total {_total(paid)} does not equal totalAmt "
            f"{total}", AMOUNTS_INCONSISTENT)

    charges = objects(data, "chargeDetail")
    charged = []
    for i, charge in enumerate(charges):
        path = f"chargeDetail[{i}]."
        text(charge, "chargeCode", path, max_len=50)
        text(charge, "chargeName", path)
        charged.append(amount(charge, "amt", path))
        amount(charge, "selfAmt", path, required=False)
    if _total(charged) != total:
        raise _fail(
            f"chargeDetail amt total {_total(charged)} does not equal totalAmt {total}",
            AMOUNTS_INCONSISTENT)

    listed = []
    for i, item in enumerate(objects(data, "listDetail", required=False)):
        path = f"listDetail[{i}]."
        for key in ("chargeCode", "code", "name"):
            text(item, key, path, max_len=200)
        amount(item, "std", path, places=6)
        amount(item, "number", path, places=4)
        listed.append(amount(item, "amt", path))
    if listed and _total(listed) != total:
        raise _fail(f"listDetail amt total {_total(listed)} does not equal totalAmt {total}",
                    AMOUNTS_INCONSISTENT)

    money = data.get("money")
    if not isinstance(money, dict):
        raise _fail("money is required (an object)")
    parts = [amount(money, k, "money.", required=False)
             for k in ("fundPay", "otherfundPay", "accountPay", "cashPay")]
    for key in ("ownPay", "selfConceitedAmt", "selfPayAmt"):
        amount(money, key, "money.", required=False)
    if _total(parts) != total:
        raise _fail(
            f"money fundPay+otherfundPay+accountPay+cashPay {_total(parts)} does not equal "
            f"totalAmt {total}", AMOUNTS_INCONSISTENT)

    visit = data.get("visit")
    if visit is not None and not isinstance(visit, dict):
        raise _fail("visit must be an object")
    if kind == "inpatient":
        if not isinstance(visit, dict):
            raise _fail("visit is required for an inpatient invoice")
        date(visit, "inHospitalDate", "visit.")
        date(visit, "outHospitalDate", "visit.")
    contact = data.get("contact")
    if contact is not None and not isinstance(contact, dict):
        raise _fail("contact must be an object")
    return IssueFacts(bus_no, when, total)


def check_bill_ref(data: dict[str, Any]) -> tuple[str, str]:
    batch = text(data, "billBatchCode", max_len=50)
    number = text(data, "billNo", max_len=50)
    assert batch is not None
    assert number is not None
    return batch, number


def check_write_off(data: dict[str, Any]) -> tuple[str, str, str]:
    batch, number = check_bill_ref(data)
    reason = text(data, "reason", max_len=200)
    text(data, "operator")
    timestamp(data, "busDateTime")
    text(data, "placeCode", max_len=50)
    assert reason is not None
    return batch, number, reason
