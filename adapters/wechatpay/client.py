"""WeChat Pay v3 API client: native and JSAPI orders, query, close, refunds, trade bills.

Every request carries the signed ``Authorization`` header; every answer but the bill file is
verified (``Wechatpay-Signature`` with the platform key its serial names, 5-minute window)
before a byte of it is believed. A money call (create, refund) that gets no verified answer
raises ``InDoubtError``: ``adapters.payments.service`` queries before any retry. So does a
refund whose verified answer cannot be read (no status, no amount): WeChat Pay took the call,
so the refund may exist. A verified answer lacking what a create or a query must carry is a
``PermanentError`` naming the call and the field.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from typing import Any
from urllib.parse import quote, urlsplit

import orjson

from adapters.payments.account import GatewaySession
from adapters.payments.bills import Bill, BillError
from adapters.payments.errors import GatewayRejected, in_doubt
from adapters.payments.model import (
    Created,
    Order,
    OrderRequest,
    RefundAnswer,
    RefundRequest,
    RefundState,
    TradeAnswer,
    TradeStatus,
)
from adapters.payments.money import AmountError, parse_fen
from adapters.payments.signing import sign_sha256
from adapters.payments.transport import HttpAnswer, call
from adapters.wechatpay import crypto
from adapters.wechatpay.bill import parse_trade_bill
from adapters.wechatpay.settings import WechatPaySettings
from engine.errors import InDoubtError, PermanentError, TransientError

log = logging.getLogger(__name__)

TRADE_STATUS = {
    "SUCCESS": TradeStatus.PAID,
    "REFUND": TradeStatus.PAID,  # it was paid; refunds are tracked separately
    "NOTPAY": TradeStatus.UNPAID,
    "USERPAYING": TradeStatus.UNPAID,
    "CLOSED": TradeStatus.CLOSED,
    "REVOKED": TradeStatus.CLOSED,
    "PAYERROR": TradeStatus.CLOSED,
}
REFUND_STATUS = {
    "SUCCESS": RefundState.SUCCESS,
    "PROCESSING": RefundState.PROCESSING,
    "ABNORMAL": RefundState.PROCESSING,  # needs a person at the merchant platform; not final
    "CLOSED": RefundState.FAILED,
}
_NOT_FOUND = ("ORDER_NOT_EXIST", "ORDERNOTEXIST", "RESOURCE_NOT_EXISTS")


class WechatPayClient:
    """A ``PaymentGateway`` for one WeChat Pay merchant account."""

    name = "wechatpay"
    repeatable_kinds = frozenset({"native", "jsapi"})

    def __init__(self, settings: WechatPaySettings) -> None:
        self.settings = settings
        self._session = GatewaySession("WeChat Pay", settings.credentials)
        self._base = settings.base_url.rstrip("/")

    async def start(self) -> None:
        await self._session.open()

    async def close(self) -> None:
        await self._session.close()

    # -- orders ----------------------------------------------------------------------------

    async def create(self, request: OrderRequest) -> Created:
        """A native (QR ``code_url``) or JSAPI (``prepay_id``) order."""
        body: dict[str, Any] = {
            "appid": self.settings.appid,
            "mchid": self.settings.mchid,
            "description": request.description[:127],
            "out_trade_no": request.out_trade_no,
            "notify_url": self.settings.notify_url,
            "amount": {"total": request.amount_fen, "currency": "CNY"},
        }
        if request.kind == "jsapi":
            openid = request.extra.get("openid")
            if not openid:
                raise PermanentError("a JSAPI order needs the payer's openid")
            body["payer"] = {"openid": openid}
        elif request.kind != "native":
            raise PermanentError(f"unsupported WeChat Pay order kind {request.kind!r}")
        try:
            data = await self._json("POST", f"/v3/pay/transactions/{request.kind}", body,
                                    what="create order", money=True)
        except GatewayRejected as exc:
            if exc.code == "ORDERPAID":  # it exists and is paid: let the query tell us more
                raise InDoubtError("order already paid at WeChat Pay; query it") from None
            raise
        if request.kind == "native":
            return Created(extra={"code_url": _text(data, "code_url", "create order")})
        return Created(extra={"prepay_id": _text(data, "prepay_id", "create order")})

    async def query(self, order: Order) -> TradeAnswer | None:
        path = (f"/v3/pay/transactions/out-trade-no/{quote(order.out_trade_no, safe='')}"
                f"?mchid={quote(self.settings.mchid)}")
        try:
            data = await self._json("GET", path, None, what="query order", money=False)
        except GatewayRejected as exc:
            if exc.code in _NOT_FOUND:
                return None
            raise
        state = _text(data, "trade_state", "query order")
        if state not in TRADE_STATUS:
            raise PermanentError(f"query order: unknown trade_state {state[:40]!r}")
        return TradeAnswer(
            TRADE_STATUS[state],
            _amount(data, "total", "query order"),
            gateway_trade_no=str(data.get("transaction_id") or ""),
            paid_at=str(data.get("success_time") or ""),
        )

    async def close_order(self, order: Order) -> None:
        path = f"/v3/pay/transactions/out-trade-no/{quote(order.out_trade_no, safe='')}/close"
        await self._json("POST", path, {"mchid": self.settings.mchid}, what="close order",
                         money=False)

    # -- refunds ---------------------------------------------------------------------------

    async def refund(self, request: RefundRequest) -> RefundAnswer:
        body = {
            "out_trade_no": request.order.out_trade_no,
            "out_refund_no": request.out_refund_no,
            "reason": request.reason[:80] or None,
            "notify_url": self.settings.notify_url,
            "amount": {"refund": request.amount_fen, "total": request.order.amount_fen,
                       "currency": "CNY"},
        }
        body = {k: v for k, v in body.items() if v is not None}
        data = await self._json("POST", "/v3/refund/domestic/refunds", body, what="refund",
                                money=True)
        with in_doubt("the refund may have been made"):
            return _refund_answer(data, "refund")

    async def query_refund(self, request: RefundRequest) -> RefundAnswer | None:
        path = f"/v3/refund/domestic/refunds/{quote(request.out_refund_no, safe='')}"
        try:
            data = await self._json("GET", path, None, what="query refund", money=False)
        except GatewayRejected as exc:
            if exc.code in _NOT_FOUND:
                return None
            raise
        return _refund_answer(data, "query refund")

    # -- bills -----------------------------------------------------------------------------

    async def trade_bill(self, bill_date: str) -> Bill:
        """Download the ``ALL`` trade bill of ``bill_date`` (``YYYY-MM-DD``), check its SHA-1
        and parse it."""
        info = await self._json("GET", f"/v3/bill/tradebill?bill_date={quote(bill_date)}"
                                "&bill_type=ALL", None, what="trade bill", money=False)
        url = _text(info, "download_url", "trade bill")
        if info.get("hash_type") != "SHA1":
            hash_type = str(info.get("hash_type"))[:20]
            raise BillError(f"trade bill: unsupported bill hash {hash_type!r}")
        try:
            parts = urlsplit(url)
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            raise PermanentError("trade bill: WeChat Pay answer's download_url is not an"
                                 " http(s) URL")
        canonical = parts.path + (f"?{parts.query}" if parts.query else "")
        # The file answer is not signed; its integrity is the SHA-1 from the signed answer.
        answer = await self._send("GET", canonical, "", what="download bill", money=False,
                                  absolute=url)
        if answer.status != 200:
            raise TransientError(f"download bill: HTTP {answer.status}")
        digest = hashlib.sha1(answer.body, usedforsecurity=False).hexdigest()
        if digest != str(info.get("hash_value")).lower():
            raise BillError("trade bill: downloaded bill does not match its SHA-1")
        return parse_trade_bill(answer.body)

    # -- JSAPI -----------------------------------------------------------------------------

    def jsapi_parameters(self, prepay_id: str) -> dict[str, str]:
        """What the payer's page passes to ``WeixinJSBridge`` to pay a JSAPI order."""
        ts = str(int(time.time()))
        nonce = secrets.token_hex(16)
        package = f"prepay_id={prepay_id}"
        message = f"{self.settings.appid}\n{ts}\n{nonce}\n{package}\n"
        return {"appId": self.settings.appid, "timeStamp": ts, "nonceStr": nonce,
                "package": package, "signType": "RSA",
                "paySign": sign_sha256(self._session.keys.merchant_key, message.encode())}

    # -- the wire --------------------------------------------------------------------------

    async def _send(self, method: str, path: str, body: str, *, what: str, money: bool,
                    absolute: str | None = None) -> HttpAnswer:
        session, keys = self._session.ready()
        headers = {
            "Authorization": crypto.authorization(
                mchid=self.settings.mchid, serial_no=self.settings.merchant_serial,
                key=keys.merchant_key, method=method, canonical_url=path, body=body),
            "Accept": "application/json",
            "User-Agent": "hisbridge-wechatpay/1",
        }
        if body:
            headers["Content-Type"] = "application/json"
        return await call(session, method, absolute or self._base + path, what=what,
                          money=money, deadline=self.settings.timeout,
                          data=body.encode("utf-8") if body else None, headers=headers)

    async def _json(self, method: str, path: str, payload: dict[str, Any] | None, *,
                    what: str, money: bool) -> dict[str, Any]:
        body = orjson.dumps(payload).decode("utf-8") if payload is not None else ""
        answer = await self._send(method, path, body, what=what, money=money)
        doubt = InDoubtError if money else TransientError
        if answer.status >= 500 or answer.status == 429:
            # SYSTEM_ERROR and friends: the request may have been applied.
            raise doubt(f"{what}: HTTP {answer.status} from WeChat Pay")
        signed = crypto.SignedHeaders.from_headers(answer.headers)
        refusal = "unsigned" if signed is None else _malformed(signed) or crypto.check_signature(
            self._session.keys.platform, signed, answer.body)
        if refusal is not None:
            log.warning("WeChat Pay answer not verified: call=%s reason=%s", what, refusal)
            raise doubt(f"{what}: answer signature not verified ({refusal})")
        try:
            data = orjson.loads(answer.body) if answer.body else {}
        except orjson.JSONDecodeError:
            raise doubt(f"{what}: answer is not JSON") from None
        if not isinstance(data, dict):
            raise doubt(f"{what}: answer is not a JSON object")
        if answer.status >= 400:
            code = str(data.get("code") or f"HTTP{answer.status}")
            raise GatewayRejected(str(data.get("message") or "refused")[:200], code=code)
        return data


def _malformed(signed: crypto.SignedHeaders) -> str | None:
    """``malformed_header`` unless every Wechatpay-* value is printable ASCII."""
    return "malformed_header" if signed.unprintable() else None


def _text(data: dict[str, Any], name: str, what: str) -> str:
    value = data.get(name)
    if value is None or value == "":
        raise PermanentError(f"{what}: WeChat Pay answer lacks {name}")
    if not isinstance(value, str):
        raise PermanentError(f"{what}: WeChat Pay answer's {name} is not text"
                             f" ({type(value).__name__})")
    return value


def _amount(data: dict[str, Any], name: str, what: str) -> int:
    amount = data.get("amount")
    value = amount.get(name) if isinstance(amount, dict) else None
    if value is None:
        raise PermanentError(f"{what}: WeChat Pay answer lacks amount.{name}")
    if not isinstance(value, int) or isinstance(value, bool):
        raise PermanentError(f"{what}: WeChat Pay answer's amount.{name} is not a whole"
                             f" number of fen ({type(value).__name__})")
    try:
        return parse_fen(value)
    except AmountError:
        raise PermanentError(f"{what}: WeChat Pay answer's amount.{name} is negative") from None


def _refund_answer(data: dict[str, Any], what: str) -> RefundAnswer:
    status = _text(data, "status", what)
    if status not in REFUND_STATUS:
        raise PermanentError(f"{what}: unknown refund status {status[:40]!r}")
    return RefundAnswer(REFUND_STATUS[status], _amount(data, "refund", what),
                        gateway_refund_no=str(data.get("refund_id") or ""))
