"""JSON and FHIR source paths: ``name[0].family``, ``identifier[*].value``, ``.system``.

Grammar::

    path := ["."] step ( "." NAME | "[" index "]" | "[\\"key\\"]" )*   a leading "." is relative
          | "."                                                       the current node
    step := NAME | "[" index "]" | "[\\"key\\"]"
    index := N | -N | "*"                                             0-based; -1 is the last

``[*]`` visits every element; ``where`` filters the elements of the last ``[*]``::

    identifier[*].value where .system = "urn:oid:2.16.156.10011.1.3"

Relative paths (leading ``.``) start at the current node of an ``each`` group or at the
element being tested by ``where``; absolute paths at the document root.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from engine.mapping.conditions import Condition, compile_condition, split_where
from engine.mapping.specials import in_conditions
from engine.mapping.values import from_json

STAR = ("*",)
APPEND = ("+",)
LAST = ("=",)
_NAME = re.compile(r"[A-Za-z_$@][A-Za-z0-9_$@\-]*")
_INDEX = re.compile(r"\[(\*|-?\d+|\"(?:[^\"\\]|\\.)*\")\]")


class JsonScope:
    """The document root, the current node and the 1-based ``@index`` of an ``each`` item."""

    __slots__ = ("index", "node", "root")

    def __init__(self, root: Any, node: Any, index: int = 1) -> None:
        self.root = root
        self.node = node
        self.index = index

    @property
    def anchor(self) -> Any:
        return id(self.node)

    def contains(self, anchor: Any) -> bool:
        return self.node is self.root


Step = str | int  # a key, an index, or STAR


def parse_steps(text: str, *, allow: str = "") -> tuple[bool, list[Any]]:
    """(relative, steps) of a dotted path. ``allow`` lists extra index tokens such as ``+=``.

    Steps are keys (str), indexes (int) and the markers ``"*"``, ``"+"`` and ``"="`` wrapped
    in a tuple so they cannot be confused with keys named ``*``.
    """
    s = text.strip()
    if not s:
        raise ValueError("empty path")
    relative = s.startswith(".")
    i = 1 if relative else 0
    steps: list[Any] = []
    expect_name = True
    while i < len(s):
        c = s[i]
        if c == "[":
            end = s.find("]", i)
            token = s[i + 1 : end] if end != -1 else ""
            if token in ("*",) or (token and token in allow):
                steps.append((token,))
                i = end + 1
            else:
                m = _INDEX.match(s, i)
                if m is None:
                    raise ValueError(
                        f"{text!r}: bad index at column {i + 1} "
                        f"(use [0], [-1], [*]{', [+], [=]' if allow else ''} or [\"key\"])"
                    )
                tok = m.group(1)
                if tok.startswith('"'):
                    steps.append(tok[1:-1].replace('\\"', '"').replace("\\\\", "\\"))
                else:
                    steps.append(int(tok))
                i = m.end()
            expect_name = False
        elif c == "." and not expect_name:
            i += 1
            expect_name = True
        else:
            m = _NAME.match(s, i)
            if m is None or not expect_name:
                raise ValueError(f"{text!r}: unexpected {c!r} at column {i + 1}")
            steps.append(m.group(0))
            i = m.end()
            expect_name = False
    if expect_name and steps:
        raise ValueError(f"{text!r}: path ends with a dot")
    if not relative and not steps:
        raise ValueError(f"{text!r}: empty path")
    return relative, steps


@dataclass(frozen=True, slots=True)
class JsonPath:
    """A compiled JSON source path."""

    text: str
    relative: bool
    steps: tuple[Any, ...]
    where: Condition | None
    last_star: int  # index in steps of the last [*], -1 when none

    @property
    def multi(self) -> bool:
        return self.last_star >= 0

    def _walk(self, scope: JsonScope, run: Any) -> list[Any]:
        nodes = [scope.node if self.relative else scope.root]
        for n, step in enumerate(self.steps):
            nxt: list[Any] = []
            for node in nodes:
                if isinstance(step, str):
                    if isinstance(node, dict) and step in node:
                        nxt.append(node[step])
                elif isinstance(step, int):
                    if isinstance(node, list) and -len(node) <= step < len(node):
                        nxt.append(node[step])
                elif isinstance(node, list):
                    nxt.extend(node)
                elif node is not None:
                    # FHIR cardinality varies between versions: [*] on a single object
                    # visits that object, so a path works whether or not it repeats.
                    nxt.append(node)
            if n == self.last_star and self.where is not None:
                nxt = [
                    x for k, x in enumerate(nxt, start=1)
                    if self.where.test(JsonScope(scope.root, x, k), run)
                ]
            nodes = nxt
            if not nodes:
                break
        return nodes

    def values(self, scope: JsonScope, run: Any) -> list[Any]:
        # Empty values are never written: drop them here, once.
        return [
            from_json(v) for v in self._walk(scope, run)
            if v is not None and v != "" and v != [] and v != {}
        ]

    def nodes(self, scope: JsonScope, run: Any) -> list[JsonScope]:
        found = self._walk(scope, run)
        if self.last_star < 0 and len(found) == 1 and isinstance(found[0], list):
            found = found[0]
        return [JsonScope(scope.root, x, n) for n, x in enumerate(found, start=1)]


def compile_json_path(text: str) -> JsonPath:
    """Compile a source path; raises ValueError naming what is wrong."""
    body, where_text = split_where(text)
    relative, steps = parse_steps(body)
    last_star = max((n for n, s in enumerate(steps) if s == STAR), default=-1)
    norm = tuple(steps)
    cond = None
    if where_text is not None:
        if last_star < 0:
            raise ValueError(
                "'where' filters the elements of a [*]: write e.g. "
                "identifier[*].value where .system = \"...\""
            )
        cond = compile_condition(where_text, in_conditions(compile_json_path))
    return JsonPath(text, relative, norm, cond, last_star)
