"""A UnionPay online gateway 5.1.0 simulator (QR consume, query, refund, settlement files).

At start it generates a CA (the "UnionPay root" the merchant is configured to trust) and a
signing certificate issued by it, with 中国银联股份有限公司 in its common name. It verifies each
request's ``signMethod=01`` signature with the merchant certificate (and its ``certId``),
signs every answer with ``signPubKeyCert``, posts back-end notifications to ``backUrl`` and
resends them until HTTP 200, 1, 2, 4 and 8 minutes apart (unconfirmed) times
``time_factor``. Settlement files follow the stand-in format of ``adapters.unionpay.bill``.

Run alone: ``python -m simulators.payments.unionpay --port 8703`` (``main(argv)``).
"""

from __future__ import annotations

import asyncio
import base64
import io
import secrets
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from adapters.payments.money import fen_to_yuan, mask_card, parse_fen
from adapters.payments.signing import (
    certificate_pem,
    issue_certificate,
    load_certificate,
    new_private_key,
    private_pem,
)
from adapters.unionpay import crypto
from simulators.payments.core import (
    Served,
    SimError,
    SimServer,
    china_now,
    command_line,
    drop_connection,
    run_until_interrupted,
    serve_until_cancelled,
    write_key_files,
)

RETRY_SCHEDULE = [60, 120, 240, 480]
FEE_RATE = Decimal("0.0055")
TEST_CARD = "6216261000000000018"
SIGNER_CN = "CFCA@中国银联股份有限公司@00040000:SIGN@sim"


@dataclass
class Txn:
    order_id: str
    txn_time: str
    txn_type: str  # "01" consume, "04" refund
    amount: int
    back_url: str
    status: str = "05"  # origRespCode: 05 processing, 00 success, else failed
    query_id: str = ""
    orig_qry_id: str = ""
    trace_time: str = ""
    refunds: list[str] = field(default_factory=list)


@dataclass
class Entry:
    day: str
    txn: Txn
    fee: int


class UnionPaySimulator(Served):
    def __init__(self, *, mer_id: str = "777290058110048",
                 merchant_certificate: x509.Certificate | None = None,
                 time_factor: float = 1.0, refund_delay: float = 2.0) -> None:
        self.mer_id = mer_id
        self.root_key = new_private_key()
        self.root_cert = issue_certificate(self.root_key, "China UnionPay Test Root (sim)",
                                           ca=True, days=3650)
        self.sign_key = new_private_key()
        self.sign_cert = issue_certificate(self.sign_key, SIGNER_CN, issuer_key=self.root_key,
                                           issuer=self.root_cert)
        self.demo_merchant_key = None
        if merchant_certificate is None:
            self.demo_merchant_key = new_private_key()
            merchant_certificate = issue_certificate(self.demo_merchant_key, "sim merchant")
        self.merchant_cert = merchant_certificate
        self.refund_delay = refund_delay
        self.txns: dict[str, Txn] = {}
        self.by_query_id: dict[str, Txn] = {}
        self.ledger: list[Entry] = []
        self.counts = {"consume_calls": 0, "orders_created": 0, "charges": 0,
                       "refunds_created": 0, "query_calls": 0, "refused_signatures": 0}
        self.server = SimServer.for_gateway(
            "unionpay", self, schedule=RETRY_SCHEDULE, time_factor=time_factor,
            accepted=lambda status, body: status == 200)
        self.faults, self.notifier = self.server.faults, self.server.notifier
        r = self.server.app.router
        r.add_post("/gateway/api/backTransReq.do", self._back_trans)
        r.add_post("/gateway/api/queryTrans.do", self._query)
        r.add_post("/fileTransRequest.do", self._file)

    def write_keys(self, directory: Path) -> dict[str, Path]:
        contents = {"root_certificate": ("unionpay_root.pem", certificate_pem(self.root_cert))}
        if self.demo_merchant_key is not None:
            contents["merchant_private_key"] = ("unionpay_merchant.pem",
                                                private_pem(self.demo_merchant_key))
            contents["merchant_certificate"] = ("unionpay_merchant_cert.pem",
                                                certificate_pem(self.merchant_cert))
        return write_key_files(directory, contents)

    # -- the wire --------------------------------------------------------------------------

    def _signed(self, fields: dict[str, str], *, key: Any = None,
                cert: x509.Certificate | None = None) -> dict[str, str]:
        fields = dict(fields, version="5.1.0", encoding="UTF-8", signMethod="01",
                      signPubKeyCert=certificate_pem(cert or self.sign_cert))
        fields["signature"] = crypto.sign_fields(key or self.sign_key, fields)
        return fields

    def _answer(self, request: dict[str, str], **values: str) -> web.Response:
        names = ("txnType", "txnSubType", "bizType", "accessType", "merId", "orderId", "txnTime")
        echo: dict[str, str] = {k: request[k] for k in names if k in request}
        body = urlencode(self._signed(dict(echo, **values)))
        return web.Response(text=body, content_type="application/x-www-form-urlencoded")

    async def _read(self, request: web.Request) -> tuple[dict[str, str], web.Response | None]:
        fields = dict(parse_qsl((await request.read()).decode("utf-8"), keep_blank_values=True))
        key = self.merchant_cert.public_key()
        if (fields.get("merId") != self.mer_id
                or fields.get("certId") != crypto.cert_id(self.merchant_cert)
                or not isinstance(key, rsa.RSAPublicKey)
                or not crypto.verify_fields(key, fields)):
            self.counts["refused_signatures"] += 1
            return fields, self._answer(fields, respCode="11", respMsg="验证签名失败")

        async def unavailable() -> web.Response:
            return web.Response(status=503, text="busy")

        return fields, await self.server.guard(unavailable)

    # -- consume, refund -------------------------------------------------------------------

    async def _back_trans(self, request: web.Request) -> web.Response:
        fields, refused = await self._read(request)
        if refused is not None:
            return refused
        try:
            amount = parse_fen(fields["txnAmt"])
            if fields["txnType"] == "01" and fields.get("txnSubType") == "07":
                return self._consume(request, fields, amount)
            if fields["txnType"] == "04":
                return self._refund(request, fields, amount)
        except (KeyError, ValueError):
            pass
        return self._answer(fields, respCode="30", respMsg="报文格式错误")

    def _consume(self, request: web.Request, fields: dict[str, str],
                 amount: int) -> web.Response:
        self.counts["consume_calls"] += 1
        order_id = fields["orderId"]
        txn = self.txns.get(order_id)
        if txn is None:
            if amount <= 0:
                return self._answer(fields, respCode="30", respMsg="金额错误")
            txn = Txn(order_id, fields["txnTime"], "01", amount, fields.get("backUrl", ""))
            self.txns[order_id] = txn
            self.counts["orders_created"] += 1
        elif txn.txn_time != fields["txnTime"] or txn.amount != amount:
            return self._answer(fields, respCode="12", respMsg="重复交易")
        if self.faults.take_drop():
            return drop_connection(request)
        return self._answer(fields, respCode="00", respMsg="成功[0000000]",
                            qrCode=f"https://qr.95516.com/00010000/sim{order_id}")

    def _refund(self, request: web.Request, fields: dict[str, str], amount: int) -> web.Response:
        orig = self.by_query_id.get(fields.get("origQryId", ""))
        existing = self.txns.get(fields["orderId"])
        if existing is not None:
            if existing.txn_type != "04" or existing.amount != amount:
                return self._answer(fields, respCode="12", respMsg="重复交易")
        else:
            if orig is None or orig.status != "00":
                return self._answer(fields, respCode="35", respMsg="原交易不存在或状态不正确")
            taken = sum(self.txns[r].amount for r in orig.refunds)
            if amount <= 0 or taken + amount > orig.amount:
                return self._answer(fields, respCode="30", respMsg="退货金额超限")
            existing = Txn(fields["orderId"], fields["txnTime"], "04", amount,
                           fields.get("backUrl", ""), orig_qry_id=orig.query_id,
                           query_id=_query_id())
            self.txns[existing.order_id] = existing
            orig.refunds.append(existing.order_id)
            self.counts["refunds_created"] += 1
            asyncio.get_running_loop().call_later(
                self.refund_delay * self.notifier.time_factor, self._refund_done, existing)
        if self.faults.take_drop():
            return drop_connection(request)
        return self._answer(fields, respCode="00", respMsg="成功[0000000]",
                            txnAmt=str(amount), queryId=existing.query_id)

    def _refund_done(self, txn: Txn) -> None:
        txn.status = "00"
        txn.trace_time = china_now().strftime("%m%d%H%M%S")
        self._book(txn)
        self.notifier.send(txn.back_url, order=self.by_query_id[txn.orig_qry_id].order_id,
                           kind="refund", build=self._notification(txn))

    async def pay_action(self, data: dict[str, Any]) -> dict[str, Any]:
        """The cardholder scans the QR code and pays with a card."""
        txn = self.txns.get(str(data.get("out_trade_no", "")))
        if txn is None or txn.txn_type != "01":
            raise SimError("no such order", 404)
        if txn.status != "05":
            raise SimError("order is not waiting for payment", 409)
        txn.status = "00"
        txn.query_id = _query_id()
        txn.trace_time = china_now().strftime("%m%d%H%M%S")
        self.by_query_id[txn.query_id] = txn
        self.counts["charges"] += 1
        self._book(txn)
        self.notifier.send(txn.back_url, order=txn.order_id, kind="payment",
                           build=self._notification(txn))
        return {"out_trade_no": txn.order_id, "query_id": txn.query_id}

    # -- query -----------------------------------------------------------------------------

    async def _query(self, request: web.Request) -> web.Response:
        fields, refused = await self._read(request)
        if refused is not None:
            return refused
        self.counts["query_calls"] += 1
        txn = self.txns.get(fields.get("orderId", ""))
        if txn is None or txn.txn_time != fields.get("txnTime"):
            return self._answer(fields, respCode="34", respMsg="查无此交易")
        values = {"respCode": "00", "respMsg": "成功[0000000]", "origRespCode": txn.status,
                  "origRespMsg": "成功" if txn.status == "00" else "处理中",
                  "txnAmt": str(txn.amount), "queryId": txn.query_id,
                  "traceTime": txn.trace_time}
        if txn.orig_qry_id:
            values["origQryId"] = txn.orig_qry_id
        return self._answer(fields, **values)

    # -- notifications ---------------------------------------------------------------------

    def _notice_fields(self, txn: Txn) -> dict[str, str]:
        fields = {"txnType": txn.txn_type, "txnSubType": "00", "bizType": "000000",
                  "accessType": "0", "merId": self.mer_id, "orderId": txn.order_id,
                  "txnTime": txn.txn_time, "txnAmt": str(txn.amount), "currencyCode": "156",
                  "queryId": txn.query_id, "respCode": "00", "respMsg": "Success!",
                  "traceTime": txn.trace_time, "settleDate": china_now().strftime("%m%d"),
                  "accNo": TEST_CARD}
        if txn.orig_qry_id:
            fields["origQryId"] = txn.orig_qry_id
        return fields

    def _notification(self, txn: Txn, *, key: Any = None,
                      cert: x509.Certificate | None = None,
                      overrides: dict[str, str] | None = None) -> Any:
        body = urlencode(self._signed(dict(self._notice_fields(txn), **(overrides or {})),
                                      key=key, cert=cert)).encode("ascii")

        def build() -> tuple[bytes, dict[str, str]]:
            return body, {"Content-Type": "application/x-www-form-urlencoded;charset=UTF-8"}

        return build

    async def crafted_notification(self, data: dict[str, Any]) -> dict[str, Any]:
        """One notification built from ``data``: ``url``, ``out_trade_no``, ``amount`` (fen),
        ``forge`` (signed by a key the certificate does not match), ``untrusted`` (a
        self-issued certificate), ``mer_id``, ``kind`` (payment | refund),
        ``out_refund_no``."""
        no = str(data.get("out_trade_no", ""))
        txn = self.txns.get(no) or Txn(no, "20240101000000", "01", 1, "")
        overrides = {"txnAmt": str(int(data.get("amount", txn.amount))),
                     "merId": str(data.get("mer_id", self.mer_id)),
                     "queryId": txn.query_id or _query_id()}
        if data.get("kind") == "refund":
            overrides.update(txnType="04", orderId=str(data.get("out_refund_no", "")),
                             origQryId=txn.query_id)
        key, cert = None, None
        if data.get("forge"):
            key = new_private_key()
        if data.get("untrusted"):
            key = new_private_key()
            cert = issue_certificate(key, SIGNER_CN)
        build = self._notification(txn, key=key, cert=cert, overrides=overrides)
        body, headers = build()
        status, answer = await self.notifier.post(str(data["url"]), body, headers)
        return {"status": status, "body": answer.decode("utf-8", "replace")}

    # -- settlement files ------------------------------------------------------------------

    def _book(self, txn: Txn) -> None:
        fee = 0 if txn.txn_type == "04" else int(
            (Decimal(txn.amount) * FEE_RATE).quantize(Decimal(1), ROUND_HALF_UP))
        self.ledger.append(Entry(china_now().date().isoformat(), txn, fee))

    def settlement_text(self, day: str) -> str:
        entries = [e for e in self.ledger if e.day == day]
        lines = [f"H|{self.mer_id}|{day.replace('-', '')}|{len(entries)}"]
        for e in entries:
            t = e.txn
            lines.append(f"D|{t.txn_type}|{t.order_id}|{t.query_id}|{t.orig_qry_id}|"
                         f"{t.txn_time}|{t.amount}|{e.fee}|{mask_card(TEST_CARD)}")
        totals = self._totals(entries)
        lines.append(f"T|{totals[0]}|{totals[1]}|{totals[2]}|{totals[3]}|{totals[4]}")
        return "\n".join(lines) + "\n"

    @staticmethod
    def _totals(entries: list[Entry]) -> tuple[int, int, int, int, int]:
        consumes = [e for e in entries if e.txn.txn_type == "01"]
        refunds = [e for e in entries if e.txn.txn_type == "04"]
        return (len(consumes), sum(e.txn.amount for e in consumes), len(refunds),
                sum(e.txn.amount for e in refunds), sum(e.fee for e in entries))

    def bill_totals(self, day: Any) -> dict[str, Any]:
        entries = [e for e in self.ledger if e.day == day.isoformat()]
        consumes, paid, refunds, refunded, fees = self._totals(entries)
        return {"lines": consumes + refunds, "paid": str(fen_to_yuan(paid)),
                "refunded": str(fen_to_yuan(refunded)), "fees": str(fen_to_yuan(fees))}

    async def _file(self, request: web.Request) -> web.Response:
        fields, refused = await self._read(request)
        if refused is not None:
            return refused
        if fields.get("txnType") != "76" or len(fields.get("settleDate", "")) != 4:
            return self._answer(fields, respCode="30", respMsg="报文格式错误")
        today = china_now().date()
        month, day_of_month = int(fields["settleDate"][:2]), int(fields["settleDate"][2:])
        day = today.replace(month=month, day=day_of_month)
        if day > today:
            day = day.replace(year=day.year - 1)
        name = f"INN{day.strftime('%y%m%d')}88ZM_{self.mer_id}"
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(name, self.settlement_text(day.isoformat()).encode("utf-8"))
        content = base64.b64encode(zlib.compress(buffer.getvalue())).decode("ascii")
        return self._answer(fields, respCode="00", respMsg="成功[0000000]",
                            fileName=name + ".zip", fileContent=content,
                            settleDate=fields["settleDate"])

    # -- control ---------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        refunds = [t for t in self.txns.values() if t.txn_type == "04"]
        return dict(self.counts, orders=sum(t.txn_type == "01" for t in self.txns.values()),
                    refunded_fen=sum(t.amount for t in refunds if t.status == "00"))

    def public_material(self) -> dict[str, Any]:
        return {"mer_id": self.mer_id, "root_certificate": certificate_pem(self.root_cert),
                "signer_name": "中国银联股份有限公司"}


def _query_id() -> str:
    return china_now().strftime("%m%d%H%M%S") + f"{secrets.randbelow(10**11):011d}"


async def serve(host: str = "127.0.0.1", port: int = 8703, *, keys_dir: Path | None = None,
                time_factor: float = 1.0, merchant_certificate_pem: str | None = None) -> None:
    sim = UnionPaySimulator(
        merchant_certificate=load_certificate(merchant_certificate_pem)
        if merchant_certificate_pem else None, time_factor=time_factor)
    await serve_until_cancelled(sim, host, port, keys_dir)


def main(argv: Sequence[str] | None = None) -> None:
    """``hisbridge simulate unionpay``."""
    parser = command_line("unionpay", port=8703)
    parser.add_argument("--merchant-certificate", type=Path)
    args = parser.parse_args(argv)
    pem = args.merchant_certificate.read_text() if args.merchant_certificate else None
    run_until_interrupted(serve(args.host, args.port, keys_dir=args.keys_dir,
                                time_factor=args.time_factor, merchant_certificate_pem=pem))


if __name__ == "__main__":
    main()
