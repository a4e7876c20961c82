"""Faults switched on over the simulator's control endpoint: lost answers, bad signatures,
broken Base64, 5xx, busy, latency. None may become a success or a second invoice."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import pytest

from adapters.einvoice import EinvoiceClient, IssueRequest, StateQuery, WriteOffRequest
from adapters.einvoice.config import EinvoicePlatformSettings
from engine.errors import InDoubtError, TransientError
from simulators.einvoice import EinvoiceSimulator

MakeIssue = Callable[..., dict[str, Any]]
MakeSettings = Callable[..., EinvoicePlatformSettings]
ISSUE_OP = "invoiceEBillOutpatient"


async def _client(settings: EinvoicePlatformSettings) -> EinvoiceClient:
    client = EinvoiceClient(settings)
    await client.start()
    return client


@pytest.mark.parametrize("lookup", ["always", "after_doubt"])
async def test_retry_after_a_lost_answer_finds_the_invoice_instead_of_issuing_again(
    make_simulator: Any, key_file: Any, make_issue: MakeIssue, http: Any, lookup: str,
) -> None:
    # A careless platform that accepts duplicate busNo: only our lookup prevents a double.
    sim: EinvoiceSimulator = await make_simulator(duplicate_bus_no="allow")
    settings = EinvoicePlatformSettings.model_validate({
        "url": sim.url, "appid": "HOSP0001", "key": f"file:{key_file[1]}", "timeout": 0.5,
        "lookup_before_issue": lookup})
    async with http.post(f"{sim.url}/_control/faults", json={"faults": [
            {"kind": "commit_then_timeout", "operation": ISSUE_OP, "times": 1,
             "seconds": 5}]}) as resp:
        assert resp.status == 200
    client = await _client(settings)
    request = IssueRequest.model_validate(make_issue("LOST-1"))
    try:
        with pytest.raises(InDoubtError, match="query before retrying"):
            await client.issue("outpatient", request)
        retried = await client.issue("outpatient", request)
    finally:
        await client.close()
    assert retried.existing
    assert retried.invoice.bill_no == "0000000001"
    assert sim.requests[ISSUE_OP] == 1
    assert len(await sim.ledger.bills_for("LOST-1")) == 1


async def test_a_careless_platform_without_lookup_does_double_invoice(
    make_simulator: Any, key_file: Any, make_issue: MakeIssue,
) -> None:
    # The control case for the test above: it shows what the lookup prevents.
    sim: EinvoiceSimulator = await make_simulator(duplicate_bus_no="allow")
    settings = EinvoicePlatformSettings.model_validate({
        "url": sim.url, "appid": "HOSP0001", "key": f"file:{key_file[1]}",
        "lookup_before_issue": "never"})
    client = await _client(settings)
    request = IssueRequest.model_validate(make_issue("DOUBLE-1"))
    try:
        await client.issue("outpatient", request)
        await client.issue("outpatient", request)
    finally:
        await client.close()
    assert len(await sim.ledger.bills_for("DOUBLE-1")) == 2


async def test_concurrent_deliveries_of_one_settlement_issue_one_invoice(
    make_simulator: Any, key_file: Any, make_issue: MakeIssue,
) -> None:
    sim: EinvoiceSimulator = await make_simulator(duplicate_bus_no="allow")
    settings = EinvoicePlatformSettings.model_validate({
        "url": sim.url, "appid": "HOSP0001", "key": f"file:{key_file[1]}"})
    client = await _client(settings)
    request = IssueRequest.model_validate(make_issue("SAME-1"))
    try:
        results = await asyncio.gather(*(client.issue("outpatient", request)
                                         for _ in range(5)))
    finally:
        await client.close()
    assert sorted(r.existing for r in results) == [False, True, True, True, True]
    assert {r.invoice.bill_no for r in results} == {"0000000001"}
    assert sim.requests[ISSUE_OP] == 1
    assert len(await sim.ledger.bills_for("SAME-1")) == 1
    assert client._locks == {}


async def test_lost_answer_over_the_control_endpoint_yields_one_invoice(
    make_settings: MakeSettings, make_issue: MakeIssue, control: Any,
) -> None:
    await control.faults({"kind": "commit_then_timeout", "operation": ISSUE_OP, "times": 1,
                          "seconds": 5})
    client = await _client(make_settings(timeout=0.5))
    request = IssueRequest.model_validate(make_issue("LOST-2"))
    try:
        with pytest.raises(InDoubtError):
            await client.issue("outpatient", request)
        first = await client.issue("outpatient", request)
        again = await client.issue("outpatient", request)
    finally:
        await client.close()
    assert first.existing
    assert again.existing
    assert first.invoice.bill_no == again.invoice.bill_no == "0000000001"
    assert (await control.bills("LOST-2"))["count"] == 1
    stats = await control.stats()
    assert stats["requests"][ISSUE_OP] == 1
    assert stats["requests"]["getEBillByBusNo"] == 3
    assert stats["faults_fired"] == {"commit_then_timeout": 1}


async def test_without_lookup_the_platforms_duplicate_refusal_resolves_to_the_invoice(
    make_settings: MakeSettings, make_issue: MakeIssue, control: Any,
) -> None:
    await control.faults({"kind": "commit_then_timeout", "operation": ISSUE_OP, "times": 1,
                          "seconds": 5})
    client = await _client(make_settings(timeout=0.5, lookup_before_issue="never"))
    request = IssueRequest.model_validate(make_issue("LOST-3"))
    try:
        with pytest.raises(InDoubtError):
            await client.issue("outpatient", request)
        retried = await client.issue("outpatient", request)
    finally:
        await client.close()
    assert retried.existing
    assert retried.invoice.bill_no == "0000000001"
    stats = await control.stats()
    assert stats["requests"][ISSUE_OP] == 2  # the second was refused with E2001
    assert stats["requests"]["getEBillByBusNo"] == 1
    assert (await control.bills("LOST-3"))["count"] == 1


@pytest.mark.parametrize(
    ("kind", "reason"),
    [("bad_signature", "signature does not match"), ("broken_base64", "not valid Base64")],
)
async def test_untrusted_issue_answer_is_in_doubt_never_success(
    make_settings: MakeSettings, make_issue: MakeIssue, control: Any, kind: str, reason: str,
) -> None:
    await control.faults({"kind": kind, "operation": ISSUE_OP, "times": 1})
    client = await _client(make_settings())
    request = IssueRequest.model_validate(make_issue(f"UNTRUSTED-{kind}"))
    try:
        with pytest.raises(InDoubtError, match=f"untrusted answer: the answer's.*{reason}"):
            await client.issue("outpatient", request)
        # The invoice exists on the platform; the next attempt finds it, and issues none.
        recovered = await client.issue("outpatient", request)
    finally:
        await client.close()
    assert recovered.existing
    assert (await control.stats())["requests"][ISSUE_OP] == 1
    assert (await control.bills(f"UNTRUSTED-{kind}"))["count"] == 1


async def test_untrusted_query_answer_is_transient(
    client: EinvoiceClient, make_issue: MakeIssue, control: Any,
) -> None:
    issued = await client.issue("outpatient", IssueRequest.model_validate(make_issue("Q-1")))
    await control.faults({"kind": "bad_signature", "operation": "getEBillStatesByBillInfo"})
    query = StateQuery(bill_batch_code=issued.invoice.bill_batch_code,
                       bill_no=issued.invoice.bill_no)
    with pytest.raises(TransientError, match="signature does not match") as caught:
        await client.state(query)
    assert not isinstance(caught.value, InDoubtError)


async def test_server_errors_busy_and_latency(
    make_settings: MakeSettings, make_issue: MakeIssue, control: Any,
) -> None:
    client = await _client(make_settings(timeout=1.0))
    request = IssueRequest.model_validate(make_issue("F-1"))
    try:
        await control.faults({"kind": "server_error", "status": 503, "operation": ISSUE_OP,
                              "times": 1})
        with pytest.raises(InDoubtError, match="HTTP 503"):
            await client.issue("outpatient", request)
        await control.faults({"kind": "server_error", "operation": "getEBillByBusNo",
                              "times": 1})
        with pytest.raises(TransientError, match="getEBillByBusNo: HTTP 500") as caught:
            await client.issue("outpatient", request)
        assert not isinstance(caught.value, InDoubtError)
        await control.faults({"kind": "busy", "operation": ISSUE_OP, "times": 1})
        with pytest.raises(TransientError, match="E9999"):
            await client.issue("outpatient", request)
        await control.faults({"kind": "latency", "seconds": 0.2})
        issued = await client.issue("outpatient", request)
    finally:
        await client.close()
    assert not issued.existing
    assert issued.invoice.bill_no == "0000000001"
    assert (await control.bills("F-1"))["count"] == 1


async def test_lost_write_off_answer_then_retry_reports_the_red_note_once(
    make_settings: MakeSettings, make_issue: MakeIssue, control: Any,
) -> None:
    client = await _client(make_settings(timeout=0.5))
    write_off = WriteOffRequest.model_validate({
        "busNo": "WO-1", "reason": "退费", "operator": "op",
        "busDateTime": "20260315103000000", "placeCode": "MZ01"})
    try:
        await client.issue("outpatient", IssueRequest.model_validate(make_issue("WO-1")))
        await control.faults({"kind": "commit_then_timeout", "operation": "writeOffEBill",
                              "times": 1, "seconds": 5})
        with pytest.raises(InDoubtError, match="writeOffEBill: no answer"):
            await client.write_off(write_off)
        done = await client.write_off(write_off)
    finally:
        await client.close()
    assert done.already
    assert done.red_note is not None
    assert done.red_note.e_scarlet_bill_no == "0000000001"
    stats = await control.stats()
    assert stats["requests"]["writeOffEBill"] == 1
    assert stats["written_off"] == 1


async def test_a_refused_connection_is_transient_not_in_doubt(
    make_settings: MakeSettings, make_issue: MakeIssue,
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free_port = sock.getsockname()[1]
    client = await _client(make_settings(url=f"http://127.0.0.1:{free_port}"))
    try:
        with pytest.raises(TransientError, match="cannot connect") as caught:
            await client.issue("outpatient",
                               IssueRequest.model_validate(make_issue("DOWN-1")))
    finally:
        await client.close()
    assert not isinstance(caught.value, InDoubtError)


async def test_an_oversized_answer_is_refused(
    make_settings: MakeSettings, make_issue: MakeIssue,
) -> None:
    # An issue answer carries a QR image: far more than 256 bytes.
    client = await _client(make_settings(max_response_bytes=256, lookup_before_issue="never"))
    try:
        with pytest.raises(InDoubtError, match="answer larger than 256 bytes"):
            await client.issue("outpatient", IssueRequest.model_validate(make_issue("BIG-1")))
    finally:
        await client.close()


async def test_control_endpoint_refuses_malformed_fault_rules(
    http: Any, simulator: EinvoiceSimulator,
) -> None:
    for rules, message in [
        ({"faults": [{"kind": "meteor"}]}, "fault kind must be one of"),
        ({"faults": [{"kind": "latency", "seconds": -1}]}, "seconds must be between"),
        ({"faults": [{"kind": "busy", "times": 0}]}, "times must be a positive integer"),
        ({"faults": [{"kind": "busy", "colour": "red"}]}, "unknown fault keys: colour"),
        ({"rules": []}, 'expected {"faults": [...]}'),
    ]:
        async with http.post(f"{simulator.url}/_control/faults", json=rules) as resp:
            assert resp.status == 400
            assert message in (await resp.json())["error"]
