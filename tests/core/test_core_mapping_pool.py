"""Mappings in worker processes (mapping_workers): same results, same errors, as in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.contracts import Payload
from engine.errors import MappingError
from engine.runtime import Engine
from simulators.fhir import FhirServer
from simulators.hl7_messages import adt
from simulators.patients import PatientFactory
from tests.conftest import engine_config, wait_for
from tests.mllp_client import MllpClient

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"


async def pooled_engine(tmp_path: Path, engines: list[Engine], fhir: FhirServer, *,
                        workers: int, retry: str) -> Engine:
    """MLLP in, ADT → FHIR mapped by ``workers`` worker processes, the FHIR simulator out."""
    config = engine_config(tmp_path, f"""
        [[channels]]
        name = "his"
        source = {{ type = "mllp", listen = "127.0.0.1:0" }}
        [[channels.destinations]]
        name = "fhir"
        type = "fhir"
        base_url = "{fhir.url}"
        mapping = "adt_to_fhir"
        retry = {retry}
    """)
    engine = Engine(config.model_copy(update={"mapping_workers": workers}))
    await engine.start()
    engines.append(engine)
    return engine


async def test_pooled_mapping_delivers_and_dead_letters_like_in_process(
    tmp_path: Path, engines: list[Engine]
) -> None:
    fhir = FhirServer()
    await fhir.start()
    try:
        engine = await pooled_engine(tmp_path, engines, fhir, workers=2,
                                     retry="{ max_attempts = 2 }")
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


async def test_a_worker_that_dies_is_started_again_and_nothing_is_lost(
    tmp_path: Path, engines: list[Engine]
) -> None:
    fhir = FhirServer()
    await fhir.start()
    try:
        engine = await pooled_engine(
            tmp_path, engines, fhir, workers=1,
            retry="{ max_attempts = 20, initial_delay = 0.05, max_delay = 0.2 }")
        pool = engine.mapping_pool
        assert pool is not None
        first = pool.workers[0].proc
        assert first is not None
        factory = PatientFactory(seed=6)
        client = await MllpClient.connect(engine.source_port("his"))
        for n in range(40):
            if n == 20:
                first.kill()  # mid-stream: what it had in hand fails and is retried
            ack = await client.send(adt("A04", factory.patient(), factory.visit("O"),
                                        cid=f"K-{n}"))
            assert ack.get("MSA", 1) == "AA"
        await wait_for(lambda: engine.metrics.sent.total() == 40, timeout=60)
        assert engine.metrics.dead_lettered.total() == 0
        assert fhir.count("Patient") == 40
        again = pool.workers[0].proc
        assert again is not None and again.pid != first.pid and again.returncode is None
        await client.close()
    finally:
        await fhir.stop()


async def test_frames_carry_bytes_and_errors_unchanged(tmp_path: Path) -> None:
    """What a worker answers is what the mapping gives in-process, bytes and errors alike."""
    from engine.mapping import load_mappings
    from engine.mapping_pool import MappingPool

    mappings = MAPPINGS
    local = load_mappings(mappings)["adt_to_fhir"]
    pool = MappingPool(mappings, 1)
    await pool.start()
    try:
        factory = PatientFactory(seed=8)
        for n in range(5):
            body = adt("A01", factory.patient(), factory.visit("I"), cid=f"W-{n}").encode()
            payload = Payload(body, "hl7v2", {"x-源": "病区"})
            there = await pool.apply("adt_to_fhir", payload)
            here = local.apply(payload)
            assert [(p.body, p.content_type, dict(p.headers)) for p in there] == [
                (p.body, p.content_type, dict(p.headers)) for p in here]
        with pytest.raises(MappingError) as remote:
            await pool.apply("adt_to_fhir", Payload(b"MSH|^~\\&|X\r", "hl7v2", {}))
        with pytest.raises(MappingError) as inside:
            local.apply(Payload(b"MSH|^~\\&|X\r", "hl7v2", {}))
        assert str(remote.value) == str(inside.value)
        with pytest.raises(MappingError, match="mapping nowhere is not loaded"):
            await pool.apply("nowhere", Payload(b"{}", "json", {}))
    finally:
        await pool.close()
    assert all(w.proc is not None and w.proc.returncode is not None for w in pool.workers)
