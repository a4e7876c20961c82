"""WeChat Pay v3 callbacks: verify, decrypt, and turn into a ``PaymentEvent``.

Refused (and audited by the source): missing headers, a timestamp 5 minutes or more away
(``stale``), an unknown serial, a bad signature, a resource that does not decrypt with our
APIv3 key, another merchant's callback, and any event type we do not handle. The answer to
WeChat Pay is 200 with no body on success, else 4xx/5xx with ``{"code":"FAIL",...}``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Any, TypeGuard

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
        signed = _signed_headers(request.headers)
        platform = self.keys.get().platform
        refusal = crypto.check_signature(platform, signed, request.body)
        if refusal is not None:
            raise CallbackRejected(refusal, _refusal_detail(refusal, signed))
        envelope, resource = _envelope(request.body)
        try:
            plain = crypto.decrypt_resource(
                self.keys.get().apiv3_key, resource["nonce"], resource["associated_data"],
                resource["ciphertext"])
        except crypto.DecryptionError:
            raise CallbackRejected("undecryptable", "resource.ciphertext does not decrypt with "
                                   "our APIv3 key (not Base64, bad nonce or bad GCM tag)"
                                   ) from None
        try:
            data = orjson.loads(plain)
        except orjson.JSONDecodeError:
            raise CallbackRejected("malformed", "resource is not JSON") from None
        if not isinstance(data, dict):
            raise CallbackRejected("malformed", "resource is not a JSON object")
        return self._event(envelope["event_type"], data, envelope["id"])

    def _event(self, event_type: str, data: dict[str, Any], notify_id: str) -> PaymentEvent:
        out_trade_no = str(data.get("out_trade_no") or "")
        if data.get("mchid") != self.settings.mchid:
            raise CallbackRejected("wrong_merchant", "callback for another merchant",
                                   out_trade_no=out_trade_no or None)
        raw_amount = data.get("amount")
        amount: dict[str, Any] = raw_amount if isinstance(raw_amount, dict) else {}
        total = amount.get("total")
        if not out_trade_no or not isinstance(data.get("out_trade_no"), str):
            raise CallbackRejected("malformed", "out_trade_no is missing or not a string")
        if not _is_fen(total):
            raise CallbackRejected("malformed", "amount.total is not a whole number of fen",
                                   out_trade_no=out_trade_no)
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
            if not out_refund_no or not _is_fen(refund):
                raise CallbackRejected("malformed", "refund callback lacks out_refund_no or "
                                       "amount.refund (whole fen)", out_trade_no=out_trade_no)
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

    def answer(self, accepted: bool, reason: str = "", detail: str = "") -> NotifyAnswer:
        if accepted:
            return NotifyAnswer(200, b"", "text/plain")
        status = 500 if reason == "unavailable" else 400
        message = f"{reason or 'refused'}: {detail}" if detail else reason or "refused"
        body = orjson.dumps({"code": "FAIL", "message": message[:300]})
        return NotifyAnswer(status, body, "application/json")


_TIMESTAMP = re.compile(r"[0-9]{1,12}")


def _signed_headers(headers: Mapping[str, str]) -> crypto.SignedHeaders:
    """The four Wechatpay-* headers, each present and printable ASCII, or a refusal naming
    the header (the signed text is built from them as ASCII)."""
    signed = crypto.SignedHeaders.from_headers(headers)
    if signed is None:
        header = next(h for h in crypto.SIGNED_HEADERS if not headers.get(h))
        raise CallbackRejected("missing_signature", f"header {header} is missing")
    unprintable = signed.unprintable()
    if unprintable:
        raise CallbackRejected("malformed", f"header {unprintable} is not printable ASCII")
    if not _TIMESTAMP.fullmatch(signed.timestamp):
        raise CallbackRejected("malformed", "header Wechatpay-Timestamp is not a number of "
                               "seconds")
    return signed


def _refusal_detail(refusal: str, signed: crypto.SignedHeaders) -> str:
    if refusal == "stale":
        return (f"header Wechatpay-Timestamp {signed.timestamp} is "
                f"{crypto.MAX_SKEW_SECONDS // 60} minutes or more from now")
    if refusal == "unknown_serial":
        return f"header Wechatpay-Serial {signed.serial[:40]} names no platform key we hold"
    try:
        base64.b64decode(signed.signature, validate=True)
    except (binascii.Error, ValueError):
        return "header Wechatpay-Signature is not Base64"
    return f"header Wechatpay-Signature does not verify with serial {signed.serial[:40]}"


def _envelope(body: bytes) -> tuple[dict[str, str], dict[str, str]]:
    """The notification's ``id`` and ``event_type`` and its ``resource`` fields, each
    checked to be text, or a refusal naming the field."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise CallbackRejected("malformed", "body is not JSON") from None
    if not isinstance(doc, dict):
        raise CallbackRejected("malformed", "body is not a JSON object")
    resource = doc.get("resource")
    if not isinstance(resource, dict):
        raise CallbackRejected("malformed", "resource is missing or not an object")
    if resource.get("algorithm") != "AEAD_AES_256_GCM":
        raise CallbackRejected("malformed", "resource.algorithm is not AEAD_AES_256_GCM")
    envelope = {"event_type": _text(doc, "event_type", required=True),
                "id": _text(doc, "id", required=False)}
    fields = {"nonce": _text(resource, "nonce", required=True, prefix="resource."),
              "associated_data": _text(resource, "associated_data", required=False,
                                       prefix="resource."),
              "ciphertext": _text(resource, "ciphertext", required=True, prefix="resource.")}
    return envelope, fields


def _text(doc: dict[str, Any], name: str, *, required: bool, prefix: str = "") -> str:
    value = doc.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise CallbackRejected("malformed", f"{prefix}{name} is missing or not a string")
    return value


def _is_fen(value: object) -> TypeGuard[int]:
    """A whole, non-negative number of fen (WeChat Pay sends integers, never decimals)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
