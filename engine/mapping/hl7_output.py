"""Building HL7 v2 output: target paths, the message builder, escaping, the generated MSH.

Target paths use the source grammar with ``[+]`` (a new segment or repetition), ``[=]``
(the one last created) and ``[*]`` (one repetition or segment per value)::

    PID-3[+].1        a new repetition of PID-3, component 1
    PID-3[=].5        component 5 of that repetition
    OBX[+]-5          a new OBX segment, field 5
    .1  / -5          relative to the group's repetition / segment

Every value is escaped when the message is serialized: ``| ^ ~ \\ &`` become ``\\F\\ \\S\\
\\R\\ \\E\\ \\T\\`` and line breaks ``\\.br\\``, so no value can open a field, a component or a
segment. MSH-1 and MSH-2 are fixed (``|^~\\&``); MSH-7 (time), MSH-9 (type), MSH-10 (control
id), MSH-11, MSH-12 and MSH-18 are generated and may be overridden by rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from engine.hl7 import escape
from engine.mapping.values import Problem, as_text

NEW = -2
LAST = -3
SPREAD = -1

_ABS = re.compile(
    r"(?P<seg>[A-Z][A-Z0-9]{2})(?:\[(?P<occ>[*+=]|\d+)\])?"
    r"(?:-(?P<field>\d+)(?:\[(?P<rep>[*+=]|\d+)\])?(?:\.(?P<comp>\d+)(?:\.(?P<sub>\d+))?)?)?$"
)
_REL_SEG = re.compile(
    r"-(?P<field>\d+)(?:\[(?P<rep>[*+=]|\d+)\])?(?:\.(?P<comp>\d+)(?:\.(?P<sub>\d+))?)?$"
)
_REL_REP = re.compile(r"\.(?:(?P<comp>\d+)(?:\.(?P<sub>\d+))?)?$")


@dataclass(frozen=True, slots=True)
class Hl7Target:
    text: str
    kind: str  # "abs", "seg", "rep"
    segment: str | None
    occ: int | None  # None first, N, NEW, LAST, SPREAD
    field: int | None
    rep: int | None
    comp: int | None
    sub: int | None

    @property
    def spread(self) -> bool:
        return self.occ == SPREAD or self.rep == SPREAD


def _marker(text: str | None) -> int | None:
    if text is None:
        return None
    marks = {"*": SPREAD, "+": NEW, "=": LAST}
    if text in marks:
        return marks[text]
    n = int(text)
    if n < 1:
        raise ValueError("positions start at 1")
    return n


def compile_hl7_target(text: str) -> Hl7Target:
    s = text.strip()
    m, kind = _ABS.match(s), "abs"
    if m is None:
        m, kind = _REL_SEG.match(s), "seg"
    if m is None:
        m, kind = _REL_REP.match(s), "rep"
    if m is None:
        raise ValueError(
            f"{text!r} is not an HL7 target (expected e.g. PID-5.1, PID-3[+].1, OBX[+]-5, "
            "or .C / -F inside a group)"
        )
    g = m.groupdict()
    t = Hl7Target(
        text, kind, g.get("seg"), _marker(g.get("occ")), _marker(g.get("field")),
        _marker(g.get("rep")), _marker(g.get("comp")), _marker(g.get("sub")),
    )
    if t.occ == SPREAD and t.rep == SPREAD:
        raise ValueError(f"{text!r}: spread values over segments or repetitions, not both")
    if t.segment == "MSH" and t.field in (1, 2):
        raise ValueError("MSH-1 and MSH-2 are the delimiters |^~\\& and cannot be set")
    if t.segment == "MSH" and t.occ not in (None, 1):
        raise ValueError("a message has one MSH segment")
    return t


class _Segment:
    __slots__ = ("fields", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        # fields[n] is field n; each field a list of repetitions of components of subs.
        self.fields: list[list[list[list[str]]]] = [[]]


Anchor = tuple[_Segment, int, int]  # segment, field, repetition index (0-based)


class Hl7Builder:
    """One HL7 v2 message under construction, MSH first."""

    __slots__ = ("_last_rep", "_last_seg", "segments")

    def __init__(self, msh: dict[int, str]) -> None:
        head = _Segment("MSH")
        self.segments: list[_Segment] = [head]
        self._last_seg: dict[str, _Segment] = {"MSH": head}
        self._last_rep: dict[tuple[int, int], int] = {}
        for field_no, value in msh.items():
            _put(head, field_no, 0, None, None, value, split_components=True)

    # -- navigation --------------------------------------------------------------------------

    def _segment(self, name: str, occ: int | None) -> _Segment:
        if occ is None or occ == 1:
            for seg in self.segments:
                if seg.name == name:
                    return seg
            return self._new(name)
        if occ == NEW:
            return self._new(name)
        if occ == LAST:
            return self._last_seg.get(name) or self._segment(name, None)
        same = [s for s in self.segments if s.name == name]
        while len(same) < occ:
            same.append(self._new(name))
        return same[occ - 1]

    def _new(self, name: str) -> _Segment:
        seg = _Segment(name)
        self.segments.append(seg)
        self._last_seg[name] = seg
        return seg

    def _rep(self, seg: _Segment, field_no: int, rep: int | None) -> int:
        while len(seg.fields) <= field_no:
            seg.fields.append([])
        reps = seg.fields[field_no]
        if rep is None or rep == 1:
            idx = 0
        elif rep == NEW:
            idx = len(reps)
            self._last_rep[(id(seg), field_no)] = idx
        elif rep == LAST:
            idx = self._last_rep.get((id(seg), field_no), max(len(reps) - 1, 0))
        else:
            idx = rep - 1
        while len(reps) <= idx:
            reps.append([])
        return idx

    def locate(self, target: Hl7Target, base: Any) -> Any:
        """The anchor a group's ``to`` names: a segment, or a (segment, field, rep)."""
        if target.kind == "abs":
            assert target.segment is not None
            seg = self._segment(target.segment, target.occ)
        elif target.kind == "seg":
            seg = _anchor_segment(base, target.text)
        else:
            if not isinstance(base, tuple):
                raise Problem(f"target {target.text}: relative to a repetition, but the group "
                              "is not on a field")
            if target.comp is None:
                return base
            raise Problem(f"target {target.text}: a group's 'to' must be a segment or a field")
        if target.field is None:
            return seg
        idx = self._rep(seg, target.field, target.rep)
        if target.comp is not None:
            raise Problem(f"target {target.text}: a group's 'to' must be a segment or a field")
        return (seg, target.field, idx)

    def write(self, target: Hl7Target, base: Any, values: list[Any]) -> None:
        texts = [_text(v, target.text) for v in values]
        if target.kind == "rep":
            if not isinstance(base, tuple):
                raise Problem(f"target {target.text}: needs a group whose 'to' is a field")
            seg, field_no, idx = base
            _put(seg, field_no, idx, target.comp, target.sub, texts[0])
            return
        if target.occ == SPREAD:
            assert target.segment is not None
            for text in texts:
                seg = self._new(target.segment)
                if target.field is None:
                    raise Problem(f"target {target.text}: name a field to write into")
                idx = self._rep(seg, target.field, target.rep)
                _put(seg, target.field, idx, target.comp, target.sub, text)
            return
        if target.kind == "abs":
            assert target.segment is not None
            seg = self._segment(target.segment, target.occ)
        else:
            seg = _anchor_segment(base, target.text)
        if target.field is None:
            raise Problem(f"target {target.text}: name a field to write into")
        if target.rep == SPREAD:
            for text in texts:
                idx = self._rep(seg, target.field, NEW)
                _put(seg, target.field, idx, target.comp, target.sub, text)
            return
        idx = self._rep(seg, target.field, target.rep)
        _put(seg, target.field, idx, target.comp, target.sub, texts[0])

    # -- serialization -----------------------------------------------------------------------

    def serialize(self) -> str:
        lines = []
        for seg in self.segments:
            fields = [_field(f) for f in seg.fields[1:]]
            if seg.name == "MSH":
                # fields[0] is MSH-1 (the separator itself) and fields[1] MSH-2.
                body = "|".join(["MSH", "^~\\&", *fields[2:]])
            else:
                body = "|".join([seg.name, *fields])
            lines.append(body.rstrip("|") if seg.name != "MSH" else _trim_msh(body))
        return "\r".join(lines) + "\r"


def _trim_msh(body: str) -> str:
    head = "MSH|^~\\&"
    rest = body[len(head):].rstrip("|")
    return head + rest


def _anchor_segment(base: Any, text: str) -> _Segment:
    if isinstance(base, _Segment):
        return base
    if isinstance(base, tuple):
        return base[0]  # type: ignore[no-any-return]
    raise Problem(f"target {text}: relative to a segment, but the group has no segment 'to'")


def _text(value: Any, path: str) -> str:
    if isinstance(value, dict | list):
        raise Problem(f"target {path}: cannot write a JSON object or array into an HL7 field")
    return as_text(value)


def _put(
    seg: _Segment, field_no: int, rep: int, comp: int | None, sub: int | None, text: str,
    *, split_components: bool = False,
) -> None:
    while len(seg.fields) <= field_no:
        seg.fields.append([])
    reps = seg.fields[field_no]
    while len(reps) <= rep:
        reps.append([])
    comps = reps[rep]
    if split_components:
        # Only for generated MSH values such as ADT^A08^ADT_A01 (trusted config text).
        reps[rep] = [[c] for c in text.split("^")]
        return
    c = (comp or 1) - 1
    while len(comps) <= c:
        comps.append([])
    subs = comps[c]
    s = (sub or 1) - 1
    while len(subs) <= s:
        subs.append("")
    subs[s] = text


def _field(reps: list[list[list[str]]]) -> str:
    out = []
    for comps in reps:
        text = "^".join("&".join(escape(s) for s in subs).rstrip("&") for subs in comps)
        text = text.rstrip("^")
        if text:
            out.append(text)
    return "~".join(out)
