"""The regional SOAP service, in the two shapes older regional platforms use:

- ``/regional/asmx``: an ASMX-style service with many operations taking positional string
  parameters and answering an XML document *as a string* plus a ``message``;
- ``/regional/pipe``: one ``Invoke`` operation taking a whole request document (``<head>``
  with version, function number, organisation and credentials; ``<body>``) as a string and
  answering a response document.

Each serves its own WSDL at ``?wsdl``. Requests are parsed with DTDs, entities and network
access off. Business refusals are ``<code>-1</code>`` in the result document; malformed
requests and unknown operations are SOAP faults (HTTP 500). The business rules are the
national service's (``Platform``), so balances are shared.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar
from xml.sax.saxutils import escape

from aiohttp import web
from lxml import etree

from simulators.insurance.faults import Faults
from simulators.insurance.national import ELAPSED, drop_connection
from simulators.insurance.platform import Platform, Reject

log = logging.getLogger("hisbridge.simulators.insurance")

HERE = Path(__file__).parent
SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
ASMX_NS = "http://tempuri.org/"
PIPE_NS = "urn:hisbridge:simulator:regional-pipe"

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                          huge_tree=False, remove_comments=True)


class SoapFault(Exception):
    """Answered as a ``soap:Client`` fault."""


def parse_safely(data: bytes | str) -> etree._Element:
    """Parse XML from a client; any DOCTYPE is refused."""
    raw = data.encode() if isinstance(data, str) else data
    if b"<!DOCTYPE" in raw.upper() or b"<!ENTITY" in raw.upper():
        raise SoapFault("DTDs are not accepted")
    try:
        return etree.fromstring(raw, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise SoapFault(f"malformed XML: {exc}") from None


def _text(el: etree._Element | None, name: str) -> str:
    if el is None:
        return ""
    for child in el:
        if etree.QName(child).localname == name:
            return (child.text or "").strip()
    return ""


def _xml(tag: str, fields: dict[str, Any]) -> str:
    inner = "".join(f"<{k}>{escape(str(v))}</{k}>" for k, v in fields.items())
    return f"<{tag}>{inner}</{tag}>"


class RegionalService:
    FUNCNOS: ClassVar[dict[str, str]] = {
        "1001": "GetPersonInfo", "2001": "InpatientRegister", "2002": "InpatientFeeUpload",
        "2003": "InpatientCalculate", "2004": "InpatientFeeCancel",
        "2005": "InpatientOutRegister",
    }

    def __init__(self, platform: Platform, faults: Faults, *, org_code: str,
                 pipe_user: str, pipe_password: str) -> None:
        self.platform = platform
        self.faults = faults
        self.org_code = org_code
        self.pipe_user = pipe_user
        self.pipe_password = pipe_password
        self.wsdl_requests = 0
        self._seq = 0
        self.operations: dict[str, Callable[[dict[str, str], str], dict[str, Any]]] = {
            "GetPersonInfo": self._person_info, "InpatientRegister": self._register,
            "InpatientFeeUpload": self._fee_upload, "InpatientCalculate": self._calculate,
            "InpatientFeeCancel": self._fee_cancel, "InpatientOutRegister": self._out_register,
        }
        self._templates = {
            "asmx": (HERE / "regional_asmx.wsdl").read_text(encoding="utf-8"),
            "pipe": (HERE / "regional_pipe.wsdl").read_text(encoding="utf-8"),
        }

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/regional/asmx", self.wsdl("asmx")),
            web.post("/regional/asmx", self.asmx),
            web.get("/regional/pipe", self.wsdl("pipe")),
            web.post("/regional/pipe", self.pipe),
        ]

    def wsdl(self, shape: str) -> Any:
        async def handler(request: web.Request) -> web.Response:
            if "wsdl" not in request.query:
                raise web.HTTPNotFound(text="ask for ?wsdl")
            self.wsdl_requests += 1
            address = f"{request.scheme}://{request.host}{request.path}"
            text = self._templates[shape].replace("{address}", escape(address))
            return web.Response(text=text, content_type="text/xml", charset="utf-8")

        return handler

    # -- ASMX shape --------------------------------------------------------------------------

    async def asmx(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            op_el = self._body_element(await request.read())
            operation = etree.QName(op_el).localname
            if operation not in self.operations:
                raise SoapFault(f"unknown operation {operation}")
            args = {etree.QName(c).localname: (c.text or "") for c in op_el}
        except SoapFault as exc:
            return self._fault(started, str(exc))
        early = await self._before(request, operation)
        if early is not None:
            return early
        result, message = self._run(operation, args)
        late = await self._after(request, operation)
        if late is not None:
            return late
        body = (
            f'<{operation}Response xmlns="{ASMX_NS}">'
            f"<{operation}Result>{escape(self._attack_result(operation, result))}"
            f"</{operation}Result><message>{escape(message)}</message></{operation}Response>"
        )
        return self._envelope(started, body, operation)

    # -- pipe shape --------------------------------------------------------------------------

    async def pipe(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            op_el = self._body_element(await request.read())
            if etree.QName(op_el).localname != "Invoke":
                raise SoapFault(f"unknown operation {etree.QName(op_el).localname}")
            document = parse_safely(_text(op_el, "inputXml"))
        except SoapFault as exc:
            return self._fault(started, str(exc))
        head = document.find("head")
        body = document.find("body")
        funcno = _text(head, "funcno")
        operation = self.FUNCNOS.get(funcno, "")
        early = await self._before(request, funcno)
        if early is not None:
            return early
        code, message, fields = self._pipe_call(head, body, funcno, operation)
        late = await self._after(request, funcno)
        if late is not None:
            return late
        response = (
            "<response>" + _xml("head", {"code": code, "message": message,
                                         "msgid": _text(head, "msgid")})
            + _xml("body", fields) + "</response>"
        )
        result = escape(self._attack_result(funcno, response))
        envelope_body = (
            f'<InvokeResponse xmlns="{PIPE_NS}"><InvokeResult>{result}'
            "</InvokeResult></InvokeResponse>"
        )
        return self._envelope(started, envelope_body, funcno)

    def _pipe_call(self, head: Any, body: Any, funcno: str,
                   operation: str) -> tuple[str, str, dict[str, Any]]:
        if head is None or body is None:
            return "-1", "request needs <head> and <body>", {}
        if _text(head, "version") != "1.0":
            return "-1", "unsupported version (expected 1.0)", {}
        if (_text(head, "userid"), _text(head, "password")) != (self.pipe_user,
                                                                self.pipe_password):
            return "-2", "认证失败 (authentication failed)", {}
        if _text(head, "orgcode") != self.org_code:
            return "-1", "机构编码不符 (unknown organisation)", {}
        if not operation:
            return "-1", f"unknown funcno {funcno!r}", {}
        args = {
            "cardNo": _text(body, "cardno"), "idNo": _text(body, "idno"),
            "personNo": _text(body, "personno"), "hospNo": _text(body, "hospno"),
            "admDate": _text(body, "admdate"), "deptCode": _text(body, "deptcode"),
            "diagCode": _text(body, "diagcode"), "regNo": _text(body, "regno"),
            "settleFlag": _text(body, "settleflag"), "settleNo": _text(body, "settleno"),
            "outDate": _text(body, "outdate"),
        }
        fees = body.find("fees")
        if fees is not None:
            args["feeXml"] = etree.tostring(fees, encoding="unicode")
        result, message = self._run(operation, args)
        doc = etree.fromstring(result.encode(), _PARSER)
        fields = {etree.QName(c).localname: (c.text or "") for c in doc
                  if etree.QName(c).localname not in ("code", "message")
                  and len(c) == 0}
        return _text(doc, "code"), message, fields

    # -- shared -------------------------------------------------------------------------------

    @staticmethod
    def _body_element(raw: bytes) -> etree._Element:
        envelope = parse_safely(raw)
        body = envelope.find(f"{{{SOAP_NS}}}Body")
        if body is None or len(body) == 0:
            raise SoapFault("no SOAP Body")
        return body[0]

    async def _before(self, request: web.Request, key: str) -> web.StreamResponse | None:
        if (fault := self.faults.take("latency", key)) is not None:
            await self.faults.hang(float(fault.params.get("seconds", 0.1)))
        if (fault := self.faults.take("error", key)) is not None:
            status = int(fault.params.get("status", 503))
            return web.Response(status=status, text=f"simulated HTTP {status}")
        if self.faults.take("drop", key) is not None:
            return drop_connection(request)
        return None

    async def _after(self, request: web.Request, key: str) -> web.StreamResponse | None:
        if (fault := self.faults.take("commit_then", key)) is not None:
            if fault.params.get("mode", "hang") == "drop":
                return drop_connection(request)
            await self.faults.hang(float(fault.params.get("seconds", 30)))
        return None

    def _run(self, operation: str, args: dict[str, str]) -> tuple[str, str]:
        """Run one operation; returns (result XML text, message)."""
        self._seq += 1
        msgid = f"REGIONAL{time.strftime('%Y%m%d%H%M%S')}{self._seq:08d}"
        try:
            with self.platform.store.tx():
                fields = self.operations[operation](args, msgid)
        except Reject as exc:
            return _xml("output", {"code": "-1", "message": str(exc)}), str(exc)
        except (KeyError, ValueError, ArithmeticError, SoapFault) as exc:
            text = f"参数错误 (bad parameters): {exc}"
            return _xml("output", {"code": "-1", "message": text}), text
        return _xml("output", {"code": "0", "message": "成功", **fields}), "成功"

    def _envelope(self, started: float, body: str, key: str) -> web.Response:
        attack = self.faults.take("xml", key)
        prolog = ""
        if attack is not None and attack.params.get("kind") in ("xxe", "billion_laughs"):
            prolog, entity = _hostile_dtd(str(attack.params["kind"]),
                                          str(attack.params.get("url", "")))
            body = body.replace("</message>", f"{entity}</message>", 1).replace(
                "</InvokeResult>", f"{entity}</InvokeResult>", 1)
        text = (
            f'<?xml version="1.0" encoding="utf-8"?>{prolog}'
            f'<soap:Envelope xmlns:soap="{SOAP_NS}"><soap:Body>{body}</soap:Body>'
            "</soap:Envelope>"
        )
        elapsed = int((time.perf_counter() - started) * 1_000_000)
        return web.Response(body=text.encode(), content_type="text/xml", charset="utf-8",
                            headers={ELAPSED: str(elapsed)})

    def _attack_result(self, key: str, result: str) -> str:
        fault = self.faults.active.get("xml")
        if fault is None or fault.params.get("kind") not in (
            "xxe_in_result", "billion_laughs_in_result"
        ) or self.faults.take("xml", key) is None:
            return result
        kind = str(fault.params["kind"]).removesuffix("_in_result")
        prolog, entity = _hostile_dtd(kind, str(fault.params.get("url", "")), root="output")
        return f'<?xml version="1.0"?>{prolog}<output><code>0</code><name>{entity}</name></output>'

    def _fault(self, started: float, text: str) -> web.Response:
        body = (
            f'<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="{SOAP_NS}">'
            f"<soap:Body><soap:Fault><faultcode>soap:Client</faultcode>"
            f"<faultstring>{escape(text)}</faultstring></soap:Fault></soap:Body></soap:Envelope>"
        )
        elapsed = int((time.perf_counter() - started) * 1_000_000)
        return web.Response(status=500, body=body.encode(), content_type="text/xml",
                            charset="utf-8", headers={ELAPSED: str(elapsed)})

    # -- operations (positional arguments by name) -------------------------------------------

    def _person_info(self, a: dict[str, str], msgid: str) -> dict[str, Any]:
        if a.get("cardNo"):
            person = self.platform.find_person("03", a["cardNo"])
        elif a.get("idNo"):
            person = self.platform.find_person("02", a["idNo"])
        else:
            raise Reject("cardNo 或 idNo 必须提供一个 (give cardNo or idNo)")
        return {
            "personNo": person["psn_no"], "name": person["name"], "sex": person["gend"],
            "birthday": person["brdy"], "idNo": person["certno"],
            "insuType": person["insutype"], "personType": person["psn_type"],
            "balance": person["balc"], "areaCode": person["insuplc_admdvs"],
            "status": person["psn_insu_stas"],
        }

    def _register(self, a: dict[str, str], msgid: str) -> dict[str, Any]:
        for name in ("personNo", "hospNo", "admDate", "deptCode", "diagCode"):
            if not a.get(name):
                raise Reject(f"{name}: required")
        person = self.platform.person(a["personNo"])
        reg_no = self.platform.open_visit(
            person, insutype=person["insutype"], kind="ipt", med_type="21",
            begntime=a["admDate"], ipt_otp_no=a["hospNo"], dept_code=a["deptCode"],
            dise_codg=a["diagCode"], cert_type="03", source="regional",
        )
        return {"regNo": reg_no}

    def _visit(self, reg_no: str) -> Any:
        row = self.platform.store.one("SELECT psn_no FROM visit WHERE mdtrt_id = ?", reg_no)
        if row is None:
            raise Reject(f"住院登记号不存在 (unknown regNo {reg_no})")
        return self.platform.visit(reg_no, row["psn_no"], "ipt")

    def _fee_upload(self, a: dict[str, str], msgid: str) -> dict[str, Any]:
        visit = self._visit(a.get("regNo", ""))
        doc = parse_safely(a.get("feeXml") or "<fees/>")
        lines = [
            {
                "feedetl_sn": _text(fee, "sn"), "mdtrt_id": visit["mdtrt_id"],
                "psn_no": visit["psn_no"], "med_list_codg": _text(fee, "code"),
                "medins_list_codg": _text(fee, "hospCode"), "cnt": _text(fee, "qty"),
                "pric": _text(fee, "price"), "det_item_fee_sumamt": _text(fee, "amount"),
                "fee_ocur_time": _text(fee, "time"), "chrg_bchno": "",
            }
            for fee in doc.findall("fee")
        ]
        if not lines:
            raise Reject("feeXml: no <fee> entries")
        results = self.platform.upload_fees(lines, "ipt", msgid)
        return {
            "count": len(results),
            "total": sum((r["det_item_fee_sumamt"] for r in results), Decimal("0.00")),
            "selfPay": sum((r["fulamt_ownpay_amt"] + r["overlmt_amt"] + r["preselfpay_amt"]
                            for r in results), Decimal("0.00")),
        }

    def _calculate(self, a: dict[str, str], msgid: str) -> dict[str, Any]:
        visit = self._visit(a.get("regNo", ""))
        flag = a.get("settleFlag", "")
        if flag not in ("0", "1"):
            raise Reject("settleFlag must be 0 (pre-settle) or 1 (settle)")
        computed = self.platform.compute(
            mdtrt_id=visit["mdtrt_id"], psn_no=visit["psn_no"], kind="ipt",
            insutype=visit["insutype"], medfee_sumamt=None, use_account=True,
        )
        f = computed.figures
        settle_no = ""
        balance = f.balc
        if flag == "1":
            row = self.platform.settle(
                computed, claimed={}, msgid=msgid, infno="REG", mid_setl_flag="1", invono="",
                chrg_bchno="", med_type="21", cert_type="03", source="regional",
            )
            settle_no = row["setl_id"]
        return {
            "settleNo": settle_no, "total": f.medfee_sumamt, "fundPay": f.fund_pay_sumamt,
            "accountPay": f.acct_pay, "cashPay": f.psn_cash_pay, "selfPay": f.psn_part_amt,
            "balance": balance,
        }

    def _fee_cancel(self, a: dict[str, str], msgid: str) -> dict[str, Any]:
        visit = self._visit(a.get("regNo", ""))
        if a.get("settleNo"):
            row = self.platform.cancel(setl_id=a["settleNo"], mdtrt_id=visit["mdtrt_id"],
                                       psn_no=visit["psn_no"], kind="ipt", msgid=msgid,
                                       infno="REG")
            return {"cancelNo": row["setl_id"], "balance": row["balc"]}
        count = self.platform.cancel_fees(visit["mdtrt_id"], visit["psn_no"])
        return {"cancelled": count}

    def _out_register(self, a: dict[str, str], msgid: str) -> dict[str, Any]:
        visit = self._visit(a.get("regNo", ""))
        if not a.get("outDate"):
            raise Reject("outDate: required")
        self.platform.discharge(visit["mdtrt_id"], visit["psn_no"], a["outDate"],
                                a.get("diagCode") or "")
        return {"regNo": visit["mdtrt_id"]}


def _hostile_dtd(kind: str, url: str, root: str = "soap:Envelope") -> tuple[str, str]:
    """A DOCTYPE carrying an external entity (XXE) or nested entities (billion laughs)."""
    if kind == "xxe":
        return f'<!DOCTYPE {root} [<!ENTITY xxe SYSTEM "{url}">]>', "&xxe;"
    lol = ['<!ENTITY lol0 "lol">'] + [
        f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10}">' for i in range(1, 10)
    ]
    return f"<!DOCTYPE {root} [{''.join(lol)}]>", "&lol9;"
