"""Insurance mobile payment (医保移动支付) client: 6201 fee upload, 6202 pay, 6203 refund,
6301 query, each a JSON envelope sealed with SM4 and signed with SM2 (``crypto``).

The flow: 6201 uploads the fees and returns ``payOrdId`` / ``payToken`` (nothing moves);
the patient confirms in the insurance app (the platform then settles and notifies), or, with
a ``payAuthNo`` the patient granted beforehand, 6202 settles at once (money moves: a lost
answer is resolved by 6301 before any retry). 6203 refunds; the result comes by notification
or 6301.

Answers are envelopes ``{code, message, ...}`` sealed like requests; ``code`` 0 is success.
The codes below are modelled (unconfirmed): 1001 no such order or refund, 1002 not allowed
in the order's state, 1003 refund beyond what was paid, 5000 busy (outcome unknown).
Order states (``ordStas``, subset): 0 and 1 unpaid, 6 settled, 7 refunded, 12 cancelled.

An answer that cannot be opened or verified, or that carries no numeric ``code``, is in doubt
for a money call (6201, 6202, 6203) and transient for a query. A verified success lacking what
the call must carry is in doubt for 6202 and 6203 (the platform may have moved the money) and
a ``PermanentError`` naming the call and the field otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import time
from decimal import Decimal
from typing import Any

import orjson

from adapters.mobilepay import crypto
from adapters.mobilepay.settings import MobilePaySettings
from adapters.payments.account import GatewaySession
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
from adapters.payments.money import AmountError, NegativeAmount, format_yuan, yuan_to_fen
from adapters.payments.transport import call
from engine.errors import InDoubtError, PermanentError, TransientError

log = logging.getLogger(__name__)

NOT_FOUND, BUSY = 1001, 5000
ORDER_STATUS = {"0": TradeStatus.UNPAID, "1": TradeStatus.UNPAID, "6": TradeStatus.PAID,
                "7": TradeStatus.PAID, "12": TradeStatus.CLOSED}
REFUND_STATUS = {"SUCC": RefundState.SUCCESS, "PROC": RefundState.PROCESSING,
                 "FAIL": RefundState.FAILED}


def fen_of(value: Any, what: str) -> int:
    """An amount field (yuan text, or a number parsed as Decimal or int) in fen."""
    try:
        if isinstance(value, int) and not isinstance(value, bool):
            value = Decimal(value)  # a whole number of yuan written without decimals
        if not isinstance(value, str | Decimal):
            raise AmountError(what)
        return yuan_to_fen(value)
    except NegativeAmount:
        raise PermanentError(f"mobile payment answer's {what} is negative") from None
    except AmountError:
        raise PermanentError(f"mobile payment answer has no valid {what}") from None


class MobilePayClient:
    """A ``PaymentGateway`` (and ``PayingGateway``) for one hospital app."""

    name = "mobilepay"
    repeatable_kinds = frozenset({"mobile"})  # a repeated 6201 returns the same payOrdId

    def __init__(self, settings: MobilePaySettings) -> None:
        self.settings = settings
        self._session = GatewaySession("mobile payment", settings.credentials)

    async def start(self) -> None:
        await self._session.open()

    async def close(self) -> None:
        await self._session.close()

    # -- orders ----------------------------------------------------------------------------

    async def create(self, request: OrderRequest) -> Created:
        """6201: upload the fees; returns ``payOrdId`` and ``payToken`` for the app or 6202.

        ``extra``: ``psn_no`` (the insured person's number), ``pay_auth_no`` (optional, for
        6202), ``chrg_bchno`` (the HIS charge batch).
        """
        if request.kind != "mobile":
            raise PermanentError(f"unsupported mobile payment order kind {request.kind!r}")
        data = {
            "orgCodg": self.settings.org_code,
            "medOrgOrd": request.out_trade_no,
            "feeSumamt": format_yuan(request.amount_fen),
            "psnNo": request.extra.get("psn_no", ""),
            "chrgBchno": request.extra.get("chrg_bchno", request.out_trade_no),
            "payAuthNo": request.extra.get("pay_auth_no", ""),
            "notifyUrl": self.settings.notify_url,
            "orderDesc": request.description[:100],
        }
        what = "6201 fee upload"
        out = await self._call("6201", data, what=what, money=True)
        pay_ord_id = _text(out, "payOrdId", what)
        return Created(extra={"pay_ord_id": pay_ord_id,
                              "pay_token": _text(out, "payToken", what)},
                       gateway_trade_no=pay_ord_id)

    async def pay(self, order: Order) -> TradeAnswer:
        """6202: settle an uploaded order with the patient's ``pay_auth_no``."""
        auth = order.extra.get("pay_auth_no")
        if not auth or not order.extra.get("pay_token"):
            raise PermanentError("6202 needs the order's payToken and the patient's payAuthNo")
        data = {"payOrdId": order.extra.get("pay_ord_id", order.gateway_trade_no),
                "payToken": order.extra["pay_token"], "payAuthNo": auth,
                "orgCodg": self.settings.org_code, "medOrgOrd": order.out_trade_no}
        out = await self._call("6202", data, what="6202 pay", money=True)
        with in_doubt("the payment may have been taken"):
            return _trade(out, "6202 pay")

    async def query(self, order: Order) -> TradeAnswer | None:
        try:
            out = await self._call("6301", {"orgCodg": self.settings.org_code,
                                            "medOrgOrd": order.out_trade_no},
                                   what="6301 query", money=False)
        except GatewayRejected as exc:
            if exc.code == str(NOT_FOUND):
                return None
            raise
        return _trade(out, "6301 query")

    async def close_order(self, order: Order) -> None:
        """Nothing to send: an unpaid upload lapses on the platform."""

    # -- refunds ---------------------------------------------------------------------------

    async def refund(self, request: RefundRequest) -> RefundAnswer:
        """6203: refund (the platform splits it back over fund, account and cash)."""
        data = {"payOrdId": request.order.extra.get("pay_ord_id",
                                                    request.order.gateway_trade_no),
                "medOrgOrd": request.order.out_trade_no,
                "appRefdSn": request.out_refund_no,
                "appRefdTime": time.strftime("%Y%m%d%H%M%S",
                                             time.gmtime(request.created_at + 8 * 3600)),
                "totlRefdAmt": format_yuan(request.amount_fen),
                "refdType": "ALL" if request.amount_fen == request.order.amount_fen else "PART",
                "expContent": request.reason[:100]}
        out = await self._call("6203", data, what="6203 refund", money=True)
        with in_doubt("the refund may have been made"):
            return _refund(out, "6203 refund")

    async def query_refund(self, request: RefundRequest) -> RefundAnswer | None:
        try:
            out = await self._call("6301", {"orgCodg": self.settings.org_code,
                                            "medOrgOrd": request.order.out_trade_no,
                                            "appRefdSn": request.out_refund_no},
                                   what="6301 refund query", money=False)
        except GatewayRejected as exc:
            if exc.code == str(NOT_FOUND):
                return None
            raise
        info = out.get("refdInfo")
        if info is None:
            return None
        if not isinstance(info, dict):
            raise PermanentError(f"6301 refund query: answer's refdInfo is not an object"
                                 f" ({type(info).__name__})")
        return _refund(info, "6301 refund query")

    # -- the wire --------------------------------------------------------------------------

    async def _call(self, infno: str, data: dict[str, Any], *, what: str,
                    money: bool) -> dict[str, Any]:
        session, creds = self._session.ready()
        envelope = await asyncio.to_thread(
            crypto.seal, app_id=self.settings.app_id, app_secret=creds.app_secret,
            private_hex=creds.private_hex, public_hex=creds.public_hex, data=data,
            timestamp=int(time.time()), version=self.settings.version)
        answer = await call(
            session, "POST", self.settings.base_url.rstrip("/") + self.settings.paths[infno],
            what=what, money=money, deadline=self.settings.timeout,
            data=orjson.dumps(envelope), headers={"Content-Type": "application/json"})
        doubt = InDoubtError if money else TransientError
        if answer.status != 200:
            raise doubt(f"{what}: HTTP {answer.status} from the platform")
        try:
            reply = orjson.loads(answer.body)
            if not isinstance(reply, dict):
                raise ValueError
            out = await asyncio.to_thread(crypto.open_envelope, reply,
                                          app_secret=creds.app_secret,
                                          peer_public_hex=creds.platform_public_hex)
        except ValueError as exc:  # not JSON, or crypto.EnvelopeError (a ValueError)
            log.warning("mobile payment answer not verified: call=%s (%s)", what,
                        type(exc).__name__)
            raise doubt(f"{what}: answer not verified ({type(exc).__name__})") from None
        code = _code(reply.get("code"))
        if code is None:  # neither a success nor a refusal: the platform may have acted
            raise doubt(f"{what}: answer has no code")
        if code == 0:
            return out
        if code == BUSY:
            raise doubt(f"{what}: platform busy, outcome unknown")
        raise GatewayRejected(str(reply.get("message") or "refused")[:200], code=str(code))


def _code(value: Any) -> int | None:
    """The envelope's ``code``: a number, or digits where the platform writes text."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isascii() and value.lstrip("-").isdigit():
        return int(value)
    return None


def _text(out: dict[str, Any], name: str, what: str) -> str:
    value = out.get(name)
    if value is None or value == "":
        raise PermanentError(f"{what}: answer lacks {name}")
    if not isinstance(value, str):
        raise PermanentError(f"{what}: answer's {name} is not text ({type(value).__name__})")
    return value


def _fen(out: dict[str, Any], name: str, what: str) -> int:
    value = out.get(name)
    try:
        return fen_of(value, name)
    except PermanentError:
        shown = repr(value[:20]) if isinstance(value, str) else type(value).__name__
        raise PermanentError(f"{what}: answer has no valid {name} ({shown})") from None


def _trade(out: dict[str, Any], what: str) -> TradeAnswer:
    status = str(out.get("ordStas", ""))
    if status not in ORDER_STATUS:
        raise PermanentError(f"{what}: unknown ordStas {status[:20]!r}")
    return TradeAnswer(ORDER_STATUS[status], _fen(out, "feeSumamt", what),
                       gateway_trade_no=str(out.get("payOrdId") or ""),
                       paid_at=str(out.get("setlTime") or ""))


def _refund(out: dict[str, Any], what: str) -> RefundAnswer:
    status = str(out.get("refdStas", ""))
    if status not in REFUND_STATUS:
        raise PermanentError(f"{what}: unknown refdStas {status[:20]!r}")
    return RefundAnswer(REFUND_STATUS[status],
                        _fen(out, "totlRefdAmt", what),
                        gateway_refund_no=str(out.get("appRefdSn") or ""))
