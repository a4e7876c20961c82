"""The national platform's JSON service: ``POST /fsi/api/rsfComIfsService/callService``.

Per request: gateway signature, envelope, duplicate ``msgid``, sign-in, the transaction's
input, the insured person's area; then the business rule runs in one transaction together
with the record of the ``msgid``, so a committed settlement and its msgid are never apart
(that is what lets 2601 reverse a call whose answer was lost). Every answer carries
``X-Sim-Elapsed-Us``: the time spent inside this handler, so a benchmark can subtract it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
from aiohttp import web

from simulators.insurance.faults import Faults
from simulators.insurance.gateway import GatewayCheck, GatewayRefusal
from simulators.insurance.outputs import presettlement, setldetail, setlinfo
from simulators.insurance.platform import Platform, Reject
from simulators.insurance.schema import check_envelope, check_input, person_of

log = logging.getLogger("hisbridge.simulators.insurance")

PATH = "/fsi/api/rsfComIfsService/callService"
ELAPSED = "X-Sim-Elapsed-Us"

Output = tuple[Any, str]
"""A transaction's ``output`` and the settlement id it created (or "")."""


def encode_json(value: Any) -> bytes:
    def default(v: Any) -> Any:
        if isinstance(v, Decimal):
            return orjson.Fragment(str(v))
        raise TypeError(type(v).__name__)

    return orjson.dumps(value, default=default)


class NationalService:
    def __init__(self, platform: Platform, gateway: GatewayCheck, faults: Faults,
                 institutions: dict[str, str]) -> None:
        self.platform = platform
        self.gateway = gateway
        self.faults = faults
        self.institutions = institutions
        self._seq = 0
        self.handlers: dict[str, Callable[[dict[str, Any], str], Output]] = {
            "9001": self._9001, "9002": self._9002, "1101": self._1101, "2201": self._2201,
            "2202": self._2202, "2203": self._2203, "2204": self._2204, "2205": self._2205,
            "2206": self._2206, "2207": self._2207, "2208": self._2208, "2401": self._2401,
            "2402": self._2402, "2301": self._2301, "2302": self._2302, "2303": self._2303,
            "2304": self._2304, "2305": self._2305, "3201": self._3201, "5203": self._5203,
            "2601": self._2601,
        }

    # -- HTTP --------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        raw = await request.read()
        try:
            doc = json.loads(raw, parse_float=Decimal)
        except (ValueError, UnicodeDecodeError):
            return self._answer(started, "", "-1", "报文不是合法的JSON (request is not JSON)")
        infno = str(doc.get("infno", "")) if isinstance(doc, dict) else ""

        if (fault := self.faults.take("latency", infno)) is not None:
            await self.faults.hang(float(fault.params.get("seconds", 0.1)))
        if (fault := self.faults.take("error", infno)) is not None:
            status = int(fault.params.get("status", 503))
            return web.Response(status=status, text=f"simulated HTTP {status}")
        if self.faults.take("drop", infno) is not None:
            return drop_connection(request)

        try:
            self.gateway.verify(request.headers, infno)
        except GatewayRefusal as exc:
            body = encode_json({"infcode": "-1", "err_msg": f"gateway: {exc}", "output": None})
            return web.Response(status=401, body=body, content_type="application/json")

        msgid = str(doc.get("msgid", "")) if isinstance(doc, dict) else ""
        try:
            output, _ = self._process(doc, infno, msgid)
        except Reject as exc:
            return self._answer(started, msgid, "-1", str(exc))

        if (fault := self.faults.take("commit_then", infno)) is not None:
            log.info("fault: %s committed, answer withheld (%s)", infno, fault.params)
            if fault.params.get("mode", "hang") == "drop":
                return drop_connection(request)
            await self.faults.hang(float(fault.params.get("seconds", 30)))
        if (fault := self.faults.take("malformed", infno)) is not None:
            return self._malformed(started, msgid, output, str(fault.params.get("kind")))
        return self._answer(started, msgid, "0", "", output)

    def _process(self, doc: Any, infno: str, msgid: str) -> Output:
        check_envelope(doc)
        code = doc["fixmedins_code"]
        if code not in self.institutions:
            raise Reject(f"定点医药机构编号 {code} 不存在 (unknown institution)")
        if not msgid.startswith(code):
            raise Reject("msgid 必须以定点医药机构编号开头 (msgid must start with fixmedins_code)")
        try:
            datetime.strptime(msgid[12:26], "%Y%m%d%H%M%S")
        except ValueError:
            raise Reject("msgid 时间部分无效 (msgid time part invalid)") from None
        if self.platform.seen(msgid) is not None:
            raise Reject("报文ID重复 (duplicate msgid)")
        handler = self.handlers.get(infno)
        if handler is None:
            raise Reject(f"交易编号 {infno} 不存在 (unknown infno)")
        try:
            if infno != "9001":
                self.platform.check_sign(str(doc.get("sign_no") or ""))
            data = doc["input"]
            check_input(infno, data)
            psn_no = person_of(infno, data)
            if psn_no:
                person = self.platform.person(psn_no)
                area = doc.get("insuplc_admdvs") or ""
                if not area:
                    raise Reject("insuplc_admdvs: required when the input carries psn_no")
                if area != person["insuplc_admdvs"]:
                    raise Reject("参保地医保区划与人员参保信息不符 (insuplc_admdvs mismatch)")
            with self.platform.store.tx():
                output, setl_id = handler(data, msgid)
                self.platform.record(msgid, infno, "done", setl_id)
        except Reject:
            with self.platform.store.tx():
                self.platform.record(msgid, infno, "refused")
            raise
        return output, setl_id

    def _answer(self, started: float, msgid: str, infcode: str, err_msg: str,
                output: Any = None) -> web.Response:
        self._seq += 1
        now = datetime.now()
        body = {
            "infcode": infcode,
            "inf_refmsgid": f"440300{now:%Y%m%d%H%M%S}{self._seq % 10**10:010d}",
            "refmsg_time": now.strftime("%Y%m%d%H%M%S%f")[:17],
            "respond_time": now.strftime("%Y%m%d%H%M%S%f")[:17],
            "err_msg": err_msg or None,
            "warn_msg": None,
            "cainfo": None,
            "signtype": None,
            "output": output,
        }
        return self._respond(started, encode_json(body))

    @staticmethod
    def _respond(started: float, body: bytes) -> web.Response:
        elapsed = int((time.perf_counter() - started) * 1_000_000)
        return web.Response(body=body, content_type="application/json",
                            headers={ELAPSED: str(elapsed)})

    def _malformed(self, started: float, msgid: str, output: Any, kind: str) -> web.Response:
        if kind == "not_json":
            return self._respond(started, b"<html><body>502 Bad Gateway</body></html>")
        if kind == "missing_output":
            body = {"infcode": "0", "inf_refmsgid": msgid, "err_msg": None}
            return self._respond(started, encode_json(body))
        _spoil_first_amount(output)
        return self._answer(started, msgid, "0", "", output)

    # -- transactions ------------------------------------------------------------------------

    def _9001(self, data: dict[str, Any], msgid: str) -> Output:
        return {"signinoutb": self.platform.sign_in(data["signIn"]["opter_no"])}, ""

    def _9002(self, data: dict[str, Any], msgid: str) -> Output:
        self.platform.sign_out(data["signOut"]["sign_no"])
        return {"signoutoutb": {"sign_time": datetime.now().strftime("%Y-%m-%d %H:%M:%S")}}, ""

    def _1101(self, data: dict[str, Any], msgid: str) -> Output:
        d = data["data"]
        person = self.platform.find_person(d["mdtrt_cert_type"], d["mdtrt_cert_no"])
        return self.platform.person_info(person), ""

    def _2201(self, data: dict[str, Any], msgid: str) -> Output:
        d = data["data"]
        person = self.platform.person(d["psn_no"])
        mdtrt_id = self.platform.open_visit(
            person, insutype=d["insutype"], kind="otp", med_type="11", begntime=d["begntime"],
            ipt_otp_no=d["ipt_otp_no"], dept_code=d["dept_code"], dise_codg="",
            cert_type=d["mdtrt_cert_type"], source="national",
        )
        return {"data": {"mdtrt_id": mdtrt_id, "psn_no": d["psn_no"],
                         "ipt_otp_no": d["ipt_otp_no"]}}, ""

    def _2202(self, data: dict[str, Any], msgid: str) -> Output:
        d = data["data"]
        self.platform.cancel_visit(d["psn_no"], d["mdtrt_id"])
        return None, ""

    def _2203(self, data: dict[str, Any], msgid: str) -> Output:
        info = data["mdtrtinfo"]
        diagnoses = data.get("diseinfo") or []
        dise = info.get("dise_codg") or (diagnoses[0]["diag_code"] if diagnoses else "")
        self.platform.update_visit(info["mdtrt_id"], info["psn_no"], info["med_type"], dise)
        return None, ""

    def _2204(self, data: dict[str, Any], msgid: str) -> Output:
        return {"result": self.platform.upload_fees(data["feedetail"], "otp", msgid)}, ""

    def _2205(self, data: dict[str, Any], msgid: str) -> Output:
        d = data["data"]
        self.platform.cancel_fees(d["mdtrt_id"], d["psn_no"], chrg_bchno=d["chrg_bchno"])
        return None, ""

    def _compute(self, d: dict[str, Any], kind: str) -> Any:
        return self.platform.compute(
            mdtrt_id=d["mdtrt_id"], psn_no=d["psn_no"], kind=kind, insutype=d["insutype"],
            medfee_sumamt=Decimal(str(d["medfee_sumamt"])),
            use_account=d["acct_used_flag"] == "1",
            chrg_bchno=d.get("chrg_bchno") if kind == "otp" else None,
        )

    def _settle(self, d: dict[str, Any], kind: str, msgid: str, infno: str) -> Output:
        computed = self._compute(d, kind)
        claimed = {k: Decimal(str(d[k])) for k in
                   ("fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt", "inscp_scp_amt")}
        row = self.platform.settle(
            computed, claimed=claimed, msgid=msgid, infno=infno,
            mid_setl_flag=str(d.get("mid_setl_flag") or "0"), invono=str(d.get("invono") or ""),
            chrg_bchno=str(d.get("chrg_bchno") or ""), med_type=str(d.get("med_type") or ""),
            cert_type=d["mdtrt_cert_type"], source="national",
        )
        return {"setlinfo": setlinfo(row, computed.person), "setldetail": setldetail(row)}, \
            row["setl_id"]

    def _cancel(self, d: dict[str, Any], kind: str, msgid: str, infno: str) -> Output:
        row = self.platform.cancel(setl_id=d["setl_id"], mdtrt_id=d["mdtrt_id"],
                                   psn_no=d["psn_no"], kind=kind, msgid=msgid, infno=infno)
        person = self.platform.person(d["psn_no"])
        return {"setlinfo": setlinfo(row, person), "setldetail": setldetail(row)}, row["setl_id"]

    def _2206(self, data: dict[str, Any], msgid: str) -> Output:
        d = data["data"]
        return presettlement(self._compute(d, "otp"), med_type=d["med_type"],
                             cert_type=d["mdtrt_cert_type"]), ""

    def _2207(self, data: dict[str, Any], msgid: str) -> Output:
        return self._settle(data["data"], "otp", msgid, "2207")

    def _2208(self, data: dict[str, Any], msgid: str) -> Output:
        return self._cancel(data["data"], "otp", msgid, "2208")

    def _2401(self, data: dict[str, Any], msgid: str) -> Output:
        d = data["mdtrtinfo"]
        person = self.platform.person(d["psn_no"])
        mdtrt_id = self.platform.open_visit(
            person, insutype=d["insutype"], kind="ipt", med_type=d["med_type"],
            begntime=d["begntime"], ipt_otp_no=d["ipt_no"], dept_code=d["adm_dept_codg"],
            dise_codg=d["dscg_maindiag_code"], cert_type=d["mdtrt_cert_type"],
            source="national",
        )
        return {"data": {"mdtrt_id": mdtrt_id, "psn_no": d["psn_no"],
                         "ipt_otp_no": d["ipt_no"]}}, ""

    def _2402(self, data: dict[str, Any], msgid: str) -> Output:
        d = data["dscginfo"]
        self.platform.discharge(d["mdtrt_id"], d["psn_no"], d["endtime"], d["dise_codg"])
        return None, ""

    def _2301(self, data: dict[str, Any], msgid: str) -> Output:
        return {"result": self.platform.upload_fees(data["feedetail"], "ipt", msgid)}, ""

    def _2302(self, data: dict[str, Any], msgid: str) -> Output:
        for entry in data["data"]:
            self.platform.cancel_fees(entry["mdtrt_id"], entry["psn_no"],
                                      feedetl_sn=entry["feedetl_sn"])
        return None, ""

    def _2303(self, data: dict[str, Any], msgid: str) -> Output:
        d = data["data"]
        return presettlement(self._compute(d, "ipt"), med_type="21",
                             cert_type=d["mdtrt_cert_type"]), ""

    def _2304(self, data: dict[str, Any], msgid: str) -> Output:
        return self._settle(data["data"], "ipt", msgid, "2304")

    def _2305(self, data: dict[str, Any], msgid: str) -> Output:
        return self._cancel(data["data"], "ipt", msgid, "2305")

    def _3201(self, data: dict[str, Any], msgid: str) -> Output:
        d = data["data"]
        info = self.platform.reconcile(
            insutype=d["insutype"], clr_type=d["clr_type"], setl_optins=d["setl_optins"],
            begn=d["stmt_begndate"], end=d["stmt_enddate"],
            medfee=Decimal(str(d["medfee_sumamt"])), fund=Decimal(str(d["fund_pay_sumamt"])),
            acct=Decimal(str(d["acct_pay"])), count=int(d["fixmedins_setl_cnt"]),
        )
        return {"stmtinfo": info}, ""

    def _5203(self, data: dict[str, Any], msgid: str) -> Output:
        d = data["data"]
        row = self.platform.query(psn_no=d["psn_no"], mdtrt_id=d["mdtrt_id"],
                                  setl_id=str(d.get("setl_id") or ""))
        person = self.platform.person(d["psn_no"])
        return {"setlinfo": setlinfo(row, person), "setldetail": setldetail(row)}, ""

    def _2601(self, data: dict[str, Any], msgid: str) -> Output:
        d = data["data"]
        self.platform.reverse(psn_no=d["psn_no"], omsgid=d["omsgid"], oinfno=d["oinfno"])
        return None, ""


def drop_connection(request: web.Request) -> web.StreamResponse:
    """Close the connection without an answer."""
    if request.transport is not None:
        request.transport.abort()
    return web.Response(status=204)


AMOUNT_KEYS = ("fund_pay_sumamt", "det_item_fee_sumamt", "balc", "medfee_sumamt")


def _spoil_first_amount(node: Any) -> bool:
    """Replace the first money amount in ``node`` with text that is not a number."""
    if isinstance(node, dict):
        for key in AMOUNT_KEYS:
            if isinstance(node.get(key), Decimal):
                node[key] = "12.3O"
                return True
        return any(_spoil_first_amount(v) for v in node.values())
    if isinstance(node, list):
        return any(_spoil_first_amount(v) for v in node)
    return False
