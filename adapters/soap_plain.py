"""A fast codec for the commonest SOAP operations: string parameters in, strings out.

Regional insurance services are mostly ASMX-style document/literal operations: one wrapper
element holding a sequence of ``xsd:string`` parameters, answered by a wrapper holding a few
``xsd:string`` results (often an XML document as a string). zeep's object model costs about
0.1 ms per call to write such a request and read its answer, a tenth of the 1 ms per call the
engine allows itself. For operations of exactly that shape, ``PlainOperation`` writes the
request from a template derived from zeep's own reading of the WSDL, and reads the answer by
walking the wrapper's children.

It is one-sided, like the FHIR structural check: it handles only what it fully understands
and *declines* (returns None) everything else — a parameter that is not a string or not XML
text, keyword arguments, a missing parameter, an answer with comments, attributes, nested
elements, unknown or repeated elements, another wrapper — which then takes zeep's path, so
what is sent, returned and refused never differs from zeep's. The tests compare the two byte
for byte on requests and value for value on answers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lxml import etree
from zeep.xsd.elements.indicators import Sequence as XsdSequence
from zeep.xsd.types.builtins import String

XSD_STRING = "{http://www.w3.org/2001/XMLSchema}string"
# Characters outside the XML 1.0 Char production: lxml refuses them; zeep's path says so.
_NOT_XML_TEXT = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"})


@dataclass(frozen=True, slots=True)
class PlainOperation:
    """One operation's request template and answer layout."""

    head: bytes
    params: tuple[tuple[bytes, bytes], ...]  # (open tag, close tag) per parameter, in order
    tail: bytes
    envelope_tag: str
    body_tag: str
    reply_tag: str
    reply_parts: tuple[tuple[str, str], ...]  # (Clark tag, result name), in order

    def request(self, args: Sequence[object]) -> bytes | None:
        """The request envelope, as zeep would write it, or None to decline."""
        if len(args) != len(self.params):
            return None
        out = [self.head]
        for (open_tag, close_tag), value in zip(self.params, args, strict=True):
            if type(value) is not str or _NOT_XML_TEXT.search(value):
                return None
            out.append(open_tag)
            out.append(value.translate(_ESCAPES).encode("utf-8"))
            out.append(close_tag)
        out.append(self.tail)
        return b"".join(out)

    def reply(self, envelope: etree._Element) -> tuple[Any] | None:
        """The answer as zeep's ``serialize_object`` gives it, in a 1-tuple, or None."""
        if envelope.tag != self.envelope_tag or len(envelope) != 1:
            return None
        body = envelope[0]
        if body.tag != self.body_tag or len(body) != 1:
            return None
        wrapper = body[0]
        if wrapper.tag != self.reply_tag or len(wrapper.attrib):
            return None
        values: dict[str, str | None] = {name: None for _, name in self.reply_parts}
        parts = self.reply_parts
        position = 0
        for child in wrapper:
            tag = child.tag
            while position < len(parts) and parts[position][0] != tag:
                position += 1  # also stops a comment or processing instruction (not a str)
            if position == len(parts) or len(child) or len(child.attrib):
                return None
            values[parts[position][1]] = child.text
            position += 1
        if len(parts) == 1:
            return (values[parts[0][1]],)
        return (values,)


def _strings(element: Any) -> list[tuple[str, Any]] | None:
    """(name, element) of each child of a wrapper whose type is a sequence of strings."""
    xsd_type = element.type
    if getattr(xsd_type, "attributes", None) or not isinstance(
        getattr(xsd_type, "_element", None), XsdSequence
    ):
        return None
    children = list(xsd_type.elements)
    if len(children) != len(xsd_type._element):  # choices, groups or any inside
        return None
    for _, child in children:
        if (type(child.type) is not String or child.type.qname != XSD_STRING
                or child.max_occurs != 1 or child.nillable or child.default is not None):
            return None
    return children


def _tag(qname: etree.QName, namespace: str) -> tuple[bytes, bytes] | None:
    if qname.namespace == namespace:
        name = f"ns0:{qname.localname}"
    elif not qname.namespace:
        name = qname.localname
    else:
        return None
    return f"<{name}>".encode(), f"</{name}>".encode()


def plain_operation(client: Any, binding: Any, name: str) -> PlainOperation | None:
    """The codec for operation ``name`` when it has the plain shape, else None."""
    if client.wsse is not None or client.plugins:
        return None
    op = binding.get(name)
    message_in, message_out = op.input, op.output
    if (op.style != "document" or type(message_in).__name__ != "DocumentMessage"
            or message_out is None or type(message_out).__name__ != "DocumentMessage"):
        return None
    if (message_in.header and message_in.header.type.elements) or (
            message_out.header and message_out.header.type.elements):
        return None
    request_el, reply_el = message_in.body, message_out.body
    if request_el is None or reply_el is None:
        return None
    params, results = _strings(request_el), _strings(reply_el)
    if params is None or results is None:
        return None
    wrapper = etree.QName(request_el.qname)
    if not wrapper.namespace:
        return None
    tags = [_tag(etree.QName(p.qname), wrapper.namespace) for _, p in params]
    if any(t is None for t in tags):
        return None
    soap_ns = binding.nsmap["soap-env"]
    head = (
        f"<?xml version='1.0' encoding='utf-8'?>\n<soap-env:Envelope xmlns:soap-env="
        f'"{soap_ns}"><soap-env:Body><ns0:{wrapper.localname} xmlns:ns0="{wrapper.namespace}">'
    ).encode()
    tail = f"</ns0:{wrapper.localname}></soap-env:Body></soap-env:Envelope>".encode()
    return PlainOperation(
        head=head, params=tuple(t for t in tags if t is not None), tail=tail,
        envelope_tag=f"{{{soap_ns}}}Envelope", body_tag=f"{{{soap_ns}}}Body",
        reply_tag=etree.QName(reply_el.qname).text,
        reply_parts=tuple((etree.QName(r.qname).text, name) for name, r in results),
    )


def plain_operations(client: Any, binding: Any) -> dict[str, PlainOperation]:
    """Codecs for every operation of ``binding`` that has the plain shape."""
    found = {}
    for name in binding._operations:
        try:
            plain = plain_operation(client, binding, name)
        except (AttributeError, TypeError, ValueError):  # a shape zeep models differently
            plain = None
        if plain is not None:
            found[name] = plain
    return found
