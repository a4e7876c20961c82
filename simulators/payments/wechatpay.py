"""A WeChat Pay API v3 simulator: a real protocol peer with its own platform key.

At start it generates an RSA 2048 platform key and a self-signed platform certificate (its
serial goes in ``Wechatpay-Serial``). It verifies each request's ``Authorization`` signature
with the merchant's public key, signs every answer, encrypts callbacks with the APIv3 key
(AEAD_AES_256_GCM) and retries them on WeChat Pay's schedule (15 s, 15 s, 30 s, 3 min,
10 min, 20 min, 30 min × 3, 60 min, 3 h × 3, 6 h × 2) times ``time_factor``.

Run alone: ``python -m simulators.payments.wechatpay --port 8701 --keys-dir sim-keys``
(``main(argv)``; ``serve(...)`` is the coroutine). Faults and the payer's "pay" action are
on the control endpoints described in ``simulators.payments.core``.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from adapters.payments.signing import (
    certificate_pem,
    certificate_serial_hex,
    issue_certificate,
    load_public_key,
    new_private_key,
    private_pem,
    verify_sha256,
)
from adapters.wechatpay import crypto
from simulators.payments.core import (
    Build,
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
from simulators.payments.wechatpay_bill import TradeBillBook

RETRY_SCHEDULE = [15, 15, 30, 180, 600, 1200, 1800, 1800, 1800, 3600, 10800, 10800, 10800,
                  21600, 21600]


@dataclass
class SimOrder:
    out_trade_no: str
    amount: int
    description: str
    trade_type: str
    notify_url: str
    openid: str = ""
    state: str = "NOTPAY"
    transaction_id: str = ""
    success_time: str = ""
    refunds: list[str] = field(default_factory=list)


@dataclass
class SimRefund:
    out_refund_no: str
    refund_id: str
    out_trade_no: str
    amount: int
    notify_url: str
    status: str = "PROCESSING"
    success_time: str = ""
    create_time: str = ""


def _rfc3339() -> str:
    return china_now().replace(microsecond=0).isoformat()


class WechatPaySimulator(Served):
    """The simulated gateway. ``start()`` returns its base URL."""

    def __init__(
        self,
        *,
        mchid: str = "1900000001",
        appid: str = "wxd678efh567hg6787",
        merchant_public_key: rsa.RSAPublicKey | None = None,
        apiv3_key: bytes | None = None,
        time_factor: float = 1.0,
        refund_delay: float = 2.0,
    ) -> None:
        self.mchid = mchid
        self.appid = appid
        self.platform_key = new_private_key()
        self.platform_cert = issue_certificate(self.platform_key, "Tenpay.com Root CA (sim)")
        self.serial = certificate_serial_hex(self.platform_cert)
        self.demo_merchant_key: rsa.RSAPrivateKey | None = None
        if merchant_public_key is None:
            self.demo_merchant_key = new_private_key()
            merchant_public_key = self.demo_merchant_key.public_key()
        self.merchant_public_key = merchant_public_key
        self.apiv3_key = apiv3_key or secrets.token_hex(16).encode("ascii")
        self.refund_delay = refund_delay
        self.orders: dict[str, SimOrder] = {}
        self.refunds: dict[str, SimRefund] = {}
        self.bills = TradeBillBook(appid, mchid)
        self.counts = {"create_calls": 0, "query_calls": 0, "orders_created": 0, "charges": 0,
                       "refunds_created": 0, "refused_signatures": 0}
        self.server = SimServer.for_gateway(
            "wechatpay", self, schedule=RETRY_SCHEDULE, time_factor=time_factor,
            accepted=lambda status, body: status in (200, 204))
        self.faults, self.notifier = self.server.faults, self.server.notifier
        self._tokens: dict[str, str] = {}
        r = self.server.app.router
        r.add_post("/v3/pay/transactions/{kind:native|jsapi}", self._create)
        r.add_get("/v3/pay/transactions/out-trade-no/{no}", self._query)
        r.add_post("/v3/pay/transactions/out-trade-no/{no}/close", self._close)
        r.add_post("/v3/refund/domestic/refunds", self._refund)
        r.add_get("/v3/refund/domestic/refunds/{no}", self._query_refund)
        r.add_get("/v3/bill/tradebill", self._tradebill)
        r.add_get("/v3/billdownload/file", self._download)

    def write_keys(self, directory: Path) -> dict[str, Path]:
        """Write what the merchant side needs: the platform certificate (and, for demos
        without a merchant key of their own, a generated merchant key and APIv3 key)."""
        contents = {
            "platform_certificate": ("wechatpay_platform.pem",
                                     certificate_pem(self.platform_cert)),
            "apiv3_key": ("wechatpay_apiv3.key", self.apiv3_key.decode("ascii")),
        }
        if self.demo_merchant_key is not None:
            contents["merchant_private_key"] = ("wechatpay_merchant.pem",
                                                private_pem(self.demo_merchant_key))
        return write_key_files(directory, contents)

    # -- the wire --------------------------------------------------------------------------

    def _answer(self, status: int, payload: dict[str, Any] | None) -> web.Response:
        body = orjson.dumps(payload) if payload is not None else b""
        ts, nonce = str(int(time.time())), secrets.token_hex(16)
        headers = {
            "Wechatpay-Timestamp": ts,
            "Wechatpay-Nonce": nonce,
            "Wechatpay-Serial": self.serial,
            "Wechatpay-Signature": crypto.sign_response(self.platform_key, ts, nonce, body),
            "Request-ID": uuid.uuid4().hex,
        }
        return web.Response(status=status, body=body or None, headers=headers,
                            content_type="application/json" if body else None)

    def _error(self, status: int, code: str, message: str) -> web.Response:
        return self._answer(status, {"code": code, "message": message})

    async def _system_error(self) -> web.Response:
        return self._error(500, "SYSTEM_ERROR", "系统错误")

    async def _authenticate(self, request: web.Request) -> tuple[str, web.Response | None]:
        """The request body, or an error answer when the signature does not verify."""
        body = (await request.read()).decode("utf-8")
        try:
            auth = crypto.parse_authorization(request.headers.get("Authorization", ""))
            ts = int(auth["timestamp"])
        except ValueError:
            self.counts["refused_signatures"] += 1
            return body, self._error(401, "SIGN_ERROR", "签名错误")
        message = crypto.request_message(request.method, request.raw_path, ts,
                                         auth["nonce_str"], body)
        if (auth["mchid"] != self.mchid or abs(time.time() - ts) >= crypto.MAX_SKEW_SECONDS
                or not verify_sha256(self.merchant_public_key, message.encode("utf-8"),
                                     auth["signature"])):
            self.counts["refused_signatures"] += 1
            return body, self._error(401, "SIGN_ERROR", "签名错误")
        blocked = await self.server.guard(self._system_error)
        return body, blocked

    # -- orders ----------------------------------------------------------------------------

    async def _create(self, request: web.Request) -> web.Response:
        text, refused = await self._authenticate(request)
        if refused is not None:
            return refused
        try:
            data = orjson.loads(text)
            no = str(data["out_trade_no"])
            total = data["amount"]["total"]
            kind = request.match_info["kind"]
            openid = str(data.get("payer", {}).get("openid", "")) if kind == "jsapi" else ""
            if (data["appid"] != self.appid or data["mchid"] != self.mchid
                    or not isinstance(total, int) or total <= 0 or not 6 <= len(no) <= 32
                    or (kind == "jsapi" and not openid)):
                raise ValueError
        except (ValueError, KeyError, TypeError, AttributeError):
            return self._error(400, "PARAM_ERROR", "参数错误")
        self.counts["create_calls"] += 1
        order = self.orders.get(no)
        if order is not None:
            if order.state in ("SUCCESS", "REFUND"):
                return self._error(400, "ORDERPAID", "该订单已支付")
            if order.amount != total:
                return self._error(400, "INVALID_REQUEST", "201 商户订单号重复")
        else:
            order = SimOrder(no, total, str(data.get("description", "")), kind.upper(),
                             str(data.get("notify_url", "")), openid)
            self.orders[no] = order
            self.counts["orders_created"] += 1
        if self.faults.take_drop():
            return drop_connection(request)
        if kind == "native":
            return self._answer(200, {"code_url": f"weixin://wxpay/bizpayurl?pr={no}"})
        return self._answer(200, {"prepay_id": "wx" + secrets.token_hex(16)})

    def _order_json(self, order: SimOrder) -> dict[str, Any]:
        data: dict[str, Any] = {
            "appid": self.appid, "mchid": self.mchid, "out_trade_no": order.out_trade_no,
            "trade_type": order.trade_type, "trade_state": order.state,
            "trade_state_desc": order.state,
            "amount": {"total": order.amount, "currency": "CNY"},
        }
        if order.transaction_id:
            data.update(transaction_id=order.transaction_id, success_time=order.success_time,
                        bank_type="OTHERS", payer={"openid": order.openid or "sim-openid"})
            data["amount"].update(payer_total=order.amount, payer_currency="CNY")
        return data

    async def _query(self, request: web.Request) -> web.Response:
        _, refused = await self._authenticate(request)
        if refused is not None:
            return refused
        self.counts["query_calls"] += 1
        order = self.orders.get(request.match_info["no"])
        if order is None or request.query.get("mchid") != self.mchid:
            return self._error(404, "ORDER_NOT_EXIST", "订单不存在")
        return self._answer(200, self._order_json(order))

    async def _close(self, request: web.Request) -> web.Response:
        _, refused = await self._authenticate(request)
        if refused is not None:
            return refused
        order = self.orders.get(request.match_info["no"])
        if order is None:
            return self._error(404, "ORDER_NOT_EXIST", "订单不存在")
        if order.state in ("SUCCESS", "REFUND"):
            return self._error(400, "ORDERPAID", "该订单已支付")
        order.state = "CLOSED"
        return self._answer(204, None)

    async def pay_action(self, data: dict[str, Any]) -> dict[str, Any]:
        """The payer scans and pays: one charge, then the TRANSACTION.SUCCESS callback."""
        order = self.orders.get(str(data.get("out_trade_no", "")))
        if order is None:
            raise SimError("no such order", 404)
        if order.state != "NOTPAY":
            raise SimError(f"order is {order.state}", 409)
        order.state = "SUCCESS"
        order.transaction_id = "4200" + secrets.token_hex(12)[:24]
        order.success_time = _rfc3339()
        self.counts["charges"] += 1
        self._book(order)
        self.notifier.send(order.notify_url, order=order.out_trade_no, kind="payment",
                           build=self._notification("TRANSACTION.SUCCESS", "transaction",
                                                    self._order_json(order), "支付成功"))
        return {"out_trade_no": order.out_trade_no, "transaction_id": order.transaction_id}

    # -- refunds ---------------------------------------------------------------------------

    def _refund_json(self, refund: SimRefund) -> dict[str, Any]:
        order = self.orders[refund.out_trade_no]
        return {
            "refund_id": refund.refund_id, "out_refund_no": refund.out_refund_no,
            "transaction_id": order.transaction_id, "out_trade_no": order.out_trade_no,
            "channel": "ORIGINAL", "user_received_account": "支付用户零钱",
            "status": refund.status, "create_time": refund.create_time,
            "success_time": refund.success_time or None,
            "amount": {"total": order.amount, "refund": refund.amount,
                       "payer_total": order.amount, "payer_refund": refund.amount,
                       "currency": "CNY"},
        }

    async def _refund(self, request: web.Request) -> web.Response:
        text, refused = await self._authenticate(request)
        if refused is not None:
            return refused
        try:
            data = orjson.loads(text)
            no, out_trade_no = str(data["out_refund_no"]), str(data["out_trade_no"])
            amount, total = data["amount"]["refund"], data["amount"]["total"]
            if not isinstance(amount, int) or amount <= 0 or not isinstance(total, int):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return self._error(400, "PARAM_ERROR", "参数错误")
        existing = self.refunds.get(no)
        if existing is not None:
            return self._answer(200, self._refund_json(existing))
        order = self.orders.get(out_trade_no)
        if order is None:
            return self._error(404, "RESOURCE_NOT_EXISTS", "订单不存在")
        if order.state not in ("SUCCESS", "REFUND") or total != order.amount:
            return self._error(400, "INVALID_REQUEST", "订单状态或金额不符")
        taken = sum(self.refunds[r].amount for r in order.refunds
                    if self.refunds[r].status != "CLOSED")
        if taken + amount > order.amount:
            return self._error(400, "INVALID_REQUEST", "申请退款金额超过订单可退金额")
        refund = SimRefund(no, "5030" + secrets.token_hex(12)[:24], out_trade_no, amount,
                           str(data.get("notify_url") or order.notify_url),
                           create_time=_rfc3339())
        self.refunds[no] = refund
        order.refunds.append(no)
        self.counts["refunds_created"] += 1
        loop = asyncio.get_running_loop()
        loop.call_later(self.refund_delay * self.notifier.time_factor, self._refund_done, refund)
        if self.faults.take_drop():
            return drop_connection(request)
        return self._answer(200, self._refund_json(refund))

    def _refund_done(self, refund: SimRefund) -> None:
        refund.status = "SUCCESS"
        refund.success_time = _rfc3339()
        order = self.orders[refund.out_trade_no]
        order.state = "REFUND"
        self._book(order, refund)
        plain = {k: v for k, v in self._refund_json(refund).items()
                 if k not in ("channel", "create_time")}
        plain.update(mchid=self.mchid, refund_status="SUCCESS")
        self.notifier.send(refund.notify_url, order=order.out_trade_no, kind="refund",
                           build=self._notification("REFUND.SUCCESS", "refund", plain, "退款成功"))

    async def _query_refund(self, request: web.Request) -> web.Response:
        _, refused = await self._authenticate(request)
        if refused is not None:
            return refused
        refund = self.refunds.get(request.match_info["no"])
        if refund is None:
            return self._error(404, "RESOURCE_NOT_EXISTS", "退款单不存在")
        return self._answer(200, self._refund_json(refund))

    # -- callbacks -------------------------------------------------------------------------

    def _notification(self, event_type: str, original_type: str, resource: dict[str, Any],
                      summary: str, *, apiv3_key: bytes | None = None,
                      key: rsa.RSAPrivateKey | None = None, skew: int = 0) -> Build:
        nonce = secrets.token_urlsafe(9)[:12]
        body = orjson.dumps({
            "id": str(uuid.uuid4()), "create_time": _rfc3339(),
            "resource_type": "encrypt-resource", "event_type": event_type, "summary": summary,
            "resource": {
                "original_type": original_type, "algorithm": "AEAD_AES_256_GCM",
                "ciphertext": crypto.encrypt_resource(apiv3_key or self.apiv3_key, nonce,
                                                      original_type, orjson.dumps(resource)),
                "associated_data": original_type, "nonce": nonce,
            },
        })

        def build() -> tuple[bytes, dict[str, str]]:
            ts, n = str(int(time.time()) + skew), secrets.token_hex(16)
            return body, {
                "Content-Type": "application/json",
                "Wechatpay-Timestamp": ts, "Wechatpay-Nonce": n, "Wechatpay-Serial": self.serial,
                "Wechatpay-Signature": crypto.sign_response(key or self.platform_key, ts, n,
                                                            body),
            }

        return build

    async def crafted_notification(self, data: dict[str, Any]) -> dict[str, Any]:
        """Send one callback built from ``data`` (forged, stale, wrong amount ...) once.

        Fields: ``url``, ``kind`` (payment | refund), ``out_trade_no``, ``amount`` (fen),
        ``out_refund_no``, ``refund`` (fen), ``skew`` (seconds added to the timestamp),
        ``forge`` (sign with a key that is not the platform's), ``wrong_key`` (encrypt with
        another APIv3 key), ``mchid``.
        """
        no = str(data.get("out_trade_no", ""))
        order = self.orders.get(no)
        base: dict[str, Any] = {
            "appid": self.appid, "mchid": str(data.get("mchid", self.mchid)),
            "out_trade_no": no, "transaction_id": order.transaction_id if order else "4200x",
            "trade_type": "NATIVE", "trade_state": "SUCCESS", "success_time": _rfc3339(),
            "amount": {"total": int(data.get("amount", order.amount if order else 1)),
                       "currency": "CNY"},
        }
        if data.get("kind") == "refund":
            base.update(out_refund_no=str(data.get("out_refund_no", "")), refund_id="5030x",
                        refund_status="SUCCESS")
            base["amount"]["refund"] = int(data.get("refund", 1))
            event, original = "REFUND.SUCCESS", "refund"
        else:
            event, original = "TRANSACTION.SUCCESS", "transaction"
        build = self._notification(
            event, original, base, "crafted",
            apiv3_key=secrets.token_hex(16).encode() if data.get("wrong_key") else None,
            key=new_private_key() if data.get("forge") else None,
            skew=int(data.get("skew", 0)))
        body, headers = build()
        status, answer = await self.notifier.post(str(data["url"]), body, headers)
        return {"status": status, "body": answer.decode("utf-8", "replace")}

    # -- bills -----------------------------------------------------------------------------

    def _book(self, order: SimOrder, refund: SimRefund | None = None) -> None:
        self.bills.book(transaction_id=order.transaction_id, out_trade_no=order.out_trade_no,
                        openid=order.openid, trade_type=order.trade_type,
                        description=order.description, amount_fen=order.amount,
                        refund_id=refund.refund_id if refund else "",
                        out_refund_no=refund.out_refund_no if refund else "",
                        refund_fen=refund.amount if refund else 0)

    def bill_totals(self, day: Any) -> dict[str, Any]:
        return self.bills.totals(day.isoformat())

    async def _tradebill(self, request: web.Request) -> web.Response:
        _, refused = await self._authenticate(request)
        if refused is not None:
            return refused
        day = request.query.get("bill_date", "")
        if request.query.get("bill_type", "ALL") != "ALL" or len(day) != 10:
            return self._error(400, "PARAM_ERROR", "参数错误")
        token = secrets.token_urlsafe(16)
        self._tokens[token] = day
        data = self.bills.csv(day)
        return self._answer(200, {
            "hash_type": "SHA1",
            "hash_value": hashlib.sha1(data, usedforsecurity=False).hexdigest(),
            "download_url": f"{self.url}/v3/billdownload/file?token={token}"})

    async def _download(self, request: web.Request) -> web.Response:
        _, refused = await self._authenticate(request)
        if refused is not None:
            return refused
        day = self._tokens.get(request.query.get("token", ""))
        if day is None:
            return self._error(404, "RESOURCE_NOT_EXISTS", "账单不存在")
        return web.Response(body=self.bills.csv(day), content_type="text/csv")

    # -- control ---------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return dict(self.counts, orders=len(self.orders),
                    paid_fen=sum(o.amount for o in self.orders.values() if o.transaction_id),
                    refunded_fen=sum(r.amount for r in self.refunds.values()
                                     if r.status == "SUCCESS"))

    def public_material(self) -> dict[str, Any]:
        return {"mchid": self.mchid, "appid": self.appid, "platform_serial": self.serial,
                "platform_certificate": certificate_pem(self.platform_cert)}


async def serve(host: str = "127.0.0.1", port: int = 8701, *, keys_dir: Path | None = None,
                time_factor: float = 1.0, merchant_public_key_pem: str | None = None,
                apiv3_key: bytes | None = None) -> None:
    """Run the simulator until cancelled, writing its key material to ``keys_dir``."""
    sim = WechatPaySimulator(
        merchant_public_key=load_public_key(merchant_public_key_pem)
        if merchant_public_key_pem else None,
        apiv3_key=apiv3_key, time_factor=time_factor)
    await serve_until_cancelled(sim, host, port, keys_dir)


def main(argv: Sequence[str] | None = None) -> None:
    """``hisbridge simulate wechatpay``: parse arguments and serve."""
    parser = command_line("wechatpay", port=8701)
    parser.add_argument("--merchant-public-key", type=Path)
    parser.add_argument("--apiv3-key", type=Path)
    args = parser.parse_args(argv)
    pem = args.merchant_public_key.read_text() if args.merchant_public_key else None
    key = args.apiv3_key.read_bytes().strip() if args.apiv3_key else None
    run_until_interrupted(serve(args.host, args.port, keys_dir=args.keys_dir,
                                time_factor=args.time_factor, merchant_public_key_pem=pem,
                                apiv3_key=key))


if __name__ == "__main__":
    main()
