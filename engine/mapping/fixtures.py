"""Mapping fixtures: input / expected-output pairs that ``hisbridge test`` runs and diffs.

Layout, beside the mappings::

    mappings/adt_to_fhir.toml
    mappings/fixtures/adt_to_fhir/a01_admission.in.hl7        the input
    mappings/fixtures/adt_to_fhir/a01_admission.out.json      the expected output
    mappings/fixtures/adt_to_fhir/a01_admission.headers.json  optional input headers
    mappings/fixtures/adt_to_fhir/no_mrn.in.hl7
    mappings/fixtures/adt_to_fhir/no_mrn.error.txt            expected: a MappingError
                                                              containing this text

An empty ``.out`` file expects no output (the mapping's ``when`` filtered the message);
a JSON array in ``.out.json`` expects several payloads. Fixtures run with a fixed clock
(``FIXTURE_NOW``) so generated times are stable; ids are derived from the input already.
Comparison is semantic: JSON with sorted keys (numbers keep their scale), HL7 segment by
segment, XML canonicalized; a failure shows a unified diff of those forms.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

from lxml import etree

from engine.contracts import Payload
from engine.errors import ConfigError, MappingError
from engine.mapping.fhir import FAST_CHECK_WRONG
from engine.mapping.json_output import dumps
from engine.mapping.loader import load_mapping
from engine.mapping.program import CompiledMapping

FIXTURE_NOW = datetime(2026, 1, 1, 8, 0, 0, tzinfo=timezone(timedelta(hours=8)))
INPUT_TYPES = {".hl7": "hl7v2", ".json": "json", ".xml": "xml"}
OUTPUT_EXT = {"fhir": ".json", "json": ".json", "xml": ".xml", "hl7v2": ".hl7"}


@dataclass(frozen=True, slots=True)
class Fixture:
    mapping: str
    name: str
    input: Path
    expected: Path | None
    error: Path | None
    headers: Path | None


@dataclass(frozen=True, slots=True)
class Outcome:
    fixture: Fixture
    passed: bool
    detail: str = ""


def fixtures_dir(mapping_file: Path, mapping_name: str) -> Path:
    return mapping_file.parent / "fixtures" / mapping_name


def find_fixtures(mapping_file: Path, mapping_name: str) -> list[Fixture]:
    folder = fixtures_dir(mapping_file, mapping_name)
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.iterdir()):
        stem, dot, ext = path.name.partition(".in.")
        if not dot or f".{ext}" not in INPUT_TYPES:
            continue
        outs = sorted(folder.glob(f"{stem}.out.*"))
        error = folder / f"{stem}.error.txt"
        headers = folder / f"{stem}.headers.json"
        found.append(Fixture(
            mapping_name, stem, path, outs[0] if outs else None,
            error if error.exists() else None, headers if headers.exists() else None,
        ))
    return found


def read_input(
    path: Path, mapping: CompiledMapping, headers: dict[str, str] | None = None
) -> Payload:
    ctype = INPUT_TYPES.get(path.suffix, "")
    if mapping.source == "fhir" and ctype == "json":
        ctype = "fhir+json"
    if not ctype:
        ctype = "hl7v2" if mapping.source == "hl7v2" else mapping.source
        ctype = "fhir+json" if ctype == "fhir" else ctype
    return Payload(path.read_bytes(), ctype, headers or {})


def load_headers(path: Path | None) -> dict[str, str]:
    if path is None:
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: headers must be a JSON object")
    return {str(k): str(v) for k, v in data.items()}


# -- canonical forms for comparison ----------------------------------------------------------


def canonical(outputs: list[Payload], target: str) -> str:
    """The text an expected file is compared with (also what ``--save`` writes)."""
    if not outputs:
        return ""
    if target in ("fhir", "json"):
        docs = [json.loads(o.body, parse_float=Decimal) for o in outputs]
        value: Any = docs[0] if len(docs) == 1 else docs
        return dumps(value, pretty=True, sort_keys=True).decode("utf-8") + "\n"
    if target == "hl7v2":
        return "\n\n".join(_hl7_lines(o.body.decode("utf-8")) for o in outputs) + "\n"
    return "\n\n".join(_xml(o.body) for o in outputs) + "\n"


def _hl7_lines(text: str) -> str:
    return "\n".join(s for s in text.replace("\r\n", "\r").replace("\n", "\r").split("\r") if s)


def _xml(body: bytes) -> str:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                             remove_blank_text=True)
    root = etree.fromstring(body, parser)
    text: str = etree.tostring(root, pretty_print=True, encoding="unicode")
    return text.rstrip("\n")


def canonical_expected(path: Path, target: str) -> str:
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        return ""
    if target in ("fhir", "json"):
        value = json.loads(text, parse_float=Decimal)
        return dumps(value, pretty=True, sort_keys=True).decode("utf-8") + "\n"
    if target == "hl7v2":
        return "\n\n".join(
            _hl7_lines(block) for block in text.replace("\r\n", "\n").split("\n\n") if block.strip()
        ) + "\n"
    return "\n\n".join(
        _xml(block.encode("utf-8")) for block in _xml_blocks(text)
    ) + "\n"


def _xml_blocks(text: str) -> Iterator[str]:
    for block in text.split("\n\n"):
        if block.strip():
            yield block.strip()


# -- running ---------------------------------------------------------------------------------


def run_fixture(mapping: CompiledMapping, fixture: Fixture) -> Outcome:
    """Run one fixture. FHIR resources are validated both ways (the fast check and
    fhir.resources), so a fixture also fails if the fast check would pass an invalid one."""
    mapping = dataclasses.replace(mapping, fhir_validation="both")
    try:
        headers = load_headers(fixture.headers)
        payload = read_input(fixture.input, mapping, headers)
    except (OSError, ValueError) as exc:
        return Outcome(fixture, False, f"cannot read fixture: {exc}")
    try:
        outputs = mapping.run(payload, now=FIXTURE_NOW)
    except MappingError as exc:
        if FAST_CHECK_WRONG in str(exc):
            return Outcome(fixture, False, str(exc))
        if fixture.error is not None:
            wanted = fixture.error.read_text(encoding="utf-8").strip()
            if wanted in str(exc):
                return Outcome(fixture, True)
            return Outcome(fixture, False,
                           f"expected an error containing:\n  {wanted}\ngot:\n  {exc}")
        return Outcome(fixture, False, f"mapping failed: {exc}")
    if fixture.error is not None:
        return Outcome(fixture, False, "expected a MappingError, but the mapping succeeded")
    if fixture.expected is None:
        return Outcome(fixture, False,
                       f"no expected output: add {fixture.name}.out{OUTPUT_EXT[mapping.target]}"
                       f" (hisbridge map ... --save {fixture.name} writes it)")
    actual = canonical(outputs, mapping.target)
    expected = canonical_expected(fixture.expected, mapping.target)
    if actual == expected:
        return Outcome(fixture, True)
    diff = difflib.unified_diff(
        expected.splitlines(keepends=True), actual.splitlines(keepends=True),
        fromfile=f"expected ({fixture.expected.name})", tofile="actual", n=3,
    )
    return Outcome(fixture, False, "".join(diff))


@dataclass
class Report:
    outcomes: list[Outcome]
    load_errors: list[str]
    without_fixtures: list[str]

    @property
    def failed(self) -> int:
        return sum(1 for o in self.outcomes if not o.passed) + len(self.load_errors)


def mapping_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(path.glob("*.toml"))


def run_all(path: Path) -> Report:
    """Load each mapping under ``path`` (a directory or one file) and run its fixtures."""
    report = Report([], [], [])
    for file in mapping_files(path):
        try:
            mapping = load_mapping(file)
        except ConfigError as exc:
            report.load_errors.append(str(exc))
            continue
        found = find_fixtures(file, mapping.name)
        if not found:
            report.without_fixtures.append(mapping.name)
        for fixture in found:
            report.outcomes.append(run_fixture(mapping, fixture))
    return report
