"""No patient data in logs at INFO or above, whatever happens to the messages.

The MLLP/HL7 core, HTTP and FHIR destinations whose peers refuse a message quoting it (an
OperationOutcome naming the patient, an error page echoing the request, an answer cut
short), mappings that fail on a message (a ``required`` rule, a lookup miss whose code is
the patient's address, a FHIR resource that does not validate because of a field value),
an ingest that fails unexpectedly, and the JSON log format. The insurance, payment and
e-invoice channels have their own tests (``test_*_logging.py`` in their folders); all use
``tests.log_check``.
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
import sqlite3
import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from adapters.mllp import MllpSourceConfig
from engine.config import parse_config
from engine.contracts import IngestResult
from engine.logsetup import JsonFormatter
from engine.message import Message
from engine.runtime import Engine
from queues.contract import Envelope
from simulators.his import HisReceiver
from simulators.hl7_messages import adt, batch_frame
from simulators.patients import Patient, PatientFactory
from tests.broken_peer import BrokenPeer, Reply
from tests.conftest import REPO, engine_config, wait_for
from tests.log_check import assert_no_patient_data, texts_of
from tests.mllp_client import MllpClient


def secrets_of(patients: list[Patient]) -> list[str]:
    values = []
    for p in patients:
        values += [p.family + p.given, p.id_card, p.phone, p.street, p.mrn, p.insurance_card]
    return values


async def test_logs_name_ids_never_patients(
    tmp_path: Path, engines: list[Engine], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    receiver = HisReceiver()
    await receiver.start()
    engine = Engine(engine_config(tmp_path, f"""
        [[channels]]
        name = "his"
        source = {{ type = "mllp", listen = "127.0.0.1:0" }}
        [[channels.destinations]]
        name = "cdr"
        type = "mllp"
        host = "127.0.0.1"
        port = {receiver.port}
        retry = {{ max_attempts = 2, initial_delay = 0.01 }}
        [[channels.destinations]]
        name = "json"
        type = "http"
        url = "http://127.0.0.1:9/nowhere"
        mapping = "adt_to_fhir"
        retry = {{ max_attempts = 1 }}
    """))
    await engine.start()
    engines.append(engine)
    factory = PatientFactory(seed=11)
    patients = [factory.patient() for _ in range(5)]
    client = await MllpClient.connect(engine.source_port("his"))
    receiver.mode = "AR"  # every delivery to the CDR is refused: dead letters with reasons
    for n, p in enumerate(patients):
        await client.send(adt("A04", p, factory.visit("O"), cid=f"LOG-{n}"))
    # A malformed message whose broken "segment name" is patient text.
    broken = adt("A04", patients[0], factory.visit("O"), cid="LOG-X").replace(
        "\rPV1", f"\r{patients[0].family}{patients[0].given}地址|x\rPV1")
    await client.send(broken)
    # A message without a medical record number: the mapping refuses it.
    anonymous = adt("A04", patients[1], factory.visit("O"), cid="LOG-Y").replace(
        patients[1].mrn, "")
    await client.send(anonymous)
    # Batches: one taken, one refused for that broken segment; and a reused control id.
    batch = [adt("A08", p, factory.visit("O"), cid=f"LOG-B{n}").encode()
             for n, p in enumerate(patients[2:])]
    await client.exchange(batch_frame(batch))
    await client.exchange(batch_frame([batch[0], broken.encode()]))
    await client.send(adt("A04", patients[3], factory.visit("O"), cid="LOG-0"))
    assert engine.metrics.key_reused.total() == 1
    await wait_for(lambda: engine.metrics.dead_lettered.total() >= 13, timeout=20)
    await client.close()
    await receiver.stop()
    assert_no_patient_data(caplog.records, secrets_of(patients))


# -- HTTP and FHIR destinations whose peers quote the message -------------------------------


_answers = itertools.count()


def _quote_fhir(request: web.Request, body: bytes) -> Reply:
    """A FHIR server that refuses every resource, quoting it back in its answers: an
    OperationOutcome, an error page, an answer cut short, in turn."""
    del request
    text = body.decode("utf-8", "replace")
    kind = next(_answers) % 3
    if kind == 0:
        outcome = {"resourceType": "OperationOutcome", "issue": [
            {"severity": "error", "code": "invalid", "diagnostics":
             f"Resource failed validation: {text[:3000]}",
             "expression": ["Patient.name[0]"]}]}
        return Reply(orjson.dumps(outcome), status=422, content_type="application/fhir+json")
    if kind == 1:
        return Reply(f"<html><body><h1>500</h1><pre>{text}</pre></body></html>".encode(),
                     status=500, content_type="text/html")
    return Reply(body, cut_short=True, content_type="application/fhir+json")


def _quote_http(request: web.Request, body: bytes) -> Reply:
    del request
    return Reply(b"bad request: " + body, status=400, content_type="text/plain")


MAPPING = """
name = "person_to_patient"
description = "a registration document of the test's front desk -> FHIR Patient"
source = "json"
target = "fhir"

[lookups.districts]
values = { "南山区" = "440305", "福田区" = "440304" }

[[output]]
name = "patient"
resource = "Patient"

[[output.rule]]
from = "mrn"
to = "identifier[0].value"
required = true

[[output.rule]]
from = "name"
to = "name[0].text"

[[output.rule]]
from = "district"
transform = [{ lookup = "districts" }]
to = "address[0].district"

[[output.rule]]
from = "birth"
to = "birthDate"
"""


def _config(tmp_path: Path, body: str) -> Any:
    """Like ``engine_config``, with the test's own mapping beside the project's lookups."""
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    (mappings / "person_to_patient.toml").write_text(MAPPING, encoding="utf-8")
    for path in (REPO / "mappings").glob("adt_to_fhir.toml"):
        (mappings / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    shutil.copytree(REPO / "mappings" / "lookups", mappings / "lookups")
    text = textwrap.dedent(f"""
        mappings_dir = "{mappings}"
        [store]
        path = "{tmp_path / 'hisbridge.db'}"
        [admin]
        enabled = false
        [retry]
        max_attempts = 2
        initial_delay = 0.01
        max_delay = 0.05
        jitter = 0.0
    """) + textwrap.dedent(body)
    return parse_config(text, file="test.toml", base_dir=tmp_path)


async def test_destinations_and_mappings_quoting_patients_log_ids_only(
    tmp_path: Path, engines: list[Engine], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with BrokenPeer(_quote_fhir) as fhir, BrokenPeer(_quote_http) as http_peer:
        engine = Engine(_config(tmp_path, f"""
            [[channels]]
            name = "his"
            source = {{ type = "mllp", listen = "127.0.0.1:0" }}
            [[channels.destinations]]
            name = "fhir"
            type = "fhir"
            base_url = "{fhir.url}/fhir"
            mapping = "adt_to_fhir"
            [[channels.destinations]]
            name = "raw"
            type = "http"
            url = "{http_peer.url}/hl7"

            [[channels]]
            name = "registrations"
            source = {{ type = "http", listen = "127.0.0.1:0", content_type = "json" }}
            mapping = "person_to_patient"
            [[channels.destinations]]
            name = "fhir"
            type = "fhir"
            base_url = "{fhir.url}/fhir"
        """))
        await engine.start()
        engines.append(engine)
        factory = PatientFactory(seed=23)
        patients = [factory.patient() for _ in range(6)]
        client = await MllpClient.connect(engine.source_port("his"))
        for n, p in enumerate(patients[:3]):
            await client.send(adt("A04", p, factory.visit("O"), cid=f"LOG-D{n}"))
        await client.close()

        def registration(p: Patient, **changes: Any) -> dict[str, Any]:
            doc = {"mrn": p.mrn, "name": p.family + p.given, "district": "南山区",
                   "birth": p.birth.isoformat(), "phone": p.phone, "id_card": p.id_card}
            return {**doc, **changes}

        documents = [
            registration(patients[3]),  # maps; the FHIR server refuses it quoting it
            registration(patients[3], mrn=None),  # required rule fails
            registration(patients[4], district=patients[4].street),  # lookup miss
            registration(patients[5], birth=patients[5].phone),  # not a FHIR date
            registration(patients[5], birth=patients[5].family + patients[5].given),
        ]
        url = f"http://127.0.0.1:{engine.source_port('registrations')}/"
        async with aiohttp.ClientSession() as http:
            for doc in documents:
                async with http.post(url, data=json.dumps(doc, ensure_ascii=False).encode(),
                                     headers={"Content-Type": "application/json"}) as r:
                    assert r.status in (200, 202), await r.text()
        await wait_for(lambda: engine.metrics.dead_lettered.total() >= 7
                       and engine.metrics.mapping_errors.total() >= 4, timeout=15)
    assert engine.metrics.sent.total() == 0
    loud = assert_no_patient_data(caplog.records, secrets_of(patients))
    assert any("mapping error" in r.getMessage() for r in loud)


# -- a source whose ingest fails unexpectedly --------------------------------------------------


async def test_unexpected_ingest_failure_logs_its_class_not_its_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    p = PatientFactory(seed=31).patient()

    async def ingest(message: Message, hl7: object = None) -> IngestResult:
        # What a bug deep in ingest looks like: an error quoting the field it choked on.
        raise ValueError(f"cannot index {p.family}{p.given} ({p.id_card})")

    source = MllpSourceConfig(type="mllp", listen="127.0.0.1:0").build("his")
    await source.start(ingest)
    try:
        client = await MllpClient.connect(source.port)
        ack = await client.send(adt("A04", p, PatientFactory(seed=31).visit("O"), cid="LOG-I"))
        await client.close()
    finally:
        await source.stop()
    assert ack.get("MSA", 1) == "AE"
    assert any(r.exc_info for r in caplog.records if r.levelno == logging.DEBUG)
    assert_no_patient_data(caplog.records, secrets_of([p]))


async def test_failures_while_settling_or_stopping_log_their_class_not_their_text(
    tmp_path: Path, engines: list[Engine], caplog: pytest.LogCaptureFixture,
) -> None:
    """A delivery whose settling fails, and a destination that fails to close: the errors
    quote a patient, the lines at ERROR name ids and the error's class."""
    caplog.set_level(logging.DEBUG)
    p = PatientFactory(seed=37).patient()
    quoted = f"{p.family}{p.given} ({p.id_card}, {p.phone})"
    receiver = HisReceiver()
    await receiver.start()
    engine = Engine(engine_config(tmp_path, f"""
        [[channels]]
        name = "his"
        source = {{ type = "mllp", listen = "127.0.0.1:0" }}
        [[channels.destinations]]
        name = "cdr"
        type = "mllp"
        host = "127.0.0.1"
        port = {receiver.port}
    """))
    await engine.start()
    engines.append(engine)
    try:
        worker = engine.channels["his"].dest_workers[0]

        async def settle_fails(*args: Any, **kwargs: Any) -> None:
            raise sqlite3.OperationalError(f"disk I/O error writing {quoted}")

        worker.settler.settle = settle_fails  # type: ignore[method-assign]
        client = await MllpClient.connect(engine.source_port("his"))
        await client.send(adt("A04", p, PatientFactory(seed=37).visit("O"), cid="LOG-S"))
        await client.close()
        await wait_for(lambda: any("could not settle" in r.getMessage()
                                   for r in caplog.records))

        adapter = engine.channels["his"].destinations[0].adapter
        real_close = adapter.close

        async def close_fails() -> None:
            await real_close()  # its connections closed, then the complaint
            raise RuntimeError(f"socket to {quoted} would not close")

        adapter.close = close_fails  # type: ignore[method-assign]
        await engine.stop(grace=1.0)
    finally:
        await receiver.stop()
    loud = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("could not settle message" in m and "(OperationalError)" in m for m in loud)
    assert any("did not close cleanly (RuntimeError)" in m for m in loud)
    assert any(r.exc_info for r in caplog.records if r.levelno == logging.DEBUG)
    assert_no_patient_data(caplog.records, [quoted, p.id_card, p.phone])


# -- the log formats --------------------------------------------------------------------------


def test_the_check_sees_tracebacks_and_extra_fields() -> None:
    """The check itself: a value hidden in a traceback or an ``extra`` field is found."""
    log = logging.getLogger("engine.test")
    try:
        raise RuntimeError("张三 440399198503150011")
    except RuntimeError:
        import sys
        info = sys.exc_info()
    hidden = log.makeRecord("engine.test", logging.WARNING, __file__, 1, "failed", (), info)
    extra = log.makeRecord("engine.test", logging.INFO, __file__, 1, "sent", (), None,
                           extra={"patient": "张三"})
    for record in (hidden, extra):
        with pytest.raises(AssertionError, match="张三"):
            assert_no_patient_data([record], ["张三"])


def test_json_format_writes_no_message_bodies() -> None:
    p = PatientFactory(seed=41).patient()
    body = f"PID|1||{p.mrn}^^^H^MR||{p.family}^{p.given}||19850315|F|||{p.street}".encode()
    message = Message(channel="his", content_type="hl7v2", body=body)
    envelope = Envelope(message.id, body, {"infno": "2207"}, "hl7v2")
    log = logging.getLogger("engine.test")
    records = [
        log.makeRecord("engine.test", logging.WARNING, __file__, 1, "message %s failed: %r",
                       (message, envelope), None),
        log.makeRecord("engine.test", logging.INFO, __file__, 1, "delivered", (), None,
                       extra={"body": body, "envelope": envelope}),
    ]
    for record in records:
        line = JsonFormatter().format(record)
        assert orjson.loads(line)["level"] == record.levelname
        for value in (p.family + p.given, p.mrn, p.street):
            assert value not in line
    # A record that names the message still says which one it was.
    assert message.id in texts_of(records[0])[0]
