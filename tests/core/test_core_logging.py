"""No patient data in logs at INFO or above, whatever happens to the messages."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from engine.runtime import Engine
from simulators.his import HisReceiver
from simulators.hl7_messages import adt
from simulators.patients import PatientFactory
from tests.conftest import engine_config, wait_for
from tests.mllp_client import MllpClient


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
    await wait_for(lambda: engine.metrics.dead_lettered.total() >= 10, timeout=20)
    await client.close()
    await receiver.stop()
    secrets_of_patients = []
    for p in patients:
        secrets_of_patients += [p.family + p.given, p.id_card, p.phone, p.street, p.mrn]
    loud = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert loud, "expected some INFO/WARNING records to check"
    for record in loud:
        text = record.getMessage() + (record.exc_text or "")
        for value in secrets_of_patients:
            assert value not in text, (value, text)
