"""Third-party HL7 v2 messages through every standard HL7 mapping: mapped, or a clear error.

The corpus (HAPI, NHapi, hl7apy, python-hl7 test inputs: versions 2.1-2.6, Z-segments,
odd delimiters) was written by people who never saw our mappings. No message may crash a
mapping: each one maps (with valid FHIR, the mappings validate), is filtered by the
mapping's ``when``, or fails with a MappingError that names the mapping file and the rule.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from fhir.resources.R4B import get_fhir_model_class

from engine.contracts import Payload
from engine.errors import MappingError, RejectedInput
from engine.hl7 import parse
from engine.mapping import CompiledMapping, load_mappings
from tests.conftest import SHARED

ROOT = Path(__file__).resolve().parents[2]
CORPUS = SHARED / "corpora" / "hl7v2"


def corpus_messages() -> list[Path]:
    return sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.suffix != ".json")


@pytest.fixture(scope="module")
def hl7_mappings() -> dict[str, CompiledMapping]:
    loaded = load_mappings(ROOT / "mappings")
    return {
        name: m for name, m in loaded.items()
        if isinstance(m, CompiledMapping) and m.source == "hl7v2"
    }


def test_corpus_messages_map_or_fail_clearly(hl7_mappings: dict[str, CompiledMapping]) -> None:
    assert {"adt_to_fhir", "orders_to_servicerequest", "oru_to_diagnosticreport",
            "dft_to_chargeitem", "dft_to_nhsa_2204"} <= set(hl7_mappings)
    tally: Counter[tuple[str, str]] = Counter()
    valid = 0
    for path in corpus_messages():
        body = path.read_bytes()
        try:
            parse(body)
        except RejectedInput:
            continue  # the engine refuses it at the door; mappings never see it
        valid += 1
        for name, mapping in hl7_mappings.items():
            try:
                outputs = mapping.apply(Payload(body, "hl7v2", {"mdtrt_id": "M1", "psn_no": "P1"}))
            except MappingError as exc:
                text = str(exc)
                assert text.startswith(mapping.file + ": "), text
                assert "rule[" in text or "input" in text or "output" in text, text
                tally[(name, "error")] += 1
                continue
            tally[(name, "mapped" if outputs else "filtered")] += 1
            for out in outputs:
                doc = json.loads(out.body)
                if out.content_type == "fhir+json":
                    get_fhir_model_class(doc["resourceType"]).model_validate(doc)
    assert valid > 200
    # Real work happened on messages nobody wrote for us.
    assert tally[("adt_to_fhir", "mapped")] >= 30
    assert tally[("orders_to_servicerequest", "mapped")] >= 15
    assert tally[("oru_to_diagnosticreport", "mapped")] >= 20
