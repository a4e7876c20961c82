"""A fast structural check that vouches for a mapped FHIR resource without fhir.resources.

Validating with fhir.resources (``Model.model_validate``) builds one pydantic model per
element and runs Python validators on each: about 150 µs for a mapped Patient, more than the
mapping itself. Nearly every resource a mapping produces is plain: nested dicts, lists and
strings, in the shapes the loader already checked against the same models. This module walks
such a resource against a table derived once per model class from the R4B model definitions
(the field annotations, ``get_required_fields`` and ``get_one_of_many_fields``) and answers
one question: is it certainly valid?

The answer is one-sided on purpose. ``vouch`` returns True only for what it understands
completely and knows fhir.resources accepts; anything else (an unknown or python-named key,
a primitive extension ``_x``, a None, an empty list, a value type the table does not cover,
a leap second, a contained resource, a missing required element, two choices of one
``[x]``, a value that does not match its type) makes it return False, and the caller then
validates with fhir.resources as before, so what is refused, and the message saying why,
stay exactly what fhir.resources says. The rules per primitive mirror fhir_core's types:

- string: a ``str`` that is not empty nor only whitespace (fhir_core: ``[ \\r\\n\\t\\S]+``);
- code: a ``str`` of non-whitespace runs joined by single spaces;
- id: 1 to the configured maximum of ``[A-Za-z0-9\\-.]``;
- uri, canonical, markdown: any ``str`` (their patterns match every string);
- oid: ``urn:oid:`` and dotted numbers;
- date, dateTime, instant: fhir_core's own regular expressions, a calendar date that
  exists, no leap second and at most 6 fraction digits;
- decimal: a ``Decimal`` or ``int`` whose text matches fhir_core's decimal pattern;
- integer, unsignedInt, positiveInt: an ``int`` (not ``bool``) in range; boolean: a ``bool``.

Python's ``\\s`` covers every character Rust's (pydantic-core's regex engine) does, plus a
few control characters, so a string Python calls valid here is valid there too.
Tests compare this check with fhir.resources on many valid and broken resources.
"""

from __future__ import annotations

import datetime
import re
import threading
import types
import typing
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from fhir_core import types as fhir_types
from fhir_core.fhirabstractmodel import FHIRAbstractModel

Check = Callable[[Any], bool]

# -- primitives ------------------------------------------------------------------------------

_ID = re.compile(r"[A-Za-z0-9\-.]+")
_OID = re.compile(r"urn:oid:[0-2](\.(0|[1-9][0-9]*))+")
_TIME_TAIL = re.compile(r"T[0-9]{2}:[0-9]{2}:([0-9]{2})(?:\.([0-9]+))?")


def _string(v: Any) -> bool:
    # Some character is not Python whitespace (so not Rust's ``\s`` either): ``\S`` matches.
    return type(v) is str and v != "" and not v.isspace()


def _code(v: Any) -> bool:
    # Runs of non-whitespace joined by single spaces: ``[^\s]+( [^\s]+)*`` in full, as
    # ``str.split`` and ``re``'s ``\s`` both use Python's whitespace (a superset of Rust's).
    return type(v) is str and v != "" and " ".join(v.split()) == v


def _any_text(v: Any) -> bool:
    return type(v) is str


def _oid(v: Any) -> bool:
    return type(v) is str and _OID.fullmatch(v) is not None


def _real_date(text: str) -> bool:
    """A full ``YYYY-MM-DD`` prefix names a day that exists (the regexes allow 02-31)."""
    if len(text) < 10 or text[4] != "-" or text[7] != "-":
        return True  # a year or a year-month: the regex has checked it
    try:
        datetime.date(int(text[:4]), int(text[5:7]), int(text[8:10]))
    except ValueError:
        return False
    return True


def _time_ok(text: str) -> bool:
    if len(text) <= 10:
        return True
    m = _TIME_TAIL.match(text, 10)
    if m is None:
        return False
    if m.group(1) == "60":
        return False  # a leap second: fhir_core has its own path for it
    fraction = m.group(2)
    return fraction is None or len(fraction) <= 6


def _temporal(pattern: re.Pattern[str]) -> Check:
    def check(v: Any) -> bool:
        return (
            type(v) is str and pattern.fullmatch(v) is not None and _real_date(v)
            and _time_ok(v)
        )

    return check


def _decimal(pattern: re.Pattern[str]) -> Check:
    def check(v: Any) -> bool:
        return type(v) in (Decimal, int) and pattern.fullmatch(str(v)) is not None

    return check


def _integer(low: int, high: int) -> Check:
    def check(v: Any) -> bool:
        return type(v) is int and low <= v <= high

    return check


def _boolean(v: Any) -> bool:
    return type(v) is bool


def _patterns(marker: Any) -> list[str]:
    return [m.pattern for m in marker if getattr(m, "pattern", None) is not None]


def _id_check() -> Check | None:
    """Id's limits are configurable in fhir_core: read them, and cover only the default."""
    low, high, patterns = 1, None, []
    for m in fhir_types.Id():
        if hasattr(m, "min_length"):
            low = m.min_length
        elif hasattr(m, "max_length"):
            high = m.max_length
        elif getattr(m, "pattern", None) is not None:
            patterns.append(getattr(m, "pattern"))  # noqa: B009 - not on BaseMetadata's type
    if patterns != [r"^[A-Za-z0-9\-.]+$"] or high is None or low != 1:
        return None
    limit: int = high

    def check(v: Any) -> bool:
        return type(v) is str and len(v) <= limit and _ID.fullmatch(v) is not None

    return check


def _primitive_checks() -> dict[type, Check]:
    """Checks by fhir_core type marker, each only where the marker is as analysed above."""
    checks: dict[type, Check] = {}
    if _patterns(fhir_types.String()) == ["[ \r\n\t\\S]+"]:
        checks[fhir_types.String] = _string
    if _patterns(fhir_types.Code()) == [r"^[^\s]+(\s[^\s]+)*$"]:
        checks[fhir_types.Code] = _code
    id_check = _id_check()
    if id_check is not None:
        checks[fhir_types.Id] = id_check
    for marker, pattern in ((fhir_types.Uri, r"\S*"), (fhir_types.Canonical, r"\S*"),
                            (fhir_types.Markdown, r"\s*(\S|\s)*")):
        if marker.pattern.pattern == pattern:
            checks[marker] = _any_text
    if fhir_types.Oid.pattern.pattern == r"^urn:oid:[0-2](\.(0|[1-9][0-9]*))+$":
        checks[fhir_types.Oid] = _oid
    checks[fhir_types.Date] = _temporal(fhir_types.Date.pattern)
    checks[fhir_types.DateTime] = _temporal(fhir_types.DateTime.pattern)
    checks[fhir_types.Instant] = _temporal(fhir_types.Instant.pattern)
    checks[fhir_types.Decimal] = _decimal(fhir_types.Decimal.pattern)
    return checks


_INTEGERS = (fhir_types.Integer, fhir_types.UnsignedInt, fhir_types.PositiveInt)


_PRIMITIVES = _primitive_checks()


# -- models ----------------------------------------------------------------------------------


class Shape:
    """What one model class accepts, by JSON key (the field alias).

    Attributes:
        fields: key → (kind, check): ``PRIMITIVE`` or ``PRIMITIVES`` (a list) with a
            function, ``ELEMENT`` or ``ELEMENTS`` with a ``Shape``, or ``UNCHECKED`` for what
            this module does not vouch for.
        required: keys that must be present (``default=...`` fields and the primitives of
            ``get_required_fields``).
        choices: the keys of each ``[x]`` element, with whether one of them is required.
    """

    __slots__ = ("choices", "fields", "plain", "required", "resource_type")

    def __init__(self) -> None:
        self.fields: dict[str, tuple[int, Any]] = {}
        self.required: tuple[str, ...] = ()
        self.choices: tuple[tuple[tuple[str, ...], bool], ...] = ()
        self.plain = True  # neither required elements nor choices: nothing to count
        self.resource_type = ""


UNCHECKED, PRIMITIVE, PRIMITIVES, ELEMENT, ELEMENTS = range(5)


_SHAPES: dict[type, Shape] = {}  # complete shapes only
_BUILDING = threading.Lock()


def shape(model: type[FHIRAbstractModel]) -> Shape:
    """The shape of ``model``, built once per class (the loader builds them at load).

    A shape is published with every shape it reaches, complete, so a thread that validates
    while another builds never sees a half-filled table.
    """
    found = _SHAPES.get(model)
    if found is not None:
        return found
    with _BUILDING:
        found = _SHAPES.get(model)
        if found is not None:
            return found
        building: dict[type, Shape] = {}
        result = _build(model, building)
        _SHAPES.update(building)
        return result


def _build(model: type[FHIRAbstractModel], building: dict[type, Shape]) -> Shape:
    found = _SHAPES.get(model) or building.get(model)
    if found is not None:
        return found
    result = Shape()
    building[model] = result  # registered first: Identifier → Extension → Identifier ...
    result.resource_type = model.__resource_type__
    aliases = {}
    for name, info in model.model_fields.items():
        key = info.alias or name
        aliases[name] = key
        if name == "fhir_comments" or key.startswith("_"):
            continue  # neither is ever vouched for: absent from the table
        repeats, check = _field(info.annotation, building)
        if check is None:
            kind = UNCHECKED
        elif type(check) is Shape:
            kind = ELEMENTS if repeats else ELEMENT
        else:
            kind = PRIMITIVES if repeats else PRIMITIVE
        result.fields[key] = (kind, check)
    # Models accept fields by python name too (populate_by_name): a key that is one field's
    # alias and another's name would feed both, so such a key is not vouched for.
    for name, key in aliases.items():
        if key != name and name in result.fields:
            result.fields[name] = (UNCHECKED, None)
    blank = model.model_construct()
    required = {aliases[n] for n, info in model.model_fields.items() if info.is_required()}
    required.update(aliases[model.get_alias_mapping()[element]]
                    for element, _ext in blank.get_required_fields())
    result.required = tuple(sorted(required))
    choices = []
    for names in blank.get_one_of_many_fields().values():
        extra = model.model_fields[names[0]].json_schema_extra
        needed = isinstance(extra, dict) and extra.get("one_of_many_required") is True
        choices.append((tuple(aliases[n] for n in names), needed))
    result.choices = tuple(choices)
    result.plain = not result.required and not result.choices
    return result


def _field(annotation: Any, building: dict[type, Shape]) -> tuple[bool, Shape | Check | None]:
    """(repeats, check) for a field annotation such as ``Optional[List[StringType | None]]``."""
    repeats = False
    t = annotation
    while True:
        origin = typing.get_origin(t)
        args = typing.get_args(t)
        if origin in (list, typing.List):  # noqa: UP006 - the models use typing.List
            if repeats:
                return True, None
            repeats = True
            t = args[0]
        elif origin is typing.Union or origin is types.UnionType:
            inner = [a for a in args if a is not type(None)]
            if len(inner) != 1:
                return repeats, None
            t = inner[0]
        else:
            break
    if t is bool:
        return repeats, _boolean
    if typing.get_origin(t) is typing.Annotated:
        markers = typing.get_args(t)[1:]
        if len(markers) != 1:
            return repeats, None
        marker = markers[0]
        if type(marker) in _INTEGERS:  # the bounds (Ge, Le) are the marker's own
            return repeats, _integer(marker.min_length, marker.max_length)
        return repeats, _PRIMITIVES.get(type(marker))
    if isinstance(t, type) and issubclass(t, fhir_types.FhirBase):
        if issubclass(t, fhir_types.FhirElementOrResourceBase):
            return repeats, None  # contained resources and the like
        model = t.get_model_klass()
        if model.__name__ == "FHIRPrimitiveExtension":
            return repeats, None
        return repeats, _build(model, building)
    return repeats, None


# -- the check -------------------------------------------------------------------------------


def vouch(model: type[FHIRAbstractModel], resource: Any) -> bool:
    """True when ``resource`` is certainly a valid ``model``; False means "ask fhir.resources"."""
    s = shape(model)
    if type(resource) is not dict or resource.get("resourceType") != s.resource_type:
        return False
    return _vouch(s, resource, top=True)


def _vouch(s: Shape, node: dict[str, Any], top: bool = False) -> bool:
    fields = s.fields
    for key, value in node.items():
        entry = fields.get(key)
        if entry is None:
            if top and key == "resourceType":
                continue  # compared with the model's type by ``vouch``
            return False
        kind, check = entry
        if kind == PRIMITIVE:
            if not check(value):
                return False
        elif kind == ELEMENT:
            if type(value) is not dict or not _vouch(check, value):
                return False
        elif kind == ELEMENTS:
            if type(value) is not list or not value:
                return False
            for item in value:
                if type(item) is not dict or not _vouch(check, item):
                    return False
        elif kind == PRIMITIVES:
            if type(value) is not list or not value:
                return False
            for item in value:
                if not check(item):
                    return False
        else:
            return False
    if s.plain:
        return True
    for key in s.required:
        if key not in node:
            return False
    for keys, needed in s.choices:
        present = 0
        for key in keys:
            if key in node:
                present += 1
        if present > 1 or (needed and not present):
            return False
    return True
