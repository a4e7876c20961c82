"""Mobile-payment result notifications: open the SM4/SM2 envelope, turn into events.

The platform posts the same envelope as its answers, sealed with the app secret and signed
with its SM2 key; ``data.notifyType`` is ``PAY`` (with ``ordStas`` 6 for a settlement) or
``REFUND`` (``appRefdSn``, ``totlRefdAmt``, ``refdStas``). Refused (and audited): an envelope
that does not open or verify, another app's notification, a malformed amount. The answer is
the JSON ``{"code": 0, "message": "成功"}`` (modelled; unconfirmed).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from adapters.mobilepay import crypto
from adapters.mobilepay.client import fen_of
from adapters.mobilepay.settings import MobilePayCredentials, MobilePaySettings
from adapters.payments.account import AccountKeys
from adapters.payments.errors import CallbackRejected
from adapters.payments.model import EventKind, PaymentEvent
from adapters.payments.notify import NotifyAnswer, NotifyRequest
from engine.errors import PermanentError


class MobilePayNotifyVerifier:
    gateway = "mobilepay"

    def __init__(self, settings: MobilePaySettings,
                 credentials: MobilePayCredentials | None = None) -> None:
        self.settings = settings
        self.keys = AccountKeys(settings.credentials, credentials)

    def load(self) -> None:
        self.keys.get()

    async def verify(self, request: NotifyRequest) -> PaymentEvent:
        try:
            envelope = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            raise CallbackRejected("malformed", "notification is not JSON") from None
        if not isinstance(envelope, dict):
            raise CallbackRejected("malformed", "notification is not a JSON object")
        if not envelope.get("signData"):
            raise CallbackRejected("missing_signature", "field signData is missing")
        for name, value in envelope.items():
            # Every field but ``extra`` is signed as text: a float or a nested value cannot
            # be part of a genuine envelope (and the signed text could not be rebuilt).
            if name != "extra" and (not isinstance(value, str | int) or isinstance(value, bool)):
                raise CallbackRejected("malformed", f"field {name[:40]} is not text or an "
                                       "integer")
        if envelope.get("appId") != self.settings.app_id:
            raise CallbackRejected("wrong_merchant", "notification for another app")
        creds = self.keys.get()
        try:
            data = await asyncio.to_thread(crypto.open_envelope, envelope,
                                           app_secret=creds.app_secret,
                                           peer_public_hex=creds.platform_public_hex)
        except crypto.EnvelopeError as exc:
            reason = "bad_signature" if "signature" in str(exc) else "undecryptable"
            raise CallbackRejected(reason, str(exc)[:80]) from None
        try:
            return self._event(data)
        except PermanentError as exc:
            raise CallbackRejected("malformed", str(exc)[:80],
                                   out_trade_no=str(data.get("medOrgOrd") or "") or None
                                   ) from None

    def _event(self, data: dict[str, Any]) -> PaymentEvent:
        no = str(data.get("medOrgOrd") or "")
        if not no:
            raise PermanentError("notification without medOrgOrd")
        total = fen_of(data.get("feeSumamt"), "feeSumamt")  # refuses a negative one
        kind = data.get("notifyType")
        pay_ord_id = str(data.get("payOrdId") or "")
        if kind == "PAY":
            status = str(data.get("ordStas"))
            if status not in ("6", "15"):
                raise PermanentError(f"PAY notification with ordStas {status[:4]}")
            return PaymentEvent(self.gateway, EventKind.PAYMENT, no, total,
                                succeeded=status == "6", gateway_trade_no=pay_ord_id,
                                occurred_at=str(data.get("setlTime") or ""))
        if kind == "REFUND":
            status = str(data.get("refdStas"))
            if status not in ("SUCC", "FAIL"):
                raise PermanentError(f"REFUND notification with refdStas {status[:4]}")
            return PaymentEvent(self.gateway, EventKind.REFUND, no, total,
                                succeeded=status == "SUCC", gateway_trade_no=pay_ord_id,
                                out_refund_no=str(data.get("appRefdSn") or ""),
                                refund_fen=fen_of(data.get("totlRefdAmt"), "totlRefdAmt"),
                                gateway_refund_no=str(data.get("appRefdSn") or ""),
                                occurred_at=str(data.get("refdTime") or ""))
        raise PermanentError(f"unknown notifyType {str(kind)[:10]}")

    def answer(self, accepted: bool, reason: str = "", detail: str = "") -> NotifyAnswer:
        if accepted:
            return NotifyAnswer(200, orjson.dumps({"code": 0, "message": "成功"}),
                                "application/json")
        message = f"{reason or 'refused'}: {detail}" if detail else reason or "refused"
        return NotifyAnswer(500 if reason == "unavailable" else 400,
                            orjson.dumps({"code": 1, "message": message[:300]}),
                            "application/json")
