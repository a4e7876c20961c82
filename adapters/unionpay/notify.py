"""UnionPay back-end notifications (``backUrl``): verify and turn into events.

A notification is a form POST of signed fields with the gateway's ``signPubKeyCert``.
Refused (and audited by the source): a missing or bad signature, a certificate not issued by
a configured UnionPay CA, another merchant's notification. A consume (txnType 01) names our
``orderId`` and ``txnAmt``; a refund (04) names the refund's own ``orderId`` (our
``out_refund_no``) and the consume's ``origQryId``, so the store finds the order through the
refund. Card numbers (``accNo``) are kept masked only. UnionPay resends until it gets HTTP 200.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from adapters.payments.account import AccountKeys
from adapters.payments.errors import CallbackRejected
from adapters.payments.model import EventKind, PaymentEvent
from adapters.payments.money import AmountError, NegativeAmount, mask_card, parse_fen
from adapters.payments.notify import NotifyAnswer, NotifyRequest, unique_fields
from adapters.unionpay import crypto
from adapters.unionpay.settings import UnionPayCredentials, UnionPaySettings


class UnionPayNotifyVerifier:
    gateway = "unionpay"

    def __init__(self, settings: UnionPaySettings,
                 credentials: UnionPayCredentials | None = None) -> None:
        self.settings = settings
        self.keys = AccountKeys(settings.credentials, credentials)

    def load(self) -> None:
        self.keys.get()

    async def verify(self, request: NotifyRequest) -> PaymentEvent:
        try:
            fields = unique_fields(parse_qsl(request.body.decode("utf-8"),
                                             keep_blank_values=True, errors="strict"))
        except (UnicodeDecodeError, ValueError):
            raise CallbackRejected("malformed", "notification is not a UTF-8 form") from None
        order_id = fields.get("orderId", "")
        refusal = crypto.check_fields(fields, self.keys.get().roots, self.settings.signer_name)
        if refusal is not None:
            raise CallbackRejected(refusal, _REFUSALS.get(refusal, refusal),
                                   out_trade_no=order_id or None)
        if fields.get("merId") != self.settings.mer_id:
            raise CallbackRejected("wrong_merchant", "notification for another merchant",
                                   out_trade_no=order_id or None)
        try:
            amount = parse_fen(fields.get("txnAmt", ""))
        except NegativeAmount:
            raise CallbackRejected("malformed", "txnAmt is negative",
                                   out_trade_no=order_id or None) from None
        except AmountError:
            raise CallbackRejected("malformed", f"txnAmt {fields.get('txnAmt', '')[:20]!r} is "
                                   "not a whole number of fen",
                                   out_trade_no=order_id or None) from None
        if not order_id:
            raise CallbackRejected("malformed", "notification without orderId")
        ok = fields.get("respCode") == "00"
        card = mask_card(fields["accNo"]) if fields.get("accNo") else ""
        txn_type = fields.get("txnType")
        if txn_type == "01":
            return PaymentEvent(self.gateway, EventKind.PAYMENT, order_id, amount, succeeded=ok,
                                gateway_trade_no=fields.get("queryId", ""),
                                occurred_at=fields.get("traceTime", ""), card=card)
        if txn_type == "04":
            return PaymentEvent(self.gateway, EventKind.REFUND, "", 0, succeeded=ok,
                                gateway_trade_no=fields.get("origQryId", ""),
                                out_refund_no=order_id, refund_fen=amount,
                                gateway_refund_no=fields.get("queryId", ""),
                                occurred_at=fields.get("traceTime", ""), card=card)
        raise CallbackRejected("unhandled_event", f"txnType {str(txn_type)[:4]}",
                               out_trade_no=order_id)

    def answer(self, accepted: bool, reason: str = "", detail: str = "") -> NotifyAnswer:
        if accepted:
            return NotifyAnswer(200, b"ok", "text/plain")
        text = (reason or "fail") + (f": {detail}" if detail else "")
        return NotifyAnswer(500 if reason == "unavailable" else 400,
                            text[:300].encode("utf-8"), "text/plain")


_REFUSALS = {
    "missing_signature": "fields signature and signPubKeyCert are required",
    "untrusted_certificate": "signPubKeyCert is not a current certificate of the gateway "
                             "issued by a configured UnionPay CA",
    "bad_signature": "field signature does not verify with signPubKeyCert (signMethod 01)",
}
