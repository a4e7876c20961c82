"""Building JSON (and FHIR) output: target paths, the document builder, exact serialization.

Target paths use the source path grammar plus three list markers (as in FHIR Shorthand)::

    name[0].family         element 0 (created when missing)
    identifier[+].value    a new element at the end of the list
    identifier[=].system   the element most recently created with [+]
    result[*].reference    one new element per value of the rule

A leading ``.`` makes a target relative to its group's ``to``. Later rules overwrite earlier
ones at the same place; empty objects and lists are pruned at the end, so a group whose
rules all found nothing leaves no trace.

Decimals are written as JSON numbers with their exact scale (``180.00``, ``1.0000``), which
neither ``json`` nor ``orjson`` can do on their own.
"""

from __future__ import annotations

import copy
import re
import secrets
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson

from engine.mapping.json_paths import APPEND, LAST, STAR, parse_steps
from engine.mapping.values import CONTAINERS, Problem, is_empty

Slot = tuple[Any, Any]  # (container, key): where a value lives


@dataclass(frozen=True, slots=True)
class JsonTarget:
    text: str
    relative: bool
    steps: tuple[Any, ...]
    spread: int  # index of the [*] step, -1 when none
    keys_only: bool = False  # a.b.c: written by a short loop over dicts


def compile_json_target(text: str) -> JsonTarget:
    relative, steps = parse_steps(text, allow="+=")
    stars = [n for n, s in enumerate(steps) if s == STAR]
    if len(stars) > 1:
        raise ValueError(f"{text!r}: a target can spread values over one [*] only")
    for s in steps:
        if isinstance(s, int) and s < 0:
            raise ValueError(f"{text!r}: target indexes must be 0 or more (or [+], [=])")
    keys_only = bool(steps) and all(isinstance(x, str) for x in steps)
    return JsonTarget(text, relative, tuple(steps), stars[0] if stars else -1, keys_only)


class JsonBuilder:
    """One output document under construction."""

    __slots__ = ("_last", "holder", "padded")

    def __init__(self) -> None:
        self.holder: list[Any] = [{}]
        self._last: dict[int, int] = {}
        # Set when a list was padded past its end: only then can empties remain to prune.
        self.padded = False

    @property
    def document(self) -> Any:
        return self.holder[0]

    def root(self) -> Slot:
        return (self.holder, 0)

    def _step(self, slot: Slot, step: Any, path: str) -> Slot:
        container, key = slot
        cur = container[key] if type(container) is list else container.get(key)
        if type(step) is str:
            if cur is None:
                cur = {}
                container[key] = cur
            elif not isinstance(cur, dict):
                raise Problem(f"target {path}: {key!r} holds a value, not an object")
            return (cur, step)
        if cur is None:
            cur = []
            container[key] = cur
        elif not isinstance(cur, list):
            raise Problem(f"target {path}: indexes a value that is not a list")
        if isinstance(step, int):
            if len(cur) < step:
                self.padded = True
            while len(cur) <= step:
                cur.append(None)
            return (cur, step)
        if step == APPEND:
            cur.append(None)
            idx = len(cur) - 1
            self._last[id(cur)] = idx
            return (cur, idx)
        if step == LAST:
            idx = self._last.get(id(cur), len(cur) - 1)
            if idx < 0:
                cur.append(None)
                idx = 0
                self._last[id(cur)] = idx
            return (cur, idx)
        raise Problem(f"target {path}: [*] is only allowed where values are written")

    def _walk(self, slot: Slot, steps: tuple[Any, ...], path: str) -> Slot:
        """``_step`` over ``steps``, with keys and existing list elements handled inline."""
        container, key = slot
        for step in steps:
            cur = container[key] if type(container) is list else container.get(key)
            if type(step) is str:
                if cur is None:
                    cur = {}
                    container[key] = cur
                elif not isinstance(cur, dict):
                    raise Problem(f"target {path}: {key!r} holds a value, not an object")
                container, key = cur, step
            elif type(step) is int and type(cur) is list and step < len(cur):
                container, key = cur, step
            else:
                container, key = self._step((container, key), step, path)
        return (container, key)

    def locate(self, target: JsonTarget, base: Slot | None) -> Slot:
        slot = base if (target.relative and base is not None) else self.root()
        return self._walk(slot, target.steps, target.text)

    def write(self, target: JsonTarget, base: Slot | None, values: list[Any]) -> None:
        if target.keys_only:
            # a.b.c (or .a.b from a group's base): a short loop over dicts.
            if target.relative and base is not None:
                container, key = base
                node = container[key] if type(container) is list else container.get(key)
                if node is None:
                    node = {}
                    container[key] = node
                elif type(node) is not dict:
                    raise Problem(f"target {target.text}: {key!r} holds a value, not an object")
            else:
                node = self.holder[0]
            steps = target.steps
            for key in steps[:-1]:
                nxt = node.get(key)
                if nxt is None:
                    nxt = {}
                    node[key] = nxt
                elif type(nxt) is not dict:
                    raise Problem(f"target {target.text}: {key!r} holds a value, not an object")
                node = nxt
            value = values[0]
            node[steps[-1]] = copy.deepcopy(value) if isinstance(value, CONTAINERS) else value
            return
        slot = base if (target.relative and base is not None) else self.root()
        if target.spread < 0:
            _set(self._walk(slot, target.steps, target.text), values[0])
            return
        slot = self._walk(slot, target.steps[: target.spread], target.text)
        rest = target.steps[target.spread + 1 :]
        for value in values:
            item = self._step(slot, APPEND, target.text)
            _set(self._walk(item, rest, target.text), value)


def _set(slot: Slot, value: Any) -> None:
    container, key = slot
    if isinstance(value, CONTAINERS):
        value = copy.deepcopy(value)
    container[key] = value


def prune(value: Any) -> Any:
    """Drop None, empty strings, and objects/lists left empty (returns None if all empty)."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            p = prune(v)
            if p is not None:
                out[k] = p
        return out or None
    if isinstance(value, list):
        items = [p for p in (prune(v) for v in value) if p is not None]
        return items or None
    return None if is_empty(value) else value


# -- serialization ---------------------------------------------------------------------------

# Decimals are first written as marked strings, then the marks are replaced by the bare
# digits. The mark is random per process, so no input text can forge one.
_MARK = "dec" + secrets.token_hex(8) + ":"
_MARKED = re.compile(rb'"' + _MARK.encode() + rb'(-?[0-9]+(?:\.[0-9]+)?)"')


def _default(obj: Any) -> Any:
    if isinstance(obj, Decimal):
        return _MARK + format(obj, "f")
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def dumps(value: Any, *, pretty: bool = False, sort_keys: bool = False) -> bytes:
    """JSON bytes with decimals as numbers of their exact scale."""
    option = orjson.OPT_NON_STR_KEYS
    if pretty:
        option |= orjson.OPT_INDENT_2
    if sort_keys:
        option |= orjson.OPT_SORT_KEYS
    data = orjson.dumps(value, default=_default, option=option)
    if _MARK.encode() in data:
        data = _MARKED.sub(lambda m: m.group(1), data)
    return data


def dumps_strings(value: Any, *, pretty: bool = False) -> bytes:
    """JSON bytes with decimals as strings (``"180.00"``), for peers that want text amounts."""
    option = orjson.OPT_INDENT_2 if pretty else 0
    return orjson.dumps(value, default=_as_string, option=option)


def _as_string(obj: Any) -> Any:
    if isinstance(obj, Decimal):
        return format(obj, "f")
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")
