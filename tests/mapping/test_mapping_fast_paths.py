"""The interpreter's shortcuts give the answers of the general code they bypass.

Conditions on single-valued HL7 paths compare one string instead of going through the
general comparison; URL templates walk the resource directly; HL7 paths pick their
shortcut at load; output ids are formatted without UUID objects. Each is checked against
the general form, or the values it must give, on the same inputs.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from engine.contracts import Payload
from engine.errors import MappingError
from engine.hl7 import parse
from engine.mapping import CompiledMapping, conditions, load_mapping
from engine.mapping.conditions import compile_condition
from engine.mapping.hl7_paths import Hl7Scope, compile_hl7_path, root_scope
from engine.mapping.program import Run
from engine.mapping.specials import in_conditions

MESSAGE = (
    "MSH|^~\\&|HIS|H1|HB|H1|20260402141530||ADT^A01^ADT_A01|C1|P|2.5\r"
    "PID|1||111^^^H1^MR~222^^^CHN^NNCHN~^^^^HC~333^^^QDYB^\"\"||陈^国华||19620712|M\r"
    "PV1|1|I|W1^R2^B3||||||||||||||||Z1\r"
)


def _scopes() -> list[Hl7Scope]:
    root = root_scope(parse(MESSAGE.encode()))
    reps = compile_hl7_path("PID-3[*]").nodes(root, None)
    return [root, *reps]


class _General:
    """A path that hides ``single_text``, so conditions on it take the general route."""

    def __init__(self, text: str) -> None:
        self.path = compile_hl7_path(text)

    def values(self, scope: object, run: object) -> list[object]:
        return self.path.values(scope, run)  # type: ignore[arg-type]


def _compile(text: str, general: bool) -> conditions.Condition:
    def path(p: str) -> object:
        return _General(p) if general else compile_hl7_path(p)

    return compile_condition(text, in_conditions(path))


@pytest.mark.parametrize(
    "text",
    [f"{path} {op} {value}" for path, op, value in itertools.product(
        [".5", ".1", ".4", "PID-8", "PID-7", "PV1-2", "PV1-45", "MSH-2", "PID-3.5"],
        ["=", "!="], ['"MR"', '""', '"M"', '"I"', '"111"', '"^~\\\\&"'],
    )] + [f"{path} in {options}" for path, options in itertools.product(
        [".5", ".1", "PID-8", "PV1-2", "PV1-45", "PID-3.5"],
        ['("MR", "MRN", "PI", "")', '("NNCHN", "HC")', '("M")', '("")'],
    )] + ['not .5 in ("MR", "") and .1', '.5 = "HC" or .4 = "QDYB"', 'PID-8 != "F"'],
)
def test_text_comparisons_answer_as_the_general_ones(text: str) -> None:
    fast, general = _compile(text, False), _compile(text, True)
    if " or " not in text and " and " not in text and not text.startswith("not"):
        assert type(fast).__name__ in ("_EqualsText", "_InTexts")
        assert type(general).__name__ in ("_Compare", "_In")
    for scope in _scopes():
        assert fast.test(scope, None) is general.test(scope, None), (text, scope.rep)


def test_multi_valued_and_numeric_comparisons_keep_the_general_route() -> None:
    assert type(_compile('PID-3[*].5 = "HC"', False)).__name__ == "_Compare"
    assert type(_compile("PID-1 = 1", False)).__name__ == "_Compare"
    assert type(_compile('PID-3[*].5 in ("HC")', False)).__name__ == "_In"
    assert type(_compile("@index = 1", False)).__name__ == "_Compare"


def _fhir(tmp_path: Path, body: str) -> CompiledMapping:
    path = tmp_path / "m.toml"
    path.write_text('source = "hl7v2"\ntarget = "fhir"\nbundle = "transaction"\n' + body,
                    encoding="utf-8")
    return load_mapping(path)


def test_url_templates_quote_values_and_read_any_index(tmp_path: Path) -> None:
    mapping = _fhir(tmp_path, """
[[output]]
name = "p"
resource = "Patient"
url = "Patient?identifier={identifier[-1].system}|{identifier[1].value}&name={name[0].text}"
[[output.rule]]
each = "PID-3[*] where .1"
to = "identifier[+]"
rule = [
  { from = ".1", to = ".value" },
  { from = ".4", transform = [{ template = "urn:x:{}" }], to = ".system" },
]
[[output.rule]]
from = ["PID-5.1", "PID-5.2"]
transform = [{ join = " " }]
to = "name[0].text"
""")
    [out] = mapping.apply(Payload(MESSAGE.encode(), "hl7v2"))
    [entry] = json.loads(out.body)["entry"]
    assert entry["request"]["url"] == (
        "Patient?identifier=urn:x:QDYB|222&name=%E9%99%88%20%E5%9B%BD%E5%8D%8E"
    )


def test_url_template_without_a_value_is_a_mapping_error(tmp_path: Path) -> None:
    mapping = _fhir(tmp_path, """
[[output]]
name = "p"
resource = "Patient"
url = "Patient?identifier={identifier[5].value}"
[[output.rule]]
from = "PID-3.1"
to = "identifier[0].value"
""")
    with pytest.raises(MappingError, match=r"\{identifier\[5\].value\} has no value"):
        mapping.apply(Payload(MESSAGE.encode(), "hl7v2"))


def test_repeated_date_conversions_refuse_bad_dates_every_time(tmp_path: Path) -> None:
    path = tmp_path / "d.toml"
    path.write_text('source = "hl7v2"\ntarget = "json"\n[[rule]]\nfrom = "PID-7"\n'
                    'transform = ["hl7_to_iso"]\nto = "d"\n', encoding="utf-8")
    mapping = load_mapping(path)
    good = MESSAGE.encode()
    bad = MESSAGE.replace("19620712", "19621312").encode()
    for _ in range(3):
        [out] = mapping.apply(Payload(good, "hl7v2"))
        assert out.body == b'{"d":"1962-07-12"}'
        with pytest.raises(MappingError, match="HL7 date/time out of range"):
            mapping.apply(Payload(bad, "hl7v2"))


@pytest.mark.parametrize(
    ("path", "values"),
    [
        ("PID", ["PID"]), ("MSH", ["MSH"]), ("MSH-1", ["|"]), ("MSH-2", ["^~\\&"]),
        ("MSH-9.2", ["A01"]), ("IN1", []), ("PID-3.4", ["H1"]), ("PID[1]-3", ["111"]),
        ("PID[2]-3", []), ("PID-3[2].5", ["NNCHN"]), ("PID-3[4].5", []), ("PID-5.2", ["国华"]),
        ("PID-3[*].4", ["H1", "CHN", "QDYB"]),
    ],
)
def test_hl7_path_shortcuts_read_what_the_path_names(path: str, values: list[str]) -> None:
    root = root_scope(parse(MESSAGE.encode()))
    assert compile_hl7_path(path).values(root, None) == values


def test_output_ids_are_the_uuids_they_always_were() -> None:
    for n in range(500):
        run = Run(None, {}, datetime.now(UTC), hashlib.blake2b(str(n).encode()).digest()[:16])
        for salt in ("patient/0", "encounter/3", ""):
            assert run.make_id(salt) == str(run.make_uuid(salt))
