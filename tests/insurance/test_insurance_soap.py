"""The SOAP destination against the simulator's regional service, both shapes; hostile XML
refused with nothing fetched; faults and transport errors classified; WSDL loaded once."""

from __future__ import annotations

import json
import time
from decimal import Decimal as D
from pathlib import Path

import pytest
from aiohttp import web
from lxml import etree

from adapters.soap import SoapDestination, SoapDestinationConfig
from engine.errors import ConfigError, InDoubtError, PermanentError, TransientError
from queues.contract import Envelope

HERE = Path(__file__).resolve().parents[2] / "simulators" / "insurance"
FEES = (  # code, hospital code, qty, price, amount (the inpatient case of the JSON tests)
    ("001201000010000", "B0101", "5", "50.00", "250.00"),
    ("001204000010000", "N0101", "5", "30.00", "150.00"),
    ("003306000010000", "S0331", "1", "1200.00", "1200.00"),
    ("002703000010000", "R0270", "1", "280.00", "280.00"),
    ("C01020000001", "M0001", "10", "4.80", "48.00"),
    ("ZA12BAF0123010100003", "Z0012", "30", "1.15", "34.50"),
)


def fee_xml() -> str:
    return "<fees>" + "".join(
        f"<fee><sn>F{i}</sn><code>{c}</code><hospCode>{h}</hospCode><qty>{q}</qty>"
        f"<price>{p}</price><amount>{a}</amount><time>2026-03-11 10:00:00</time></fee>"
        for i, (c, h, q, p, a) in enumerate(FEES, start=1)) + "</fees>"


@pytest.fixture
async def soap(sim, monkeypatch):
    monkeypatch.setenv("PIPE_TEST_PASSWORD", sim.settings["pipe_password"])
    made: list[SoapDestination] = []

    async def make(shape: str = "asmx", **overrides) -> SoapDestination:
        settings = {"type": "soap", "name": shape, "wsdl": f"{sim.url}/regional/{shape}?wsdl",
                    "timeout": 3.0}
        if shape == "asmx":
            settings.update(code_path="/output/code", message_path="/output/message",
                            message_part="message")
        else:
            settings["pipe"] = {"org": "H44030500001", "user": "hisbridge",
                                "password": "${PIPE_TEST_PASSWORD}"}
        settings.update(overrides)
        destination = SoapDestinationConfig.model_validate(settings).build("regional")
        await destination.start()
        made.append(destination)
        return destination

    yield make
    for destination in made:
        await destination.close()


def call(operation: str, args, key: str = "m") -> Envelope:
    return Envelope(key, json.dumps(args, ensure_ascii=False).encode(),
                    {"operation": operation}, "json")


def fields(result) -> dict[str, str]:
    root = etree.fromstring(result.response)
    return {el.tag: el.text or "" for el in root.iter() if len(el) == 0}


async def test_asmx_inpatient_flow_adds_up(soap, kit):
    dest = await soap()
    person = fields(await dest.send(call("GetPersonInfo", ["D44039900002", "", "op1"])))
    assert (person["personNo"], person["balance"]) == ("44039900000002", "3560.80")
    reg = fields(await dest.send(call("InpatientRegister", {
        "personNo": person["personNo"], "hospNo": "ZY0042", "admDate": "2026-03-10 08:30:00",
        "deptCode": "WK01", "diagCode": "K35.8", "operCode": "op1"})))
    reg_no = reg["regNo"]
    up = fields(await dest.send(call("InpatientFeeUpload", [reg_no, fee_xml(), "op1"])))
    assert (up["count"], up["total"], up["selfPay"]) == ("6", "1962.50", "54.25")
    pre = fields(await dest.send(call("InpatientCalculate", [reg_no, "0", "op1"])))
    assert pre["settleNo"] == ""
    done = fields(await dest.send(call("InpatientCalculate", [reg_no, "1", "op1"])))
    for result in (pre, done):
        assert (result["total"], result["fundPay"], result["accountPay"], result["cashPay"]) \
            == ("1962.50", "997.43", "965.07", "0.00")
    assert D(done["fundPay"]) + D(done["selfPay"]) == D(done["total"])
    assert fields(await dest.send(call("GetPersonInfo", ["D44039900002", "", "op1"])))[
        "balance"] == "2595.73"
    cancel = fields(await dest.send(call("InpatientFeeCancel",
                                         [reg_no, done["settleNo"], "op1"])))
    assert cancel["balance"] == "3560.80"
    state = await kit.state()
    assert (state["settlements"], state["cancellations"]) == (1, 1)


async def test_pipe_shape(soap, kit):
    dest = await soap("pipe")
    person = fields(await dest.send(Envelope(
        "p1", b"<body><idno>440399195611020223</idno></body>", {"funcno": "1001"}, "xml")))
    assert (person["code"], person["msgid"], person["personNo"]) == ("0", "p1", "44039900000002")
    reg = fields(await dest.send(Envelope("p2", (
        f"<body><personno>{person['personNo']}</personno><hospno>ZY7</hospno>"
        "<admdate>2026-03-10 08:30:00</admdate><deptcode>WK01</deptcode>"
        "<diagcode>K35.8</diagcode></body>").encode(), {"funcno": "2001"}, "xml")))
    up = fields(await dest.send(Envelope(
        "p3", f"<body><regno>{reg['regNo']}</regno>{fee_xml()}</body>".encode(),
        {"funcno": "2002"}, "xml")))
    assert (up["code"], up["count"], up["total"]) == ("0", "6", "1962.50")
    assert (await kit.state())["fees"] == 6


async def test_pipe_settles_and_refuses_bad_credentials(soap, kit, monkeypatch):
    dest = await soap("pipe")
    reg = fields(await dest.send(Envelope("q1", (
        b"<body><personno>44039900000001</personno><hospno>ZY8</hospno>"
        b"<admdate>2026-03-10 08:30:00</admdate><deptcode>WK01</deptcode>"
        b"<diagcode>K35.8</diagcode></body>"), {"funcno": "2001"}, "xml")))
    await dest.send(Envelope("q2", f"<body><regno>{reg['regNo']}</regno>{fee_xml()}</body>"
                             .encode(), {"funcno": "2002"}, "xml"))
    refused = r"Invoke funcno=2003 refused \(code -1\): settleFlag must be 0"
    with pytest.raises(PermanentError, match=refused):
        await dest.send(Envelope("q3", f"<body><regno>{reg['regNo']}</regno></body>".encode(),
                                 {"funcno": "2003"}, "xml"))
    done = fields(await dest.send(Envelope(
        "q4", f"<body><regno>{reg['regNo']}</regno><settleflag>1</settleflag></body>"
        .encode(), {"funcno": "2003"}, "xml")))
    # Employee 310 in-patient: (1908.25 - 800) × 0.85 = 942.0125 → 942.01.
    assert (done["total"], done["fundPay"], done["selfPay"]) == ("1962.50", "942.01", "1020.49")
    assert (await kit.state())["settlements"] == 1

    monkeypatch.setenv("PIPE_TEST_PASSWORD", "wrong")
    bad = await soap("pipe")
    with pytest.raises(PermanentError, match=r"code -2.*authentication failed"):
        await bad.send(Envelope("q5", b"<body><cardno>D44039900001</cardno></body>",
                                {"funcno": "1001"}, "xml"))


async def test_soap_fault_and_business_refusal_are_permanent(soap):
    raw_pipe = await soap("pipe", pipe=None, operation="Invoke")
    with pytest.raises(PermanentError, match=r"SOAP fault .*malformed XML"):
        await raw_pipe.send(call("Invoke", ["this is not xml"]))
    dest = await soap()
    with pytest.raises(PermanentError, match=r"refused \(code -1\): 未查询到人员信息"):
        await dest.send(call("GetPersonInfo", ["NO-SUCH-CARD", "", "op1"]))
    with pytest.raises(PermanentError, match="arguments do not fit the WSDL"):
        await dest.send(call("GetPersonInfo", {"cardNumber": "x"}))


async def test_transport_errors_are_transient_and_timeouts_per_operation(soap, kit):
    dest = await soap(operation_timeouts={"GetPersonInfo": 0.3},
                      in_doubt_operations=["InpatientCalculate"])
    await kit.faults({"error": {"status": 503, "times": 1}})
    with pytest.raises(TransientError, match="HTTP 503"):
        await dest.send(call("GetPersonInfo", ["D44039900001", "", "op"]))
    await kit.faults({"drop": {"times": 1}})
    with pytest.raises(TransientError, match="connection failed"):
        await dest.send(call("GetPersonInfo", ["D44039900001", "", "op"]))
    await kit.faults({"latency": {"seconds": 3, "times": 1}})
    started = time.perf_counter()
    with pytest.raises(TransientError, match=r"no answer within 0\.3s") as info:
        await dest.send(call("GetPersonInfo", ["D44039900001", "", "op"]))
    assert time.perf_counter() - started < 1.5
    assert not isinstance(info.value, InDoubtError)
    await kit.faults({"commit_then": {"mode": "drop", "times": 1,
                                      "operations": ["InpatientCalculate"]}})
    with pytest.raises(InDoubtError, match="query before retrying"):
        await dest.send(call("InpatientCalculate", ["NOPE", "1", "op"]))


@pytest.fixture
async def trap():
    """A local HTTP server that counts every request: an XXE that fetched would show here."""
    hits: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(text="secret")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield hits, f"http://127.0.0.1:{port}/xxe"
    await runner.cleanup()


@pytest.mark.parametrize(("shape", "kind", "match"), [
    ("asmx", "xxe", "answer declares a DTD or entities"),
    ("asmx", "billion_laughs", "answer declares a DTD or entities"),
    ("asmx", "xxe_in_result", "result GetPersonInfoResult: XML declaring a DTD"),
    ("asmx", "billion_laughs_in_result", "result GetPersonInfoResult: XML declaring a DTD"),
    ("pipe", "xxe_in_result", "Invoke funcno=1001 result: XML declaring a DTD"),
])
async def test_hostile_xml_is_refused_and_nothing_is_fetched(soap, kit, trap, shape, kind,
                                                              match):
    hits, url = trap
    dest = await soap(shape)
    await kit.faults({"xml": {"kind": kind, "url": url, "times": 1}})
    envelope = (call("GetPersonInfo", ["D44039900001", "", "op"]) if shape == "asmx" else
                Envelope("x", b"<body><cardno>D44039900001</cardno></body>",
                         {"funcno": "1001"}, "xml"))
    with pytest.raises(PermanentError, match=match):
        await dest.send(envelope)
    assert hits == []
    # The same call without the attack works, so the refusal was about the payload only.
    assert (await dest.send(envelope)).response


async def test_parsers_alone_do_not_fetch_entities(trap):
    """Belt and braces, without the DOCTYPE pre-check: zeep with our settings and our lxml
    parser neither expand nor fetch an external entity, while a permissive parser using
    zeep's own resolver does fetch from the trap (so the trap would have seen a leak)."""
    import asyncio

    from zeep.exceptions import DTDForbidden
    from zeep.loader import ImportResolver, parse_xml
    from zeep.settings import Settings
    from zeep.transports import Transport

    from adapters.soap import _PARSER, ZEEP_SETTINGS

    hits, url = trap
    doc = f'<!DOCTYPE r [<!ENTITY x SYSTEM "{url}">]><r>&x;</r>'.encode()
    with pytest.raises(DTDForbidden):
        await asyncio.to_thread(parse_xml, doc, Transport(), settings=ZEEP_SETTINGS)
    root = await asyncio.to_thread(etree.fromstring, doc, _PARSER)
    assert "secret" not in etree.tostring(root, encoding="unicode")
    assert hits == []

    permissive = etree.XMLParser(resolve_entities=True, no_network=False, load_dtd=True)
    permissive.resolvers.add(ImportResolver(Transport(), Settings()))
    leaked = await asyncio.to_thread(etree.fromstring, doc, permissive)
    assert leaked.text == "secret"
    assert hits == ["/xxe"]


async def test_wsdl_is_loaded_once_per_destination(soap, kit):
    asmx = await soap()
    pipe = await soap("pipe")
    for i in range(5):
        await asmx.send(call("GetPersonInfo", ["D44039900001", "", "op"], key=f"a{i}"))
        await pipe.send(Envelope(f"p{i}", b"<body><cardno>D44039900001</cardno></body>",
                                 {"funcno": "1001"}, "xml"))
    assert (await kit.state())["wsdl_requests"] == 2


async def test_wsdl_from_a_local_file(soap, kit, sim, tmp_path):
    path = tmp_path / "regional.wsdl"
    path.write_text((HERE / "regional_asmx.wsdl").read_text(encoding="utf-8")
                    .replace("{address}", "http://127.0.0.1:9/unused"), encoding="utf-8")
    dest = await soap(wsdl=str(path), address=f"{sim.url}/regional/asmx")
    person = fields(await dest.send(call("GetPersonInfo", ["D44039900003", "", "op"])))
    assert person["insuType"] == "390"
    assert (await kit.state())["wsdl_requests"] == 0


async def test_bad_configuration_fails_at_start(soap, unused_tcp_port):
    with pytest.raises(ConfigError, match="operation 'Nope' is not in the WSDL"):
        await soap(operation="Nope")
    with pytest.raises(ConfigError, match="cannot load WSDL"):
        await soap(wsdl=f"http://127.0.0.1:{unused_tcp_port}/x?wsdl", wsdl_timeout=1.0)


async def test_regional_and_national_share_one_balance(soap, nhsa, kit):
    national = await nhsa()
    settle, _ = await kit.presettled(national, "D44039900001")
    await kit.call(national, "2207", settle)
    regional = await soap()
    person = fields(await regional.send(call("GetPersonInfo", ["D44039900001", "", "op"])))
    assert person["balance"] == "891.25"


@pytest.mark.parametrize(("status", "answer", "match"), [
    (200, b"this is not xml", r"GetPersonInfo: unreadable answer: .*Start tag expected"),
    (200, b"<html><body>gateway maintenance</body></html>",
     r"GetPersonInfo: unreadable answer: .*does not contain a valid .*Envelope"),
    (200, b'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">'
          b"<soap:Body><soap:Fault><faultcode>soap:Server</faultcode>"
          b"<faultstring>database offline</faultstring></soap:Fault></soap:Body>"
          b"</soap:Envelope>", r"GetPersonInfo: SOAP fault soap:Server: database offline"),
    (500, b'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">'
          b"<soap:Body><soap:Fault><faultcode>soap:Client</faultcode>"
          b"<faultstring>bad card</faultstring></soap:Fault></soap:Body></soap:Envelope>",
     r"GetPersonInfo: SOAP fault soap:Client: bad card"),
    (200, b'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">'
          b"<soap:Body/></soap:Envelope>",
     r"GetPersonInfo: unreadable answer: the SOAP Body is empty"),
    (200, b'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">'
          b"<soap:Body><Other xmlns=\"urn:x\"/></soap:Body></soap:Envelope>",
     r"GetPersonInfo: answer holds no result document"),
])
async def test_broken_answers_are_permanent_errors_naming_the_operation(soap, status, answer,
                                                                         match):
    """Whatever a peer answers, the destination says what was wrong, never crashes and
    never takes it for success."""
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=status, body=answer, content_type="text/xml")

    app = web.Application()
    app.router.add_post("/asmx", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        dest = await soap(address=f"http://127.0.0.1:{runner.addresses[0][1]}/asmx")
        with pytest.raises(PermanentError, match=match):
            await dest.send(call("GetPersonInfo", ["D44039900001", "", "op"]))
    finally:
        await runner.cleanup()


async def test_keyword_arguments_take_zeeps_path_with_the_same_answer(soap):
    dest = await soap()
    card = ["D44039900001", "", "op"]
    positional = await dest.send(Envelope("k1", json.dumps(card).encode(),
                                          {"operation": "GetPersonInfo"}, "json"))
    named = await dest.send(Envelope("k2", json.dumps(
        {"cardNo": card[0], "idNo": card[1], "operCode": card[2]}).encode(),
        {"operation": "GetPersonInfo"}, "json"))
    assert positional.response == named.response
    assert b"<code>0</code>" in positional.response


@pytest.mark.parametrize("chunked", [False, True])
async def test_an_answer_too_large_to_read_is_permanent_or_in_doubt(soap, chunked):
    """Not read, so not known: for an operation that moves money the call may have been
    processed, and it must be queried, not repeated."""
    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        body = b"<x>" + b" " * 4000 + b"</x>"
        if not chunked:
            return web.Response(body=body, content_type="text/xml")
        response = web.StreamResponse()
        response.content_type = "text/xml"
        response.enable_chunked_encoding()
        await response.prepare(request)
        for at in range(0, len(body), 500):
            await response.write(body[at:at + 500])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/asmx", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        dest = await soap(address=f"http://127.0.0.1:{runner.addresses[0][1]}/asmx",
                          max_response_bytes=1024, in_doubt_operations=["InpatientCalculate"])
        with pytest.raises(PermanentError, match="GetPersonInfo: answer larger than 1024") as p:
            await dest.send(call("GetPersonInfo", ["D44039900001", "", "op"]))
        assert not isinstance(p.value, InDoubtError)
        with pytest.raises(InDoubtError, match="InpatientCalculate: answer larger than 1024"
                                               r" bytes \(may have been processed"):
            await dest.send(call("InpatientCalculate", ["R1", "1", "op"]))
    finally:
        await runner.cleanup()
