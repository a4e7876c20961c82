"""Hostile and malformed input through every standard mapping: valid output or a clear error.

Each mapping is fed its own fixtures, mutated: HL7 segments dropped and duplicated, fields
emptied, truncated, multiplied and replaced by escape sequences, control characters, bad
dates and absurd numbers, other character sets and delimiters; JSON values of the wrong
shape. Every case must end in one of two ways, well under ``LIMIT`` seconds:

- outputs that are valid (FHIR validated by fhir.resources, JSON that parses, HL7 that the
  engine's own tokenizer accepts), or
- a MappingError whose text starts with the mapping's file (naming the mapping) and says
  where (a rule, the input or the output).

Anything else (another exception type, a hang, a silently broken output) is collected and
reported with the mutation that caused it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.cli import main
from engine.contracts import Payload
from engine.errors import ConfigError, MappingError, RejectedInput
from engine.hl7 import parse
from engine.mapping import CompiledMapping, fhir, load_mapping, load_mappings
from engine.mapping.fixtures import Fixture, find_fixtures, load_headers, read_input
from engine.mapping.patterns import MAX_TEXT
from engine.mapping.xml_paths import parse_xml

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 2.0  # seconds per case: catches pathological slowness, not a benchmark

_LOADED = {
    name: m for name, m in load_mappings(ROOT / "mappings").items()
    if isinstance(m, CompiledMapping)
}
_FIXTURES = [
    (m, fx) for name, m in sorted(_LOADED.items()) for fx in find_fixtures(Path(m.file), name)
]
HL7 = [(m, fx) for m, fx in _FIXTURES if m.source == "hl7v2"]
JSON = [(m, fx) for m, fx in _FIXTURES if m.source != "hl7v2"]


Case = tuple[CompiledMapping, Fixture]


def _one_each(cases: list[Case]) -> list[Case]:
    """The first fixture that maps, per mapping: for the mutations that cost the most."""
    seen: dict[str, Case] = {}
    for m, fx in cases:
        if fx.error is None and fx.expected is not None and fx.expected.stat().st_size:
            seen.setdefault(m.name, (m, fx))
    return list(seen.values())


HL7_ONE = _one_each(HL7)
JSON_ONE = _one_each(JSON)


def _ids(cases: list[tuple[CompiledMapping, Fixture]]) -> list[str]:
    return [f"{m.name}/{fx.name}" for m, fx in cases]


def _payload(m: CompiledMapping, fx: Fixture) -> Payload:
    return read_input(fx.input, m, load_headers(fx.headers))


# -- the verdict on one case -----------------------------------------------------------------


def _check_output(m: CompiledMapping, out: Payload) -> None:
    """Raise AssertionError when ``out`` is not a valid output of ``m``'s target."""
    if m.target == "fhir":
        doc = json.loads(out.body, parse_float=Decimal)
        resources = [e["resource"] for e in doc["entry"]] if doc["resourceType"] == "Bundle" \
            else [doc]
        for res in resources:
            rtype = res["resourceType"]
            fhir.validate(rtype, res, fhir.model_class(rtype), "full")
    elif m.target == "json":
        assert isinstance(orjson.loads(out.body), dict | list)
    elif m.target == "hl7v2":
        msg = parse(out.body, default_encoding=m.encoding)  # valid segment names, MSH-9/10
        assert msg.segments[0].startswith("MSH|^~\\&|")
        # A raw control character (0x1C then CR ends an MLLP frame) must arrive escaped.
        assert not re.search(r"[\x00-\x09\x0b\x0c\x0e-\x1f\x7f]", msg.text), "control char"
    else:
        parse_xml(out.body)


def verdict(m: CompiledMapping, payload: Payload) -> str:
    """'' when ``m`` maps ``payload`` validly or refuses it clearly; else what went wrong."""
    start = time.perf_counter()
    try:
        outputs = m.apply(payload)
    except MappingError as exc:
        text = str(exc)
        if not text.startswith(f"{m.file}: ") or m.name not in text:
            return f"MappingError without the mapping's name: {text[:200]}"
        where = text[len(m.file) + 2:]
        if not where.startswith(("rule[", "input", "output", "when")) and ": " not in where:
            return f"MappingError without a place: {text[:200]}"
        outputs = None
    except Exception as exc:  # the point is to catch anything else
        return f"{type(exc).__name__} escaped: {str(exc)[:200]}"
    elapsed = time.perf_counter() - start
    if elapsed > LIMIT:
        return f"took {elapsed:.1f} s"
    for out in outputs or []:
        try:
            _check_output(m, out)
        except (AssertionError, ValueError, KeyError, TypeError, RejectedInput) as exc:
            return f"invalid output ({type(exc).__name__}: {str(exc)[:200]})"
        except Exception as exc:  # fhir.validate raises Problem
            return f"invalid output ({str(exc)[:200]})"
    return ""


def run_all(m: CompiledMapping, cases: Iterator[tuple[str, Payload]]) -> None:
    failures = []
    count = 0
    for label, payload in cases:
        count += 1
        problem = verdict(m, payload)
        if problem:
            failures.append(f"{label}: {problem}")
    assert count, "no cases generated"
    assert not failures, f"{len(failures)} of {count} cases:\n" + "\n".join(failures[:20])


# -- HL7 v2 mutations ------------------------------------------------------------------------


def segments(payload: Payload) -> list[str]:
    text = payload.body.decode("utf-8").replace("\r\n", "\r").replace("\n", "\r")
    segs = [s for s in text.split("\r") if s]
    assert segs[0].startswith("MSH|^~\\&|"), "fixtures use the standard delimiters"
    return segs


def body(segs: list[str], encoding: str = "utf-8") -> bytes:
    return ("\r".join(segs) + "\r").encode(encoding, "surrogateescape")


def with_field(segs: list[str], i: int, f: int, value: str) -> list[str]:
    fields = segs[i].split("|")
    fields += [""] * (f + 1 - len(fields))
    fields[f] = value
    return [*segs[:i], "|".join(fields), *segs[i + 1:]]


ESCAPES = [
    "\\F\\", "\\S\\", "\\T\\", "\\R\\", "\\E\\", "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f",
    "\\X41\\", "\\X\\", "\\Xzz\\", "\\X0\\", "\\X00\\", "\\XFFFE\\", "\\XE4B8AD\\",
    "\\Z99\\", "\\Zanything\\", "\\.br\\", "\\H\\bold\\N\\", "\\", "a\\", "\\\\\\", "\\S",
    "\\C2842\\", "\\M2842\\",
]
VALUES = [
    *ESCAPES,
    "", '""', "a\x00b", "\x01\x02\x07\x1b\x7f", "\ufeff", "\u202eevil", "\U0001f600",
    # dates and times
    "20261301", "20260230", "20260101246100", "20261231235960", "20260101120000+2500",
    "20260101120000-9999", "99991231235959-1200", "00010101000000+1400", "0000", "2026010",
    "20260101120000.1234567", "2026-01-01", "٢٠٢٦٠١٠١",
    # numbers and amounts
    "9" * 400, "1e999999999", "-1E-999999999", "0E-999999999", "NaN", "-sNaN", "Infinity",
    "12.345678901234567890123456789012345", "0.001", "-0", "1,000.50", "１２", "1e2",
    "99999999999999999999999999.999",
]


def hl7_value_cases(payload: Payload) -> Iterator[tuple[str, Payload]]:
    """Each field, and each component of a composite field, replaced by hostile values.

    Every value reaches every segment kind; to keep the run short each field gets a
    rotating share of the list rather than all of it.
    """
    segs = segments(payload)
    share = 6
    k = 0
    for i, seg in enumerate(segs):
        fields = seg.split("|")
        first = 3 if i == 0 else 1  # MSH-1 and MSH-2 are the delimiters (see the MSH tests)
        for f in range(first, len(fields) + 1):
            comps = fields[f].split("^") if f < len(fields) else [""]
            for c in range(len(comps)):
                for _ in range(share):
                    value = VALUES[k % len(VALUES)]
                    k += 1
                    new = list(comps)
                    new[c] = value
                    label = f"{fields[0]}#{i}-{f}.{c + 1} = {value[:20]!r}"
                    yield label, Payload(
                        body(with_field(segs, i, f, "^".join(new))), "hl7v2", payload.headers
                    )


def hl7_structure_cases(payload: Payload) -> Iterator[tuple[str, Payload]]:
    segs = segments(payload)
    h = payload.headers
    for i in range(1, len(segs)):
        yield f"drop segment {i}", Payload(body(segs[:i] + segs[i + 1:]), "hl7v2", h)
        yield f"duplicate segment {i}", Payload(body(segs[: i + 1] + segs[i:]), "hl7v2", h)
        yield f"segment {i} x200", Payload(body(segs[:i] + [segs[i]] * 200 + segs[i + 1:]),
                                           "hl7v2", h)
        yield f"segment {i} name only", Payload(body([*segs[:i], segs[i][:3],
                                                      *segs[i + 1:]]), "hl7v2", h)
    yield "only MSH", Payload(body(segs[:1]), "hl7v2", h)
    yield "segments reversed", Payload(body([segs[0], *reversed(segs[1:])]), "hl7v2", h)
    yield "LF endings", Payload(body(segs).replace(b"\r", b"\n"), "hl7v2", h)
    yield "CRLF endings", Payload(body(segs).replace(b"\r", b"\r\n"), "hl7v2", h)
    raw = body(segs)
    for cut in range(0, len(raw), max(1, len(raw) // 40)):
        yield f"cut at byte {cut}", Payload(raw[:cut], "hl7v2", h)
    for i, seg in enumerate(segs):
        fields = seg.split("|")
        for f in range(3 if i == 0 else 1, len(fields)):
            if not fields[f]:
                continue
            at = f"{fields[0]}#{i}-{f}"
            yield f"{at} emptied", Payload(body(with_field(segs, i, f, "")), "hl7v2", h)
            first = fields[f].split("~")[0].split("^")[0]
            yield f"{at} first component only", Payload(
                body(with_field(segs, i, f, first)), "hl7v2", h)
            yield f"{at} x200 repetitions", Payload(
                body(with_field(segs, i, f, "~".join([fields[f]] * 200))), "hl7v2", h)
            yield f"{at} 500 components", Payload(
                body(with_field(segs, i, f, "^".join([first] * 500))), "hl7v2", h)
            yield f"{at} 50 sub-components", Payload(
                body(with_field(segs, i, f, "&".join([first] * 50))), "hl7v2", h)
            yield f"{at} empty repetitions", Payload(
                body(with_field(segs, i, f, "~~" + fields[f] + "~~")), "hl7v2", h)
            yield f"{at} line break inside", Payload(
                body(with_field(segs, i, f, first[:1] + "\n" + first[1:])), "hl7v2", h)
            yield f"{at} 20,000 characters", Payload(
                body(with_field(segs, i, f, (first or "x") * (20000 // max(1, len(first))))),
                "hl7v2", h)


@pytest.mark.parametrize(("m", "fx"), HL7_ONE, ids=_ids(HL7_ONE))
def test_hl7_hostile_values(m: CompiledMapping, fx: Fixture) -> None:
    run_all(m, hl7_value_cases(_payload(m, fx)))


@pytest.mark.parametrize(("m", "fx"), HL7_ONE, ids=_ids(HL7_ONE))
def test_hl7_broken_structure(m: CompiledMapping, fx: Fixture) -> None:
    run_all(m, hl7_structure_cases(_payload(m, fx)))


def _pid(segs: list[str]) -> int:
    return next(i for i, s in enumerate(segs) if s.startswith("PID|"))


@pytest.mark.parametrize(("m", "fx"), HL7_ONE, ids=_ids(HL7_ONE))
def test_hl7_ten_thousand_repetitions_of_pid_3(m: CompiledMapping, fx: Fixture) -> None:
    payload = _payload(m, fx)
    segs = segments(payload)
    i = _pid(segs)
    pid3 = segs[i].split("|")[3]
    cases = [
        ("PID-3 x10,000", "~".join([pid3] * 10_000)),
        ("PID-3 10,000 distinct", "~".join(f"{n}^^^H{n}^MR" for n in range(10_000))),
        ("PID-3 10,000 empty", "~" * 10_000 + pid3),
    ]
    run_all(m, (
        (label, Payload(body(with_field(segs, i, 3, value)), "hl7v2", payload.headers))
        for label, value in cases
    ))


@pytest.mark.parametrize(("m", "fx"), HL7, ids=_ids(HL7))
def test_hl7_character_sets(m: CompiledMapping, fx: Fixture) -> None:
    payload = _payload(m, fx)
    segs = segments(payload)
    i = _pid(segs)

    def msh18(value: str) -> list[str]:
        return with_field(segs, 0, 18, value)

    cases: list[tuple[str, Payload]] = []
    h = payload.headers
    for name in ("GBK", "GB18030", "GB 18030-2000", "GB2312"):
        cases.append((f"{name} body with MSH-18 {name}",
                      Payload(body(msh18(name), "gb18030"), "hl7v2", h)))
    gbk = body(msh18(""), "gb18030")
    cases += [
        ("GBK body without MSH-18", Payload(gbk, "hl7v2", h)),
        ("GBK body declared UTF-8", Payload(body(msh18("UNICODE UTF-8"), "gb18030"), "hl7v2",
                                            h)),
        ("MSH-18 unknown", Payload(body(msh18("KLINGON")), "hl7v2", h)),
        ("MSH-18 huge", Payload(body(msh18("X" * 5000)), "hl7v2", h)),
        ("latin-1 declared", Payload(body(msh18("8859/1")), "hl7v2", h)),
        ("ASCII declared, UTF-8 sent", Payload(body(msh18("ASCII")), "hl7v2", h)),
        ("BOM first", Payload(b"\xef\xbb\xbf" + body(segs), "hl7v2", h)),
        ("NUL bytes", Payload(body(segs).replace(b"|", b"|\x00", 3), "hl7v2", h)),
    ]
    raw_pid = segs[i].encode("utf-8")
    for bad in (b"\xff\xfe", b"\xc3", b"\xed\xa0\x80", b"\x80abc", b"\xf4\x90\x80\x80"):
        broken = body(segs).replace(raw_pid, raw_pid[:8] + bad + raw_pid[8:])
        cases.append((f"invalid UTF-8 {bad!r} in PID", Payload(broken, "hl7v2", h)))
        cases.append((f"invalid GBK {bad!r} in PID",
                      Payload(body(msh18("GBK"), "gb18030").replace(b"PID|", b"PID|" + bad, 1),
                              "hl7v2", h)))
    run_all(m, iter(cases))


def redelimit(segs: list[str], fs: str, enc: str) -> list[str]:
    """The message with other delimiters: ``enc`` is component, repetition, escape, sub."""
    table = str.maketrans({"|": fs, "^": enc[0], "~": enc[1], "\\": enc[2], "&": enc[3]})
    out = [s.translate(table) for s in segs]
    out[0] = "MSH" + fs + enc + out[0][len("MSH" + fs + enc):]
    return out


@pytest.mark.parametrize(("m", "fx"), HL7, ids=_ids(HL7))
def test_hl7_odd_encoding_characters(m: CompiledMapping, fx: Fixture) -> None:
    payload = _payload(m, fx)
    segs = segments(payload)
    h = payload.headers
    rest = segs[0][len("MSH|^~\\&"):]
    cases = [
        (f"MSH-2 {enc!r}", Payload(body([f"MSH|{enc}{rest}", *segs[1:]]), "hl7v2", h))
        for enc in ("", "^", "^~", "^~\\", "^~\\&#", "^~\\&#$", "^^\\&", "AB\\&", "^~ &",
                    "^~|&", "\x00\x01\x02\x03", "^~\\&\\")
    ]
    cases += [
        (f"MSH-1 {fs!r}", Payload(body([f"MSH{fs}^~\\&{rest}", *segs[1:]]), "hl7v2", h))
        for fs in ("A", " ", "\t", "^", "\x00", "¦")
    ]
    for fs, enc in (("#", "$*!%"), ("¦", "^~\\&"), ("|", "&~\\^"), ("|", "^~#&")):
        cases.append((f"redelimited {fs}{enc}", Payload(body(redelimit(segs, fs, enc)),
                                                        "hl7v2", h)))
    cases.append(("MSH only 7 bytes", Payload(b"MSH|^~\\", "hl7v2", h)))
    cases.append(("not HL7", Payload(b"PID|1||123", "hl7v2", h)))
    cases.append(("batch", Payload(b"FHS|^~\\&\r" + body(segs), "hl7v2", h)))
    cases.append(("JSON to an HL7 mapping", Payload(b"{}", "json", h)))
    cases.append(("empty", Payload(b"", "hl7v2", h)))
    run_all(m, iter(cases))


def test_redelimited_message_maps_as_the_original() -> None:
    """A message with other delimiters is not hostile: it maps to the same output."""
    m = _LOADED["adt_to_fhir"]
    fx = next(fx for mm, fx in HL7 if mm is m and fx.error is None)
    payload = _payload(m, fx)
    [expected] = m.apply(payload)
    segs = redelimit(segments(payload), "#", "$*!%")
    [got] = m.apply(Payload(body(segs), "hl7v2", payload.headers))
    # Bundle entry ids derive from the input bytes: compare the resources without them.
    def resources(p: Payload) -> list[Any]:
        text = re.sub(r"urn:uuid:[0-9a-f-]{36}", "urn:uuid:X", p.body.decode("utf-8"))
        return [e["resource"] for e in json.loads(text)["entry"]]

    assert resources(got) == resources(expected)


# -- JSON and FHIR mutations -----------------------------------------------------------------

SHAPES: list[Any] = [
    None, [], {}, 0, -1, 2**63 - 1, 1.5, True, "", "x", [None], [1, "a"], {"a": 1},
    [[[]]], "1e999999999", "NaN", 1e308, -1e-300, "9" * 400,
    "12.3456789012345678901234567890", 0.1234567890123456789, "2026-13-01",
    "2026-02-30T24:61:00+25:00", "2026-12-31T23:59:60Z", "9999-12-31T23:59:59-12:00",
    "0001-01-01T00:00:00+14:00", "a\x00b\x01", "line\r\nbreak|^~\\&", "\\", "x" * 20_000,
]


def leaves(doc: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from leaves(v, (*path, k))
    elif isinstance(doc, list):
        for n, v in enumerate(doc):
            yield from leaves(v, (*path, n))


def replaced(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, *tail = path
    if isinstance(doc, dict):
        return {**doc, head: replaced(doc[head], tuple(tail), value)}
    return [replaced(v, tuple(tail), value) if n == head else v for n, v in enumerate(doc)]


def json_value_cases(payload: Payload) -> Iterator[tuple[str, Payload]]:
    """Every node (objects and arrays too) replaced by values of every wrong shape."""
    doc = json.loads(payload.body)
    k = 0
    for path in leaves(doc):
        for _ in range(8):
            value = SHAPES[k % len(SHAPES)]
            k += 1
            label = "/".join(map(str, path)) + f" = {json.dumps(value)[:30]}"
            yield label, Payload(json.dumps(replaced(doc, path, value)).encode(),
                                 payload.content_type, payload.headers)


@pytest.mark.parametrize(("m", "fx"), JSON_ONE, ids=_ids(JSON_ONE))
def test_json_values_of_the_wrong_shape(m: CompiledMapping, fx: Fixture) -> None:
    run_all(m, json_value_cases(_payload(m, fx)))


@pytest.mark.parametrize(("m", "fx"), JSON, ids=_ids(JSON))
def test_json_documents_of_the_wrong_shape(m: CompiledMapping, fx: Fixture) -> None:
    payload = _payload(m, fx)
    ct, h = payload.content_type, payload.headers
    docs: list[tuple[str, bytes]] = [
        (f"document {json.dumps(v)[:20]}", json.dumps(v).encode()) for v in SHAPES
    ]
    docs += [
        ("nested 10,000 deep (arrays)", b"[" * 10_000 + b"]" * 10_000),
        ("nested 10,000 deep (objects)", b'{"a":' * 10_000 + b"1" + b"}" * 10_000),
        ("nested 10,000 deep, unclosed", b"[" * 10_000),
        ("empty", b""),
        ("truncated", payload.body[: len(payload.body) // 2]),
        ("BOM first", b"\xef\xbb\xbf" + payload.body),
        ("invalid UTF-8", payload.body.replace(b'"', b'"\xff', 1)),
        ("GBK bytes", payload.body.decode("utf-8").encode("gb18030")),
        ("NaN literal", b'{"a": NaN}'),
        ("huge number", b'{"a": 1e400}'),
        ("integer over 64 bits", b'{"a": 184467440737095516160}'),
        ("duplicate keys", payload.body[:-1].rstrip().rstrip(b"}") + b', "resourceType": 1}'),
        ("NUL in a string", payload.body.replace(b'"', b'"\\u0000', 1)),
        ("lone surrogate", payload.body.replace(b'"', b'"\\ud800', 1)),
        ("XML", b"<a/>"),
        ("HL7", b"MSH|^~\\&|A|B|C|D|20260101||ADT^A01|1|P|2.5\r"),
    ]
    cases = [(label, Payload(b, ct, h)) for label, b in docs]
    cases.append(("HL7 content type", Payload(payload.body, "hl7v2", h)))
    cases.append(("XML content type", Payload(payload.body, "xml", h)))
    run_all(m, iter(cases))


@pytest.mark.parametrize(("m", "fx"), JSON, ids=_ids(JSON))
def test_json_hostile_headers(m: CompiledMapping, fx: Fixture) -> None:
    payload = _payload(m, fx)
    names = set(payload.headers) | {"mdtrt_id", "psn_no", "Idempotency-Key", "claim_reference",
                                    "mdtrt_cert_no", "chrg_bchno"}
    values = ["", " ", "a\x00b", "x" * 20_000, "line\nbreak|^~\\&", "\ud800", "1e999999999"]
    run_all(m, (
        (f"header {name} = {value[:20]!r}",
         Payload(payload.body, payload.content_type, {**payload.headers, name: value}))
        for name in sorted(names) for value in values
    ))


# -- XML -------------------------------------------------------------------------------------


def test_no_standard_mapping_reads_xml() -> None:
    """No standard mapping reads XML; the XML reader itself is tested just below."""
    assert all(m.source != "xml" for m in _LOADED.values())


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "utf-16-le", "utf-32"])
def test_xml_with_a_doctype_is_refused_in_any_encoding(encoding: str) -> None:
    """The DOCTYPE refusal must not depend on how the bytes spell ``<!DOCTYPE``."""
    decl = f'<?xml version="1.0" encoding="{encoding.upper()}"?>'
    for doc in (
        '<!DOCTYPE a [<!ENTITY e "lol"><!ENTITY f "&e;&e;&e;">]><a>&f;</a>',
        '<!DOCTYPE a SYSTEM "http://127.0.0.1:1/x.dtd"><a>&x;</a>',
        '<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><a>&x;</a>',
    ):
        with pytest.raises(ValueError, match="refused"):
            parse_xml((decl + doc).encode(encoding))
    assert parse_xml((decl + "<a>ok</a>").encode(encoding)).text == "ok"


# -- regular expressions against crafted input -----------------------------------------------


def _write_mapping(tmp_path: Path, rules: str) -> Path:
    path = tmp_path / "rx.toml"
    path.write_text(f'name = "rx"\nsource = "json"\ntarget = "json"\n{rules}', encoding="utf-8")
    return path


@pytest.mark.parametrize("pattern", [
    r"(a+)+$", r"(a*)*b", r"(\w+\s?)*$", r"(?:,\s*\d+)*$", r"(a|ab)*c", r"(a|a)*b",
    r"((ab)*)+c", r"(.*a){1,100}",
])
def test_backtracking_patterns_are_refused_at_load(tmp_path: Path, pattern: str) -> None:
    for rule in (
        f"[[rule]]\nfrom = \"v\"\ntransform = [{{ regex = '{pattern}' }}]\nto = \"x\"\n",
        f"[[rule]]\nfrom = \"v\"\ntransform = [{{ replace = {{ pattern = '{pattern}', "
        "with = \"\" } }]\nto = \"x\"\n",
        f"[[rule]]\nfrom = \"v\"\nwhen = 'v matches \"{pattern}\"'\nto = \"x\"\n",
    ):
        with pytest.raises(ConfigError, match=r"rule\[0\].*backtrack") as err:
            load_mapping(_write_mapping(tmp_path, rule))
        assert "rx.toml" in str(err.value)


@pytest.mark.parametrize("pattern", [
    r"(?:,\s*+\d++)*$", r"(?>a+)+$", r"^\s*(-?\d+(?:\.\d+)?)\s*[-~～]", r"(\d{3})+$",
    r"(x|y)+$", r"^1[3-9]\d{9}$", r"[\s-]",
])
def test_safe_patterns_load_and_stay_fast(tmp_path: Path, pattern: str) -> None:
    m = load_mapping(_write_mapping(
        tmp_path,
        f"[[rule]]\nfrom = \"v\"\ntransform = [{{ regex = '{pattern}' }}]\nto = \"x\"\n"
        f"[[rule]]\nfrom = \"v\"\nwhen = 'v matches \"{pattern}\"'\nto = \"y\"\n",
    ))
    for crafted in ("a" * MAX_TEXT + "!", "1" * MAX_TEXT, ",1" * (MAX_TEXT // 2),
                    " " * (MAX_TEXT - 1) + "-", "-" + "1" * (MAX_TEXT - 2) + "x"):
        problem = verdict(m, Payload(json.dumps({"v": crafted[:MAX_TEXT]}).encode(), "json"))
        assert problem == "", problem


def test_values_too_long_for_a_pattern_are_a_mapping_error(tmp_path: Path) -> None:
    m = load_mapping(_write_mapping(
        tmp_path, "[[rule]]\nfrom = \"v\"\ntransform = [{ regex = '(\\d+)' }]\nto = \"x\"\n",
    ))
    [out] = m.apply(Payload(json.dumps({"v": "n" * (MAX_TEXT - 1) + "7"}).encode(), "json"))
    assert orjson.loads(out.body) == {"x": "7"}
    with pytest.raises(MappingError, match=r"rx\.toml: rule\[0\].*too long for a regular"):
        m.apply(Payload(json.dumps({"v": "1" * (MAX_TEXT + 1)}).encode(), "json"))


def test_oru_reference_range_patterns_on_crafted_ranges() -> None:
    """The standard ORU mapping's regexes (OBX-7) against inputs built to backtrack."""
    m = _LOADED["oru_to_diagnosticreport"]
    fx = next(fx for mm, fx in HL7 if mm is m and fx.error is None)
    payload = _payload(m, fx)
    segs = segments(payload)
    obx = [n for n, s in enumerate(segs) if s.startswith("OBX|") and s.split("|")[2] == "NM"]
    assert obx, "the fixture has a numeric OBX"
    crafted = [" " * 4000 + "-", "-" * 4000, "1" * 4000 + "-", "-" + " " * 4000 + "1x",
               "1-" * 2000, "~" + "1." * 2000, "1" * 5000]
    run_all(m, (
        (f"OBX-7 = {c[:10]!r}...", Payload(body(with_field(segs, obx[0], 7, c)), "hl7v2",
                                          payload.headers))
        for c in crafted
    ))


def test_a_number_too_large_for_a_double_is_an_error_not_a_changed_value() -> None:
    """orjson reads integers past 64 bits as doubles: the digits would change unseen."""
    m = _LOADED["payment_event_to_paymentnotice"]
    fx = next(fx for mm, fx in JSON if mm is m and fx.name == "wechatpay_payment")
    payload = _payload(m, fx)
    doc = json.loads(payload.body)
    as_number = json.dumps({**doc, "gateway_trade_no": int(doc["gateway_trade_no"])}).encode()
    with pytest.raises(MappingError, match="too large to have been read exactly"):
        m.apply(Payload(as_number, payload.content_type, payload.headers))
    exact = json.dumps({**doc, "amount": 25.9}).encode()
    [out] = m.apply(Payload(exact, payload.content_type, payload.headers))
    assert json.loads(out.body)["amount"]["value"] in (25.9, 25.90)


_MSH = b"MSH|^~\\&|H|F|R|F|20260101||DFT^P03|1|P|2.5"


@pytest.mark.parametrize(("name", "data"), [
    ("dft_to_nhsa_2204", _MSH + b"\rFT1|1|||||CG|X|||1e999999999\r"),
    ("dft_to_nhsa_2204", _MSH + b"||||||GBK\rPID|1||\xff\r"),
    ("patient_to_adt_a08", b"[" * 10_000),
    ("patient_to_adt_a08", b'{"resourceType": "Patient", "name": 7}'),
])
def test_hisbridge_map_reports_hostile_input_as_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, data: bytes,
) -> None:
    """``hisbridge map``, as an integrator runs it on a bad file: exit 1 with the error."""
    source = tmp_path / ("in.hl7" if data.startswith(b"MSH") else "in.json")
    source.write_bytes(data)
    code = main(["map", name, str(source), "--mappings", str(ROOT / "mappings")])
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.startswith("error: ") and f"{name}.toml: " in err, err
