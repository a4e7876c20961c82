"""HL7 v2 source paths: ``PID-3``, ``PID-3[2].1``, ``PID-5.1.1``, ``OBX[*]-5``, ``.5``, ``-3.1``.

Grammar (positions are 1-based, as in the standard)::

    path     := SEG [ "[" occ "]" ] [ "-" field ]        absolute
              | "-" field                                relative to the current segment
              | "." comp [ "." sub ]                     relative to the current repetition
              | "."                                      the current repetition itself
    field    := N [ "[" rep "]" ] [ "." comp [ "." sub ] ]
    occ, rep := N | "*"

A path that stops early reads the first component (and first sub-component), so ``PID-8``
is ``PID-8.1.1``; ``MSH-1`` and ``MSH-2`` are the delimiters themselves. Values are unescaped
(``\\F\\`` becomes ``|``, ``\\.br\\`` a line break) and HL7's explicit null ``""`` is empty.

Segment groups: iterating ``X[*]`` (in ``each`` or ``where``) gives each occurrence a group
running from that segment to the next ``X``, or to the next segment of a kind that came
before the first ``X`` (NTE excepted, so notes stay with the segment they follow). Inside a
group a segment name resolves to its first occurrence in the group; a kind that came
before the first ``X`` (MSH, PID, ORC, OBR for OBX ...) resolves to its nearest occurrence
before the group. So in ``each = "OBX[*]"``, ``OBR-3`` is the OBR the result belongs to,
``NTE-3`` only a note following that OBX, and in ``each = "ORC[*]"`` ``OBR-4`` is the
current order's while ``PID-3`` is the patient's.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from engine.hl7 import Hl7Message, unescape
from engine.mapping.conditions import Condition, compile_condition, split_where
from engine.mapping.specials import in_conditions

STAR = -1
_ONE, _RAW, _REP, _GENERAL = range(4)
_ABS = re.compile(
    r"(?P<seg>[A-Z][A-Z0-9]{2})(?:\[(?P<occ>\*|\d+)\])?"
    r"(?:-(?P<field>\d+)(?:\[(?P<rep>\*|\d+)\])?(?:\.(?P<comp>\d+)(?:\.(?P<sub>\d+))?)?)?$"
)
_REL_SEG = re.compile(
    r"-(?P<field>\d+)(?:\[(?P<rep>\*|\d+)\])?(?:\.(?P<comp>\d+)(?:\.(?P<sub>\d+))?)?$"
)
_REL_REP = re.compile(r"\.(?:(?P<comp>\d+)(?:\.(?P<sub>\d+))?)?$")


class Hl7Doc:
    """A parsed message with a segment-name index, shared by every scope of one run."""

    __slots__ = ("_comps", "_reps", "comp_sep", "esc", "groups", "index", "memo", "msg",
                 "rep_sep", "sub_sep")

    def __init__(self, msg: Hl7Message) -> None:
        self.msg = msg
        self.rep_sep = msg.repetition_sep
        self.comp_sep = msg.component_sep
        self.sub_sep = msg.subcomponent_sep
        self.esc = msg.escape_char
        index: dict[str, list[int]] = {}
        for i, seg in enumerate(msg.segments):
            index.setdefault(seg[:3], []).append(i)
        self.index = index
        self._reps: dict[tuple[int, int], list[str]] = {}
        self._comps: dict[str, list[str]] = {}
        # Results of [*] / where paths, by path and scope: rules often repeat a filter.
        self.memo: dict[tuple[int, int, int, int, int, int, bool], Any] = {}
        # The group of one segment occurrence, by (name, occurrence, scope).
        self.groups: dict[tuple[Any, ...], list[Hl7Scope]] = {}

    def reps(self, seg: int, field: int) -> list[str]:
        """The repetitions of a field (raw), split once per run."""
        key = (seg, field)
        found = self._reps.get(key)
        if found is None:
            fields = self.msg.fields(seg)
            raw = fields[field] if field < len(fields) else ""
            found = raw.split(self.rep_sep) if raw else []
            self._reps[key] = found
        return found

    def leaf(self, text: str, comp: int, sub: int) -> str:
        """Component ``comp`` / sub-component ``sub`` (0-based) of a repetition, as a value."""
        if self.comp_sep in text:
            comps = self._comps.get(text)
            if comps is None:
                comps = text.split(self.comp_sep)
                self._comps[text] = comps
            text = comps[comp] if comp < len(comps) else ""
        elif comp:
            return ""
        if self.sub_sep in text:
            subs = text.split(self.sub_sep)
            text = subs[sub] if sub < len(subs) else ""
        elif sub:
            return ""
        if not text or text == '""':
            return ""
        if self.esc and self.esc in text:
            return self.text(text)
        return text

    def text(self, raw: str) -> str:
        """A component's raw text as a value: unescaped, with line breaks as ``\\n``."""
        if raw == '""':
            return ""
        if self.esc and self.esc in raw:
            raw = unescape(raw, self.msg)
            if "\r" in raw:
                raw = raw.replace("\r", "\n")
        return raw


class Hl7Scope:
    """Where relative paths point and which segments a segment name resolves to.

    Attributes:
        lo, hi: the segment positions of the current group (the whole message at the top).
        item: whether this is an item of a segment iteration.
        parents: segment kinds that come before the iterated ones (MSH, PID, OBR for OBX
            items ...): looked up before the group when the group has none.
        seg: the current segment (anchor of ``-F`` paths), or -1 at the message level.
        field, rep: the current repetition (anchor of ``.C`` paths), when iterating one.
        index: 1-based position in the innermost ``each`` (``@index``).
    """

    __slots__ = ("doc", "field", "hi", "index", "item", "lo", "parents", "rep", "seg")

    def __init__(
        self, doc: Hl7Doc, lo: int, hi: int, seg: int = -1, field: int = 0, rep: int = 0,
        index: int = 1, *, item: bool = False, parents: frozenset[str] = frozenset(),
    ) -> None:
        self.doc = doc
        self.lo = lo
        self.hi = hi
        self.seg = seg
        self.field = field
        self.rep = rep
        self.index = index
        self.item = item
        self.parents = parents

    @property
    def anchor(self) -> int:
        return self.seg

    def contains(self, anchor: Any) -> bool:
        return isinstance(anchor, int) and self.lo <= anchor < self.hi

    def first(self, name: str, occ: int) -> int:
        """Position of occurrence ``occ`` (1-based) of ``name`` for this scope, or -1."""
        positions = self.doc.index.get(name)
        if not positions:
            return -1
        lo, hi = self.lo, self.hi
        if lo == 0 and hi >= positions[-1]:
            return positions[occ - 1] if occ <= len(positions) else -1
        n = 0
        for p in positions:
            if lo <= p < hi:
                n += 1
                if n == occ:
                    return p
        if n or occ != 1 or name not in self.parents:
            return -1
        before = [p for p in positions if p < lo]
        return before[-1] if before else -1

    def find(self, name: str) -> list[int]:
        """Every position of ``name`` inside the group."""
        positions = self.doc.index.get(name)
        if not positions:
            return []
        return [p for p in positions if self.lo <= p < self.hi]

    def items(self, found: list[int]) -> list[Hl7Scope]:
        """The groups of the occurrences ``found`` of one segment inside this scope."""
        segments = self.doc.msg.segments
        name = segments[found[0]][:3]
        # Kinds seen before the first occurrence start a new group when they come back.
        leaders = {segments[p][:3] for p in range(self.lo, found[0])} - {name, "NTE"}
        parents = frozenset(leaders | self.parents)
        out = []
        for k, pos in enumerate(found):
            end = found[k + 1] if k + 1 < len(found) else self.hi
            for p in range(pos + 1, end):
                if segments[p][:3] in leaders:
                    end = p
                    break
            out.append(
                Hl7Scope(self.doc, pos, end, pos, index=k + 1, item=True, parents=parents)
            )
        return out


def root_scope(msg: Hl7Message) -> Hl7Scope:
    doc = Hl7Doc(msg)
    return Hl7Scope(doc, 0, len(msg.segments))


@dataclass(frozen=True, slots=True)
class Hl7Path:
    """A compiled HL7 source path (see the module docstring)."""

    text: str
    kind: str  # "abs", "seg" (relative to segment), "rep" (relative to repetition)
    segment: str | None
    occ: int | None  # None = first; STAR = all
    field: int | None
    rep: int | None  # None = first; STAR = all
    comp: int | None
    sub: int | None
    where: Condition | None
    # Worked out once from the above, for ``values``: which shortcut applies (_ONE, _RAW,
    # _REP or _GENERAL), and the 0-based positions it reads.
    mode: int = dataclasses.field(default=0, init=False, repr=False, compare=False)
    f0: int = dataclasses.field(default=0, init=False, repr=False, compare=False)
    k0: int = dataclasses.field(default=0, init=False, repr=False, compare=False)
    c0: int = dataclasses.field(default=0, init=False, repr=False, compare=False)
    s0: int = dataclasses.field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        single = self.occ != STAR and self.rep != STAR
        if self.kind == "rep":
            mode = _REP
        elif self.kind == "abs" and single:
            mode = _RAW if self.segment == "MSH" and (self.field or 0) <= 2 else _ONE
        else:
            mode = _GENERAL
        for name, value in (("mode", mode), ("f0", self.field or 0), ("k0", (self.rep or 1) - 1),
                            ("c0", (self.comp or 1) - 1), ("s0", (self.sub or 1) - 1)):
            object.__setattr__(self, name, value)

    @property
    def multi(self) -> bool:
        return self.occ == STAR or self.rep == STAR

    @property
    def single_text(self) -> bool:
        """At most one value, a string: conditions compare it directly."""
        return not self.multi

    @property
    def selects_segment(self) -> bool:
        return self.field is None and self.kind != "rep"

    # -- evaluation --------------------------------------------------------------------------

    def _segments(self, scope: Hl7Scope, run: Any) -> list[Hl7Scope]:
        """Scopes of the selected segments (item scopes when iterating occurrences)."""
        if self.kind != "abs":
            return [scope] if scope.seg >= 0 else []
        assert self.segment is not None
        if self.occ == STAR:
            found = scope.find(self.segment)
            if not found:
                return []
            items = scope.items(found)
            if self.where is not None and self.rep != STAR:
                items = [s for s in items if self.where.test(s, run)]
                for number, item in enumerate(items, start=1):
                    item.index = number
            return items
        # One occurrence (PID-3[*] reads the PID group): the same for every path that
        # names it from this scope, so it is worked out once per run.
        key = (self.segment, self.occ, scope.lo, scope.hi, scope.seg, scope.parents)
        doc = scope.doc
        chosen = doc.groups.get(key)
        if chosen is None:
            chosen = self._occurrence(scope)
            doc.groups[key] = chosen
        return chosen

    def _occurrence(self, scope: Hl7Scope) -> list[Hl7Scope]:
        assert self.segment is not None
        pos = scope.first(self.segment, self.occ or 1)
        if pos < 0:
            return []
        found = scope.find(self.segment) or [pos]
        groups = scope.items(found) if pos in found else [
            Hl7Scope(scope.doc, pos, pos + 1, pos, item=True, parents=scope.parents)
        ]
        return [g for g in groups if g.seg == pos][:1]

    def _positions(self, scope: Hl7Scope, run: Any) -> list[int]:
        """Segment positions this path reads (no item scopes needed)."""
        if self.kind != "abs":
            return [scope.seg] if scope.seg >= 0 else []
        if self.occ != STAR:
            assert self.segment is not None
            pos = scope.first(self.segment, self.occ or 1)
            return [pos] if pos >= 0 else []
        if self.where is not None and self.rep != STAR:
            return [s.seg for s in self._segments(scope, run)]
        return scope.find(self.segment or "")

    def _repetitions(self, scope: Hl7Scope, run: Any) -> list[tuple[int, str, int]]:
        """(segment position, raw repetition text, repetition index) of the selected field."""
        doc = scope.doc
        if self.kind == "rep":
            if scope.seg < 0:
                return []
            reps = doc.reps(scope.seg, scope.field)
            return [(scope.seg, reps[scope.rep] if scope.rep < len(reps) else "", scope.rep)]
        out: list[tuple[int, str, int]] = []
        f = self.field
        assert f is not None
        for pos in self._positions(scope, run):
            if f <= 2 and doc.msg.segments[pos].startswith("MSH"):
                fields = doc.msg.fields(pos)
                out.append((pos, fields[f] if f < len(fields) else "", 0))
                continue
            reps = doc.reps(pos, f)
            if self.rep == STAR:
                for k, text in enumerate(reps):
                    if not text:
                        continue
                    if self.where is not None:
                        item = Hl7Scope(doc, scope.lo, scope.hi, pos, f, k, k + 1, item=scope.item,
                                       parents=scope.parents)
                        if not self.where.test(item, run):
                            continue
                    out.append((pos, text, k))
            else:
                k = (self.rep or 1) - 1
                if k < len(reps):
                    out.append((pos, reps[k], k))
        return out

    def values(self, scope: Hl7Scope, run: Any) -> list[Any]:
        doc = scope.doc
        mode = self.mode
        if mode == _ONE:
            # The common case (PID-7, PV1-19.1): one segment, one repetition.
            pos = scope.first(self.segment, self.occ or 1)  # type: ignore[arg-type]
            if pos < 0:
                return []
            reps = doc.reps(pos, self.f0)
            if self.k0 >= len(reps):
                return []
            value = doc.leaf(reps[self.k0], self.c0, self.s0)
            return [value] if value else []
        if mode == _REP:
            # .C inside a repetition (in where and each): direct, no memo needed.
            if scope.seg < 0:
                return []
            reps = doc.reps(scope.seg, scope.field)
            if scope.rep >= len(reps):
                return []
            value = doc.leaf(reps[scope.rep], self.c0, self.s0)
            return [value] if value else []
        if mode == _RAW:
            # MSH-1 and MSH-2: the delimiters, as they are.
            pos = scope.first("MSH", self.occ or 1)
            if pos < 0:
                return []
            fields = doc.msg.fields(pos)
            raw = fields[self.f0] if self.f0 < len(fields) else ""
            return [raw] if raw else []
        comp, sub = self.c0, self.s0
        key = (id(self), scope.lo, scope.hi, scope.seg, scope.field, scope.rep, False)
        found = doc.memo.get(key)
        if found is not None:
            return found  # type: ignore[no-any-return]
        out: list[Any] = []
        for _pos, text, _ in self._repetitions(scope, run):
            if self.field is not None and self.field <= 2 and self.segment == "MSH":
                if text:
                    out.append(text)
                continue
            value = doc.leaf(text, comp, sub)
            if value:
                out.append(value)
        doc.memo[key] = out
        return out

    def nodes(self, scope: Hl7Scope, run: Any) -> list[Hl7Scope]:
        if self.kind == "rep":
            return [scope]
        key = (id(self), scope.lo, scope.hi, scope.seg, scope.field, scope.rep, True)
        found = scope.doc.memo.get(key)
        if found is None:
            found = self._nodes(scope, run)
            scope.doc.memo[key] = found
        return found

    def _nodes(self, scope: Hl7Scope, run: Any) -> list[Hl7Scope]:
        if self.field is None:
            return self._segments(scope, run)
        items: list[Hl7Scope] = []
        f = self.field or 0
        for seg_scope in self._segments(scope, run):
            reps = scope.doc.reps(seg_scope.seg, f)
            if self.rep == STAR:
                chosen = [k for k, text in enumerate(reps) if text]
            else:
                k = (self.rep or 1) - 1
                chosen = [k] if k < len(reps) else []
            for k in chosen:
                item = Hl7Scope(scope.doc, seg_scope.lo, seg_scope.hi, seg_scope.seg, f, k,
                                len(items) + 1, item=seg_scope.item, parents=seg_scope.parents)
                if self.where is not None and self.rep == STAR:
                    if not self.where.test(item, run):
                        continue
                    item.index = len(items) + 1
                items.append(item)
        return items


def _pos(text: str | None, what: str) -> int | None:
    if text is None:
        return None
    if text == "*":
        return STAR
    n = int(text)
    if n < 1:
        raise ValueError(f"{what} numbers start at 1")
    return n


def compile_hl7_path(text: str) -> Hl7Path:
    """Compile a source path; raises ValueError naming what is wrong."""
    raw = text
    text, where_text = split_where(text.strip())
    m = _ABS.match(text)
    kind = "abs"
    if m is None:
        m = _REL_SEG.match(text)
        kind = "seg"
    if m is None:
        m = _REL_REP.match(text)
        kind = "rep"
    if m is None:
        raise ValueError(_explain(text))
    groups = m.groupdict()
    path = Hl7Path(
        text=raw,
        kind=kind,
        segment=groups.get("seg"),
        occ=_pos(groups.get("occ"), "segment occurrence"),
        field=_pos(groups.get("field"), "field"),
        rep=_pos(groups.get("rep"), "repetition"),
        comp=_pos(groups.get("comp"), "component"),
        sub=_pos(groups.get("sub"), "sub-component"),
        where=None,
    )
    if path.segment == "MSH" and path.field in (1, 2) and (path.comp or path.rep):
        raise ValueError("MSH-1 and MSH-2 are the delimiters: they have no components")
    if where_text is not None:
        if not where_text:
            raise ValueError("'where' needs a condition")
        if not path.multi:
            raise ValueError(
                "'where' filters the items of a [*]: write e.g. PID-3[*] where .5 = \"MR\""
            )
        cond = compile_condition(where_text, in_conditions(compile_hl7_path))
        object.__setattr__(path, "where", cond)
    return path


def _explain(text: str) -> str:
    if not text:
        return "empty path"
    if re.match(r"[A-Za-z]{3}\.\d", text):
        return f"{text!r}: write fields with a dash, e.g. {text[:3].upper()}-{text[4:]}"
    if re.match(r"[a-z][a-z0-9]{2}\b", text):
        return f"{text!r}: segment names are upper case ({text[:3].upper()})"
    if re.match(r"[A-Z][A-Z0-9]{2}-\d+\[[^\]]*\]?", text) and "[" in text:
        return f"{text!r}: a repetition is [N] (from 1) or [*]"
    return (
        f"{text!r} is not an HL7 path (expected SEG-F[.C[.S]] such as PID-3.1, "
        "PID-3[2].1, OBX[*]-5, or .C / -F inside a group)"
    )
