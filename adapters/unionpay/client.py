"""UnionPay online gateway 5.1.0 client: QR consume, query, refund, refund query, bills.

Requests are form posts of signed fields (``signMethod=01``); answers are verified with the
``signPubKeyCert`` they carry, which must chain to a configured UnionPay CA. ``respCode``
00 is success; 03, 04 and 05 mean "unknown / processing" (in doubt for money calls); 34 is
"no such order" on a query. Orders and refunds are identified by ``orderId`` + ``txnTime``;
``txnTime`` is derived from when we stored them, so a query after a restart names them
exactly as the original request did.

UnionPay has no call to close an unpaid QR order: it stops being payable at ``payTimeout``,
which we send with every order; ``close_order`` therefore only closes our side.

An answer that cannot be verified or read, or that carries no ``respCode``, is in doubt for a
money call and transient for a query. A verified answer lacking what the call must carry is
in doubt for a refund (UnionPay took it) and a ``PermanentError`` naming the call and the
field otherwise; a query answer without the original transaction's ``origRespCode`` is never
read as "failed" (that would free a refund's amount for a second refund).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import logging
import re
import zlib
from urllib.parse import parse_qsl, urlencode

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
from adapters.payments.transport import call
from adapters.unionpay import crypto
from adapters.unionpay.bill import MAX_FILE, parse_bill_file
from adapters.unionpay.settings import UnionPaySettings
from engine.errors import InDoubtError, PermanentError, TransientError

log = logging.getLogger(__name__)

CHINA = dt.timezone(dt.timedelta(hours=8))
_ORDER_ID = re.compile(r"^[0-9A-Za-z]{8,40}$")
_RESP_CODE = re.compile(r"[0-9A-Z]{2}")
_UNKNOWN = ("03", "04", "05")


def txn_time(epoch: float) -> str:
    """``txnTime`` (yyyyMMddHHmmss, China time) of something stored at ``epoch``."""
    return dt.datetime.fromtimestamp(epoch, CHINA).strftime("%Y%m%d%H%M%S")


class UnionPayClient:
    """A ``PaymentGateway`` for one UnionPay merchant (QR code consume)."""

    name = "unionpay"
    repeatable_kinds = frozenset({"qrcode"})

    def __init__(self, settings: UnionPaySettings) -> None:
        self.settings = settings
        self._session = GatewaySession("UnionPay", settings.credentials)
        self._base = settings.gateway_url.rstrip("/")
        self._file_base = (settings.file_url or settings.gateway_url).rstrip("/")

    async def start(self) -> None:
        await self._session.open()

    async def close(self) -> None:
        await self._session.close()

    # -- orders ----------------------------------------------------------------------------

    async def create(self, request: OrderRequest) -> Created:
        """Apply for a payment QR code (txnType 01, txnSubType 07)."""
        if request.kind != "qrcode":
            raise PermanentError(f"unsupported UnionPay order kind {request.kind!r}")
        _check_order_id(request.out_trade_no)
        timeout = dt.datetime.fromtimestamp(request.created_at, CHINA) + dt.timedelta(
            minutes=self.settings.pay_timeout_minutes)
        fields = self._fields("01", "07", {
            "orderId": request.out_trade_no,
            "txnTime": txn_time(request.created_at),
            "txnAmt": str(request.amount_fen),
            "currencyCode": "156",
            "backUrl": self.settings.back_url,
            "payTimeout": timeout.strftime("%Y%m%d%H%M%S"),
        })
        answer = await self._post("/gateway/api/backTransReq.do", fields, what="apply QR code",
                                  money=True)
        qr = answer.get("qrCode")
        if not qr:
            raise PermanentError("apply QR code: UnionPay answer lacks qrCode")
        return Created(extra={"qr_code": qr})

    async def query(self, order: Order) -> TradeAnswer | None:
        answer = await self._query(order.out_trade_no, order.created_at)
        if answer is None:
            return None
        status = _status(answer)
        return TradeAnswer(
            TradeStatus.PAID if status == "00" else
            TradeStatus.UNPAID if status in _UNKNOWN else TradeStatus.CLOSED,
            _fen(answer, "query"),
            gateway_trade_no=answer.get("queryId", "") if status == "00" else "",
            paid_at=answer.get("traceTime", ""),
        )

    async def close_order(self, order: Order) -> None:
        """Nothing to send: the QR code expires at ``payTimeout`` (see module docstring)."""

    # -- refunds ---------------------------------------------------------------------------

    async def refund(self, request: RefundRequest) -> RefundAnswer:
        """Refund (txnType 04) against the consume's ``queryId``; the result comes by
        notification (or query)."""
        _check_order_id(request.out_refund_no)
        if not request.order.gateway_trade_no:
            raise PermanentError("the order's UnionPay queryId is unknown; sync the order first")
        fields = self._fields("04", "00", {
            "orderId": request.out_refund_no,
            "txnTime": txn_time(request.created_at),
            "txnAmt": str(request.amount_fen),
            "currencyCode": "156",
            "origQryId": request.order.gateway_trade_no,
            "backUrl": self.settings.back_url,
        })
        answer = await self._post("/gateway/api/backTransReq.do", fields, what="refund",
                                  money=True)
        with in_doubt("the refund may have been made"):
            amount = _fen(answer, "refund")
        return RefundAnswer(RefundState.PROCESSING, amount,
                            gateway_refund_no=answer.get("queryId", ""))

    async def query_refund(self, request: RefundRequest) -> RefundAnswer | None:
        answer = await self._query(request.out_refund_no, request.created_at)
        if answer is None:
            return None
        status = _status(answer)
        state = (RefundState.SUCCESS if status == "00" else
                 RefundState.PROCESSING if status in _UNKNOWN else RefundState.FAILED)
        return RefundAnswer(state, _fen(answer, "query"),
                            gateway_refund_no=answer.get("queryId", ""))

    # -- bills -----------------------------------------------------------------------------

    async def settlement_file(self, settle_date: dt.date) -> Bill:
        """Download (txnType 76, fileType 00) and parse the settlement file of a day."""
        fields = self._fields("76", "01", {
            "settleDate": settle_date.strftime("%m%d"),
            "txnTime": txn_time(dt.datetime.now(CHINA).timestamp()),
            "fileType": "00",
        })
        answer = await self._post("/fileTransRequest.do", fields, what="settlement file",
                                  money=False, base=self._file_base)
        inflate = zlib.decompressobj()
        try:
            deflated = base64.b64decode(answer.get("fileContent", ""), validate=True)
            # Bounded: a few kilobytes of deflated zeros would otherwise inflate to gigabytes.
            archive = inflate.decompress(deflated, MAX_FILE + 1)
        except (binascii.Error, zlib.error, ValueError):
            raise BillError("UnionPay fileContent is not Base64 of deflated data") from None
        if len(archive) > MAX_FILE:
            raise BillError(f"UnionPay fileContent inflates to more than {MAX_FILE} bytes")
        if not inflate.eof:
            raise BillError("UnionPay fileContent is not Base64 of deflated data (it ends early)")
        return parse_bill_file(archive)

    # -- the wire --------------------------------------------------------------------------

    def _fields(self, txn_type: str, sub_type: str, extra: dict[str, str]) -> dict[str, str]:
        keys = self._session.keys
        fields = {
            "version": "5.1.0", "encoding": "UTF-8", "signMethod": "01",
            "certId": keys.cert_id, "txnType": txn_type, "txnSubType": sub_type,
            "bizType": "000000", "accessType": "0", "channelType": "08",
            "merId": self.settings.mer_id, **extra,
        }
        fields["signature"] = crypto.sign_fields(keys.key, fields)
        return fields

    async def _query(self, order_id: str, stored_at: float) -> dict[str, str] | None:
        fields = self._fields("00", "00", {"orderId": order_id, "txnTime": txn_time(stored_at)})
        try:
            return await self._post("/gateway/api/queryTrans.do", fields, what="query",
                                    money=False)
        except GatewayRejected as exc:
            if exc.code == "34":
                return None
            raise

    async def _post(self, path: str, fields: dict[str, str], *, what: str, money: bool,
                    base: str | None = None) -> dict[str, str]:
        session, keys = self._session.ready()
        answer = await call(
            session, "POST", (base or self._base) + path, what=what, money=money,
            deadline=self.settings.timeout, data=urlencode(fields).encode("ascii"),
            headers={"Content-Type": "application/x-www-form-urlencoded;charset=UTF-8"})
        doubt = InDoubtError if money else TransientError
        if answer.status != 200:
            raise doubt(f"{what}: HTTP {answer.status} from UnionPay")
        try:
            data = dict(parse_qsl(answer.body.decode("utf-8"), keep_blank_values=True))
        except (UnicodeDecodeError, ValueError):
            raise doubt(f"{what}: unreadable answer") from None
        refusal = crypto.check_fields(data, keys.roots, self.settings.signer_name)
        if refusal is not None:
            log.warning("UnionPay answer not verified: call=%s reason=%s", what, refusal)
            raise doubt(f"{what}: answer not verified ({refusal})")
        code = data.get("respCode", "")
        if not code:  # neither a success nor a refusal: for a money call UnionPay may have acted
            raise doubt(f"{what}: answer has no respCode")
        if code == "00":
            return data
        if code in _UNKNOWN:
            raise doubt(f"{what}: respCode {code}, outcome unknown")
        raise GatewayRejected(data.get("respMsg", "refused")[:200], code=code)


def _check_order_id(value: str) -> None:
    if not _ORDER_ID.match(value):
        raise PermanentError("a UnionPay orderId is 8-40 letters and digits")


def _status(answer: dict[str, str]) -> str:
    """The original transaction's result code in a query answer (two digits)."""
    status = answer.get("origRespCode", "")
    if not _RESP_CODE.fullmatch(status):
        raise PermanentError(f"query: UnionPay answer has no valid origRespCode"
                             f" ({status[:8]!r})")
    return status


def _fen(answer: dict[str, str], what: str) -> int:
    text = answer.get("txnAmt", "")
    try:
        return parse_fen(text)
    except AmountError:
        raise PermanentError(f"{what}: UnionPay answer's txnAmt is not a whole number of fen"
                             f" ({text[:20]!r})") from None
