"""Transaction Bundles merged into one request (FHIR ``transaction_group``), over real sockets.

The destination talks to the FHIR simulator over HTTP; the end-to-end test drives a whole
engine. What must hold: each message's outcome is its own (a refused group is sent again
message by message), each gets its own part of the answer, and two Bundles that touch the
same resource never share a transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from adapters.fhir import FhirDestination, FhirDestinationConfig
from adapters.fhir_transactions import resource_names
from engine.errors import ConfigError, PermanentError, TransientError
from engine.runtime import Engine
from queues.contract import Envelope
from simulators.fhir import FhirServer
from tests.conftest import engine_config, wait_for


def visit(n: int, mrn: str | None = None) -> dict[str, Any]:
    """A Patient + Encounter transaction like the ADT mapping's, for patient ``mrn``."""
    mrn = mrn or f"M{n}"
    patient_url = f"urn:uuid:00000000-0000-4000-8000-{n:012d}"
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": patient_url,
         "resource": {"resourceType": "Patient",
                      "identifier": [{"system": "urn:mrn", "value": mrn}]},
         "request": {"method": "PUT", "url": f"Patient?identifier=urn:mrn|{mrn}"}},
        {"fullUrl": f"urn:uuid:00000000-0000-4000-9000-{n:012d}",
         "resource": {"resourceType": "Encounter", "status": "in-progress",
                      "identifier": [{"system": "urn:visit", "value": f"V{n}"}],
                      "subject": {"reference": patient_url}},
         "request": {"method": "PUT", "url": f"Encounter?identifier=urn:visit|V{n}"}},
    ]}


def envelope(n: int, doc: dict[str, Any]) -> Envelope:
    return Envelope(f"msg-{n:03d}", orjson.dumps(doc), {}, "fhir+json")


@pytest.fixture
async def grouped(fhir: FhirServer) -> AsyncIterator[FhirDestination]:
    config = FhirDestinationConfig(
        type="fhir", name="fhir", base_url=fhir.url, concurrency=16, transaction_group=16,
        transaction_interval=0.05)
    dest = FhirDestination(config)
    await dest.start()
    yield dest
    await dest.close()


def patient_id(fhir: FhirServer, mrn: str) -> str:
    (found,) = [rid for rid, p in fhir.resources["Patient"].items()
                if p["identifier"][0]["value"] == mrn]
    return found


async def test_bundles_sent_together_go_in_one_transaction_with_their_own_answers(
    fhir: FhirServer, grouped: FhirDestination
) -> None:
    results = await asyncio.gather(*(grouped.send(envelope(n, visit(n))) for n in range(10)))
    assert fhir.requests["POST"] == 1
    assert sorted(fhir.message_ids) == [f"msg-{n:03d}" for n in range(10)]
    for n, result in enumerate(results):
        rid = patient_id(fhir, f"M{n}")
        assert "transaction of 10 messages" in result.detail
        assert f"Patient/{rid}/_history/1" in result.detail
        assert result.response is not None
        answer = orjson.loads(result.response)
        assert answer["type"] == "transaction-response"
        assert [e["response"]["location"].split("/")[0] for e in answer["entry"]] == [
            "Patient", "Encounter"]
        assert answer["entry"][0]["response"]["location"].startswith(f"Patient/{rid}/")
        encounter = next(e for e in fhir.resources["Encounter"].values()
                         if e["identifier"][0]["value"] == f"V{n}")
        assert encounter["subject"] == {"reference": f"Patient/{rid}"}


async def test_a_bundle_alone_goes_at_once(fhir: FhirServer, grouped: FhirDestination) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await grouped.send(envelope(1, visit(1)))
    assert loop.time() - started < 0.04  # not held for the 50 ms interval
    assert fhir.message_ids == ["msg-001"]
    assert "transaction of" not in result.detail


async def test_bundles_touching_one_resource_never_share_a_transaction(
    fhir: FhirServer, grouped: FhirDestination
) -> None:
    docs = [visit(1, "SAME"), visit(2), visit(3, "SAME")]
    await asyncio.gather(*(grouped.send(envelope(n, d)) for n, d in enumerate(docs)))
    assert fhir.requests["POST"] == 2
    # The first update went first: the second is version 2 of the same patient.
    (patient,) = [p for p in fhir.resources["Patient"].values()
                  if p["identifier"][0]["value"] == "SAME"]
    assert patient["meta"]["versionId"] == "2"
    assert fhir.message_ids.index("msg-000") < fhir.message_ids.index("msg-002")


async def test_a_refused_group_is_sent_again_message_by_message(
    fhir: FhirServer, grouped: FhirDestination
) -> None:
    bad = visit(5)
    bad["entry"][0]["resource"]["identifier"] = "not-a-list"  # the simulator answers 422
    docs = [visit(n) if n != 5 else bad for n in range(8)]
    outcomes = await asyncio.gather(*(grouped.send(envelope(n, d)) for n, d in enumerate(docs)),
                                    return_exceptions=True)
    refused = [n for n, o in enumerate(outcomes) if isinstance(o, BaseException)]
    assert refused == [5]
    assert isinstance(outcomes[5], PermanentError)
    assert "Patient.identifier must be an array" in str(outcomes[5])
    assert fhir.count("Patient") == 7 and fhir.count("Encounter") == 7
    assert 5 not in [int(m[-3:]) for m in fhir.message_ids]
    assert fhir.requests["POST"] == 1 + 8  # the group, then each alone


async def test_an_outage_retries_every_message_of_the_group(
    fhir: FhirServer, grouped: FhirDestination
) -> None:
    await fhir.set_fault("error", status=503)
    outcomes = await asyncio.gather(*(grouped.send(envelope(n, visit(n))) for n in range(6)),
                                    return_exceptions=True)
    assert all(isinstance(o, TransientError) for o in outcomes)
    assert "answered 503" in str(outcomes[0])
    assert fhir.requests["POST"] == 1
    await fhir.set_fault("refuse")
    outcomes = await asyncio.gather(*(grouped.send(envelope(n, visit(n))) for n in range(6)),
                                    return_exceptions=True)
    assert all(isinstance(o, TransientError) for o in outcomes)
    assert fhir.count() == 0


async def test_closing_cancels_what_waits_and_leaves_nothing_hanging(
    fhir: FhirServer, grouped: FhirDestination
) -> None:
    await fhir.set_fault("slow", delay=0.5)
    sends = [asyncio.create_task(grouped.send(envelope(n, visit(n)))) for n in range(4)]
    await asyncio.sleep(0.1)
    await asyncio.wait_for(grouped.close(), 2)
    done, pending = await asyncio.wait(sends, timeout=2)
    assert not pending
    assert all(t.cancelled() or t.exception() is not None for t in done)


def test_what_a_transaction_names() -> None:
    doc = visit(1)
    doc["entry"].append({"fullUrl": "urn:uuid:x", "resource": {"resourceType": "Observation"},
                         "request": {"method": "POST", "url": "Observation",
                                     "ifNoneExist": "identifier=urn:obs|1"}})
    doc["entry"].append("not an entry")
    assert resource_names(doc["entry"]) == {
        "urn:uuid:00000000-0000-4000-8000-000000000001", "Patient?identifier=urn:mrn|M1",
        "urn:uuid:00000000-0000-4000-9000-000000000001", "Encounter?identifier=urn:visit|V1",
        "urn:uuid:x", "Observation?identifier=urn:obs|1",
    }


async def test_engine_delivers_a_stream_in_groups_and_records_each_message(
    tmp_path: Path, engines: list[Engine], fhir: FhirServer
) -> None:
    dest = (f'name = "fhir"\ntype = "fhir"\nbase_url = "{fhir.url}"\nconcurrency = 32\n'
            'transaction_group = 32\ntransaction_interval = 0.05')
    engine = Engine(engine_config(tmp_path, f"""
        [[channels]]
        name = "api"
        source = {{ type = "http", listen = "127.0.0.1:0", path = "/in" }}
        [[channels.destinations]]
        {dest}
    """))
    await engine.start()
    engines.append(engine)
    url = f"http://127.0.0.1:{engine.source_port('api')}/in"
    ids = []
    async with aiohttp.ClientSession() as s:
        for n in range(60):
            async with s.post(url, data=orjson.dumps(visit(n)),
                              headers={"Content-Type": "application/fhir+json"}) as r:
                assert r.status == 202
                ids.append((await r.json())["message_id"])
    await wait_for(lambda: engine.metrics.sent.total() == 60)
    assert sorted(fhir.message_ids) == sorted(ids)
    assert fhir.count("Patient") == 60 and fhir.count("Encounter") == 60
    assert fhir.requests["POST"] < 60
    for n, mid in enumerate(ids):
        (sent,) = [e for e in await engine.store.events(mid) if e.status == "sent"]
        assert f"Patient/{patient_id(fhir, f'M{n}')}/" in (sent.detail or "")


async def test_nothing_overtakes_an_earlier_write_to_its_resource(fhir: FhirServer) -> None:
    """With two requests in flight, a Bundle waits for the one writing its resource, and so
    does a later Bundle sharing a resource with the one left waiting."""
    dest = FhirDestination(FhirDestinationConfig(
        type="fhir", name="fhir", base_url=fhir.url, concurrency=8, transaction_group=4,
        transaction_interval=0))
    await dest.start()
    try:
        await fhir.set_fault("slow", delay=0.2)
        second_visit = visit(3)
        second_visit["entry"][1] = visit(2)["entry"][1]  # patient M3, visit V2
        docs = [visit(1, "SAME"), visit(2), visit(4, "SAME"), second_visit, visit(5)]
        sends = [asyncio.create_task(dest.send(envelope(n, d))) for n, d in enumerate(docs)]
        await asyncio.sleep(0.1)
        # The first group is held by the server; the rest touch its resources, so wait.
        assert fhir.requests["POST"] == 1
        await fhir.set_fault("none")
        await asyncio.gather(*sends)
    finally:
        await dest.close()
    order = fhir.message_ids
    assert order.index("msg-000") < order.index("msg-002")  # same patient
    assert order.index("msg-001") < order.index("msg-003")  # same visit
    assert fhir.requests["POST"] >= 2


def test_grouping_an_ordered_destination_is_refused_by_check(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"transaction_group needs concurrent deliveries"):
        engine_config(tmp_path, """
            [[channels]]
            name = "api"
            source = { type = "http", listen = "127.0.0.1:0", path = "/in" }
            [[channels.destinations]]
            name = "fhir"
            type = "fhir"
            base_url = "http://127.0.0.1:1/fhir"
            ordered = true
            transaction_group = 16
        """)
