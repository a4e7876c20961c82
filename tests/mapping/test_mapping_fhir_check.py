"""The fast FHIR check against fhir.resources: it never vouches for an invalid resource.

``fhir_check.vouch`` lets valid resources skip fhir.resources; everything it does not vouch
for is validated by fhir.resources as before. So the one property that matters is: whenever
it says yes, fhir.resources says yes. These tests break real mapped resources (the standard
mappings' fixtures and the demo's HIS traffic) in every way we could think of, and feed each
primitive check thousands of tricky values, comparing with fhir.resources each time. They
also check the other side: the mappings' own outputs are vouched for (the fast path is the
one taken), and each kind of invalid resource still fails the mapping with fhir.resources'
message.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import random
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from engine.contracts import Payload
from engine.errors import MappingError
from engine.mapping import CompiledMapping, fhir, fhir_check, load_mapping, load_mappings
from engine.mapping.fixtures import FIXTURE_NOW, find_fixtures, load_headers, read_input
from engine.mapping.fixtures import run_fixture as run_one_fixture
from simulators.his import traffic

ROOT = Path(__file__).resolve().parents[2]
MAPPINGS = ROOT / "mappings"


def _resources(outputs: list[Payload]) -> Iterator[dict[str, Any]]:
    for out in outputs:
        doc = json.loads(out.body, parse_float=Decimal)
        if doc["resourceType"] == "Bundle":
            yield from (entry["resource"] for entry in doc["entry"])
        else:
            yield doc


@pytest.fixture(scope="module")
def standard() -> dict[str, CompiledMapping]:
    loaded = load_mappings(MAPPINGS)
    return {k: v for k, v in loaded.items() if isinstance(v, CompiledMapping)}


@pytest.fixture(scope="module")
def mapped(standard: dict[str, CompiledMapping]) -> list[dict[str, Any]]:
    """Resources of every FHIR fixture of the standard mappings, and of 60 HIS ADTs."""
    found: list[dict[str, Any]] = []
    for name, mapping in standard.items():
        if mapping.target != "fhir":
            continue
        raw = dataclasses.replace(mapping, validate=False)
        for fx in find_fixtures(MAPPINGS / f"{name}.toml", name):
            if fx.error is not None:
                continue
            payload = read_input(fx.input, raw, load_headers(fx.headers))
            found.extend(_resources(raw.run(payload, now=FIXTURE_NOW)))
    adt = dataclasses.replace(standard["adt_to_fhir"], validate=False)
    his = (m for m in traffic(seed=1) if "|ADT^" in m)
    for message in itertools.islice(his, 60):
        found.extend(_resources(adt.apply(Payload(message.encode(), "hl7v2"))))
    return found


def _valid(resource: Any, kind: str | None = None) -> bool:
    """Whether fhir.resources accepts ``resource`` as a ``kind`` (its own type by default)."""
    try:
        model = get_fhir_model_class(kind or resource["resourceType"])
        model.model_validate(copy.deepcopy(resource))
    except (ValidationError, ValueError, TypeError):
        return False
    return True


def _vouched(resource: dict[str, Any], kind: str | None = None) -> bool:
    return fhir_check.vouch(get_fhir_model_class(kind or resource["resourceType"]), resource)


def test_every_mapped_resource_is_vouched_for_and_valid(mapped: list[dict[str, Any]]) -> None:
    kinds = {r["resourceType"] for r in mapped}
    assert {"Patient", "Encounter", "ChargeItem", "ClaimResponse", "ServiceRequest",
            "DiagnosticReport", "Observation", "PaymentNotice"} <= kinds
    for resource in mapped:
        assert _vouched(resource), resource["resourceType"]
        assert _valid(resource)


def test_bare_resources_of_every_type_are_judged_as_fhir_resources_judges_them() -> None:
    """``{"resourceType": T}`` for each R4B resource: required elements and choices of every
    model, vouched for exactly when fhir.resources accepts it."""
    from fhir.resources.R4B import fhirtypes

    judged = 0
    for name in sorted(n[:-4] for n in dir(fhirtypes) if n.endswith("Type")):
        try:
            model = get_fhir_model_class(name)
        except (KeyError, ValueError, AttributeError):
            continue
        if not model.has_resource_base() or name in ("Resource", "DomainResource"):
            continue
        bare = {"resourceType": name}
        assert fhir_check.vouch(model, bare) is _valid(bare), name
        judged += 1
    assert judged > 140


# -- breaking mapped resources ----------------------------------------------------------------

ODD_VALUES: list[Any] = [
    None, "", " ", "  ", "\t", "\n", "\x0b", "\x1c", "\x85", "\u3000", "\u200b", " a", "a ",
    "a  b", "a\tb", "a\nb", "a\x1cb", "a\u3000b", "x" * 300, "a b", "陈", "-", ".", "a.b-c",
    "2011", "2011-13", "2011-12-22", "2011-02-29", "2012-02-29", "20111222",
    "2011-12-22T10:00:00", "2011-12-22T10:00:00+08:00", "2011-12-22T10:00:60Z",
    "2011-12-22T24:00:00Z", "2011-12-22T10:00:00.1234567Z", "2011-12-22 10:00:00+08:00",
    "urn:oid:1.2.3", "urn:oid:1.02", "true", "1", 0, 1, -1, 2**31, True, False,
    Decimal("1.50"), Decimal("NaN"), Decimal("1E+2"), Decimal("-0"), 1.5, [], {}, ["x"],
    [None], [{}], {"value": "x"}, {"code": "x"}, {"resourceType": "Patient"},
]


def _places(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every key and list position of a resource, depth first."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*path, key)
            yield from _places(value, (*path, key))
    elif isinstance(node, list):
        for n, value in enumerate(node):
            yield (*path, n)
            yield from _places(value, (*path, n))


def _container(doc: Any, path: tuple[Any, ...]) -> Any:
    for step in path[:-1]:
        doc = doc[step]
    return doc


def _mutants(resource: dict[str, Any], rng: random.Random) -> Iterator[dict[str, Any]]:
    places = [p for p in _places(resource) if p != ("resourceType",)]
    for place in places:
        # Drop it (required elements, lists left empty).
        doc = copy.deepcopy(resource)
        del _container(doc, place)[place[-1]]
        yield doc
        # Wrap a single value in a list, and unwrap a list.
        doc = copy.deepcopy(resource)
        box = _container(doc, place)
        value = box[place[-1]]
        box[place[-1]] = value[0] if isinstance(value, list) and value else [value]
        yield doc
        # Replace it by odd values (a sample per place, larger at the leaves).
        leaf = not isinstance(value, dict | list)
        for odd in rng.sample(ODD_VALUES, 16 if leaf else 6):
            doc = copy.deepcopy(resource)
            _container(doc, place)[place[-1]] = copy.deepcopy(odd)
            yield doc
    for place in [p for p in places if isinstance(p[-1], str)][:25]:
        # Keys that are not elements: unknown, python names, primitive extensions, comments.
        for key in ("unknown", "class_fhir", f"_{place[-1]}", "fhir_comments", "resourceType",
                    "resource_type"):
            doc = copy.deepcopy(resource)
            _container(doc, place)[key] = {"extension": [{"url": "urn:x", "valueString": "x"}]}
            yield doc
    for a, b in (("deceasedBoolean", "deceasedDateTime"),
                 ("multipleBirthBoolean", "multipleBirthInteger")):
        if resource["resourceType"] == "Patient":
            yield {**resource, a: True}
            yield {**resource, a: True, b: "2011" if "Date" in b else 2}
    yield {**resource, "resourceType": "Encounter" if "status" not in resource else "Patient"}


def test_no_broken_resource_is_vouched_for(mapped: list[dict[str, Any]]) -> None:
    rng = random.Random(3)
    bases: dict[str, dict[str, Any]] = {}
    for resource in mapped:  # the fullest resource of each kind
        kind = resource["resourceType"]
        if len(json.dumps(resource, default=str)) > len(json.dumps(bases.get(kind, {}),
                                                                   default=str)):
            bases[kind] = resource
    tried = vouched = refused = 0
    for kind, resource in bases.items():
        for mutant in _mutants(resource, rng):
            tried += 1
            if _vouched(mutant, kind):
                vouched += 1
                assert _valid(mutant, kind), json.dumps(mutant, default=str, ensure_ascii=False)
            elif not _valid(mutant, kind):
                refused += 1
    # The sweep is wide, breaks many resources, and the check still vouches for many.
    assert tried > 6000
    assert refused > 3000
    assert vouched > 1500


# -- primitive checks one by one ------------------------------------------------------------

# (resource type, where the value goes) for each primitive type the check covers.
PLACES: dict[str, tuple[str, tuple[Any, ...]]] = {
    "string": ("Patient", ("name", 0, "text")),
    "code": ("Patient", ("gender",)),
    "id": ("Patient", ("id",)),
    "uri": ("Patient", ("identifier", 0, "system")),
    "canonical": ("Patient", ("meta", "profile", 0)),
    "markdown": ("ServiceRequest", ("note", 0, "text")),
    "date": ("Patient", ("birthDate",)),
    "dateTime": ("Encounter", ("period", "start")),
    "instant": ("Patient", ("meta", "lastUpdated")),
    "decimal": ("Encounter", ("length", "value")),
    "integer": ("Patient", ("multipleBirthInteger",)),
    "positiveInt": ("Encounter", ("diagnosis", 0, "rank")),
    "unsignedInt": ("Patient", ("photo", 0, "size")),
    "boolean": ("Patient", ("active",)),
}
MINIMAL = {
    "Patient": {"resourceType": "Patient"},
    "Encounter": {"resourceType": "Encounter", "status": "finished", "class": {"code": "IMP"}},
    "ServiceRequest": {"resourceType": "ServiceRequest", "status": "active",
                       "intent": "order", "subject": {"reference": "Patient/1"}},
}
EXTRA = {  # siblings some places need to be valid at all
    ("Encounter", "diagnosis"): {"condition": {"reference": "Condition/1"}},
    ("ServiceRequest", "note"): {},
}


def _place(kind: str, path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    """A minimal valid resource of ``kind`` with ``value`` at ``path``."""
    doc: dict[str, Any] = copy.deepcopy(MINIMAL[kind])
    node: Any = doc
    for n, step in enumerate(path):
        last = n == len(path) - 1
        if isinstance(step, int):
            if last:
                node[step] = value
            node = node[step]
        elif last:
            node[step] = value
        elif isinstance(path[n + 1], int):
            node[step] = [value] if n + 2 == len(path) else [dict(EXTRA.get((kind, step), {}))]
            node = node[step]
        else:
            node[step] = {}
            node = node[step]
    return doc


def _texts(rng: random.Random) -> Iterator[str]:
    alphabet = ["a", "Z", "0", "9", "-", ".", ":", "T", "Z", "+", " ", "\t", "\n", "\r", "\x0b",
                "\x0c", "\x1c", "\x1f", "\x85", "\xa0", "\u2028", "\u3000", "\u200b", "陈", "/"]
    for _ in range(700):
        yield "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 8)))
    for _ in range(700):
        y, mo, d = rng.randrange(0, 10000), rng.randrange(0, 14), rng.randrange(0, 33)
        h, mi, s = rng.randrange(0, 26), rng.randrange(0, 61), rng.randrange(0, 62)
        frac = rng.choice(["", ".5", ".123456", ".1234567", "."])
        tz = rng.choice(["Z", "+08:00", "-13:59", "+14:00", "+14:30", "", "+8:00"])
        yield rng.choice([
            f"{y:04d}", f"{y:04d}-{mo:02d}", f"{y:04d}-{mo:02d}-{d:02d}",
            f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}{frac}{tz}",
            f"{y:04d}{mo:02d}{d:02d}", f"{y}-{mo}-{d}",
        ])


def _values(rng: random.Random) -> Iterator[Any]:
    yield from _texts(rng)
    yield from ODD_VALUES
    for _ in range(100):
        yield rng.choice([rng.randrange(-2**32, 2**32), rng.randrange(-3, 3)])
        yield Decimal(rng.randrange(-10**6, 10**6)).scaleb(-rng.randrange(0, 5))


@pytest.mark.parametrize("kind", sorted(PLACES))
def test_primitive_check_never_passes_what_fhir_resources_refuses(kind: str) -> None:
    resource_type, path = PLACES[kind]
    rng = random.Random(kind)
    vouched = 0
    for value in _values(rng):
        doc = _place(resource_type, path, value)
        if _vouched(doc):
            vouched += 1
            assert _valid(doc), (kind, value)
    # It does vouch for plain values of this type.
    assert vouched >= (2 if kind == "boolean" else 20), kind


@pytest.mark.parametrize(
    ("kind", "good", "bad"),
    [
        ("string", ["陈国华", " a ", "a\nb"], ["", "\u3000", "\x0b"]),
        ("code", ["male", "in-progress", "a b"], ["", " male", "a  b", "a\tb", 1]),
        ("id", ["a-1.B", "x" * 64], ["", "a_b", "a b"]),
        ("date", ["2011", "2011-12", "2012-02-29"], ["2011-02-29", "20111222", "2011-13"]),
        ("dateTime", ["2011-12-22", "2011-12-22T10:00:00+08:00", "2011-12-22T10:00:00.5Z"],
         ["2011-12-22T10:00:00", "2011-12-22T24:00:00Z", "2011-02-30"]),
        ("decimal", [Decimal("1.50"), 3, Decimal("-0")], ["1.5", 1.5, True, Decimal("NaN")]),
        ("boolean", [True, False], ["true", 1, None]),
    ],
)
def test_primitive_checks_on_plain_values(kind: str, good: list[Any], bad: list[Any]) -> None:
    resource_type, path = PLACES[kind]
    for value in good:
        assert _vouched(_place(resource_type, path, value)), value
    for value in bad:
        assert not _vouched(_place(resource_type, path, value)), value


# -- through a mapping: each invalid case is still a MappingError ---------------------------

ADT = (
    "MSH|^~\\&|HIS|H1|HB|H1|20260402141530||ADT^A01^ADT_A01|C1|P|2.5|||||CHN|UNICODE UTF-8\r"
    "PID|1||111^^^H1^MR||陈^国华^^^^^L||19620712|M\r"
    "PV1|1|I|W1^R2^B3||||D1^黄^伟||||||||||||Z1\r"
)


def _fhir(tmp_path: Path, resource: str, rules: str) -> CompiledMapping:
    path = tmp_path / "m.toml"
    path.write_text(f'source = "hl7v2"\ntarget = "fhir"\nresource = "{resource}"\n{rules}',
                    encoding="utf-8")
    return load_mapping(path)


@pytest.mark.parametrize(
    ("case", "resource", "rules", "message"),
    [
        ("a bad date", "Patient", 'from = "PID-7"\nto = "birthDate"',
         "not a valid FHIR Patient: birthDate: Value error, Date value string does not match "
         "spec regex."),
        ("a date that does not exist", "Patient", 'value = "2011-02-29"\nto = "birthDate"',
         "not a valid FHIR Patient: birthDate: Input should be a valid date"),
        ("a bad code", "Patient", 'value = "not  a code"\nto = "gender"',
         "not a valid FHIR Patient: gender: String should match pattern"),
        ("a wrong type", "Patient", 'value = 7\nto = "gender"',
         "not a valid FHIR Patient: gender: Input should be a valid string"),
        ("a value where an element is expected", "Encounter",
         'value = "finished"\nto = "status"\n[[rule]]\nvalue = "x"\nto = "class"',
         "not a valid FHIR Encounter: class: Invalid JSON"),
        ("a missing required element", "Encounter", 'value = "finished"\nto = "status"',
         "not a valid FHIR Encounter: class: Field required"),
        ("a missing required primitive", "Encounter", 'value = "IMP"\nto = "class.code"',
         "not a valid FHIR Encounter: status: Value for the field 'status' is required."),
        ("two choices of one element", "Patient",
         'value = true\nto = "deceasedBoolean"\n[[rule]]\nvalue = "2020"\n'
         'to = "deceasedDateTime"',
         "not a valid FHIR Patient: Value error, Any of one field value is expected"),
    ],
)
def test_invalid_resources_fail_on_the_fast_path_with_the_validation_message(
    tmp_path: Path, case: str, resource: str, rules: str, message: str
) -> None:
    mapping = _fhir(tmp_path, resource, f"[[rule]]\n{rules}\n")
    with pytest.raises(MappingError) as fast:
        mapping.apply(Payload(ADT.encode(), "hl7v2"))
    assert message in str(fast.value), case
    assert "陈" not in str(fast.value)
    # Word for word what fhir.resources alone says.
    with pytest.raises(MappingError) as full:
        dataclasses.replace(mapping, fhir_validation="full").apply(Payload(ADT.encode(), "hl7v2"))
    assert str(fast.value) == str(full.value)


def test_fixtures_fail_when_the_fast_check_passes_an_invalid_resource(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mapping = _fhir(tmp_path, "Patient", '[[rule]]\nfrom = "PID-7"\nto = "birthDate"\n')
    folder = tmp_path / "fixtures" / "m"
    folder.mkdir(parents=True)
    (folder / "bad.in.hl7").write_text(ADT, encoding="utf-8")
    (folder / "bad.error.txt").write_text("birthDate", encoding="utf-8")
    [fixture] = find_fixtures(tmp_path / "m.toml", "m")
    assert run_one_fixture(mapping, fixture).passed
    monkeypatch.setattr(fhir_check, "vouch", lambda model, resource: True)
    outcome = run_one_fixture(mapping, fixture)
    assert not outcome.passed
    assert "the fast FHIR check passed a resource fhir.resources refuses" in outcome.detail


def test_validation_modes(tmp_path: Path) -> None:
    assert fhir.VALIDATION_MODES == ("fast", "full", "both")
    mapping = _fhir(tmp_path, "Patient", '[[rule]]\nfrom = "PID-3.1"\nto = "identifier[0].value"\n')
    outputs = {
        mode: dataclasses.replace(mapping, fhir_validation=mode).run(
            Payload(ADT.encode(), "hl7v2"), now=FIXTURE_NOW)[0].body
        for mode in fhir.VALIDATION_MODES
    }
    assert len(set(outputs.values())) == 1
