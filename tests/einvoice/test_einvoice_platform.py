"""The client against the simulated platform over real HTTP: the invoice lifecycle,
numbering, idempotent write-off, refusals before sending, and the platform's own checks."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from adapters.einvoice import (
    AmountsInconsistent,
    EinvoiceClient,
    IssueRequest,
    PictureRequest,
    StateQuery,
    WriteOffRequest,
)
from adapters.einvoice.config import EinvoicePlatformSettings
from adapters.einvoice.envelope import seal
from engine.errors import InDoubtError, PermanentError, TransientError
from simulators.einvoice import EinvoiceSimulator

MakeIssue = Callable[..., dict[str, Any]]
WRITE_OFF = {"reason": "患者退费", "operator": "收费员01", "busDateTime": "20260315103000000",
             "placeCode": "MZ01"}


def _write_off(**ref: str) -> WriteOffRequest:
    return WriteOffRequest.model_validate({**WRITE_OFF, **ref})


async def test_issue_query_write_off_query(
    client: EinvoiceClient, make_issue: MakeIssue, control: Any
) -> None:
    issued = await client.issue("outpatient", IssueRequest.model_validate(make_issue("S-1")))
    invoice = issued.invoice
    assert not issued.existing
    assert invoice.bill_batch_code.startswith("370201")
    assert len(invoice.bill_batch_code) == 8
    assert invoice.bill_no == "0000000001"
    assert len(invoice.random) == 6
    assert invoice.create_time[:2] == "20"
    assert invoice.bill_qr_code
    assert invoice.picture_url

    before = await client.state(StateQuery(bill_batch_code=invoice.bill_batch_code,
                                           bill_no=invoice.bill_no))
    assert (before.value.state, before.value.is_scarlet, before.value.written_off) == (
        "1", "0", False)

    done = await client.write_off(_write_off(billBatchCode=invoice.bill_batch_code,
                                             billNo=invoice.bill_no))
    assert not done.already
    assert done.red_note is not None
    assert done.red_note.e_scarlet_bill_batch_code.startswith("370209")
    assert done.red_note.e_scarlet_bill_no == "0000000001"

    after = await client.state(StateQuery(bus_no="S-1"))
    assert (after.value.state, after.value.is_scarlet) == ("2", "1")
    assert after.value.red_note() is not None
    assert after.value.red_note().e_scarlet_bill_no == "0000000001"  # type: ignore[union-attr]

    bills = await control.bills("S-1")
    assert bills["count"] == 1
    assert bills["bills"][0]["totalAmt"] == "199.70"
    assert bills["bills"][0]["state"] == 2


async def test_numbers_run_in_sequence_per_kind(
    client: EinvoiceClient, make_issue: MakeIssue
) -> None:
    numbers = []
    for i in range(3):
        issued = await client.issue("outpatient", IssueRequest.model_validate(
            make_issue(f"S-{i}")))
        numbers.append((issued.invoice.bill_batch_code[4:6], issued.invoice.bill_no))
    registration = await client.issue("registration", IssueRequest.model_validate(
        make_issue("R-1")))
    inpatient_body = make_issue("I-1")
    inpatient_body["visit"] = {"inHospitalDate": "20260310", "outHospitalDate": "20260315"}
    inpatient = await client.issue("inpatient", IssueRequest.model_validate(inpatient_body))
    assert numbers == [("01", "0000000001"), ("01", "0000000002"), ("01", "0000000003")]
    assert registration.invoice.bill_batch_code[4:6] == "03"
    assert registration.invoice.bill_no == "0000000001"
    assert inpatient.invoice.bill_batch_code[4:6] == "02"


async def test_picture_link_serves_the_invoice_pdf(
    client: EinvoiceClient, make_issue: MakeIssue, http: aiohttp.ClientSession
) -> None:
    issued = await client.issue("outpatient", IssueRequest.model_validate(make_issue("P-1")))
    link = await client.picture(PictureRequest(bus_no="P-1"))
    assert link.value.file_type == "PDF"
    assert link.value.bill_no == issued.invoice.bill_no
    async with http.get(link.value.file_url) as resp:
        assert resp.status == 200
        assert resp.content_type == "application/pdf"
        pdf = await resp.read()
    assert pdf.startswith(b"%PDF-1.4")
    assert pdf.rstrip().endswith(b"%%EOF")
    assert f"Number: {issued.invoice.bill_no}".encode() in pdf
    assert b"Amount: 199.70 CNY" in pdf
    wrong = PictureRequest(bill_batch_code=issued.invoice.bill_batch_code,
                           bill_no=issued.invoice.bill_no, random="000000")
    with pytest.raises(PermanentError, match="E1001 random does not match"):
        await client.picture(wrong)


async def test_write_off_twice_is_a_no_op_returning_the_same_red_note(
    make_settings: Callable[..., EinvoicePlatformSettings], make_issue: MakeIssue,
    control: Any,
) -> None:
    for precheck in (True, False):
        client = EinvoiceClient(make_settings(check_state_before_write_off=precheck))
        await client.start()
        try:
            bus_no = f"W-{precheck}"
            await client.issue("outpatient", IssueRequest.model_validate(make_issue(bus_no)))
            first = await client.write_off(_write_off(busNo=bus_no))
            calls_before = (await control.stats())["requests"]["writeOffEBill"]
            second = await client.write_off(_write_off(busNo=bus_no))
            calls_after = (await control.stats())["requests"]["writeOffEBill"]
        finally:
            await client.close()
        assert first.red_note is not None
        assert second.red_note is not None
        assert (first.already, second.already) == (False, True)
        assert (second.red_note.e_scarlet_bill_batch_code, second.red_note.e_scarlet_bill_no,
                second.red_note.e_scarlet_random) == (
            first.red_note.e_scarlet_bill_batch_code, first.red_note.e_scarlet_bill_no,
            first.red_note.e_scarlet_random)
        # With the state check the platform's write-off is not called again; without it,
        # the platform's "already written off" answer (E2003) is turned into the no-op.
        assert calls_after - calls_before == (0 if precheck else 1)
    assert (await control.stats())["written_off"] == 2


async def test_amounts_that_do_not_add_up_are_refused_before_sending(
    client: EinvoiceClient, make_issue: MakeIssue, control: Any
) -> None:
    body = make_issue("BAD-1")
    body["payChannelDetail"][0]["payChannelValue"] = "100.00"
    with pytest.raises(AmountsInconsistent) as caught:
        await client.issue("outpatient", IssueRequest.model_validate(body))
    assert "payChannelDetail[].payChannelValue sums to 179.70 but totalAmt is 199.70" in str(
        caught.value)
    assert isinstance(caught.value, PermanentError)
    stats = await control.stats()
    assert stats["requests"] == {}
    assert stats["bills"] == 0


async def test_unknown_invoice_and_unknown_business_number(client: EinvoiceClient) -> None:
    with pytest.raises(PermanentError, match="E2002"):
        await client.state(StateQuery(bill_batch_code="37020126", bill_no="0000009999"))
    assert await client.find_by_bus_no("NEVER-ISSUED") is None
    with pytest.raises(PermanentError, match="no e-invoice was issued for busNo NEVER-ISSUED"):
        await client.write_off(_write_off(busNo="NEVER-ISSUED"))


@pytest.mark.parametrize(
    ("mutate", "code", "message"),
    [
        (lambda b: b.pop("busNo"), "E1001", "busNo is required"),
        (lambda b: b.update(totalAmt=Decimal("199.701")), "E1001",
         "totalAmt has more than 2 decimal"),
        (lambda b: b.update(totalAmt="199.70"), "E1001", "totalAmt must be a number"),
        (lambda b: b.update(busDateTime="20260230101010000"), "E1001",
         "busDateTime is not a valid date"),
        (lambda b: b["payChannelDetail"][1].pop("payChannelCode"), "E1001",
         "payChannelDetail[1].payChannelCode is required"),
        (lambda b: b["payChannelDetail"][1].update(payChannelValue=Decimal("31.00")), "E1002",
         "payChannelDetail payChannelValue total 200.70 does not equal totalAmt 199.70"),
        (lambda b: b["chargeDetail"][0].update(amt=170), "E1002",
         "chargeDetail amt total 189.70 does not equal totalAmt 199.70"),
        (lambda b: b["money"].update(cashPay=0), "E1002",
         "money fundPay+otherfundPay+accountPay+cashPay 150.00 does not equal totalAmt"),
        (lambda b: b.pop("money"), "E1001", "money is required"),
    ],
)
async def test_the_platform_validates_strictly(
    client: EinvoiceClient, make_issue: MakeIssue, control: Any,
    mutate: Callable[[dict[str, Any]], Any], code: str, message: str,
) -> None:
    # Raw calls bypass our checks, to test the simulator's own reading of the protocol.
    body = IssueRequest.model_validate(make_issue("RAW-1")).wire()
    mutate(body)
    answer = await client.call("invoiceEBillOutpatient", body, moves_money=True)
    assert (answer.result, answer.ok) == (code, False)
    assert message in answer.message
    assert (await control.stats())["bills"] == 0


async def test_inpatient_needs_admission_and_discharge_dates(
    client: EinvoiceClient, make_issue: MakeIssue
) -> None:
    with pytest.raises(PermanentError, match=r"E1001 visit\.inHospitalDate is required"):
        await client.issue("inpatient", IssueRequest.model_validate(make_issue("I-2")))


async def test_wrong_key_is_a_clear_error(
    make_settings: Callable[..., EinvoicePlatformSettings], make_issue: MakeIssue,
    tmp_path: Any, control: Any,
) -> None:
    wrong = tmp_path / "wrong.key"
    wrong.write_text("not-the-key")
    client = EinvoiceClient(make_settings(key=f"file:{wrong}"))
    await client.start()
    try:
        # The platform refuses the request (E0001) and signs that with the real key, which
        # we cannot verify: untrusted, so in doubt, but the claim is shown.
        with pytest.raises(TransientError, match="it claims E0001") as caught:
            await client.find_by_bus_no("S-X")
        assert not isinstance(caught.value, InDoubtError)
    finally:
        await client.close()
    lenient = EinvoiceClient(make_settings(key=f"file:{wrong}", response_signature="off"))
    await lenient.start()
    try:
        with pytest.raises(PermanentError, match="E0001 签名验证失败"):
            await lenient.issue("outpatient", IssueRequest.model_validate(make_issue("S-X")))
    finally:
        await lenient.close()
    assert (await control.stats())["bills"] == 0


async def test_replayed_request_and_unknown_operation_are_refused(
    simulator: EinvoiceSimulator, key_file: Any, http: aiohttp.ClientSession,
    client: EinvoiceClient,
) -> None:
    sealed = seal({"busNo": "S-1"}, appid="HOSP0001", key=key_file[0])
    statuses = []
    for _ in range(2):
        async with http.post(f"{simulator.url}/getEBillByBusNo", data=sealed.body) as resp:
            statuses.append((resp.status, (await resp.json())["result"]))
    assert statuses == [(200, "E2004"), (200, "E0004")]
    with pytest.raises(PermanentError, match="noSuchOperation: HTTP 404"):
        await client.call("noSuchOperation", {}, moves_money=False)


async def test_unknown_appid_is_answered_unsigned(
    make_settings: Callable[..., EinvoicePlatformSettings],
) -> None:
    client = EinvoiceClient(make_settings(appid="OTHER", response_signature="if_present"))
    await client.start()
    try:
        answer = await client.call("getEBillByBusNo", {"busNo": "S-1"}, moves_money=False)
    finally:
        await client.close()
    assert (answer.result, answer.message) == ("E0003", "unknown appid")
