"""Building XML output from slash paths with the mapping's namespace prefixes.

Target paths::

    /soap:Envelope/soap:Body/ns:Upload/ns:item[+]/ns:code    a new ns:item, its ns:code text
    /req/head/@version                                       an attribute
    ./ns:code   ./@id   .                                    relative to the group's element

Steps take ``[N]`` (1-based, created when missing), ``[+]`` (a new element), ``[=]`` (the
one last created) or ``[*]`` (one new element per value). Every absolute path starts at the
same root element. Text is escaped by lxml, so values cannot add markup.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from lxml import etree

from engine.mapping.values import Problem, as_text

NEW, LAST, SPREAD = "+", "=", "*"
_STEP = re.compile(r"(?:(?P<prefix>[A-Za-z_][\w.-]*):)?(?P<name>[A-Za-z_][\w.-]*)"
                   r"(?:\[(?P<idx>\d+|[*+=])\])?$")
_ATTR = re.compile(r"@(?:(?P<prefix>[A-Za-z_][\w.-]*):)?(?P<name>[A-Za-z_][\w.-]*)$")


@dataclass(frozen=True, slots=True)
class XmlTarget:
    text: str
    relative: bool
    steps: tuple[tuple[str, str | int | None], ...]  # (clark name, index marker)
    attribute: str | None

    @property
    def spread(self) -> bool:
        return any(idx == SPREAD for _, idx in self.steps)


def _clark(prefix: str | None, name: str, namespaces: dict[str, str], text: str) -> str:
    if prefix is None:
        return name
    uri = namespaces.get(prefix)
    if uri is None:
        raise ValueError(f"{text!r}: prefix {prefix!r} is not declared under [namespaces]")
    return f"{{{uri}}}{name}"


def compile_xml_target(text: str, namespaces: dict[str, str]) -> XmlTarget:
    s = text.strip()
    if s.startswith("/"):
        relative, body = False, s[1:]
    elif s == ".":
        relative, body = True, ""
    elif s.startswith("./"):
        relative, body = True, s[2:]
    else:
        raise ValueError(f"{text!r}: XML targets start with / (absolute) or ./ (relative)")
    parts = [p for p in body.split("/")] if body else []
    attribute = None
    if parts and parts[-1].startswith("@"):
        m = _ATTR.match(parts.pop())
        if m is None:
            raise ValueError(f"{text!r}: bad attribute name")
        attribute = _clark(m.group("prefix"), m.group("name"), namespaces, text)
    steps: list[tuple[str, str | int | None]] = []
    for p in parts:
        m = _STEP.match(p)
        if m is None:
            raise ValueError(f"{text!r}: bad step {p!r} (expected prefix:name[N|+|=|*])")
        idx_text = m.group("idx")
        idx: str | int | None = idx_text
        if idx_text and idx_text.isdigit():
            idx = int(idx_text)
            if idx < 1:
                raise ValueError(f"{text!r}: positions start at 1")
        steps.append((_clark(m.group("prefix"), m.group("name"), namespaces, text), idx))
    if not relative and not steps:
        raise ValueError(f"{text!r}: name the root element")
    if not relative and steps[0][1] is not None:
        raise ValueError(f"{text!r}: the root element has no index")
    if sum(1 for _, i in steps if i == SPREAD) > 1:
        raise ValueError(f"{text!r}: a target can spread values over one [*] only")
    return XmlTarget(text, relative, tuple(steps), attribute)


class XmlBuilder:
    __slots__ = ("_last", "namespaces", "root")

    def __init__(self, namespaces: dict[str, str]) -> None:
        self.namespaces = namespaces
        self.root: etree._Element | None = None
        self._last: dict[tuple[int, str], etree._Element] = {}

    def _root(self, tag: str, path: str) -> etree._Element:
        if self.root is None:
            self.root = etree.Element(tag, nsmap=self.namespaces or None)
        elif self.root.tag != tag:
            raise Problem(f"target {path}: every path must start at the same root element")
        return self.root

    def _child(self, parent: etree._Element, tag: str, idx: Any) -> etree._Element:
        if idx in (NEW, SPREAD):
            el = etree.SubElement(parent, tag)
            self._last[(id(parent), tag)] = el
            return el
        if idx == LAST:
            found = self._last.get((id(parent), tag))
            if found is not None:
                return found
            idx = None
        same = [c for c in parent if c.tag == tag]
        n = 1 if idx is None else int(idx)
        while len(same) < n:
            same.append(etree.SubElement(parent, tag))
        return same[n - 1]

    def _walk(self, target: XmlTarget, base: Any, steps: Any) -> etree._Element:
        if target.relative:
            if not isinstance(base, etree._Element):
                raise Problem(f"target {target.text}: relative, but the group has no element 'to'")
            el = base
            todo = steps
        else:
            el = self._root(steps[0][0], target.text)
            todo = steps[1:]
        for tag, idx in todo:
            el = self._child(el, tag, idx)
        return el

    def locate(self, target: XmlTarget, base: Any) -> Any:
        if target.attribute is not None or target.spread:
            raise Problem(f"target {target.text}: a group's 'to' must be an element")
        return self._walk(target, base, target.steps)

    def write(self, target: XmlTarget, base: Any, values: list[Any]) -> None:
        texts = [_text(v, target.text) for v in values]
        if not target.spread:
            self._set(self._walk(target, base, target.steps), target.attribute, texts[0])
            return
        cut = next(n for n, (_, i) in enumerate(target.steps) if i == SPREAD)
        for text in texts:
            el = self._walk(target, base, target.steps[: cut + 1])
            for tag, idx in target.steps[cut + 1 :]:
                el = self._child(el, tag, idx)
            self._set(el, target.attribute, text)

    @staticmethod
    def _set(el: etree._Element, attribute: str | None, text: str) -> None:
        if attribute is None:
            el.text = text
        else:
            el.set(attribute, text)

    def serialize(self) -> bytes:
        if self.root is None:
            return b""
        data: bytes = etree.tostring(self.root, xml_declaration=True, encoding="UTF-8")
        return data


def _text(value: Any, path: str) -> str:
    if isinstance(value, dict | list):
        raise Problem(f"target {path}: cannot write a JSON object or array as XML text")
    text = as_text(value)
    # XML 1.0 cannot carry most control characters; refuse rather than emit broken XML.
    if any(ord(c) < 32 and c not in "\t\n\r" for c in text):
        raise Problem(f"target {path}: value contains control characters not allowed in XML")
    return text
