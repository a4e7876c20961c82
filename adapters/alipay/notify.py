"""Alipay asynchronous notifies (``trade_status_sync``): verify and turn into events.

The notify is a form POST. Its signature covers every field but ``sign`` and ``sign_type``
(sorted ``k=v&...`` of the URL-decoded values). Refused (and audited by the source): a bad
or missing signature, another app's or seller's notify, a malformed amount. A refund notify
carries ``out_biz_no`` (our ``out_request_no``) and ``refund_fee``, the amount refunded on
the trade *in all*; the store checks it against our refunds. Alipay retries until it reads
the plain text ``success``.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from adapters.alipay import crypto
from adapters.alipay.settings import AlipayCredentials, AlipaySettings
from adapters.payments.account import AccountKeys
from adapters.payments.errors import CallbackRejected
from adapters.payments.model import EventKind, PaymentEvent
from adapters.payments.money import AmountError, NegativeAmount, yuan_to_fen
from adapters.payments.notify import NotifyAnswer, NotifyRequest, unique_fields


class AlipayNotifyVerifier:
    gateway = "alipay"

    def __init__(self, settings: AlipaySettings,
                 credentials: AlipayCredentials | None = None) -> None:
        self.settings = settings
        self.keys = AccountKeys(settings.credentials, credentials)

    def load(self) -> None:
        self.keys.get()

    async def verify(self, request: NotifyRequest) -> PaymentEvent:
        params = _form(request.body)
        if not params.get("sign"):
            raise CallbackRejected("missing_signature", "field sign is missing")
        if not crypto.verify_notify(self.keys.get().alipay_key, params):
            raise CallbackRejected("bad_signature", "field sign does not verify with the Alipay "
                                   f"public key (notify_id {params.get('notify_id', '')[:40]})",
                                   out_trade_no=params.get("out_trade_no") or None)
        no = params.get("out_trade_no", "")
        if params.get("app_id") != self.settings.app_id or (
                self.settings.seller_id and params.get("seller_id") != self.settings.seller_id):
            raise CallbackRejected("wrong_merchant", "notify for another app or seller",
                                   out_trade_no=no or None)
        status = params.get("trade_status", "")
        total = _yuan(params, "total_amount", no)
        refund_total = _yuan(params, "refund_fee", no) if params.get("refund_fee") else None
        if not no:
            raise CallbackRejected("malformed", "notify without out_trade_no")
        trade_no, notify_id = params.get("trade_no", ""), params.get("notify_id", "")
        if params.get("out_biz_no") and refund_total is not None:
            return PaymentEvent(self.gateway, EventKind.REFUND, no, total,
                                out_refund_no=params["out_biz_no"],
                                refunded_total_fen=refund_total,
                                gateway_refund_no=params["out_biz_no"],
                                occurred_at=params.get("gmt_refund", ""),
                                gateway_trade_no=trade_no, notify_id=notify_id)
        if status in ("TRADE_SUCCESS", "TRADE_FINISHED"):
            return PaymentEvent(self.gateway, EventKind.PAYMENT, no, total,
                                occurred_at=params.get("gmt_payment", ""),
                                gateway_trade_no=trade_no, notify_id=notify_id)
        if status == "TRADE_CLOSED":
            return PaymentEvent(self.gateway, EventKind.PAYMENT, no, total, succeeded=False,
                                occurred_at=params.get("gmt_close", ""),
                                gateway_trade_no=trade_no, notify_id=notify_id)
        raise CallbackRejected("unhandled_event", f"trade_status {status[:30]}",
                               out_trade_no=no)

    def answer(self, accepted: bool, reason: str = "", detail: str = "") -> NotifyAnswer:
        if accepted:
            return NotifyAnswer(200, b"success", "text/plain")
        # Alipay retries on anything but "success"; the words after "fail" are for its logs.
        text = "fail" + (f" {reason}" if reason else "") + (f": {detail}" if detail else "")
        return NotifyAnswer(500 if reason == "unavailable" else 400,
                            text[:300].encode("utf-8"), "text/plain")


def _yuan(params: dict[str, str], name: str, out_trade_no: str) -> int:
    try:
        return yuan_to_fen(params.get(name, ""))
    except NegativeAmount:
        problem = "is negative"
    except AmountError:
        problem = "is not a yuan amount"
    raise CallbackRejected("malformed", f"{name} {params.get(name, '')[:20]!r} {problem}",
                           out_trade_no=out_trade_no or None)


def _form(body: bytes) -> dict[str, str]:
    """The notify's fields, decoded with the charset it declares (UTF-8 or GBK)."""
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise CallbackRejected("malformed", "notify body is not URL-encoded") from None
    raw = parse_qsl(text, keep_blank_values=True, encoding="latin-1")
    charset = dict(raw).get("charset", "utf-8").lower()
    if charset not in ("utf-8", "gbk", "gb2312"):
        raise CallbackRejected("malformed", f"unsupported charset {charset[:20]!r}")
    try:
        fields = parse_qsl(text, keep_blank_values=True, encoding=charset, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise CallbackRejected("malformed", f"notify is not valid {charset} text") from None
    return unique_fields(fields)
