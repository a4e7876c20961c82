"""Typed requests and the money checks: pure logic, no sockets."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from adapters.einvoice import (
    AmountsInconsistent,
    BillState,
    InvalidRequest,
    IssueRequest,
    WriteOffRequest,
)
from adapters.einvoice.models import parse_model

MakeIssue = Callable[..., dict[str, Any]]


def test_a_valid_request_adds_up_and_goes_out_with_two_places(make_issue: MakeIssue) -> None:
    request = parse_model(IssueRequest, make_issue(), what="issue")
    assert request.amount_problems() == []
    wire = request.wire()
    assert wire["totalAmt"] == Decimal("199.70")
    assert [p["payChannelValue"] for p in wire["payChannelDetail"]] == [
        Decimal("120.00"), Decimal("30.00"), Decimal("49.70")]
    assert str(wire["listDetail"][2]["amt"]) == "7.20"
    assert "busNo" in wire
    assert "bus_no" not in wire
    assert wire["visit"]["consultationDate"] == "20260315"


def test_pay_channels_that_do_not_sum_to_total_are_named(make_issue: MakeIssue) -> None:
    body = make_issue()
    body["payChannelDetail"][2]["payChannelValue"] = "49.60"
    request = parse_model(IssueRequest, body, what="issue")
    with pytest.raises(AmountsInconsistent) as caught:
        request.check_amounts()
    assert caught.value.problems == [
        "payChannelDetail[].payChannelValue sums to 199.60 but totalAmt is 199.70 "
        "(difference 0.10)"
    ]
    assert "SETL20260315000123" in str(caught.value)


def test_every_inconsistency_is_reported_at_once(make_issue: MakeIssue) -> None:
    body = make_issue(totalAmt="200.00")
    body["money"]["ownPay"] = "80.00"
    body["chargeDetail"][1]["selfAmt"] = "20.00"
    body["listDetail"][2]["amt"] = "7.50"
    problems = parse_model(IssueRequest, body, what="issue").amount_problems()
    assert problems == [
        "payChannelDetail[].payChannelValue sums to 199.70 but totalAmt is 200.00 "
        "(difference 0.30)",
        "money.fundPay + money.otherfundPay + money.accountPay + money.cashPay = 199.70 "
        "but totalAmt is 200.00",
        "money.ownPay (80.00) exceeds the personal share money.accountPay + money.cashPay "
        "(79.70)",
        "chargeDetail[].amt sums to 199.70 but totalAmt is 200.00",
        "chargeDetail[1].selfAmt (20.00) exceeds chargeDetail[1].amt (19.70)",
        # 180.00 + 12.50 + 7.50 = 200.00: the list total is right, the line is not.
        "listDetail[2].amt (7.50) differs from listDetail[2].std × listDetail[2].number "
        "(7.20)",
    ]


def test_list_lines_may_differ_by_one_cent_of_rounding(make_issue: MakeIssue) -> None:
    body = make_issue(totalAmt="199.71")
    body["money"]["cashPay"] = "49.71"
    body["payChannelDetail"][2]["payChannelValue"] = "49.71"
    body["chargeDetail"][1]["amt"] = "19.71"
    body["listDetail"][2]["amt"] = "7.21"
    assert parse_model(IssueRequest, body, what="issue").amount_problems() == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"totalAmt": "199.701"}, "totalAmt: Decimal input should have no more than 2 decimal"),
        ({"totalAmt": "-1"}, "totalAmt: Input should be greater than or equal to 0"),
        ({"busDateTime": "2026-03-15"}, "busDateTime: Value error, must be yyyyMMddHHmmssSSS"),
        ({"busDateTime": "20261315091544000"}, "busDateTime: Value error, '20261315091544000'"),
        ({"busNo": "A B"}, "busNo: String should match pattern"),
        ({"totalAmount": "1"}, "totalAmount: Extra inputs are not permitted"),
        ({"payChannelDetail": []}, "payChannelDetail: List should have at least 1 item"),
        ({"payer": ""}, "payer: String should have at least 1 character"),
    ],
)
def test_malformed_requests_name_the_field(
    make_issue: MakeIssue, change: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidRequest, match="invalid issue") as caught:
        parse_model(IssueRequest, make_issue(**change), what="issue")
    assert message in str(caught.value)


def test_invalid_request_does_not_echo_patient_values(make_issue: MakeIssue) -> None:
    body = make_issue()
    body["contact"] = "370202198503150021"
    with pytest.raises(InvalidRequest) as caught:
        parse_model(IssueRequest, body, what="issue")
    assert "370202198503150021" not in str(caught.value)
    assert "contact" in str(caught.value)


def test_missing_nested_amount_names_its_path(make_issue: MakeIssue) -> None:
    body = make_issue()
    del body["chargeDetail"][1]["amt"]
    with pytest.raises(InvalidRequest, match=r"chargeDetail\.1\.amt: Field required"):
        parse_model(IssueRequest, body, what="issue")


def test_write_off_names_an_invoice_or_a_business_number() -> None:
    base = {"reason": "退费", "operator": "op", "busDateTime": "20260315101500000",
            "placeCode": "MZ01"}
    by_bus = parse_model(WriteOffRequest, {**base, "busNo": "S1"}, what="write-off")
    assert "busNo" not in by_bus.wire()
    full = parse_model(WriteOffRequest, {**base, "billBatchCode": "37020126", "billNo": "1"},
                       what="write-off")
    assert full.wire()["billBatchCode"] == "37020126"
    with pytest.raises(InvalidRequest, match="give billBatchCode and billNo, or busNo"):
        parse_model(WriteOffRequest, {**base, "billNo": "1"}, what="write-off")


def test_bill_state_reads_numeric_or_text_codes_and_its_red_note() -> None:
    normal = BillState.model_validate({"state": 1, "isScarlet": 0})
    assert (normal.state, normal.written_off, normal.red_note()) == ("1", False, None)
    voided = BillState.model_validate({"state": "2", "isScarlet": "1",
                                       "eScarletBillBatchCode": "37020926",
                                       "eScarletBillNo": "0000000007"})
    assert voided.written_off
    note = voided.red_note()
    assert note is not None
    assert (note.e_scarlet_bill_batch_code, note.e_scarlet_bill_no) == ("37020926",
                                                                         "0000000007")
