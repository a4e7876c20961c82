"""Regular expressions from mapping files (``regex``, ``replace``, ``matches``), made safe.

Python's ``re`` backtracks and has no timeout: a pattern such as ``(a+)+$`` takes seconds on
thirty characters of crafted input and years on a hundred, and the input comes from peers.
Two guards, since the pattern is the integrator's and the text is not:

- At load, ``compile_pattern`` refuses the shapes that backtrack exponentially: a repeat of
  variable length inside another one (``(a+)+``, ``(\\w+\\s?)*``), and an alternation inside
  a repeat whose branches can start with the same character (``(a|ab)*``). Possessive
  repeats (``\\s*+``) and atomic groups (``(?>...)``) never backtrack and are allowed, so
  every refused pattern has a safe spelling.
- At run time, ``checked_text`` refuses a value longer than ``MAX_TEXT`` characters, which
  bounds what the remaining (polynomial) backtracking can cost.
"""

from __future__ import annotations

import re
from re import _constants as c  # type: ignore[attr-defined]
from re import _parser as sre  # type: ignore[attr-defined]
from typing import Any

from engine.mapping.values import Problem

MAX_TEXT = 4096
_WIDE = 16  # a repeat whose length can vary by more than this counts as unbounded
_SAFE_SPELLING = (
    "make the inner repeat possessive (\\d++, \\s*+) or atomic ((?>...)), or rewrite it"
)


def compile_pattern(pattern: Any) -> re.Pattern[str]:
    """Compile an integrator's pattern; ValueError for a bad or backtracking-prone one."""
    try:
        rx = re.compile(pattern)
        tree = sre.parse(pattern)
    except (re.error, TypeError) as exc:
        raise ValueError(f"bad regular expression {pattern!r}: {exc}") from None
    problem = _check(list(tree), inside=False)
    if problem:
        raise ValueError(f"regular expression {pattern!r} can backtrack without end on "
                         f"crafted input ({problem}): {_SAFE_SPELLING}")
    return rx


def checked_text(text: str) -> str:
    """``text`` if a pattern may search it; Problem when it is longer than ``MAX_TEXT``."""
    if len(text) > MAX_TEXT:
        raise Problem(f"value of {len(text)} characters is too long for a regular "
                      f"expression (at most {MAX_TEXT})")
    return text


def _variable(lo: int, hi: int) -> bool:
    return hi == c.MAXREPEAT or hi - lo > _WIDE


def _check(items: list[Any], *, inside: bool) -> str:
    """What makes ``items`` backtrack exponentially ('' when nothing does)."""
    for op, av in items:
        if op in (c.MAX_REPEAT, c.MIN_REPEAT):
            lo, hi, sub = av
            variable = _variable(lo, hi)
            if variable and inside:
                return "a repeat inside a repeat"
            found = _check(list(sub), inside=inside or variable)
            if found:
                return found
        elif op == c.SUBPATTERN:
            found = _check(list(av[3]), inside=inside)
            if found:
                return found
        elif op == c.BRANCH:
            branches = [list(b) for b in av[1]]
            if inside and _overlap(branches):
                return "alternatives that can match the same text inside a repeat"
            for branch in branches:
                found = _check(branch, inside=inside)
                if found:
                    return found
        elif op in (c.ASSERT, c.ASSERT_NOT):
            found = _check(list(av[1]), inside=inside)
            if found:
                return found
        elif op == c.GROUPREF_EXISTS:
            for part in av[1:]:
                if part is not None:
                    found = _check(list(part), inside=inside)
                    if found:
                        return found
        # POSSESSIVE_REPEAT and ATOMIC_GROUP give nothing back: nothing inside can blow up.
    return ""


def _first(items: list[Any]) -> list[tuple[int, int]] | None:
    """Code-point ranges the branch can start with; None when unknown (assume anything)."""
    if not items:
        return None
    op, av = items[0]
    if op == c.LITERAL:
        return [(av, av)]
    if op == c.IN:
        ranges = []
        for kind, value in av:
            if kind == c.LITERAL:
                ranges.append((value, value))
            elif kind == c.RANGE:
                ranges.append(value)
            else:  # NEGATE, CATEGORY (\d, \w ...): too wide to reason about
                return None
        return ranges
    if op == c.SUBPATTERN:
        return _first(list(av[3]))
    return None


def _overlap(branches: list[list[Any]]) -> bool:
    seen: list[tuple[int, int]] = []
    for branch in branches:
        ranges = _first(branch)
        if ranges is None:
            return True
        for lo, hi in ranges:
            if any(lo <= top and bottom <= hi for bottom, top in seen):
                return True
        seen.extend(ranges)
    return False
