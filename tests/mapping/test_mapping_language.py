"""The mapping language feature by feature: paths, conditions, transforms, outputs, errors."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from engine.contracts import Payload
from engine.errors import MappingError
from engine.mapping import CompiledMapping, load_mapping
from engine.mapping.fixtures import FIXTURE_NOW

ADT = (
    "MSH|^~\\&|HIS|H1|HB|H1|20260402141530||ADT^A01^ADT_A01|C1|P|2.5|||||CHN|UNICODE UTF-8\r"
    "EVN|A01|20260402141530\r"
    "PID|1||111^^^H1^MR~222^^^CHN^NNCHN~333^^^QDYB^HC||陈^国华^^^^^L||19620712|M|||"
    "文三路88号\\F\\2楼^^杭州市^浙江省||^PRN^PH^^^^^^^^^139~^PRN^CP^^^^^^^^^138\r"
    "PV1|1|I|W1^R2^B3||||D1^黄^伟||||||||||||Z1|||||||||||||||||||||||||20260402141530\r"
    "NTE|1||first line\\.br\\second\r"
)


def mapping(tmp_path: Path, text: str, name: str = "m") -> CompiledMapping:
    path = tmp_path / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return load_mapping(path)


def to_json(tmp_path: Path, rules: str, body: str = ADT, source: str = "hl7v2",
            **headers: str) -> Any:
    m = mapping(tmp_path, f'source = "{source}"\ntarget = "json"\n{rules}')
    ctype = {"hl7v2": "hl7v2", "json": "json", "fhir": "fhir+json", "xml": "xml"}[source]
    outputs = m.run(Payload(body.encode(), ctype, headers), now=FIXTURE_NOW)
    return [json.loads(o.body, parse_float=Decimal) for o in outputs]


def one(tmp_path: Path, rules: str, body: str = ADT, source: str = "hl7v2",
        **headers: str) -> Any:
    [doc] = to_json(tmp_path, rules, body, source, **headers)
    return doc


def rule(src: str, **extra: str) -> str:
    lines = [f"[[rule]]\nfrom = '{src}'\nto = \"v[*]\""]
    lines += [f"{k} = {v}" for k, v in extra.items()]
    return "\n".join(lines)


# -- HL7 paths -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "values"),
    [
        ("PID-3", ["111"]),
        ("PID-3.1", ["111"]),
        ("PID-3[2].1", ["222"]),
        ("PID-3[3].4", ["QDYB"]),
        ("PID-3[4].1", []),
        ("PID-3[*].1", ["111", "222", "333"]),
        ("PID-3[*].5", ["MR", "NNCHN", "HC"]),
        ('PID-3[*].1 where .5 = "NNCHN"', ["222"]),
        ('PID-3[*] where .5 in ("MR", "HC")', ["111", "333"]),
        ('PID-3[*].4 where not .5 = "MR"', ["CHN", "QDYB"]),
        ("PID-3[*].1 where @index > 1", ["222", "333"]),
        ("PID-5.2", ["国华"]),
        ("PID-5", ["陈"]),
        ("PID-11.1", ["文三路88号|2楼"]),
        ("PID-13[*].12", ["139", "138"]),
        ("MSH-1", ["|"]),
        ("MSH-2", ["^~\\&"]),
        ("MSH-9", ["ADT"]),
        ("MSH-9.2", ["A01"]),
        ("MSH-17", ["CHN"]),
        ("PV1-3.2", ["R2"]),
        ("PV1-99", []),
        ("ZZZ-1", []),
        ("NTE-3", ["first line\nsecond"]),
        ("EVN[1]-1", ["A01"]),
        ("EVN[2]-1", []),
    ],
)
def test_hl7_paths(tmp_path: Path, path: str, values: list[str]) -> None:
    doc = one(tmp_path, rule(path))
    assert doc.get("v", []) == values


def test_hl7_null_and_gbk(tmp_path: Path) -> None:
    body = ("MSH|^~\\&|HIS|H1|||20260101||ADT^A08|C2|P|2.5||||||GB18030\r"
            'PID|1||9^^^H1^MR||""^张||""\r').encode("gb18030")
    m = mapping(tmp_path, 'source = "hl7v2"\ntarget = "json"\n'
                '[[rule]]\nfrom = "PID-5.1"\nto = "family"\ndefault = "none"\n'
                '[[rule]]\nfrom = "PID-5.2"\nto = "given"\n'
                '[[rule]]\nfrom = "PID-7"\nto = "birth"\n')
    [out] = m.apply(Payload(body, "hl7v2"))
    assert json.loads(out.body) == {"family": "none", "given": "张"}


def test_segment_groups_resolve_inside_the_group(tmp_path: Path) -> None:
    body = (
        "MSH|^~\\&|LIS|H1|||20260511||ORU^R01|C3|P|2.5\rPID|1||9\r"
        "OBR|1|A|RA|GLU\rOBX|1|NM|GLU||7.8\rOBX|2|NM|K||4.1\rNTE|1||note for K\r"
        "OBR|2|B|RB|NA\rOBX|1|NM|NA||140\r"
    )
    doc = one(tmp_path, """
[[rule]]
each = "OBR[*]"
to = "reports[+]"
rule = [
  { from = "OBR-3", to = ".id" },
  { from = "OBX[*]-3", to = ".codes[*]" },
  { from = "PID-3", to = ".patient" },
  { from = "NTE-3", to = ".note" },
]
[[rule]]
each = "OBX[*]"
to = "results[+]"
rule = [
  { from = "OBR-3", to = ".report" },
  { from = "NTE-3", to = ".note" },
  { from = "-5", to = ".value" },
]
""", body)
    assert doc["reports"] == [
        {"id": "RA", "codes": ["GLU", "K"], "patient": "9", "note": "note for K"},
        {"id": "RB", "codes": ["NA"], "patient": "9"},
    ]
    # An OBX sees the OBR it belongs to (not the next order's) and only its own notes.
    assert doc["results"] == [
        {"report": "RA", "value": "7.8"},
        {"report": "RA", "value": "4.1", "note": "note for K"},
        {"report": "RB", "value": "140"},
    ]


# -- JSON paths ------------------------------------------------------------------------------

PATIENT = json.dumps({
    "resourceType": "Patient",
    "identifier": [{"system": "a", "value": "1"}, {"system": "b", "value": "2"}],
    "name": [{"family": "张", "given": ["晓", "明"]}],
    "active": True,
    "multipleBirthInteger": 2,
    "extension": [{"url": "x.y", "valueDecimal": 12.50}],
    "odd key": {"a.b": "dotted"},
})


@pytest.mark.parametrize(
    ("path", "values"),
    [
        ("identifier[0].value", ["1"]),
        ("identifier[-1].value", ["2"]),
        ("identifier[*].value", ["1", "2"]),
        ('identifier[*].value where .system = "b"', ["2"]),
        ("identifier[*].value where @index = 2", ["2"]),
        ("identifier[5].value", []),
        ("name[0].given[1]", ["明"]),
        ("name[*].family", ["张"]),
        ("name.family", []),
        ("active", [True]),
        ("multipleBirthInteger", [2]),
        ("extension[0].valueDecimal", [Decimal("12.5")]),
        ('["odd key"]["a.b"]', ["dotted"]),
    ],
)
def test_json_paths(tmp_path: Path, path: str, values: list[Any]) -> None:
    doc = one(tmp_path, rule(path), PATIENT, "fhir")
    assert doc.get("v", []) == values


# -- conditions ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "result"),
    [
        ("PV1-19", True),
        ("PV1-45", False),
        ('PV1-2 = "I"', True),
        ('PV1-2 != "I"', False),
        ('PV1-45 = ""', True),
        ('PV1-45 != "X"', True),
        ('PV1-2 in ("O", "I")', True),
        ('PID-3[*].5 = "HC"', True),
        ('PID-7 > 19620101', True),
        ("PID-7 < 1", False),
        ("PID-5 > 1", False),
        ('PID-13[*].12 matches "^13[89]$"', True),
        ('PID-13[*].12 matches "^\\d{4}$"', False),
        ('not PV1-2 = "O" and (PV1-45 or MSH-9.2 = "A01")', True),
        ('PV1-45 or PV1-44 and PV1-2 = "O"', False),
        ("PID-3.1 = PID-3[1].1", True),
        ('`PID-3[*] where .5 = "HC"`', True),
        ('@header:insutype = "310"', True),
        ("@header:missing", False),
    ],
)
def test_conditions(tmp_path: Path, condition: str, result: bool) -> None:
    text = f"[[rule]]\nvalue = true\nto = \"hit\"\nwhen = '{condition}'"
    doc = one(tmp_path, text, insutype="310")
    assert doc.get("hit", False) is result


def test_mapping_when_filters_the_message(tmp_path: Path) -> None:
    m = mapping(tmp_path, 'source = "hl7v2"\ntarget = "json"\nwhen = \'MSH-9.2 = "A08"\'\n'
                '[[rule]]\nvalue = 1\nto = "x"')
    assert m.apply(Payload(ADT.encode(), "hl7v2")) == []


# -- transforms ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "transform", "expected"),
    [
        ("20260402141530", '"hl7_to_iso"', "2026-04-02T14:15:30+08:00"),
        ("19620712", '"hl7_to_iso"', "1962-07-12"),
        ("196207", '"hl7_to_iso"', "1962-07"),
        ("202604021415", '"hl7_to_iso"', "2026-04-02T14:15:00+08:00"),
        ("20260402141530.25+0000", '"hl7_to_iso"', "2026-04-02T14:15:30.25+00:00"),
        ("2026-04-02T06:15:30Z", '"iso_to_hl7"', "20260402141530"),
        ("1962-07-12", '"iso_to_hl7"', "19620712"),
        ("2026-04-02T14:15:30+08:00",
         '{ datetime = { from = "iso", to = "hl7", offset = true } }', "20260402141530+0800"),
        ("2026-04-02 14:15:30",
         '{ datetime = { from = "yyyy-MM-dd HH:mm:ss", to = "iso" } }',
         "2026-04-02T14:15:30+08:00"),
        ("20260402141530", '{ datetime = { from = "hl7", to = "yyyyMMddHHmmssSSS" } }',
         "20260402141530000"),
        ("20260402235959+0000", '{ datetime = { from = "hl7", to = "date" } }', "2026-04-03"),
        ("12.30", '"yuan_to_fen"', 1230),
        ("1230", '"fen_to_yuan"', Decimal("12.30")),
        ("2.5", '{ decimal = 0 }', Decimal("3")),
        ("2.5", '{ decimal = { scale = 0, rounding = "half_even" } }', Decimal("2")),
        ("-1.005", '{ decimal = 2 }', Decimal("-1.01")),
        ("1,234.5", '{ decimal = 2 }', Decimal("1234.50")),
        ("42", '"integer"', 42),
        ("  a b  ", '"trim"', "a b"),
        ("370202198503150021", '{ slice = [6, 14] }', "19850315"),
        ("370202198503150021", '{ slice = [-1] }', "1"),
        ("7", '{ pad_left = { width = 3, fill = "0" } }', "007"),
        ("a b&c", '"url_encode"', "a%20b%26c"),
        ("x-1-y", '{ regex = { pattern = "(\\\\w)-(\\\\d)", group = 2 } }', "1"),
        ("abc", '{ regex = "z(.)" }', None),
        ("a.b.c", '{ replace = { pattern = "\\\\.", with = "\\\\1" } }', "a\\1b\\1c"),
        ("a,b", '{ split = { sep = ",", index = -1 } }', "b"),
        ("M", '{ map = { M = "male", "*" = "other:{}" } }', "male"),
        ("X", '{ map = { M = "male", "*" = "other:{}" } }', "other:X"),
    ],
)
def test_transforms(tmp_path: Path, value: str, transform: str, expected: Any) -> None:
    body = json.dumps({"x": value})
    doc = one(tmp_path, f'[[rule]]\nfrom = "x"\ntransform = [{transform}]\nto = "y"', body, "json")
    assert doc.get("y") == expected


@pytest.mark.parametrize(
    ("value", "transform", "problem"),
    [
        ("12.345", '"yuan_to_fen"', "amount has fractions of a fen"),
        ("12.5", '"fen_to_yuan"', "an amount in fen must be a whole number"),
        ("abc", '{ decimal = 2 }', "not a decimal number"),
        ("NaN", '"decimal"', "not a finite number"),
        ("2.5", '"integer"', "not a whole number"),
        ("19621312", '"hl7_to_iso"', "HL7 date/time out of range"),
        ("1962-07-12", '"hl7_to_iso"', "not an HL7 date/time"),
        ("X", '{ map = { M = "male" } }', "code 'X' is not in lookup table (inline map)"),
    ],
)
def test_transform_problems_are_mapping_errors(
    tmp_path: Path, value: str, transform: str, problem: str
) -> None:
    body = json.dumps({"x": value})
    with pytest.raises(MappingError) as err:
        one(tmp_path, f'[[rule]]\nfrom = "x"\ntransform = [{transform}]\nto = "y"', body, "json")
    text = str(err.value)
    assert problem in text
    assert "m.toml: rule[0] (from 'x' to 'y'): transform " in text


def test_list_transforms(tmp_path: Path) -> None:
    body = json.dumps({"a": ["", "x", "y"], "b": "1;2;;3", "n": None})
    doc = one(tmp_path, """
[[rule]]
from = ["n", "a"]
transform = ["first"]
to = "first"
[[rule]]
from = "a"
transform = ["last"]
to = "last"
[[rule]]
from = ["a", "b"]
transform = [{ join = "+" }]
to = "joined"
[[rule]]
from = "b"
transform = [{ split = ";" }, { pad_left = 2 }]
to = "parts[*]"
[[rule]]
from = "n"
transform = [{ default = "d" }, "upper"]
to = "defaulted"
""", body, "json")
    assert doc == {"first": "x", "last": "y", "joined": "x+y+1;2;;3",
                   "parts": ["01", "02", "03"], "defaulted": "D"}


def test_specials(tmp_path: Path) -> None:
    docs = to_json(tmp_path, """
[[rule]]
from = "@now"
to = "now"
[[rule]]
from = "@uuid"
to = "id"
[[rule]]
each = "PID-3[*]"
to = "ids[+]"
rule = [{ from = "@index", to = ".i" }, { from = "@seq", to = ".seq" }]
[[rule]]
from = "@seq"
to = "after"
""")
    doc = docs[0]
    assert doc["now"] == "2026-01-01T08:00:00+08:00"
    assert len(doc["id"]) == 36
    assert to_json(tmp_path, "[[rule]]\nfrom = \"@now\"\nto = \"now\"\n[[rule]]\nfrom = \"@uuid\"\n"
                   "to = \"id\"")[0]["id"] == doc["id"]
    assert doc["ids"] == [{"i": 1, "seq": 1}, {"i": 2, "seq": 2}, {"i": 3, "seq": 3}]
    assert doc["after"] == 4


# -- targets and output ----------------------------------------------------------------------


def test_json_targets_and_decimals(tmp_path: Path) -> None:
    body = json.dumps({"amount": "180", "items": [{"c": "A"}, {"c": "B"}]})
    doc_text = mapping(tmp_path, """
source = "json"
target = "json"
[[rule]]
from = "amount"
transform = [{ decimal = 2 }]
to = "total"
[[rule]]
each = "items[*]"
to = "rows[+]"
rule = [{ from = ".c", to = ".code" }, { from = "missing", to = ".never" }]
[[rule]]
value = "x"
to = "rows[=].last"
[[rule]]
each = "items[*]"
to = "empty[+]"
rule = [{ from = ".none", to = ".x" }]
[[rule]]
value = 1.10
to = "const"
""").apply(Payload(body.encode(), "json"))[0].body.decode()
    assert doc_text == (
        '{"total":180.00,"rows":[{"code":"A"},{"code":"B","last":"x"}],"const":1.1}'
    )


def test_decimals_as_strings(tmp_path: Path) -> None:
    m = mapping(tmp_path, 'source = "json"\ntarget = "json"\ndecimals = "string"\n'
                '[[rule]]\nfrom = "a"\ntransform = [{ decimal = 2 }]\nto = "a"')
    [out] = m.apply(Payload(b'{"a": 3}', "json"))
    assert out.body == b'{"a":"3.00"}'


def test_target_conflict_is_a_mapping_error(tmp_path: Path) -> None:
    wanted = r"rule\[1\] \(to 'a.b'\): target a.b: 'a' holds a value, not an object"
    with pytest.raises(MappingError, match=wanted):
        one(tmp_path, '[[rule]]\nvalue = "x"\nto = "a"\n[[rule]]\nvalue = "y"\nto = "a.b"')


def test_output_each_and_when_make_several_payloads(tmp_path: Path) -> None:
    docs = to_json(tmp_path, """
[[output]]
name = "id"
each = "PID-3[*]"
when = '.5 != "HC"'
[[output.rule]]
from = ".1"
to = "value"
[[output.rule]]
from = "@index"
to = "n"
""")
    assert docs == [{"value": "111", "n": 1}, {"value": "222", "n": 2}]


# -- FHIR ------------------------------------------------------------------------------------

FHIR_HEAD = 'source = "hl7v2"\ntarget = "fhir"\n'


def test_invalid_resource_is_a_mapping_error_with_the_validation_message(tmp_path: Path) -> None:
    m = mapping(tmp_path, FHIR_HEAD + 'resource = "Patient"\n'
                '[[rule]]\nfrom = "PID-5"\nto = "birthDate"\n')
    with pytest.raises(MappingError) as err:
        m.apply(Payload(ADT.encode(), "hl7v2"))
    text = str(err.value)
    assert "m.toml: output (item 1): not a valid FHIR Patient: birthDate:" in text
    assert "陈" not in text  # the value is not quoted


def test_validation_can_be_switched_off(tmp_path: Path) -> None:
    m = mapping(tmp_path, FHIR_HEAD + 'resource = "Patient"\nvalidate = false\n'
                '[[rule]]\nfrom = "PID-5"\nto = "birthDate"\n')
    [out] = m.apply(Payload(ADT.encode(), "hl7v2"))
    assert json.loads(out.body)["birthDate"] == "陈"


def test_separate_resources_mode(tmp_path: Path) -> None:
    m = mapping(tmp_path, FHIR_HEAD + """
bundle = "none"
[[output]]
name = "patient"
resource = "Patient"
[[output.rule]]
from = "PID-3.1"
to = "identifier[0].value"
[[output]]
name = "encounter"
resource = "Encounter"
method = "POST"
[[output.rule]]
value = "in-progress"
to = "status"
[[output.rule]]
value = "IMP"
to = "class.code"
[[output.rule]]
ref = "patient"
to = "subject.reference"
""")
    patient, encounter = m.apply(Payload(ADT.encode(), "hl7v2", {"trace": "t1"}))
    p, e = json.loads(patient.body), json.loads(encounter.body)
    assert patient.content_type == encounter.content_type == "fhir+json"
    assert e["subject"]["reference"] == f"Patient/{p['id']}"
    assert patient.headers == {
        "trace": "t1", "mapping": "m", "fhir-resource-type": "Patient",
        "fhir-method": "PUT", "fhir-url": f"Patient/{p['id']}",
    }
    assert encounter.headers["fhir-method"] == "POST"
    # Ids are derived from the input: the same message gives the same ids.
    again, _ = m.apply(Payload(ADT.encode(), "hl7v2", {"trace": "t1"}))
    assert json.loads(again.body)["id"] == p["id"]


def test_url_template_needs_its_values(tmp_path: Path) -> None:
    m = mapping(tmp_path, FHIR_HEAD + 'resource = "Patient"\nbundle = "transaction"\n'
                'url = "Patient?identifier={identifier[0].system}|{identifier[0].value}"\n'
                '[[rule]]\nfrom = "PID-3.1"\nto = "identifier[0].value"\n')
    with pytest.raises(MappingError, match=r"\{identifier\[0\].system\} has no value"):
        m.apply(Payload(ADT.encode(), "hl7v2"))


# -- inputs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "ctype", "problem"),
    [
        (b"not hl7 at all", "hl7v2", "input: not a usable HL7 v2 message"),
        (ADT.encode(), "json", "this mapping reads hl7v2, got 'json'"),
        (b"MSH|^~\\&|A|B|||20260101||ADT^A01||P|2.5\r", "hl7v2", "MSH-10"),
    ],
)
def test_unusable_input_is_a_mapping_error(
    tmp_path: Path, body: bytes, ctype: str, problem: str
) -> None:
    m = mapping(tmp_path, 'source = "hl7v2"\ntarget = "json"\n[[rule]]\nvalue = 1\nto = "x"')
    with pytest.raises(MappingError, match=problem):
        m.apply(Payload(body, ctype))


def test_bad_json_and_hostile_xml_input(tmp_path: Path) -> None:
    j = mapping(tmp_path, 'source = "json"\ntarget = "json"\n[[rule]]\nvalue = 1\nto = "x"', "j")
    with pytest.raises(MappingError, match="input: not valid JSON"):
        j.apply(Payload(b"{nope", "json"))
    x = mapping(tmp_path, 'source = "xml"\ntarget = "json"\n[[rule]]\nfrom = "/a"\nto = "x"', "x")
    bomb = (b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY e "lol"><!ENTITY f "&e;&e;&e;">]>'
            b"<a>&f;</a>")
    with pytest.raises(MappingError, match="DOCTYPE or entity declarations is refused"):
        x.apply(Payload(bomb, "xml"))
    external = b'<?xml version="1.0"?><!DOCTYPE a SYSTEM "http://127.0.0.1:1/x.dtd"><a/>'
    with pytest.raises(MappingError, match="refused"):
        x.apply(Payload(external, "xml"))
    with pytest.raises(MappingError, match="malformed XML"):
        x.apply(Payload(b"<a><b></a>", "xml"))
    [out] = x.apply(Payload(b"<a>ok</a>", "xml"))
    assert json.loads(out.body) == {"x": "ok"}


def test_batch_bundle_with_conditional_create(tmp_path: Path) -> None:
    m = mapping(tmp_path, FHIR_HEAD + """
bundle = "batch"
[[output]]
name = "patient"
resource = "Patient"
method = "POST"
if_none_exist = "identifier={identifier[0].value}"
[[output.rule]]
from = "PID-3.1"
to = "identifier[0].value"
""")
    [out] = m.apply(Payload(ADT.encode(), "hl7v2"))
    doc = json.loads(out.body)
    assert doc["type"] == "batch"
    assert doc["entry"][0]["request"] == {
        "method": "POST", "url": "Patient", "ifNoneExist": "identifier=111",
    }
    assert out.headers == {"mapping": "m", "fhir-resource-type": "Bundle"}
