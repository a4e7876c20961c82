"""An Alipay OpenAPI (gateway v2) simulator with its own RSA2 key.

At start it generates the "Alipay" RSA 2048 key pair (its public key is what the app is
configured with). It verifies each request's RSA2 signature with the app's public key, signs
every answer over the raw ``<method>_response`` text, sends ``trade_status_sync`` notifies
for payments and refunds and retries them on Alipay's schedule (4 min, 10 min, 10 min, 1 h,
2 h, 6 h, 15 h) times ``time_factor`` until it reads ``success``. Bills are zips of GBK CSV.

Methods: ``alipay.trade.precreate``, ``.pay`` (barcode: charges at once), ``.query``,
``.close``, ``.refund`` (synchronous), ``.fastpay.refund.query``,
``alipay.data.dataservice.bill.downloadurl.query``.

Run alone: ``python -m simulators.payments.alipay --port 8702`` (``main(argv)``).
"""

from __future__ import annotations

import csv
import io
import json
import re
import secrets
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from adapters.alipay import crypto
from adapters.alipay.bill import DETAIL_COLUMNS
from adapters.payments.money import AmountError, fen_to_yuan, format_yuan, yuan_to_fen
from adapters.payments.signing import load_public_key, new_private_key, private_pem, public_pem
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

RETRY_SCHEDULE = [240, 600, 600, 3600, 7200, 21600, 54000]
FEE_RATE = Decimal("0.006")
_AUTH_CODE = re.compile(r"^(2[5-9]|30)\d{14,22}$")


@dataclass
class Trade:
    out_trade_no: str
    amount: int
    subject: str
    notify_url: str
    status: str = "WAIT_BUYER_PAY"
    trade_no: str = ""
    gmt_create: str = ""
    gmt_payment: str = ""
    refunds: dict[str, int] = field(default_factory=dict)


@dataclass
class Entry:
    at: str
    day: str
    trade: Trade
    refund_no: str = ""
    refund: int = 0


def _now() -> str:
    return china_now().strftime("%Y-%m-%d %H:%M:%S")


class AlipaySimulator(Served):
    def __init__(self, *, app_id: str = "2021000000000001", seller_id: str = "2088000000000001",
                 app_public_key: rsa.RSAPublicKey | None = None,
                 time_factor: float = 1.0) -> None:
        self.app_id = app_id
        self.seller_id = seller_id
        self.alipay_key = new_private_key()
        self.demo_app_key: rsa.RSAPrivateKey | None = None
        if app_public_key is None:
            self.demo_app_key = new_private_key()
            app_public_key = self.demo_app_key.public_key()
        self.app_public_key = app_public_key
        self.trades: dict[str, Trade] = {}
        self.ledger: list[Entry] = []
        self.counts = {"calls": 0, "orders_created": 0, "charges": 0, "refunds_created": 0,
                       "query_calls": 0, "refused_signatures": 0}
        self.server = SimServer.for_gateway(
            "alipay", self, schedule=RETRY_SCHEDULE, time_factor=time_factor,
            accepted=lambda status, body: body.strip() == b"success")
        self.faults, self.notifier = self.server.faults, self.server.notifier
        self._bills: dict[str, str] = {}
        self.server.app.router.add_post("/gateway.do", self._gateway)
        self.server.app.router.add_get("/bill/download", self._download)

    @property
    def gateway_url(self) -> str:
        return self.url + "/gateway.do"

    def write_keys(self, directory: Path) -> dict[str, Path]:
        contents = {"alipay_public_key": ("alipay_public.pem",
                                          public_pem(self.alipay_key.public_key()))}
        if self.demo_app_key is not None:
            contents["app_private_key"] = ("alipay_app_private.pem",
                                           private_pem(self.demo_app_key))
        return write_key_files(directory, contents)

    # -- the wire --------------------------------------------------------------------------

    def _answer(self, method: str, payload: dict[str, Any]) -> web.Response:
        node = crypto.response_node_name(method)
        # ensure_ascii=False and spaced separators: the signed text is not what a compact
        # re-serialisation would give, so a client must verify the raw text.
        text = json.dumps(payload, ensure_ascii=False)
        sign = crypto.sign_response(self.alipay_key, text)
        body = '{"' + node + '":' + text + ',"sign":"' + sign + '"}'
        return web.Response(text=body, content_type="application/json", charset="utf-8")

    def _fail(self, method: str, code: str, sub_code: str, sub_msg: str) -> web.Response:
        msgs = {"40004": "Business Failed", "40002": "Invalid Arguments",
                "20000": "Service Currently Unavailable"}
        return self._answer(method, {"code": code, "msg": msgs.get(code, "Failed"),
                                     "sub_code": sub_code, "sub_msg": sub_msg})

    async def _gateway(self, request: web.Request) -> web.Response:
        self.counts["calls"] += 1
        params = dict(parse_qsl((await request.read()).decode("utf-8"), keep_blank_values=True))
        method = params.get("method", "")
        if (params.get("app_id") != self.app_id or params.get("sign_type") != "RSA2"
                or not crypto.verify_response(self.app_public_key,
                                              crypto.sign_content(params),
                                              params.get("sign", ""))):
            self.counts["refused_signatures"] += 1
            return self._fail(method, "40002", "isv.invalid-signature", "验签出错")

        async def unavailable() -> web.Response:
            return self._fail(method, "20000", "isp.unknow-error", "系统繁忙")

        blocked = await self.server.guard(unavailable)
        if blocked is not None:
            return blocked
        try:
            biz = json.loads(params.get("biz_content", "{}"))
            handler = _METHODS[method]
        except (ValueError, KeyError):
            return self._fail(method, "40002", "isv.invalid-parameter", "参数无效")
        try:
            return await handler(self, request, method, biz, params)
        except (KeyError, TypeError, AmountError):
            return self._fail(method, "40002", "isv.invalid-parameter", "参数无效")

    # -- trades ----------------------------------------------------------------------------

    def _open(self, biz: dict[str, Any], params: dict[str, str]) -> Trade | web.Response | str:
        no, amount = str(biz["out_trade_no"]), yuan_to_fen(str(biz["total_amount"]))
        trade = self.trades.get(no)
        if trade is not None:
            if trade.status != "WAIT_BUYER_PAY":
                return "ACQ.TRADE_HAS_SUCCESS" if trade.trade_no else "ACQ.TRADE_HAS_CLOSE"
            if trade.amount != amount:
                return "ACQ.CONTEXT_INCONSISTENT"
            return trade
        trade = Trade(no, amount, str(biz.get("subject", "")), params.get("notify_url", ""),
                      gmt_create=_now())
        self.trades[no] = trade
        self.counts["orders_created"] += 1
        return trade

    async def _precreate(self, request: web.Request, method: str, biz: dict[str, Any],
                         params: dict[str, str]) -> web.Response:
        trade = self._open(biz, params)
        if isinstance(trade, str):
            return self._fail(method, "40004", trade, "交易状态不符")
        assert isinstance(trade, Trade)
        if self.faults.take_drop():
            return drop_connection(request)
        return self._answer(method, {"code": "10000", "msg": "Success",
                                     "out_trade_no": trade.out_trade_no,
                                     "qr_code": f"https://qr.alipay.com/sim{trade.out_trade_no}"})

    async def _pay(self, request: web.Request, method: str, biz: dict[str, Any],
                   params: dict[str, str]) -> web.Response:
        if not _AUTH_CODE.match(str(biz.get("auth_code", ""))):
            return self._fail(method, "40004", "ACQ.PAYMENT_AUTH_CODE_INVALID", "付款码无效")
        trade = self._open(biz, params)
        if isinstance(trade, str):
            return self._fail(method, "40004", trade, "交易状态不符")
        assert isinstance(trade, Trade)
        self._charge(trade)
        if self.faults.take_drop():
            return drop_connection(request)
        return self._answer(method, {
            "code": "10000", "msg": "Success", "trade_no": trade.trade_no,
            "out_trade_no": trade.out_trade_no, "buyer_logon_id": "sim***@example.com",
            "total_amount": format_yuan(trade.amount), "receipt_amount": format_yuan(trade.amount),
            "gmt_payment": trade.gmt_payment,
            "fund_bill_list": [{"fund_channel": "ALIPAYACCOUNT",
                                "amount": format_yuan(trade.amount)}]})

    def _charge(self, trade: Trade) -> None:
        trade.status = "TRADE_SUCCESS"
        trade.trade_no = china_now().strftime("%Y%m%d") + "2200" + secrets.token_hex(8)[:16]
        trade.gmt_payment = _now()
        self.counts["charges"] += 1
        self._book(trade)
        self.notifier.send(trade.notify_url, order=trade.out_trade_no, kind="payment",
                           build=self._notify(self._trade_fields(trade)))

    async def pay_action(self, data: dict[str, Any]) -> dict[str, Any]:
        """The payer scans the QR code and pays."""
        trade = self.trades.get(str(data.get("out_trade_no", "")))
        if trade is None:
            raise SimError("no such trade", 404)
        if trade.status != "WAIT_BUYER_PAY":
            raise SimError(f"trade is {trade.status}", 409)
        self._charge(trade)
        return {"out_trade_no": trade.out_trade_no, "trade_no": trade.trade_no}

    async def _query(self, request: web.Request, method: str, biz: dict[str, Any],
                     params: dict[str, str]) -> web.Response:
        self.counts["query_calls"] += 1
        trade = self.trades.get(str(biz["out_trade_no"]))
        if trade is None:
            return self._fail(method, "40004", "ACQ.TRADE_NOT_EXIST", "交易不存在")
        data = {"code": "10000", "msg": "Success", "out_trade_no": trade.out_trade_no,
                "trade_status": trade.status, "total_amount": format_yuan(trade.amount)}
        if trade.trade_no:
            data.update(trade_no=trade.trade_no, send_pay_date=trade.gmt_payment,
                        buyer_logon_id="sim***@example.com")
        return self._answer(method, data)

    async def _close(self, request: web.Request, method: str, biz: dict[str, Any],
                     params: dict[str, str]) -> web.Response:
        trade = self.trades.get(str(biz["out_trade_no"]))
        if trade is None:
            return self._fail(method, "40004", "ACQ.TRADE_NOT_EXIST", "交易不存在")
        if trade.status != "WAIT_BUYER_PAY":
            return self._fail(method, "40004", "ACQ.TRADE_STATUS_ERROR", "交易状态不合法")
        trade.status = "TRADE_CLOSED"
        return self._answer(method, {"code": "10000", "msg": "Success",
                                     "out_trade_no": trade.out_trade_no})

    # -- refunds ---------------------------------------------------------------------------

    async def _refund(self, request: web.Request, method: str, biz: dict[str, Any],
                      params: dict[str, str]) -> web.Response:
        trade = self.trades.get(str(biz["out_trade_no"]))
        if trade is None:
            return self._fail(method, "40004", "ACQ.TRADE_NOT_EXIST", "交易不存在")
        no = str(biz.get("out_request_no") or trade.out_trade_no)
        amount = yuan_to_fen(str(biz["refund_amount"]))
        change = "N"
        if no not in trade.refunds:
            if trade.status not in ("TRADE_SUCCESS", "TRADE_CLOSED") or not trade.trade_no:
                return self._fail(method, "40004", "ACQ.TRADE_STATUS_ERROR", "交易状态不合法")
            if amount <= 0 or sum(trade.refunds.values()) + amount > trade.amount:
                return self._fail(method, "40004", "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL",
                                  "退款金额超限")
            trade.refunds[no] = amount
            if sum(trade.refunds.values()) == trade.amount:
                trade.status = "TRADE_CLOSED"
            change = "Y"
            self.counts["refunds_created"] += 1
            self._book(trade, no, amount)
            fields = dict(self._trade_fields(trade), out_biz_no=no,
                          refund_fee=format_yuan(sum(trade.refunds.values())),
                          gmt_refund=_now() + ".000")
            self.notifier.send(trade.notify_url, order=trade.out_trade_no, kind="refund",
                               build=self._notify(fields))
        if self.faults.take_drop():
            return drop_connection(request)
        return self._answer(method, {
            "code": "10000", "msg": "Success", "trade_no": trade.trade_no,
            "out_trade_no": trade.out_trade_no, "buyer_logon_id": "sim***@example.com",
            "fund_change": change, "refund_fee": format_yuan(sum(trade.refunds.values())),
            "gmt_refund_pay": _now()})

    async def _refund_query(self, request: web.Request, method: str, biz: dict[str, Any],
                            params: dict[str, str]) -> web.Response:
        trade = self.trades.get(str(biz["out_trade_no"]))
        if trade is None:
            return self._fail(method, "40004", "ACQ.TRADE_NOT_EXIST", "交易不存在")
        no = str(biz.get("out_request_no", ""))
        data: dict[str, Any] = {"code": "10000", "msg": "Success"}
        if no in trade.refunds:  # unknown refunds answer 10000 with no refund fields
            data.update(out_trade_no=trade.out_trade_no, trade_no=trade.trade_no,
                        out_request_no=no, total_amount=format_yuan(trade.amount),
                        refund_amount=format_yuan(trade.refunds[no]),
                        refund_status="REFUND_SUCCESS")
        return self._answer(method, data)

    # -- notifies --------------------------------------------------------------------------

    def _trade_fields(self, trade: Trade) -> dict[str, str]:
        return {
            "app_id": self.app_id, "auth_app_id": self.app_id, "seller_id": self.seller_id,
            "trade_no": trade.trade_no, "out_trade_no": trade.out_trade_no,
            "trade_status": trade.status, "total_amount": format_yuan(trade.amount),
            "receipt_amount": format_yuan(trade.amount), "subject": trade.subject,
            "buyer_id": "2088102177846880", "buyer_logon_id": "sim***@example.com",
            "gmt_create": trade.gmt_create, "gmt_payment": trade.gmt_payment,
        }

    def _notify(self, fields: dict[str, str], *,
                key: rsa.RSAPrivateKey | None = None) -> Any:
        params = dict(fields, notify_time=_now(), notify_type="trade_status_sync",
                      notify_id=secrets.token_hex(16), charset="utf-8", version="1.0",
                      sign_type="RSA2")
        params["sign"] = crypto.sign_response(key or self.alipay_key,
                                              crypto.notify_content(params))
        body = urlencode(params).encode("ascii")

        def build() -> tuple[bytes, dict[str, str]]:
            return body, {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}

        return build

    async def crafted_notification(self, data: dict[str, Any]) -> dict[str, Any]:
        """One notify built from ``data``: ``url``, ``out_trade_no``, ``amount`` (fen),
        ``kind`` (payment | refund), ``out_refund_no``, ``refund_total`` (fen), ``forge``,
        ``app_id``."""
        no = str(data.get("out_trade_no", ""))
        trade = self.trades.get(no) or Trade(no, 1, "crafted", "", trade_no="2024sim")
        fields = dict(self._trade_fields(trade), trade_status="TRADE_SUCCESS",
                      app_id=str(data.get("app_id", self.app_id)),
                      total_amount=format_yuan(int(data.get("amount", trade.amount))))
        if data.get("kind") == "refund":
            fields.update(out_biz_no=str(data.get("out_refund_no", "")),
                          refund_fee=format_yuan(int(data.get("refund_total", 1))),
                          gmt_refund=_now())
        build = self._notify(fields, key=new_private_key() if data.get("forge") else None)
        body, headers = build()
        status, answer = await self.notifier.post(str(data["url"]), body, headers)
        return {"status": status, "body": answer.decode("utf-8", "replace")}

    # -- bills -----------------------------------------------------------------------------

    def _book(self, trade: Trade, refund_no: str = "", refund: int = 0) -> None:
        now = china_now()
        self.ledger.append(Entry(now.strftime("%Y-%m-%d %H:%M:%S"), now.date().isoformat(),
                                 trade, refund_no, refund))

    def _rows(self, day: str) -> list[tuple[list[str], str, Decimal, Decimal]]:
        rows = []
        for e in self.ledger:
            if e.day != day:
                continue
            t = e.trade
            received = -fen_to_yuan(e.refund) if e.refund_no else fen_to_yuan(t.amount)
            fee = (-received * FEE_RATE).quantize(Decimal("0.01"), ROUND_HALF_UP)
            kind = "退款" if e.refund_no else "交易"
            cells = [t.trade_no + "\t", t.out_trade_no + "\t", kind, t.subject, t.gmt_create,
                     e.at, "", "", "", "", "sim***@example.com", f"{fen_to_yuan(t.amount)}",
                     f"{received}", "0.00", "0.00", "0.00", "0.00", "0.00", "", "0.00", "0.00",
                     e.refund_no, f"{fee}", "0.00", ""]
            rows.append((cells, kind, received, fee))
        return rows

    def bill_zip(self, day: str) -> bytes:
        rows = self._rows(day)
        out = io.StringIO()
        out.write("#支付宝业务明细查询\n")
        out.write(f"#账号：[{self.seller_id}0156]\n")
        out.write(f"#起始日期：[{day} 00:00:00]   终止日期：[{day} 23:59:59]\n")
        out.write("#-----------------------------------------业务明细列表"
                  "----------------------------------------\n")
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(DETAIL_COLUMNS)
        for cells, *_ in rows:
            writer.writerow(cells)
        out.write("#-----------------------------------------业务明细列表结束"
                  "------------------------------------\n")
        for kind in ("交易", "退款"):
            mine = [r for r in rows if r[1] == kind]
            total = sum((r[2] for r in mine), Decimal("0.00"))
            out.write(f"#{kind}合计：{len(mine)}笔，商家实收：{total}元，商家优惠：0.00元\n")
        out.write(f"#导出时间：[{_now()}]\n")
        buffer = io.BytesIO()
        stem = f"{self.seller_id}0156_{day.replace('-', '')}"
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(f"{stem}_业务明细.csv", out.getvalue().encode("gbk"))
            archive.writestr(f"{stem}_业务明细(汇总).csv",
                             f"#支付宝业务汇总查询\n门店编号,门店名称,交易订单总笔数\n,,{len(rows)}\n"
                             .encode("gbk"))
        return buffer.getvalue()

    def bill_totals(self, day: Any) -> dict[str, Any]:
        rows = self._rows(day.isoformat())
        return {"lines": len(rows),
                "paid": str(sum((r[2] for r in rows if r[1] == "交易"), Decimal("0.00"))),
                "refunded": str(-sum((r[2] for r in rows if r[1] == "退款"), Decimal("0.00"))),
                "fees": str(sum((r[3] for r in rows), Decimal("0.00")))}

    async def _bill_url(self, request: web.Request, method: str, biz: dict[str, Any],
                        params: dict[str, str]) -> web.Response:
        if biz.get("bill_type") != "trade" or len(str(biz.get("bill_date", ""))) != 10:
            return self._fail(method, "40004", "isp.bill_not_exist", "账单不存在")
        token = secrets.token_urlsafe(16)
        self._bills[token] = str(biz["bill_date"])
        return self._answer(method, {"code": "10000", "msg": "Success",
                                     "bill_download_url": f"{self.url}/bill/download?t={token}"})

    async def _download(self, request: web.Request) -> web.Response:
        day = self._bills.get(request.query.get("t", ""))
        if day is None:
            raise web.HTTPNotFound()
        return web.Response(body=self.bill_zip(day), content_type="application/zip")

    # -- control ---------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return dict(self.counts, orders=len(self.trades),
                    refunded_fen=sum(sum(t.refunds.values()) for t in self.trades.values()))

    def public_material(self) -> dict[str, Any]:
        return {"app_id": self.app_id, "seller_id": self.seller_id,
                "alipay_public_key": public_pem(self.alipay_key.public_key())}


_METHODS = {
    "alipay.trade.precreate": AlipaySimulator._precreate,
    "alipay.trade.pay": AlipaySimulator._pay,
    "alipay.trade.query": AlipaySimulator._query,
    "alipay.trade.close": AlipaySimulator._close,
    "alipay.trade.refund": AlipaySimulator._refund,
    "alipay.trade.fastpay.refund.query": AlipaySimulator._refund_query,
    "alipay.data.dataservice.bill.downloadurl.query": AlipaySimulator._bill_url,
}


async def serve(host: str = "127.0.0.1", port: int = 8702, *, keys_dir: Path | None = None,
                time_factor: float = 1.0, app_public_key_pem: str | None = None) -> None:
    sim = AlipaySimulator(app_public_key=load_public_key(app_public_key_pem)
                          if app_public_key_pem else None, time_factor=time_factor)
    await serve_until_cancelled(sim, host, port, keys_dir)


def main(argv: Sequence[str] | None = None) -> None:
    """``hisbridge simulate alipay``."""
    parser = command_line("alipay", port=8702)
    parser.add_argument("--app-public-key", type=Path)
    args = parser.parse_args(argv)
    pem = args.app_public_key.read_text() if args.app_public_key else None
    run_until_interrupted(serve(args.host, args.port, keys_dir=args.keys_dir,
                                time_factor=args.time_factor, app_public_key_pem=pem))


if __name__ == "__main__":
    main()
