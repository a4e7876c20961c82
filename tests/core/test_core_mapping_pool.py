"""Mappings in worker processes (mapping_workers): same results, same errors, as in-process."""

from __future__ import annotations

from pathlib import Path

from engine.runtime import Engine
from simulators.fhir import FhirServer
from simulators.hl7_messages import adt
from simulators.patients import PatientFactory
from tests.conftest import engine_config, wait_for
from tests.mllp_client import MllpClient


async def test_pooled_mapping_delivers_and_dead_letters_like_in_process(
    tmp_path: Path, engines: list[Engine]
) -> None:
    fhir = FhirServer()
    await fhir.start()
    try:
        config = engine_config(tmp_path, f"""
            [[channels]]
            name = "his"
            source = {{ type = "mllp", listen = "127.0.0.1:0" }}
            [[channels.destinations]]
            name = "fhir"
            type = "fhir"
            base_url = "{fhir.url}"
            mapping = "adt_to_fhir"
            retry = {{ max_attempts = 2 }}
        """)
        engine = Engine(config.model_copy(update={"mapping_workers": 2}))
        await engine.start()
        engines.append(engine)
        assert engine.mapping_pool is not None
        factory = PatientFactory(seed=5)
        patients = [factory.patient() for _ in range(6)]
        client = await MllpClient.connect(engine.source_port("his"))
        for n, p in enumerate(patients):
            assert (await client.send(adt("A04", p, factory.visit("O"), cid=f"P-{n}"))).get(
                "MSA", 1) == "AA"
        # No medical record number: the worker raises MappingError, the engine dead-letters.
        anonymous = adt("A04", patients[0], factory.visit("O"), cid="P-X").replace(
            patients[0].mrn, "")
        await client.send(anonymous)
        await wait_for(lambda: engine.metrics.sent.total() == 6, timeout=30)
        await wait_for(lambda: engine.metrics.dead_lettered.total() == 1, timeout=30)
        assert fhir.count("Patient") == 6
        mrns = {i["value"] for r in fhir.resources["Patient"].values()
                for i in r["identifier"] if i.get("type", {}).get("text") == "病案号"}
        assert mrns == {p.mrn for p in patients}
        dead = await engine.backend.dead_letters(engine.channels["his"].destinations[0].queue)
        assert len(dead) == 1
        assert "adt_to_fhir" in dead[0].reason and "PID-3" in dead[0].reason
        await client.close()
        await engine.stop()
        assert engine.mapping_pool is None
    finally:
        await fhir.stop()
