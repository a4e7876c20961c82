"""Typed requests and answers of the e-invoice platform, with the money checks.

Attribute names are snake_case; on the wire they are the platform's camelCase (generated,
with explicit aliases where the platform's spelling is irregular: ``billQRCode``,
``otherfundPay``, ``medicalInsuranceID``). Amounts are ``Decimal`` with at most 2 places;
prices 6 and quantities 4, as the platform's numeric columns.

Requests forbid unknown keys (a misspelt ``totalAmount`` is an error, not a silently dropped
field), except the free-form ``contact`` and ``visit`` sections whose fields vary by region.
Answers allow unknown keys: a platform adding a field must not break us.

``IssueRequest.amount_problems`` is the check that runs before anything is sent: the invoice
must add up, or the platform would refuse it (or worse, print it).
"""

from __future__ import annotations

from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated, Any, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from engine.errors import PermanentError

CENT = Decimal("0.01")
ZERO = Decimal("0")



def _cents(value: Decimal) -> Decimal:
    return value.quantize(CENT)


Amount = Annotated[
    Decimal,
    Field(ge=0, max_digits=16, decimal_places=2),
    PlainSerializer(_cents, return_type=Decimal),
]
"""Yuan with at most 2 decimal places, never negative (a refund is a write-off, not < 0).
Sent with exactly two places (``100.00``), as the platform prints them."""
Price = Annotated[Decimal, Field(ge=0, max_digits=20, decimal_places=6)]
Quantity = Annotated[Decimal, Field(ge=0, max_digits=20, decimal_places=4)]
Text = Annotated[str, Field(min_length=1, max_length=100)]


def _code_text(value: Any) -> Any:
    # Platforms answer some codes as numbers (state 1) and some as strings ("1").
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


CodeText = Annotated[str, BeforeValidator(_code_text)]


def _check_timestamp(value: str) -> str:
    """``yyyyMMddHHmmssSSS``: 17 digits that make a real date and time."""
    if len(value) != 17 or not value.isdigit():
        raise ValueError("must be yyyyMMddHHmmssSSS (17 digits)")
    try:
        datetime.strptime(value[:14], "%Y%m%d%H%M%S")
    except ValueError:
        raise ValueError(f"{value!r} is not a valid date and time") from None
    return value


def _check_date(value: str) -> str:
    if len(value) != 8 or not value.isdigit():
        raise ValueError("must be yyyyMMdd (8 digits)")
    try:
        datetime.strptime(value, "%Y%m%d")
    except ValueError:
        raise ValueError(f"{value!r} is not a valid date") from None
    return value


class WireModel(BaseModel):
    """camelCase on the wire, snake_case in Python, frozen, unknown keys refused."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )

    def wire(self) -> dict[str, Any]:
        """The platform's JSON object (amounts stay Decimal; unset optional fields omitted)."""
        return self.model_dump(by_alias=True, exclude_none=True)


class AnswerModel(WireModel):
    """An answer from the platform: unknown keys are kept, not refused."""

    model_config = ConfigDict(extra="allow")


# -- issue -----------------------------------------------------------------------------------


class Contact(WireModel):
    """How the patient is told about the invoice (SMS, e-mail). Patient data: never logged."""

    model_config = ConfigDict(extra="allow")

    payer_type: str | None = None
    id_card_no: str | None = None
    card_type: str | None = None
    card_no: str | None = None
    tel: str | None = None
    email: str | None = None


class Visit(WireModel):
    """The visit the invoice is for. Fields vary by region, so unknown keys pass through."""

    model_config = ConfigDict(extra="allow")

    medical_institution: str | None = None
    med_care_institution: str | None = None
    med_care_type_code: str | None = None
    medical_care_type: str | None = None
    medical_insurance_id: str | None = Field(default=None, alias="medicalInsuranceID")
    category: str | None = None
    category_code: str | None = None
    patient_category: str | None = None
    patient_id: str | None = None
    patient_no: str | None = None
    sex: str | None = None
    age: str | None = None
    visit_no: str | None = None
    consultation_date: str | None = None
    hospital_no: str | None = None
    hospital_area: str | None = None
    bed_no: str | None = None
    case_number: str | None = None
    in_hospital_date: str | None = None
    out_hospital_date: str | None = None
    hospital_days: int | None = Field(default=None, ge=0)
    leave_category: str | None = None
    leave_category_code: str | None = None

    @field_validator("consultation_date", "in_hospital_date", "out_hospital_date")
    @classmethod
    def _dates(cls, value: str | None) -> str | None:
        return None if value is None else _check_date(value)


class Money(WireModel):
    """Who paid what. ``fundPay + otherfundPay + accountPay + cashPay`` must equal ``totalAmt``.

    Attributes:
        fund_pay: paid by the insurance pooled fund (``setlinfo.fund_pay_sumamt``).
        other_fund_pay: paid by other insurance funds (serious illness, supplementary).
        account_pay: paid from the personal insurance account (``setlinfo.acct_pay``).
        cash_pay: paid by the patient now, in cash, card or mobile (``setlinfo.psn_cash_pay``).
        own_pay: items at the patient's full cost (``fulamt_ownpay_amt``): part of the
            personal share, not added again.
        self_conceited_amt: the patient's own burden above limits (``overlmt_selfpay``).
        self_pay_amt: the patient's co-payment before the fund (``preselfpay_amt``).
    """

    fund_pay: Amount = ZERO
    other_fund_pay: Amount = Field(default=ZERO, alias="otherfundPay")
    account_pay: Amount = ZERO
    cash_pay: Amount = ZERO
    own_pay: Amount = ZERO
    self_conceited_amt: Amount = ZERO
    self_pay_amt: Amount = ZERO


class PayChannel(WireModel):
    """One way the invoice was paid (cash, WeChat, insurance fund ...); codes are regional."""

    pay_channel_code: Annotated[str, Field(min_length=1, max_length=20)]
    pay_channel_value: Amount


class ChargeItem(WireModel):
    """One line printed on the invoice: a charge category (西药费, 检查费 ...)."""

    sort_no: int | None = Field(default=None, ge=0)
    charge_code: Annotated[str, Field(min_length=1, max_length=50)]
    charge_name: Text
    unit: str | None = None
    std: Price | None = None
    number: Quantity | None = None
    amt: Amount
    self_amt: Amount = ZERO
    remark: str | None = Field(default=None, max_length=200)


class ListItem(WireModel):
    """One itemised line of the attached list (清单): a drug or a service."""

    list_detail_no: str | None = None
    charge_code: Annotated[str, Field(min_length=1, max_length=50)]
    charge_name: Text
    code: Annotated[str, Field(min_length=1, max_length=60)]
    name: Annotated[str, Field(min_length=1, max_length=200)]
    specification: str | None = None
    unit: str | None = None
    std: Price
    number: Quantity
    amt: Amount
    self_amt: Amount = ZERO
    medical_code_type: str | None = None
    medical_code: str | None = None
    sort_no: int | None = Field(default=None, ge=0)
    remark: str | None = Field(default=None, max_length=200)


class IssueRequest(WireModel):
    """The body of ``invoiceEBillOutpatient`` / ``invEBillHospitalized`` /
    ``invEBillRegistration``. ``busNo`` is the business key: one invoice per settlement."""

    bus_no: Annotated[str, Field(min_length=1, max_length=60, pattern=r"^[A-Za-z0-9_.\-]+$")]
    bus_type: Annotated[str, Field(min_length=1, max_length=20)]
    payer: Text
    bus_date_time: str
    place_code: Annotated[str, Field(min_length=1, max_length=50)]
    payee: Text
    author: Text
    checker: str | None = None
    total_amt: Amount
    remark: str | None = Field(default=None, max_length=200)
    contact: Contact | None = None
    visit: Visit | None = None
    money: Money
    pay_channel_detail: list[PayChannel] = Field(min_length=1)
    charge_detail: list[ChargeItem] = Field(min_length=1)
    list_detail: list[ListItem] = []
    e_bill_relate_no: str | None = None
    is_arrears: str | None = None
    arrears_reason: str | None = None

    @field_validator("bus_date_time")
    @classmethod
    def _timestamp(cls, value: str) -> str:
        return _check_timestamp(value)

    def amount_problems(self) -> list[str]:
        """Every way the amounts fail to add up, each naming the fields involved."""
        total = self.total_amt
        problems: list[str] = []
        paid = sum((p.pay_channel_value for p in self.pay_channel_detail), ZERO)
        if paid != total:
            problems.append(
                f"payChannelDetail[].payChannelValue sums to {paid:.2f} but totalAmt is "
                f"{total:.2f} (difference {total - paid:.2f})"
            )
        m = self.money
        parts = m.fund_pay + m.other_fund_pay + m.account_pay + m.cash_pay
        if parts != total:
            problems.append(
                "money.fundPay + money.otherfundPay + money.accountPay + money.cashPay = "
                f"{parts:.2f} but totalAmt is {total:.2f}"
            )
        personal = m.account_pay + m.cash_pay
        for name, value in (
            ("ownPay", m.own_pay),
            ("selfConceitedAmt", m.self_conceited_amt),
            ("selfPayAmt", m.self_pay_amt),
        ):
            if value > personal:
                problems.append(
                    f"money.{name} ({value:.2f}) exceeds the personal share "
                    f"money.accountPay + money.cashPay ({personal:.2f})"
                )
        charged = sum((c.amt for c in self.charge_detail), ZERO)
        if charged != total:
            problems.append(
                f"chargeDetail[].amt sums to {charged:.2f} but totalAmt is {total:.2f}"
            )
        for i, c in enumerate(self.charge_detail):
            if c.self_amt > c.amt:
                problems.append(
                    f"chargeDetail[{i}].selfAmt ({c.self_amt:.2f}) exceeds "
                    f"chargeDetail[{i}].amt ({c.amt:.2f})"
                )
        if self.list_detail:
            listed = sum((item.amt for item in self.list_detail), ZERO)
            if listed != total:
                problems.append(
                    f"listDetail[].amt sums to {listed:.2f} but totalAmt is {total:.2f}"
                )
            for i, item in enumerate(self.list_detail):
                expected = (item.std * item.number).quantize(CENT, rounding=ROUND_HALF_UP)
                # One cent of slack: HIS systems round per line and per unit differently.
                if abs(expected - item.amt) > CENT:
                    problems.append(
                        f"listDetail[{i}].amt ({item.amt:.2f}) differs from "
                        f"listDetail[{i}].std × listDetail[{i}].number ({expected:.2f})"
                    )
        return problems

    def check_amounts(self) -> None:
        """Raise ``AmountsInconsistent`` unless the invoice adds up."""
        problems = self.amount_problems()
        if problems:
            raise AmountsInconsistent(self.bus_no, problems)


class IssueResult(AnswerModel):
    """An issued invoice: its batch code and number, check code and links."""

    bill_batch_code: Annotated[str, Field(min_length=1)]
    bill_no: Annotated[str, Field(min_length=1)]
    random: str = ""
    create_time: str = ""
    bill_qr_code: str | None = Field(default=None, alias="billQRCode")
    picture_url: str | None = None
    picture_net_url: str | None = None


class BusNoQuery(WireModel):
    """``getEBillByBusNo``: find the invoice issued for a business number, if any."""

    bus_no: Annotated[str, Field(min_length=1, max_length=60)]
    bus_date_time: str | None = None


# -- write-off, state, picture ---------------------------------------------------------------


class BillRef(WireModel):
    """Names an invoice by its batch code and number, or by the business number it was
    issued for (``busNo`` is ours: the adapter looks the invoice up and never sends it)."""

    bill_batch_code: str | None = Field(default=None, min_length=1)
    bill_no: str | None = Field(default=None, min_length=1)
    bus_no: str | None = Field(default=None, min_length=1, max_length=60)

    @model_validator(mode="after")
    def _named(self) -> BillRef:
        if not (self.bill_batch_code and self.bill_no) and not self.bus_no:
            raise ValueError("give billBatchCode and billNo, or busNo")
        return self

    def wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, exclude={"bus_no"})


class WriteOffRequest(BillRef):
    """``writeOffEBill`` (红冲): void an invoice with a red-letter note."""

    reason: Annotated[str, Field(min_length=1, max_length=200)]
    operator: Text
    bus_date_time: str
    place_code: Annotated[str, Field(min_length=1, max_length=50)]

    @field_validator("bus_date_time")
    @classmethod
    def _timestamp(cls, value: str) -> str:
        return _check_timestamp(value)


class StateQuery(BillRef):
    """``getEBillStatesByBillInfo``."""


class PictureRequest(BillRef):
    """Ask for a link to the invoice's printable file (see docs/einvoice.md: our model)."""

    random: str | None = None
    file_type: str = "PDF"


class RedNote(AnswerModel):
    """The red-letter note that voids an invoice."""

    e_scarlet_bill_batch_code: Annotated[str, Field(min_length=1)]
    e_scarlet_bill_no: Annotated[str, Field(min_length=1)]
    e_scarlet_random: str = ""
    create_time: str = ""
    bill_qr_code: str | None = Field(default=None, alias="billQRCode")
    picture_url: str | None = None
    picture_net_url: str | None = None


class BillState(AnswerModel):
    """``state`` 1 normal, 2 voided; ``isScarlet`` 1 once a red note exists.

    Platforms that keep it also report the red note here (``eScarletBillBatchCode`` ...);
    that is how a repeated write-off reports the existing note without writing another.
    """

    state: CodeText
    is_scarlet: CodeText = "0"
    e_scarlet_bill_batch_code: str | None = None
    e_scarlet_bill_no: str | None = None
    e_scarlet_random: str | None = None
    scarlet_create_time: str | None = None

    @property
    def written_off(self) -> bool:
        return self.state == "2" or self.is_scarlet == "1"

    def red_note(self) -> RedNote | None:
        if not (self.e_scarlet_bill_batch_code and self.e_scarlet_bill_no):
            return None
        return RedNote(
            e_scarlet_bill_batch_code=self.e_scarlet_bill_batch_code,
            e_scarlet_bill_no=self.e_scarlet_bill_no,
            e_scarlet_random=self.e_scarlet_random or "",
            create_time=self.scarlet_create_time or "",
        )


class PictureLink(AnswerModel):
    """Where the invoice's file can be fetched."""

    bill_batch_code: str = ""
    bill_no: str = ""
    file_type: str = "PDF"
    file_url: Annotated[str, Field(min_length=1)]


# -- errors and parsing ----------------------------------------------------------------------


class AmountsInconsistent(PermanentError):
    """The invoice does not add up; refused before anything is sent to the platform."""

    def __init__(self, bus_no: str, problems: list[str]) -> None:
        self.bus_no = bus_no
        self.problems = problems
        super().__init__(f"e-invoice {bus_no}: amounts do not add up: " + "; ".join(problems))


class InvalidRequest(PermanentError):
    """The request does not fit the platform's model (missing or malformed fields)."""


M = TypeVar("M", bound=BaseModel)


def parse_model(model: type[M], data: Any, *, what: str) -> M:
    """Validate ``data`` as ``model``; a failure names every bad field by its wire path.

    Raises:
        InvalidRequest: one line per problem, e.g. ``payChannelDetail.0.payChannelValue:
            Decimal input should have no more than 2 decimal places``. Input values are not
            echoed (they may be patient data).
    """
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False, include_input=False):
            path = ".".join(str(p) for p in err["loc"]) or "(body)"
            lines.append(f"{path}: {err['msg']}")
        raise InvalidRequest(f"invalid {what}: " + "; ".join(lines)) from None
