"""HL7 v2 output: hostile values are escaped and can never add a field or a segment."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine.contracts import Payload
from engine.hl7 import parse
from engine.mapping import CompiledMapping, load_mapping

ROOT = Path(__file__).resolve().parents[2]
HOSTILE = [
    "|", "^", "~", "\\", "&", "\r", "\n", "\r\n",
    "A|B^C~D\\E&F",
    "陈\rMSH|^~\\&|EVIL|X\rPID|1||666",
    "x\nOBX|1|ST|EVIL||pwned",
    "\\F\\ already escaped \\.br\\",
    "|||||||||||",
    "end with escape \\",
]


@pytest.fixture(scope="module")
def a08() -> CompiledMapping:
    return load_mapping(ROOT / "mappings" / "patient_to_adt_a08.toml")


def patient(value: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"type": {"coding": [{"code": "MR"}]}, "value": value,
                        "assigner": {"display": value}}],
        "name": [{"family": value, "given": [value]}],
        "address": [{"line": [value], "city": value}],
        "telecom": [{"system": "phone", "value": value}],
        "birthDate": "1985-03-15",
        "gender": "female",
    }


def map_patient(mapping: CompiledMapping, value: str) -> bytes:
    [out] = mapping.apply(Payload(json.dumps(patient(value)).encode(), "fhir+json"))
    return out.body


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_are_escaped_and_read_back(a08: CompiledMapping, value: str) -> None:
    benign = parse(map_patient(a08, "benign"))
    body = map_patient(a08, value)
    msg = parse(body)
    # Same segments, same number of fields and repetitions as with a harmless value.
    assert [s[:3] for s in msg.segments] == [s[:3] for s in benign.segments] == [
        "MSH", "EVN", "PID", "PV1",
    ]
    assert body.count(b"\r") == 4
    assert b"\n" not in body
    pid = msg.fields(2)
    assert len(pid) == len(benign.fields(2))
    for n in (3, 5, 11, 13):
        assert pid[n].count(msg.repetition_sep) == benign.fields(2)[n].count("~")
        assert pid[n].count(msg.component_sep) == benign.fields(2)[n].count("^")
    # Each value reads back as it was sent (line breaks come back as one line break).
    expected = value.replace("\r\n", "\n").replace("\r", "\n")

    def read(field: int, comp: int) -> str:
        return msg.unescape(msg.get("PID", field, comp)).replace("\r", "\n")

    assert read(3, 1) == expected
    assert read(3, 4) == expected
    assert read(5, 1) == expected
    assert read(5, 2) == expected
    assert read(11, 1) == expected
    assert read(11, 3) == expected
    assert read(13, 12) == expected


def test_an_injected_segment_stays_text(a08: CompiledMapping) -> None:
    body = map_patient(a08, "陈\rMSH|^~\\&|EVIL|X\rPID|1||666")
    assert body.count(b"MSH|") == 1
    assert b"\\.br\\MSH\\F\\\\S\\\\R\\\\E\\\\T\\\\F\\EVIL" in body
    assert parse(body).get("MSH", 3) == "HISBRIDGE"


def test_generated_msh(a08: CompiledMapping) -> None:
    body = map_patient(a08, "x")
    msg = parse(body)
    assert body.startswith(b"MSH|^~\\&|HISBRIDGE|")
    assert msg.message_type == "ADT^A08"
    assert msg.version == "2.5"
    assert msg.get("MSH", 11) == "P"
    assert msg.get("MSH", 18) == "UNICODE UTF-8"
    assert len(msg.get("MSH", 7)) == 14
    assert len(msg.control_id) == 20
    # The same input gives the same control id (a replay is recognisable), another does not.
    assert parse(map_patient(a08, "x")).control_id == msg.control_id
    assert parse(map_patient(a08, "y")).control_id != msg.control_id


def test_hl7_targets_repetitions_segments_and_spread(tmp_path: Path) -> None:
    (tmp_path / "m.toml").write_text(
        """
source = "json"
target = "hl7v2"
[hl7]
message_type = "ORU^R01^ORU_R01"
version = "2.4"
[[rule]]
from = "codes[*]"
to = "PID-3[*].1"
[[rule]]
each = "results[*]"
to = "OBX[+]"
rule = [
  { from = "@index", to = "-1" },
  { value = "NM", to = "-2" },
  { from = ".code", to = "-3.1" },
  { from = ".value", to = "-5" },
]
[[rule]]
from = "notes[*]"
to = "NTE[*]-3"
[[rule]]
value = "LAB"
to = "MSH-3"
""",
        encoding="utf-8",
    )
    mapping = load_mapping(tmp_path / "m.toml")
    data = {"codes": ["A", "B"], "results": [{"code": "GLU", "value": 7.8},
                                             {"code": "K", "value": "4.10"}],
            "notes": ["n1", "n2"]}
    [out] = mapping.apply(Payload(json.dumps(data).encode(), "json"))
    lines = out.body.decode().split("\r")
    assert lines[0].startswith("MSH|^~\\&|LAB||||")
    assert "|ORU^R01^ORU_R01|" in lines[0] and "|P|2.4|" in lines[0]
    assert lines[1:] == ["PID|||A~B", "OBX|1|NM|GLU||7.8", "OBX|2|NM|K||4.10",
                         "NTE|||n1", "NTE|||n2", ""]


def test_a08_output_is_a_valid_hl7apy_adt_a01_structure() -> None:
    """The reverse mapping's message passes hl7apy's strict structure validation."""
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_message

    mapping = load_mapping(ROOT / "mappings" / "patient_to_adt_a08.toml")
    source = ROOT / "mappings" / "fixtures" / "patient_to_adt_a08" / "zhang_xiaoming.in.json"
    [out] = mapping.apply(Payload(source.read_bytes(), "fhir+json"))
    message = parse_message(out.body.decode(), validation_level=VALIDATION_LEVEL.STRICT,
                            find_groups=True)
    assert message.name == "ADT_A01"
    assert message.validate() is True
    assert message.pid.pid_5.xpn_1.value == "张"


def test_output_is_encoded_as_msh18_declares(tmp_path: Path) -> None:
    (tmp_path / "gb.toml").write_text(
        'source = "json"\ntarget = "hl7v2"\n[hl7]\nmessage_type = "ADT^A08^ADT_A01"\n'
        'charset = "GB 18030-2000"\n[[rule]]\nfrom = "name"\nto = "PID-5.1"\n',
        encoding="utf-8",
    )
    mapping = load_mapping(tmp_path / "gb.toml")
    [out] = mapping.apply(Payload('{"name": "陈国华"}'.encode(), "json"))
    assert "陈国华".encode("gb18030") in out.body
    msg = parse(out.body)  # decoded again by MSH-18
    assert msg.encoding == "gb18030" and msg.get("PID", 5) == "陈国华"
    (tmp_path / "latin.toml").write_text(
        'source = "json"\ntarget = "hl7v2"\n[hl7]\nmessage_type = "ADT^A08"\n'
        'charset = "8859/1"\n[[rule]]\nfrom = "name"\nto = "PID-5.1"\n', encoding="utf-8",
    )
    latin = load_mapping(tmp_path / "latin.toml")
    from engine.errors import MappingError

    with pytest.raises(MappingError, match=r"cannot be written in latin-1 \(MSH-18\)"):
        latin.apply(Payload('{"name": "陈"}'.encode(), "json"))
