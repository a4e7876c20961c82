"""The e-invoice mappings: their fixtures pass with the mapping loader, their outputs add up,
and the simulated platform accepts them through the destination."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from adapters.einvoice import AmountsInconsistent, EinvoiceDestinationConfig, IssueRequest
from adapters.exact_json import decode_json
from engine.contracts import Payload
from engine.mapping import load_mapping
from engine.mapping.fixtures import run_all
from queues.contract import Envelope
from simulators.einvoice import EinvoiceSimulator

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"
FIXTURES = MAPPINGS / "fixtures"
CASES = [
    ("einvoice_outpatient", "insured_wechat.in.json", "outpatient", "199.70"),
    ("einvoice_outpatient", "self_pay_cash.in.json", "outpatient", "25.00"),
    ("einvoice_inpatient", "insured_deposit.in.json", "inpatient", "5111.00"),
    ("einvoice_dft_paid", "dft_p03_paid_wechat.in.hl7", "outpatient", "199.70"),
]


@pytest.mark.parametrize(
    ("name", "count"),
    [("einvoice_outpatient", 3), ("einvoice_inpatient", 2), ("einvoice_dft_paid", 3)],
)
def test_fixtures_pass_with_the_mapping_loader(name: str, count: int) -> None:
    report = run_all(MAPPINGS / f"{name}.toml")
    assert report.load_errors == []
    assert [o.detail for o in report.outcomes if not o.passed] == []
    assert len(report.outcomes) == count


def _map(name: str, input_name: str) -> list[Payload]:
    path = FIXTURES / name / input_name
    content_type = "hl7v2" if path.suffix == ".hl7" else "json"
    return load_mapping(MAPPINGS / f"{name}.toml").apply(Payload(path.read_bytes(),
                                                                 content_type))


@pytest.mark.parametrize(("name", "input_name", "kind", "total"), CASES)
def test_mapped_requests_add_up(name: str, input_name: str, kind: str, total: str) -> None:
    [payload] = _map(name, input_name)
    request = IssueRequest.model_validate(decode_json(payload.body))
    assert request.amount_problems() == []
    assert f"{request.total_amt:.2f}" == total


async def test_the_platform_issues_every_mapped_request(
    simulator: EinvoiceSimulator, key_file: Any,
) -> None:
    config = EinvoiceDestinationConfig.model_validate({
        "type": "einvoice", "name": "einvoice", "url": simulator.url, "appid": "HOSP0001",
        "key": f"file:{key_file[1]}"})
    dest = config.build("settlements")
    await dest.start()
    try:
        for name, input_name, kind, _ in CASES:
            [payload] = _map(name, input_name)
            result = await dest.send(Envelope("01M", payload.body,
                                              {"einvoice-operation": kind}, "json"))
            assert " issued: " in result.detail
    finally:
        await dest.close()
    assert simulator.requests["invoiceEBillOutpatient"] == 3
    assert simulator.requests["invEBillHospitalized"] == 1
    bills = await simulator.ledger.bills_for("SETL20260409000045")
    assert [(b.kind, b.total_amt) for b in bills] == [("inpatient", "5111.00")]


def test_unpaid_and_partly_paid_batches_map_to_nothing() -> None:
    assert _map("einvoice_dft_paid", "dft_p03_unpaid.in.hl7") == []
    assert _map("einvoice_dft_paid", "dft_p03_partly_paid.in.hl7") == []


def test_a_batch_whose_payment_lines_fall_short_is_refused_naming_the_fields() -> None:
    text = (FIXTURES / "einvoice_dft_paid" / "dft_p03_paid_wechat.in.hl7").read_bytes()
    # PV1-47/49 say 199.70 was paid, but the only payment line carries 150.00.
    short = text.replace(b"|1|199.70^CNY|199.70^CNY", b"|1|150.00^CNY|150.00^CNY", 1)
    assert short != text
    mapping = load_mapping(MAPPINGS / "einvoice_dft_paid.toml")
    [payload] = mapping.apply(Payload(short, "hl7v2"))
    request = IssueRequest.model_validate(decode_json(payload.body))
    with pytest.raises(AmountsInconsistent, match=(
            r"payChannelDetail\[\]\.payChannelValue sums to 150\.00 but totalAmt is 199\.70")):
        request.check_amounts()


async def test_engine_channel_invoices_each_paid_dft_batch_once(
    tmp_path: Path, engines: list[Any], simulator: EinvoiceSimulator, key_file: Any,
) -> None:
    from engine.runtime import Engine
    from tests.conftest import SHARED, engine_config, wait_for
    from tests.mllp_client import MllpClient

    # The channel proposed for config.toml, pointed at this test's simulator and key.
    body = f"""
        [[channels]]
        name = "his"
        source = {{ type = "mllp", listen = "127.0.0.1:0" }}

        [[channels.destinations]]
        name = "einvoice"
        type = "einvoice"
        filter = {{ message_types = ["DFT^P03"] }}
        mapping = "einvoice_dft_paid"
        url = "{simulator.url}"
        appid = "HOSP0001"
        key = "file:{key_file[1]}"
        operation = "outpatient"
        concurrency = 4
        retry = {{ max_attempts = 20, max_delay = 60.0 }}
    """
    engine = Engine(engine_config(tmp_path, body))
    await engine.start()
    engines.append(engine)
    folder = FIXTURES / "einvoice_dft_paid"
    paid = (folder / "dft_p03_paid_wechat.in.hl7").read_bytes()
    unpaid = (folder / "dft_p03_unpaid.in.hl7").read_bytes().replace(
        b"HIS20260315091544007", b"HIS20260315091544006")
    adt = (SHARED / "samples" / "hl7" / "adt_a04_outpatient_registration.hl7").read_bytes()
    client = await MllpClient.connect(engine.source_port("his"))
    try:
        for message in (adt, paid, unpaid, paid,
                        paid.replace(b"HIS20260315091544007", b"HIS20260315091544008")):
            ack = await client.send(message)
            assert ack.get("MSA", 1) == "AA"
    finally:
        await client.close()
    await wait_for(lambda: simulator.requests["invoiceEBillOutpatient"] == 2)
    # The ADT is filtered out before the destination; the unpaid DFT maps to nothing.
    await wait_for(lambda: engine.metrics.sent.total() == 3)
    await asyncio.sleep(0.2)
    assert engine.metrics.sent.total() == 3
    assert engine.metrics.received.total() == 4  # the duplicate is not counted as received
    assert engine.metrics.duplicates.total() == 1
    # Two paid messages with different control ids are two batches; the unpaid one is not
    # sent. The same batch resent (same control id) is deduplicated by the channel.
    assert simulator.requests["invoiceEBillOutpatient"] == 2
    assert (await simulator.ledger.totals())["bills"] == 2
    assert [b.total_amt for b in await simulator.ledger.bills_for(
        "DFT-HIS20260315091544007")] == ["199.70"]
