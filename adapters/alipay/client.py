"""Alipay OpenAPI client: precreate (QR), barcode pay, query, close, refund, bills.

Each call is one form POST to the gateway with RSA2-signed common parameters and a JSON
``biz_content``; each answer's ``<method>_response`` node is verified over its raw text.
``code`` 10000 is success, 10003 "the payer is confirming", 20000 "unknown, ask again"
(in doubt for money calls), 40004 a business refusal with its ``sub_code``.

An answer that cannot be verified or read is in doubt for a money call (``InDoubtError``:
the service queries first), transient for a read-only one. A verified success lacking what
the call must carry is in doubt where money may have moved (a barcode payment, a refund) and
a ``PermanentError`` naming the method and the field otherwise.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any
from urllib.parse import urlencode

import orjson

from adapters.alipay import crypto
from adapters.alipay.bill import parse_bill_zip
from adapters.alipay.settings import AlipaySettings
from adapters.payments.account import GatewaySession
from adapters.payments.bills import Bill
from adapters.payments.errors import GatewayRejected, in_doubt
from adapters.payments.model import (
    Created,
    EventKind,
    Order,
    OrderRequest,
    PaymentEvent,
    RefundAnswer,
    RefundRequest,
    RefundState,
    TradeAnswer,
    TradeStatus,
)
from adapters.payments.money import AmountError, NegativeAmount, format_yuan, yuan_to_fen
from adapters.payments.transport import call
from engine.errors import InDoubtError, PermanentError, TransientError

log = logging.getLogger(__name__)

CHINA = dt.timezone(dt.timedelta(hours=8))
TRADE_STATUS = {
    "WAIT_BUYER_PAY": TradeStatus.UNPAID,
    "TRADE_SUCCESS": TradeStatus.PAID,
    "TRADE_FINISHED": TradeStatus.PAID,
    "TRADE_CLOSED": TradeStatus.CLOSED,  # closed unpaid, or fully refunded (see query)
}
_NOT_FOUND = ("ACQ.TRADE_NOT_EXIST",)
_ASK_AGAIN = ("ACQ.SYSTEM_ERROR", "ACQ.TRADE_HAS_SUCCESS", "aop.ACQ.SYSTEM_ERROR")


class AlipayClient:
    """A ``PaymentGateway`` for one Alipay app."""

    name = "alipay"
    repeatable_kinds = frozenset({"precreate"})

    def __init__(self, settings: AlipaySettings) -> None:
        self.settings = settings
        self._session = GatewaySession("Alipay", settings.credentials)

    async def start(self) -> None:
        await self._session.open()

    async def close(self) -> None:
        await self._session.close()

    # -- orders ----------------------------------------------------------------------------

    async def create(self, request: OrderRequest) -> Created:
        """``precreate``: a QR code for the payer to scan; ``barcode``: charge the payer's
        payment code (``extra["auth_code"]``) now."""
        biz: dict[str, Any] = {
            "out_trade_no": request.out_trade_no,
            "total_amount": format_yuan(request.amount_fen),
            "subject": request.description[:256],
        }
        if request.kind == "precreate":
            method = "alipay.trade.precreate"
            data = await self._call(method, biz, money=True, notify=True)
            return Created(extra={"qr_code": _text(data, "qr_code", method)})
        if request.kind != "barcode":
            raise PermanentError(f"unsupported Alipay order kind {request.kind!r}")
        auth_code = request.extra.get("auth_code")
        if not auth_code:
            raise PermanentError("a barcode payment needs the payer's auth_code")
        biz.update(scene="bar_code", auth_code=auth_code)
        method = "alipay.trade.pay"
        data = await self._call(method, biz, money=True, notify=True, accept=("10000", "10003"))
        if data["code"] == "10003":  # the payer is confirming on the phone: result to come
            return Created(gateway_trade_no=str(data.get("trade_no") or ""))
        with in_doubt("the payment may have been taken"):
            trade_no = _text(data, "trade_no", method)
            amount = _fen(data, "total_amount", method)
        paid = PaymentEvent(self.name, EventKind.PAYMENT, request.out_trade_no, amount,
                            gateway_trade_no=trade_no,
                            occurred_at=str(data.get("gmt_payment") or ""), source="response")
        return Created(gateway_trade_no=trade_no, paid=paid)

    async def query(self, order: Order) -> TradeAnswer | None:
        try:
            data = await self._call("alipay.trade.query", {"out_trade_no": order.out_trade_no},
                                    money=False)
        except GatewayRejected as exc:
            if exc.code in _NOT_FOUND:
                return None
            raise
        status = str(data.get("trade_status"))
        if status not in TRADE_STATUS:
            raise PermanentError(f"alipay.trade.query: unknown trade_status {status[:40]!r}")
        answer = TRADE_STATUS[status]
        if answer is TradeStatus.CLOSED and data.get("send_pay_date"):
            answer = TradeStatus.PAID  # closed by a full refund: it was paid
        return TradeAnswer(answer, _fen(data, "total_amount", "alipay.trade.query"),
                           gateway_trade_no=str(data.get("trade_no") or ""),
                           paid_at=str(data.get("send_pay_date") or ""))

    async def close_order(self, order: Order) -> None:
        await self._call("alipay.trade.close", {"out_trade_no": order.out_trade_no},
                         money=False)

    # -- refunds ---------------------------------------------------------------------------

    async def refund(self, request: RefundRequest) -> RefundAnswer:
        """Alipay refunds synchronously: ``fund_change`` Y (or N for a repeat) is success."""
        biz = {
            "out_trade_no": request.order.out_trade_no,
            "refund_amount": format_yuan(request.amount_fen),
            "out_request_no": request.out_refund_no,
            "refund_reason": request.reason[:256] or None,
        }
        method = "alipay.trade.refund"
        data = await self._call(method, {k: v for k, v in biz.items() if v is not None},
                                money=True)
        with in_doubt("the refund may have been made"):
            refunded_total = _fen(data, "refund_fee", method)
        if refunded_total < request.amount_fen:
            raise PermanentError(f"{method}: Alipay answer states less than this refund")
        return RefundAnswer(RefundState.SUCCESS, 0, gateway_refund_no=request.out_refund_no)

    async def query_refund(self, request: RefundRequest) -> RefundAnswer | None:
        biz = {"out_trade_no": request.order.out_trade_no,
               "out_request_no": request.out_refund_no}
        method = "alipay.trade.fastpay.refund.query"
        try:
            data = await self._call(method, biz, money=False)
        except GatewayRejected as exc:
            if exc.code in _NOT_FOUND:
                return None
            raise
        if data.get("refund_amount") in (None, ""):
            return None  # Alipay answers 10000 with no refund fields for an unknown refund
        status = data.get("refund_status", "REFUND_SUCCESS")
        state = RefundState.SUCCESS if status == "REFUND_SUCCESS" else RefundState.PROCESSING
        return RefundAnswer(state, _fen(data, "refund_amount", method),
                            gateway_refund_no=request.out_refund_no)

    # -- bills -----------------------------------------------------------------------------

    async def trade_bill(self, bill_date: str) -> Bill:
        """Download and parse the ``trade`` bill of ``bill_date`` (``YYYY-MM-DD``)."""
        method = "alipay.data.dataservice.bill.downloadurl.query"
        data = await self._call(method, {"bill_type": "trade", "bill_date": bill_date},
                                money=False)
        url = _text(data, "bill_download_url", method)
        session, _ = self._session.ready()
        answer = await call(session, "GET", url, what="download bill", money=False,
                            deadline=self.settings.timeout * 3)
        if answer.status != 200:
            raise TransientError(f"download bill: HTTP {answer.status}")
        return parse_bill_zip(answer.body)

    # -- the wire --------------------------------------------------------------------------

    def signed_params(self, method: str, biz: dict[str, Any], *,
                      notify: bool = False) -> dict[str, str]:
        """The common parameters with ``biz_content`` and ``sign``, ready to post."""
        params = {
            "app_id": self.settings.app_id,
            "method": method,
            "format": "JSON",
            "charset": "utf-8",
            "sign_type": "RSA2",
            "timestamp": dt.datetime.now(CHINA).strftime("%Y-%m-%d %H:%M:%S"),
            "version": "1.0",
            "biz_content": orjson.dumps(biz).decode("utf-8"),
        }
        if notify and self.settings.notify_url:
            params["notify_url"] = self.settings.notify_url
        params["sign"] = crypto.sign_params(self._session.keys.app_key, params)
        return params

    async def _call(self, method: str, biz: dict[str, Any], *, money: bool,
                    notify: bool = False, accept: tuple[str, ...] = ("10000",)) -> dict[str, Any]:
        session, keys = self._session.ready()
        body = urlencode(self.signed_params(method, biz, notify=notify)).encode("ascii")
        answer = await call(
            session, "POST", self.settings.gateway_url, what=method, money=money,
            deadline=self.settings.timeout, data=body,
            headers={"Content-Type": "application/x-www-form-urlencoded;charset=utf-8"})
        doubt = InDoubtError if money else TransientError
        if answer.status != 200:
            raise doubt(f"{method}: HTTP {answer.status} from Alipay")
        raw = answer.body.decode("utf-8", "replace")
        node = crypto.response_node_name(method)
        text = crypto.extract_signed_response(raw, node)
        if text is None:
            error = crypto.extract_signed_response(raw, "error_response")
            if error is not None:
                # The gateway's own answer, often unsigned: a request it turned away before
                # any business processing (40001-40006), except "unknown, ask again".
                raise _not_accepted(method, _object(error, method, doubt), doubt)
            raise doubt(f"{method}: answer has no {node}")
        if not crypto.verify_response(keys.alipay_key, text, _sign(raw)):
            log.warning("Alipay answer not verified: method=%s", method)
            raise doubt(f"{method}: answer signature not verified")
        data = _object(text, method, doubt)
        code = data.get("code")
        if isinstance(code, int) and not isinstance(code, bool):
            code = data["code"] = str(code)  # a number where Alipay writes text
        if not isinstance(code, str) or not code:
            # Neither a success nor a refusal: for a money call, Alipay may have acted.
            raise doubt(f"{method}: answer has no code")
        if code in accept:
            return data
        raise _not_accepted(method, data, doubt)


def _not_accepted(method: str, data: dict[str, Any], doubt: type[TransientError]) -> Exception:
    """What an answer that is not a success means: "unknown, ask again" (20000, or a sub-code
    saying so) is in doubt; anything else is a refusal with its sub-code."""
    code, sub_code = str(data.get("code") or ""), str(data.get("sub_code") or "")
    if code == "20000" or sub_code in _ASK_AGAIN:
        return doubt(f"{method}: {sub_code or code}, outcome unknown")
    return GatewayRejected(str(data.get("sub_msg") or data.get("msg") or "refused")[:200],
                           code=sub_code or code)


def _sign(raw: str) -> str:
    """The answer's top-level ``sign``, or "" when there is none to be had."""
    try:
        envelope = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return ""
    sign = envelope.get("sign") if isinstance(envelope, dict) else None
    return sign if isinstance(sign, str) else ""


def _object(text: str, method: str, doubt: type[TransientError]) -> dict[str, Any]:
    """A response node's text as an object. The node was found by Python's JSON parser, which
    accepts what orjson refuses (NaN, lone surrogates): such text is unreadable, not a crash."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise doubt(f"{method}: answer is not JSON orjson can read ({exc})") from None
    if not isinstance(data, dict):  # pragma: no cover - extract_signed_response checks it
        raise doubt(f"{method}: answer is not a JSON object")
    return data


def _text(data: dict[str, Any], name: str, method: str) -> str:
    value = data.get(name)
    if value is None or value == "":
        raise PermanentError(f"{method}: Alipay answer lacks {name}")
    if not isinstance(value, str):
        raise PermanentError(f"{method}: Alipay answer's {name} is not text"
                             f" ({type(value).__name__})")
    return value


def _fen(data: dict[str, Any], name: str, method: str) -> int:
    value = data.get(name)
    if value is None or value == "":
        raise PermanentError(f"{method}: Alipay answer lacks {name}")
    try:
        if not isinstance(value, str):
            raise AmountError(type(value).__name__)
        return yuan_to_fen(value)
    except NegativeAmount:
        raise PermanentError(f"{method}: Alipay answer's {name} is negative") from None
    except AmountError:
        shown = repr(value[:20]) if isinstance(value, str) else type(value).__name__
        raise PermanentError(f"{method}: Alipay answer's {name} is not a yuan amount"
                             f" ({shown})") from None
