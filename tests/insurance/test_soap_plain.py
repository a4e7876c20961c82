"""The plain SOAP codec agrees with zeep: requests byte for byte, answers value for value,
and it declines (leaving the call to zeep) whatever it does not fully understand."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest
import zeep
import zeep.helpers
from lxml import etree

from adapters.soap import _PARSER, ZEEP_SETTINGS
from adapters.soap_plain import plain_operation, plain_operations

SIM = Path(__file__).resolve().parents[2] / "simulators" / "insurance"
WSDLS = [SIM / "regional_asmx.wsdl", SIM / "regional_pipe.wsdl"]
SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
TRICKY = ["", " ", "a&b", "<x/>", "]]>", "\"'", "line\r\nbreak", "\ttab", "张三 440399",
          "😀 emoji", "&amp; already", "<?xml version='1.0'?><output><code>0</code></output>",
          "\u00a0nbsp", "x" * 3000]


def load(wsdl: Path) -> tuple[zeep.Client, object]:
    client = zeep.Client(str(wsdl), settings=ZEEP_SETTINGS)
    return client, client.service._binding


def zeep_request(client: zeep.Client, name: str, args: list[str]) -> bytes:
    message = client.create_message(client.service, name, *args)
    return etree.tostring(message, xml_declaration=True, encoding="utf-8")


@pytest.mark.parametrize("wsdl", WSDLS, ids=lambda p: p.stem)
def test_every_regional_operation_is_plain(wsdl):
    client, binding = load(wsdl)
    assert set(plain_operations(client, binding)) == set(binding._operations)


@pytest.mark.parametrize("wsdl", WSDLS, ids=lambda p: p.stem)
def test_requests_are_zeeps_byte_for_byte(wsdl):
    client, binding = load(wsdl)
    rng = random.Random(7)
    for name, plain in plain_operations(client, binding).items():
        width = len(plain.params)
        cases = [[value] * width for value in TRICKY]
        cases += [[rng.choice(TRICKY) + rng.choice(TRICKY) for _ in range(width)]
                  for _ in range(200)]
        for args in cases:
            assert plain.request(args) == zeep_request(client, name, args), (name, args)


@pytest.mark.parametrize("args", [
    ["a\x01b", "", ""],          # not XML text: zeep (lxml) refuses it with its own message
    ["\ud800", "", ""],          # a lone surrogate
    ["a", "b"],                  # a parameter missing: zeep leaves the element out
    ["a", "b", "c", "d"],        # one too many: zeep refuses
    ["a", None, "c"],            # zeep leaves a None out
    ["a", 1, "c"],               # zeep renders an int its own way
    ["a", ["x"], "c"],
])
def test_what_the_codec_does_not_understand_is_left_to_zeep(args):
    client, binding = load(WSDLS[0])
    plain = plain_operation(client, binding, "GetPersonInfo")
    assert plain is not None
    assert plain.request(args) is None


def answers(wrapper: str, ns: str, parts: list[str]) -> list[tuple[str, bool]]:
    """Answer bodies, each with whether it is a usual one (parts in the schema's order):
    every subset and order of the parts, empty and odd values, and shapes the codec must
    decline (comments, attributes, children, strangers)."""
    bodies = []
    texts = ["ok", "", "<output><code>0</code></output>", "  spaced  ", "成功"]
    for size in range(len(parts) + 1):
        for chosen in itertools.permutations(parts, size):
            for text in texts:
                inner = "".join(
                    f"<{p}/>" if text == "" else f"<{p}>{etree_escape(text)}</{p}>"
                    for p in chosen)
                usual = list(chosen) == [p for p in parts if p in chosen]
                bodies.append((f'<{wrapper} xmlns="{ns}">{inner}</{wrapper}>', usual))
    first = parts[0]
    bodies += [(odd, False) for odd in [
        f'<{wrapper} xmlns="{ns}">\n  <{first}>pretty</{first}>\n</{wrapper}>',
        f'<{wrapper} xmlns="{ns}"><{first}>a<!--note-->b</{first}></{wrapper}>',
        f'<{wrapper} xmlns="{ns}"><!--note--><{first}>a</{first}></{wrapper}>',
        f'<{wrapper} xmlns="{ns}"><{first}><![CDATA[<a>&]]></{first}></{wrapper}>',
        f'<{wrapper} xmlns="{ns}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        f'<{first} xsi:nil="true"/></{wrapper}>',
        f'<{wrapper} xmlns="{ns}"><{first}><inner>1</inner></{first}></{wrapper}>',
        f'<{wrapper} xmlns="{ns}"><{first}>1</{first}><{first}>2</{first}></{wrapper}>',
        f'<{wrapper} xmlns="{ns}"><Stranger>1</Stranger></{wrapper}>',
        f'<{wrapper} xmlns="urn:other"><{first}>1</{first}></{wrapper}>',
        f'<Other xmlns="{ns}"><{first}>1</{first}></Other>',
        f'<{wrapper} xmlns="{ns}" id="7"><{first}>1</{first}></{wrapper}>',
    ]]
    return bodies


def etree_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def zeep_reply(op, doc) -> tuple[str, object]:
    try:
        return "ok", zeep.helpers.serialize_object(op.process_reply(doc), dict)
    except Exception as exc:  # what zeep does with it, error or not
        return "error", type(exc).__name__


@pytest.mark.parametrize("wsdl", WSDLS, ids=lambda p: p.stem)
def test_answers_are_zeeps_value_for_value_or_declined(wsdl):
    client, binding = load(wsdl)
    read = 0
    for name, plain in plain_operations(client, binding).items():
        op = binding.get(name)
        wrapper = etree.QName(plain.reply_tag)
        parts = [etree.QName(tag).localname for tag, _ in plain.reply_parts]
        for inner, usual in answers(wrapper.localname, wrapper.namespace, parts):
            for header in ("", "<soap:Header/>"):
                raw = (f'<soap:Envelope xmlns:soap="{SOAP11}">{header}<soap:Body>{inner}'
                       "</soap:Body></soap:Envelope>").encode()
                doc = etree.fromstring(raw, _PARSER)
                mine = plain.reply(doc)
                if mine is None:
                    # the usual answers are read here, not handed back to zeep
                    assert not (usual and not header), (name, inner)
                    continue
                read += 1
                assert zeep_reply(op, doc) == ("ok", mine[0]), (name, inner)
    assert read


def test_plain_answers_are_read_without_zeep_for_the_usual_shapes():
    client, binding = load(WSDLS[0])
    plain = plain_operation(client, binding, "GetPersonInfo")
    assert plain is not None
    raw = (f'<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="{SOAP11}">'
           '<soap:Body><GetPersonInfoResponse xmlns="http://tempuri.org/">'
           "<GetPersonInfoResult>&lt;output/&gt;</GetPersonInfoResult><message>成功</message>"
           "</GetPersonInfoResponse></soap:Body></soap:Envelope>").encode()
    assert plain.reply(etree.fromstring(raw, _PARSER)) == (
        {"GetPersonInfoResult": "<output/>", "message": "成功"},)


OTHER_SHAPES = """<?xml version="1.0" encoding="utf-8"?>
<wsdl:definitions xmlns:wsdl="http://schemas.xmlsoap.org/wsdl/"
    xmlns:soap="http://schemas.xmlsoap.org/wsdl/soap/" xmlns:s="http://www.w3.org/2001/XMLSchema"
    xmlns:tns="urn:shapes" targetNamespace="urn:shapes">
  <wsdl:types><s:schema elementFormDefault="qualified" targetNamespace="urn:shapes">
    <s:element name="Plain"><s:complexType><s:sequence>
      <s:element minOccurs="0" name="a" type="s:string"/></s:sequence></s:complexType></s:element>
    <s:element name="PlainResponse"><s:complexType><s:sequence>
      <s:element minOccurs="0" name="r" type="s:string"/></s:sequence></s:complexType></s:element>
    <s:element name="Typed"><s:complexType><s:sequence>
      <s:element name="n" type="s:int"/></s:sequence></s:complexType></s:element>
    <s:element name="Many"><s:complexType><s:sequence>
      <s:element maxOccurs="unbounded" name="a" type="s:string"/></s:sequence></s:complexType>
    </s:element>
    <s:element name="Nested"><s:complexType><s:sequence><s:element name="p">
      <s:complexType><s:sequence><s:element name="q" type="s:string"/></s:sequence>
      </s:complexType></s:element></s:sequence></s:complexType></s:element>
    <s:element name="Choice"><s:complexType><s:choice>
      <s:element name="x" type="s:string"/><s:element name="y" type="s:string"/>
    </s:choice></s:complexType></s:element>
    <s:element name="Attr"><s:complexType><s:sequence>
      <s:element name="a" type="s:string"/></s:sequence>
      <s:attribute name="v" type="s:string"/></s:complexType></s:element>
  </s:schema></wsdl:types>
  <wsdl:message name="PlainIn"><wsdl:part name="parameters" element="tns:Plain"/></wsdl:message>
  <wsdl:message name="PlainOut"><wsdl:part name="parameters" element="tns:PlainResponse"/>
  </wsdl:message>
  <wsdl:message name="TypedIn"><wsdl:part name="parameters" element="tns:Typed"/></wsdl:message>
  <wsdl:message name="ManyIn"><wsdl:part name="parameters" element="tns:Many"/></wsdl:message>
  <wsdl:message name="NestedIn"><wsdl:part name="parameters" element="tns:Nested"/>
  </wsdl:message>
  <wsdl:message name="ChoiceIn"><wsdl:part name="parameters" element="tns:Choice"/>
  </wsdl:message>
  <wsdl:message name="AttrIn"><wsdl:part name="parameters" element="tns:Attr"/></wsdl:message>
  <wsdl:portType name="P">
    <wsdl:operation name="Plain"><wsdl:input message="tns:PlainIn"/>
      <wsdl:output message="tns:PlainOut"/></wsdl:operation>
    <wsdl:operation name="Typed"><wsdl:input message="tns:TypedIn"/>
      <wsdl:output message="tns:PlainOut"/></wsdl:operation>
    <wsdl:operation name="Many"><wsdl:input message="tns:ManyIn"/>
      <wsdl:output message="tns:PlainOut"/></wsdl:operation>
    <wsdl:operation name="Nested"><wsdl:input message="tns:NestedIn"/>
      <wsdl:output message="tns:PlainOut"/></wsdl:operation>
    <wsdl:operation name="Choice"><wsdl:input message="tns:ChoiceIn"/>
      <wsdl:output message="tns:PlainOut"/></wsdl:operation>
    <wsdl:operation name="Attr"><wsdl:input message="tns:AttrIn"/>
      <wsdl:output message="tns:PlainOut"/></wsdl:operation>
  </wsdl:portType>
  <wsdl:binding name="B" type="tns:P">
    <soap:binding transport="http://schemas.xmlsoap.org/soap/http"/>
    {operations}
  </wsdl:binding>
  <wsdl:service name="S"><wsdl:port name="Port" binding="tns:B">
    <soap:address location="http://127.0.0.1:9/shapes"/></wsdl:port></wsdl:service>
</wsdl:definitions>
"""


def test_other_shapes_are_left_to_zeep(tmp_path):
    operations = "".join(
        f'<wsdl:operation name="{name}"><soap:operation soapAction="urn:{name}"'
        ' style="document"/><wsdl:input><soap:body use="literal"/></wsdl:input>'
        '<wsdl:output><soap:body use="literal"/></wsdl:output></wsdl:operation>'
        for name in ("Plain", "Typed", "Many", "Nested", "Choice", "Attr"))
    path = tmp_path / "shapes.wsdl"
    path.write_text(OTHER_SHAPES.replace("{operations}", operations), encoding="utf-8")
    client, binding = load(path)
    assert set(plain_operations(client, binding)) == {"Plain"}
    plain = plain_operations(client, binding)["Plain"]
    assert plain.request(["v&"]) == zeep_request(client, "Plain", ["v&"])

