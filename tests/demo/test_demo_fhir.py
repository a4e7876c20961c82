"""What the demo's mappings write posts cleanly to the FHIR server simulator, through the FHIR
destination over HTTP: charge batches with a payment line, repeated batches (conditional
updates), percent-encoded conditional searches, conditional creates, ClaimResponses and
PaymentNotices."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from adapters.fhir import FhirDestination, FhirDestinationConfig
from engine.contracts import Payload
from engine.hl7 import parse
from engine.mapping import load_mappings
from queues.contract import Envelope
from simulators.fhir import FhirServer
from simulators.his import traffic
from tests.conftest import REPO

FIXTURES = REPO / "mappings" / "fixtures"


@pytest.fixture(scope="module")
def mappings() -> dict[str, Any]:
    return dict(load_mappings(REPO / "mappings"))


@pytest.fixture
async def fhir() -> AsyncIterator[tuple[FhirServer, FhirDestination]]:
    server = FhirServer()
    await server.start()
    dest = FhirDestinationConfig(type="fhir", name="fhir", base_url=server.url).build("t")
    await dest.start()
    yield server, dest
    await dest.close()
    await server.stop()


_ids = itertools.count(1)


async def send(dest: FhirDestination, payloads: list[Payload]) -> list[dict[str, Any]]:
    answers = []
    for p in payloads:
        result = await dest.send(Envelope(f"m{next(_ids)}", p.body, dict(p.headers),
                                          p.content_type))
        answers.append(json.loads(result.response or b"{}"))
    return answers


def paid_batch() -> bytes:
    for text in traffic(seed=21):
        msg = parse(text.encode())
        if msg.message_type.endswith("P03") and msg.get("PV1", 49):
            return text.encode()
    raise AssertionError("unreachable")  # pragma: no cover


async def test_a_paid_charge_batch_makes_one_chargeitem_per_charge_line(
        fhir: tuple[FhirServer, FhirDestination], mappings: dict[str, Any]) -> None:
    server, dest = fhir
    body = paid_batch()
    msg = parse(body)
    lines = [msg.get("FT1", 6, occurrence=n)
             for n in range(1, len(msg.segment_indexes("FT1")) + 1)]
    assert lines[-1] == "PY" and set(lines[:-1]) == {"CG"}
    payloads = mappings["dft_to_chargeitem"].apply(Payload(body, "hl7v2", {}))
    [answer] = await send(dest, payloads)
    assert [e["response"]["status"] for e in answer["entry"]] == ["201 Created"] * (
        len(lines) - 1)
    assert server.count("ChargeItem") == len(lines) - 1
    amounts = sorted(Decimal(str(r["priceOverride"]["value"]))
                     for r in server.resources["ChargeItem"].values())
    expected = sorted(Decimal(msg.get("FT1", 11, occurrence=n)) for n in range(1, len(lines)))
    assert amounts == expected
    # The HIS resends the batch: the same ChargeItems are updated, none added.
    [again] = await send(dest, mappings["dft_to_chargeitem"].apply(Payload(body, "hl7v2", {})))
    assert {e["response"]["status"] for e in again["entry"]} == {"200 OK"}
    assert server.count("ChargeItem") == len(lines) - 1


async def test_percent_encoded_conditional_searches_and_conditional_creates(
        fhir: tuple[FhirServer, FhirDestination]) -> None:
    server, dest = fhir
    patient = {"resourceType": "Patient",
               "identifier": [{"system": "urn:hisbridge:hospital:H1/mrn", "value": "病案 01"}]}

    def bundle(request: dict[str, str]) -> Payload:
        doc = {"resourceType": "Bundle", "type": "transaction",
               "entry": [{"fullUrl": "urn:uuid:1", "resource": patient, "request": request}]}
        return Payload(json.dumps(doc).encode(), "fhir+json", {})

    create = {"method": "POST", "url": "Patient",
              "ifNoneExist": "identifier=urn%3Ahisbridge%3Ahospital%3AH1%2Fmrn%7C"
                             "%E7%97%85%E6%A1%88%2001"}
    first, second = await send(dest, [bundle(create), bundle(create)])
    assert first["entry"][0]["response"]["status"] == "201 Created"
    assert second["entry"][0]["response"]["status"] == "200 OK"
    update = {"method": "PUT",
              "url": "Patient?identifier=urn:hisbridge:hospital:H1/mrn%7C%E7%97%85%E6%A1%88+01"}
    [third] = await send(dest, [bundle(update)])
    assert third["entry"][0]["response"]["status"] == "200 OK"
    assert server.count("Patient") == 1
    [stored] = server.resources["Patient"].values()
    assert stored["meta"]["versionId"] == "2"


@pytest.mark.parametrize(("mapping", "case", "rtype"), [
    ("insurance_settlement_to_claimresponse", "outpatient_settled", "ClaimResponse"),
    ("payment_event_to_paymentnotice", "wechatpay_payment", "PaymentNotice"),
    ("payment_event_to_paymentnotice", "wechatpay_refund", "PaymentNotice"),
])
async def test_settlement_and_payment_resources_are_stored_once(
        fhir: tuple[FhirServer, FhirDestination], mappings: dict[str, Any],
        mapping: str, case: str, rtype: str) -> None:
    server, dest = fhir
    folder = FIXTURES / mapping
    headers_file = folder / f"{case}.headers.json"
    headers = json.loads(headers_file.read_text()) if headers_file.exists() else {}
    body = (folder / f"{case}.in.json").read_bytes()
    payloads = mappings[mapping].apply(Payload(body, "json", headers))
    await send(dest, payloads)
    await send(dest, mappings[mapping].apply(Payload(body, "json", headers)))  # a repeat
    assert server.count(rtype) == 1
    [stored] = server.resources[rtype].values()
    assert stored["meta"]["versionId"] == "2"  # the same resource, updated in place
    async with aiohttp.ClientSession() as http, \
            http.get(f"{server.url}/{rtype}/{stored['id']}") as r:
        assert r.status == 200
        assert (await r.json())["resourceType"] == rtype
