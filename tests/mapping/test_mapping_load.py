"""Loading mappings: every problem is found before the first message, named by file and rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.mapping import CompiledMapping, load_mapping, load_mappings

ROOT = Path(__file__).resolve().parents[2]

HEAD = 'source = "hl7v2"\ntarget = "fhir"\nresource = "Patient"\n'


def problems(tmp_path: Path, text: str, name: str = "m.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_mapping(path)
    return str(err.value)


def test_the_standard_library_loads() -> None:
    loaded = load_mappings(ROOT / "mappings")
    assert {"adt_to_fhir", "orders_to_servicerequest", "oru_to_diagnosticreport",
            "dft_to_chargeitem", "dft_to_nhsa_2204", "patient_to_adt_a08"} <= set(loaded)
    adt = loaded["adt_to_fhir"]
    assert isinstance(adt, CompiledMapping)
    assert adt.name == "adt_to_fhir" and adt.bundle == "transaction"


def test_the_reference_example_of_three_problems(tmp_path: Path) -> None:
    text = problems(tmp_path, HEAD + """
[[rule]]
from = "PID-3.1"
to = "identifier[0].value"

[[rule]]
from = "PID-7"
to = "birthdate"

[[rule]]
from = "PID-8"
transform = ["uper"]
to = "gender"

[[rule]]
from = "PID-3[0].1"
to = "identifier[0].value"
""", "adt.toml")
    f = str(tmp_path / "adt.toml")
    assert text == (
        "3 problems in mappings:\n"
        f"  {f} rule[1] (from 'PID-7' to 'birthdate'): Patient has no element 'birthdate'"
        " (did you mean 'birthDate'?)\n"
        f"  {f} rule[2] (from 'PID-8' to 'gender') transform[0]: unknown transform 'uper'"
        " (did you mean 'upper'?)\n"
        f"  {f} rule[3] (from 'PID-3[0].1' to 'identifier[0].value'): bad path:"
        " repetition numbers start at 1"
    )


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        ('[[rule]]\nform = "PID-3"\nto = "gender"',
         "rule[0] (to 'gender'): unknown key 'form' (did you mean 'from'?)"),
        ('[[rule]]\nfrom = "PID.3"\nto = "gender"',
         "bad path: 'PID.3': write fields with a dash, e.g. PID-3"),
        ('[[rule]]\nfrom = "pid-3"\nto = "gender"', "segment names are upper case (PID)"),
        ('[[rule]]\nfrom = "PID"\nto = "gender"', "'PID' names a segment: name a field"),
        ('[[rule]]\nfrom = "PID-3"\nto = "name.family"',
         "Patient.name repeats: write name[0], name[+] or name[*] before .family"),
        ('[[rule]]\nfrom = "PID-3"\nto = "gender[0]"', "Patient.gender does not repeat"),
        ('[[rule]]\nfrom = "PID-3"\nto = "birthDate.value"',
         "Patient.birthDate is a primitive value: it has no 'value'"),
        ('[[rule]]\nfrom = "PID-8"\ntransform = [{ decimal = "two" }]\nto = "gender"',
         "transform[0]: decimal takes a scale"),
        ('[[rule]]\nfrom = "PID-8"\ntransform = [{ lookup = "sexes" }]\nto = "gender"',
         "unknown lookup table 'sexes'"),
        ('[[rule]]\nfrom = "PID-8"\ntransform = [{ regex = "([a-" }]\nto = "gender"',
         "bad regular expression"),
        ('[[rule]]\nfrom = "PID-8"\nwhen = \'PID-8 = "M" and\'\nto = "gender"',
         "bad condition: condition ends too early"),
        ('[[rule]]\nfrom = "PID-8"\nwhen = \'PID-8 == "M"\'\nto = "gender"',
         "bad condition: expected a path or a value at column 8"),
        ('[[rule]]\nfrom = ".5"\nto = "gender"',
         "'.5' is relative: use it inside a group with 'each'"),
        ('[[rule]]\nfrom = "PID-8"\nto = ".gender"',
         "'.gender' is relative: use it inside a group with a 'to'"),
        ('[[rule]]\nfrom = "PID-8"\nvalue = "x"\nto = "gender"',
         "a rule needs exactly one of 'from', 'value' or 'ref'"),
        ('[[rule]]\nfrom = "PID-8"', "a rule needs 'to'"),
        ('[[rule]]\nfrom = "@nowish"\nto = "gender"', "unknown special source '@nowish'"),
        ('[[rule]]\nref = "encounter"\nto = "link[0].other.reference"',
         "ref 'encounter' names no output"),
        ('[[rule]]\neach = "PID-3[*]"\nfrom = "PID-3"\nto = "gender"', "'each' needs nested rules"),
        ('[[rule]]\nfrom = "PID-8"\nwhen = "@seq = 1"\nto = "gender"',
         "@seq changes each time it is read"),
        ('[[rule]]\neach = "PID-3[*].1"\nto = "identifier[+]"\n'
         'rule = [{ from = ".", to = ".value" }]',
         "'each' 'PID-3[*].1' names a component"),
    ],
)
def test_a_bad_rule_fails_load_naming_file_and_rule(
    tmp_path: Path, rules: str, expected: str
) -> None:
    text = problems(tmp_path, HEAD + rules)
    assert text.startswith(str(tmp_path / "m.toml") + " rule[0]") or (
        str(tmp_path / "m.toml") in text
    )
    assert expected in text


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('source = "hl7"\ntarget = "json"\n[[rule]]\nfrom = "PID-3"\nto = "x"',
         "source: must be one of hl7v2, json, fhir, xml (got 'hl7')"),
        ('source = "hl7v2"\ntarget = "fhir"\nresource = "Patien"\n[[rule]]\nvalue = 1\nto = "x"',
         "'Patien' is not a FHIR R4 resource type"),
        ('source = "hl7v2"\ntarget = "hl7v2"\n[[rule]]\nfrom = "PID-3"\nto = "PID-3"',
         'an HL7 v2 target needs [hl7] message_type'),
        ('source = "hl7v2"\ntarget = "json"\n', "no rules"),
        ('source = "hl7v2"\ntarget = "json"\ntimezone = "CST"\n[[rule]]\nfrom = "PID-3"\nto = "x"',
         "bad time zone offset 'CST'"),
        ('source = "xml"\ntarget = "json"\n[[rule]]\nfrom = "/a:b"\nto = "x"',
         "Undefined namespace prefix"),
        ('source = "json"\ntarget = "hl7v2"\n[hl7]\nmessage_type = "ADT^A08"\n'
         '[[rule]]\nfrom = "x"\nto = "MSH-2"', "MSH-1 and MSH-2 are the delimiters"),
        ('source = "json"\ntarget = "json"\n[lookups.codes]\nfile = "nope.csv"\n'
         '[[rule]]\nfrom = "x"\ntransform = [{ lookup = "codes" }]\nto = "y"',
         "lookups.codes: lookup file nope.csv does not exist"),
        ('source = "json"\ntarget = "json"\n[lookups.codes]\nfile = "../../etc/passwd"\n'
         '[[rule]]\nfrom = "x"\nto = "y"', "must be inside"),
        ('source = "json"\ntarget = "json"\nsource_type = 1\n[[rule]]\nfrom = "x"\nto = "y"',
         "unknown key 'source_type'"),
        ('source = "json"\ntarget = "json"\n[[rule]\nfrom = "x"', "not valid TOML"),
        ('source = "json"\ntarget = "hl7v2"\n[hl7]\nmessage_type = "ADT^A08"\ncharset = "EBCDIC"\n'
         '[[rule]]\nfrom = "x"\nto = "PID-5"', "hl7.charset: unknown character set 'EBCDIC'"),
    ],
)
def test_a_bad_file_fails_load(tmp_path: Path, body: str, expected: str) -> None:
    assert expected in problems(tmp_path, body)


def test_lookup_csv_problems(tmp_path: Path) -> None:
    (tmp_path / "codes.csv").write_text("code,value\nA,1\nA,2\n", encoding="utf-8")
    body = ('source = "json"\ntarget = "json"\n[lookups.codes]\nfile = "codes.csv"\n'
            '[[rule]]\nfrom = "x"\ntransform = [{ lookup = { table = "codes", column = "v" } }]'
            '\nto = "y"')
    text = problems(tmp_path, body)
    assert "codes.csv line 3: duplicate key 'A'" in text


def test_all_problems_of_all_files_are_listed(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(
        HEAD + '[[rule]]\nfrom = "PID-7"\nto = "birthdate"\n'
        '[[rule]]\nfrom = "PID-8"\ntransform = ["lowr"]\nto = "gender"', encoding="utf-8"
    )
    (tmp_path / "b.toml").write_text('source = "json"\ntarget = "json"\n[[rule]]\n'
                                     'from = "x[*"\nto = "y"', encoding="utf-8")
    (tmp_path / "good.toml").write_text('source = "json"\ntarget = "json"\n[[rule]]\n'
                                        'from = "x"\nto = "y"', encoding="utf-8")
    (tmp_path / "dup.toml").write_text('name = "good"\nsource = "json"\ntarget = "json"\n'
                                       '[[rule]]\nfrom = "x"\nto = "y"', encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_mappings(tmp_path)
    lines = str(err.value).splitlines()
    assert lines[0] == "4 problems in mappings:"
    assert any("a.toml rule[0]" in ln and "birthdate" in ln for ln in lines)
    assert any("a.toml rule[1]" in ln and "unknown transform 'lowr'" in ln for ln in lines)
    assert any("b.toml rule[0]" in ln and "bad index" in ln for ln in lines)
    assert any("mapping name 'good' is also used by" in ln for ln in lines)


def test_a_missing_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_mappings(tmp_path / "nope")
