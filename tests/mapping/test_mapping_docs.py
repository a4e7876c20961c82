"""Every worked example in docs/mappings.md runs and produces exactly the output shown.

An example is three fenced blocks sharing a name: ```toml example=NAME (the mapping),
```<lang> input=NAME and ```<lang> output=NAME (optionally ```json headers=NAME). They run
the way ``hisbridge test`` runs fixtures (fixed clock), beside a copy of the standard lookup
tables, so the documentation cannot drift from the behaviour.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from engine.contracts import Payload
from engine.mapping.fixtures import FIXTURE_NOW, canonical, canonical_expected
from engine.mapping.loader import load_mapping

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "mappings.md"
_BLOCK = re.compile(r"^```(\w+) (example|input|output|headers)=([\w-]+)\n(.*?)^```$", re.M | re.S)
_TYPES = {"hl7": "hl7v2", "json": "json", "xml": "xml"}


def _examples() -> dict[str, dict[str, tuple[str, str]]]:
    found: dict[str, dict[str, tuple[str, str]]] = {}
    for lang, role, name, body in _BLOCK.findall(DOC.read_text(encoding="utf-8")):
        found.setdefault(name, {})[role] = (lang, body)
    return found


EXAMPLES = _examples()


def test_the_reference_has_worked_examples() -> None:
    assert len(EXAMPLES) >= 18
    for name, parts in EXAMPLES.items():
        assert {"example", "input", "output"} <= set(parts), f"example {name} is incomplete"


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_doc_example(name: str, tmp_path: Path) -> None:
    parts = EXAMPLES[name]
    shutil.copytree(ROOT / "mappings" / "lookups", tmp_path / "lookups")
    mapping_file = tmp_path / f"{name}.toml"
    mapping_file.write_text(parts["example"][1], encoding="utf-8")
    mapping = load_mapping(mapping_file)
    in_lang, in_text = parts["input"]
    if in_lang == "hl7":
        body = in_text.strip().replace("\n", "\r").encode("utf-8") + b"\r"
        ctype = "hl7v2"
    else:
        body = in_text.encode("utf-8")
        ctype = "fhir+json" if mapping.source == "fhir" else _TYPES[in_lang]
    headers = json.loads(parts["headers"][1]) if "headers" in parts else {}
    outputs = mapping.run(Payload(body, ctype, headers), now=FIXTURE_NOW)
    expected_file = tmp_path / "expected.txt"
    expected_file.write_text(parts["output"][1], encoding="utf-8")
    assert canonical(outputs, mapping.target) == canonical_expected(
        expected_file, mapping.target
    )
