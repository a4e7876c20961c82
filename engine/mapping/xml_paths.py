"""XML source paths: XPath 1.0 with the namespace prefixes declared in the mapping.

Paths are compiled once at load (``lxml.etree.XPath``), evaluated against the document, or
against the current element inside an ``each`` group (so ``ns:code`` and ``./@id`` are
relative there, ``/ns:root/...`` is absolute). Filter with XPath predicates
(``//ns:item[ns:type = 'A']``), not with ``where``. An element's value is its text content;
numbers from XPath functions such as ``count()`` become decimals.

Input documents are parsed with a hardened parser: no DTD, no entity expansion, no network,
and any ``<!DOCTYPE`` is refused outright.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from lxml import etree

_local = threading.local()


def _parser() -> etree.XMLParser:
    parser: etree.XMLParser | None = getattr(_local, "parser", None)
    if parser is None:
        parser = etree.XMLParser(
            resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
            huge_tree=False, remove_comments=True, remove_pis=True,
        )
        _local.parser = parser
    return parser


def parse_xml(body: bytes) -> etree._Element:
    """Parse untrusted XML; raises ValueError for a DOCTYPE or malformed input."""
    if b"<!DOCTYPE" in body or b"<!doctype" in body or b"<!ENTITY" in body:
        raise ValueError("XML with a DOCTYPE or entity declarations is refused")
    try:
        root = etree.fromstring(body, _parser())
    except etree.XMLSyntaxError as exc:
        raise ValueError(f"malformed XML: {exc.msg}") from None
    if root is None:
        raise ValueError("empty XML document")
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.system_url:
        # The byte check above misses a DOCTYPE spelled in UTF-16 or UTF-32.
        raise ValueError("XML with a DOCTYPE or entity declarations is refused")
    return root


class XmlScope:
    __slots__ = ("index", "node", "root")

    def __init__(self, root: etree._Element, node: etree._Element, index: int = 1) -> None:
        self.root = root
        self.node = node
        self.index = index

    @property
    def anchor(self) -> Any:
        return self.node

    def contains(self, anchor: Any) -> bool:
        return self.node is self.root


def _value(item: Any) -> Any:
    if isinstance(item, etree._Element):
        return "".join(item.itertext())
    if isinstance(item, bool):
        return item
    if isinstance(item, float):
        if item != item:  # NaN: XPath's answer for "not a number"
            return None
        return int(item) if item.is_integer() else Decimal(repr(item))
    return str(item)


@dataclass(frozen=True, slots=True)
class XmlPath:
    text: str
    xpath: etree.XPath
    multi: bool = False

    def _run(self, scope: XmlScope) -> list[Any]:
        result = self.xpath(scope.node)
        return result if isinstance(result, list) else [result]

    def values(self, scope: XmlScope, run: Any) -> list[Any]:
        out = []
        for item in self._run(scope):
            v = _value(item)
            if v is not None and v != "":
                out.append(v)
        return out

    def nodes(self, scope: XmlScope, run: Any) -> list[XmlScope]:
        items = [x for x in self._run(scope) if isinstance(x, etree._Element)]
        return [XmlScope(scope.root, x, n) for n, x in enumerate(items, start=1)]


def xml_path_compiler(namespaces: dict[str, str]) -> Any:
    """A compiler of XPath source paths that knows the mapping's namespace prefixes."""

    def compile_xml_path(text: str) -> XmlPath:
        if not text.strip():
            raise ValueError("empty path")
        try:
            xp = etree.XPath(text, namespaces=namespaces, smart_strings=False)
        except etree.XPathSyntaxError as exc:
            raise ValueError(f"{text!r} is not a valid XPath ({exc}); "
                             "declare prefixes under [namespaces]") from None
        try:
            # Undefined prefixes and unknown functions only show at evaluation: try it once.
            xp(etree.Element("probe"))
        except etree.XPathError as exc:
            raise ValueError(f"{text!r}: {exc} (declare prefixes under [namespaces])") from None
        return XmlPath(text, xp)

    return compile_xml_path
