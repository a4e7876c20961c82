"""WeChat Pay v3 callbacks: verify, decrypt, and turn into a ``PaymentEvent``.

Refused (and audited by the source): missing headers, a timestamp 5 minutes or more away
(``stale``), an unknown serial, a bad signature, a resource that does not decrypt with our
APIv3 key, another merchant's callback, and any event type we do not handle. The answer to
WeChat Pay is 200 with no body on success, else 4xx/5xx with ``{"code":"FAIL",...}``.
"""

from __future__ import annotations

from typing import Any

import orjson

from adapters.payments.account import AccountKeys
from adapters.payments.errors import CallbackRejected
from adapters.payments.model import EventKind, PaymentEvent
from adapters.payments.notify import NotifyAnswer, NotifyRequest
from adapters.wechatpay import crypto
from adapters.wechatpay.settings import WechatPayCredentials, WechatPaySettings

_REFUND_EVENTS = {"REFUND.SUCCESS": True, "REFUND.CLOSED": False}


class WechatPayNotifyVerifier:
    gateway = "wechatpay"

    def __init__(self, settings: WechatPaySettings,
                 credentials: WechatPayCredentials | None = None) -> None:
        self.settings = settings
        self.keys = AccountKeys(settings.credentials, credentials)

    def load(self) -> None:
        self.keys.get()

    async def verify(self, request: NotifyRequest) -> PaymentEvent:
        signed = crypto.SignedHeaders.from_headers(request.headers)
        if signed is None:
            raise CallbackRejected("missing_signature", "Wechatpay-* headers missing")
        refusal = crypto.check_signature(self.keys.get().platform, signed, request.body)
        if refusal is not None:
            raise CallbackRejected(refusal, f"serial {signed.serial[:40]}")
        try:
            envelope = orjson.loads(request.body)
            resource = envelope["resource"]
            event_type = str(envelope["event_type"])
            if resource.get("algorithm") != "AEAD_AES_256_GCM":
                raise CallbackRejected("malformed", "unsupported resource algorithm")
            plain = crypto.decrypt_resource(
                self.keys.get().apiv3_key, str(resource["nonce"]),
                str(resource.get("associated_data") or ""), str(resource["ciphertext"]))
        except crypto.DecryptionError:
            raise CallbackRejected("undecryptable", "resource does not decrypt with our key"
                                   ) from None
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise CallbackRejected("malformed", "not a WeChat Pay notification") from None
        try:
            data = orjson.loads(plain)
        except orjson.JSONDecodeError:
            raise CallbackRejected("malformed", "resource is not JSON") from None
        if not isinstance(data, dict):
            raise CallbackRejected("malformed", "resource is not a JSON object")
        return self._event(event_type, data, str(envelope.get("id") or ""))

    def _event(self, event_type: str, data: dict[str, Any], notify_id: str) -> PaymentEvent:
        out_trade_no = str(data.get("out_trade_no") or "")
        if data.get("mchid") != self.settings.mchid:
            raise CallbackRejected("wrong_merchant", "callback for another merchant",
                                   out_trade_no=out_trade_no or None)
        raw_amount = data.get("amount")
        amount: dict[str, Any] = raw_amount if isinstance(raw_amount, dict) else {}
        total = amount.get("total")
        if not out_trade_no or not isinstance(total, int) or isinstance(total, bool):
            raise CallbackRejected("malformed", "callback lacks out_trade_no or amount.total")
        if event_type == "TRANSACTION.SUCCESS":
            if data.get("appid") != self.settings.appid:
                raise CallbackRejected("wrong_merchant", "callback for another app",
                                       out_trade_no=out_trade_no)
            if data.get("trade_state") != "SUCCESS":
                raise CallbackRejected("malformed", "TRANSACTION.SUCCESS without SUCCESS",
                                       out_trade_no=out_trade_no)
            return PaymentEvent(
                self.gateway, EventKind.PAYMENT, out_trade_no, total,
                gateway_trade_no=str(data.get("transaction_id") or ""),
                occurred_at=str(data.get("success_time") or ""), notify_id=notify_id,
            )
        if event_type in _REFUND_EVENTS:
            refund = amount.get("refund")
            out_refund_no = str(data.get("out_refund_no") or "")
            if not out_refund_no or not isinstance(refund, int) or isinstance(refund, bool):
                raise CallbackRejected("malformed", "refund callback lacks out_refund_no or "
                                       "amount.refund", out_trade_no=out_trade_no)
            return PaymentEvent(
                self.gateway, EventKind.REFUND, out_trade_no, total,
                succeeded=_REFUND_EVENTS[event_type],
                gateway_trade_no=str(data.get("transaction_id") or ""),
                out_refund_no=out_refund_no, refund_fen=refund,
                gateway_refund_no=str(data.get("refund_id") or ""),
                occurred_at=str(data.get("success_time") or ""), notify_id=notify_id,
            )
        # REFUND.ABNORMAL needs a person at the merchant platform; others are not ours.
        raise CallbackRejected("unhandled_event", f"event type {event_type[:40]}",
                               out_trade_no=out_trade_no)

    def answer(self, accepted: bool, reason: str = "") -> NotifyAnswer:
        if accepted:
            return NotifyAnswer(200, b"", "text/plain")
        status = 500 if reason == "unavailable" else 400
        body = orjson.dumps({"code": "FAIL", "message": reason or "refused"})
        return NotifyAnswer(status, body, "application/json")
