"""Malformed payment callbacks, over a plain socket to each gateway's callback source.

Each case is a callback for an order we created, broken in one way (headers, signature,
timestamp, body, resource, amounts, form fields). It must be answered with the gateway's
failure and a message naming what was wrong, audited, and change nothing: the order stays
created, no event is stored, the channel hears nothing. The genuine callback for the same
order sent right after is then believed once, so the source keeps serving and loses nothing.
Callbacks are signed here with the simulators' own keys, so a case breaks only what it names.
One rig per gateway serves the whole module.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import orjson
import pytest
import pytest_asyncio

from adapters.alipay import crypto as ali_crypto
from adapters.mobilepay import crypto as sm
from adapters.payments.model import OrderState
from adapters.payments.money import format_yuan
from adapters.payments.signing import certificate_pem
from adapters.unionpay import crypto as up_crypto
from adapters.wechatpay import crypto as wx_crypto
from engine.database import Database
from tests.payments.conftest import Channel
from tests.payments.gateway_rig import RIGS, Harness, Rig
from tests.raw_http import Answer, assert_no_errors, chunked, exchange, request

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(autouse=True)
def _no_errors_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    yield
    assert_no_errors(caplog)

AMOUNT = 1000
_numbers = itertools.count(1)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rigs(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[str, Rig[Any, Any]]]:
    tmp: Path = tmp_path_factory.mktemp("payments-malformed")
    db = Database(tmp / "hisbridge.db", synchronous="NORMAL")
    await db.open()
    async with aiohttp.ClientSession() as http, contextlib.AsyncExitStack() as stack:
        started = {}
        for gateway, make in RIGS.items():
            harness = Harness(tmp / gateway, db, http, Channel())
            started[gateway] = await stack.enter_async_context(make(harness))
        yield started
    await db.close()


async def new_order(rig: Rig[Any, Any]) -> str:
    no = f"{rig.gateway[:2].upper()}M{next(_numbers):06d}"
    await rig.service.create_order(no, AMOUNT, "药费", rig.kind, rig.extra or None)
    return no


def post(rig: Rig[Any, Any], body: bytes, headers: dict[str, str],
         raw_headers: bytes = b"") -> bytes:
    return request("POST", rig.source.path, body, headers=headers, raw_headers=raw_headers)


# -- WeChat Pay ----------------------------------------------------------------------------


@dataclass
class Wx:
    """A WeChat Pay callback: the resource, the envelope around it, the signed headers."""

    data: dict[str, Any]
    nonce: str = "k4l2nMyw8Zq0"
    skew: int = 0
    envelope: Callable[[dict[str, Any]], bytes] | None = None
    headers: Callable[[dict[str, str]], dict[str, str]] | None = None
    raw_headers: bytes = b""


def wx_callback(rig: Rig[Any, Any], no: str, change: Callable[[Wx], None] | None = None
                ) -> bytes:
    sim = rig.sim
    order = sim.orders.get(no)
    cb = Wx({"appid": sim.appid, "mchid": sim.mchid, "out_trade_no": no,
             "transaction_id": order.transaction_id if order else "4200x",
             "trade_state": "SUCCESS", "success_time": "2026-01-01T10:00:00+08:00",
             "amount": {"total": AMOUNT, "currency": "CNY"}})
    if change is not None:
        change(cb)
    resource = {"original_type": "transaction", "algorithm": "AEAD_AES_256_GCM",
                "ciphertext": wx_crypto.encrypt_resource(sim.apiv3_key, cb.nonce, "transaction",
                                                         orjson.dumps(cb.data)),
                "associated_data": "transaction", "nonce": cb.nonce}
    envelope = {"id": str(uuid.uuid4()), "event_type": "TRANSACTION.SUCCESS",
                "resource_type": "encrypt-resource", "resource": resource}
    body = cb.envelope(envelope) if cb.envelope else orjson.dumps(envelope)
    ts, nonce = str(int(time.time()) + cb.skew), "5K8264ILTKCH16CQ2502SI8ZNMTM67VS"
    headers = {"Content-Type": "application/json", "Wechatpay-Timestamp": ts,
               "Wechatpay-Nonce": nonce, "Wechatpay-Serial": sim.serial,
               "Wechatpay-Signature": wx_crypto.sign_response(sim.platform_key, ts, nonce, body)}
    if cb.headers:
        headers = cb.headers(headers)
    return post(rig, body, headers, cb.raw_headers)


def without(name: str) -> Callable[[Wx], None]:
    def change(cb: Wx) -> None:
        cb.headers = lambda h: {k: v for k, v in h.items() if k != name}
    return change


def header(name: str, value: str) -> Callable[[Wx], None]:
    def change(cb: Wx) -> None:
        cb.headers = lambda h: {**h, name: value}
    return change


def wx_data(**values: Any) -> Callable[[Wx], None]:
    def change(cb: Wx) -> None:
        cb.data.update(values)
    return change


def wx_body(make: Callable[[dict[str, Any]], bytes]) -> Callable[[Wx], None]:
    def change(cb: Wx) -> None:
        cb.envelope = make
    return change


def wx_resource(**values: Any) -> Callable[[Wx], None]:
    def change(cb: Wx) -> None:
        cb.envelope = lambda e: orjson.dumps({**e, "resource": {**e["resource"], **values}})
    return change


def bad_tag(envelope: dict[str, Any]) -> bytes:
    data = bytearray(base64.b64decode(envelope["resource"]["ciphertext"]))
    data[-1] ^= 1
    resource = {**envelope["resource"], "ciphertext": base64.b64encode(data).decode()}
    return orjson.dumps({**envelope, "resource": resource})


def wx_raw_nonce(cb: Wx) -> None:
    cb.headers = lambda h: {k: v for k, v in h.items() if k != "Wechatpay-Nonce"}
    cb.raw_headers = b"Wechatpay-Nonce: n\xe9\r\n"


WECHATPAY: dict[str, tuple[Callable[[Wx], None], str, str]] = {
    "Wechatpay-Signature missing": (without("Wechatpay-Signature"), "missing_signature",
                                    "header Wechatpay-Signature is missing"),
    "Wechatpay-Timestamp missing": (without("Wechatpay-Timestamp"), "missing_signature",
                                    "header Wechatpay-Timestamp is missing"),
    "Wechatpay-Nonce missing": (without("Wechatpay-Nonce"), "missing_signature",
                                "header Wechatpay-Nonce is missing"),
    "Wechatpay-Serial missing": (without("Wechatpay-Serial"), "missing_signature",
                                 "header Wechatpay-Serial is missing"),
    "Wechatpay-Nonce empty": (header("Wechatpay-Nonce", ""), "missing_signature",
                              "header Wechatpay-Nonce is missing"),
    "Wechatpay-Nonce not ASCII": (wx_raw_nonce, "malformed",
                                  "header Wechatpay-Nonce is not printable ASCII"),
    "signature not Base64": (header("Wechatpay-Signature", "not*base64!"), "bad_signature",
                             "header Wechatpay-Signature is not Base64"),
    "signature of the wrong length": (
        header("Wechatpay-Signature", base64.b64encode(b"\x01" * 10).decode()),
        "bad_signature", "header Wechatpay-Signature does not verify"),
    "signature by another key": (
        header("Wechatpay-Signature", base64.b64encode(b"\x01" * 256).decode()),
        "bad_signature", "does not verify"),
    "unknown key serial": (header("Wechatpay-Serial", "5157F09EFDC096DE15EBE81A47057A72"),
                           "unknown_serial", "names no platform key we hold"),
    "timestamp not a number": (header("Wechatpay-Timestamp", "yesterday"), "malformed",
                               "header Wechatpay-Timestamp is not a number of seconds"),
    "timestamp negative": (header("Wechatpay-Timestamp", "-1700000000"), "malformed",
                           "not a number of seconds"),
    "timestamp in exponent form": (header("Wechatpay-Timestamp", "1.7e9"), "malformed",
                                   "not a number of seconds"),
    "timestamp an hour old": (lambda cb: setattr(cb, "skew", -3600), "stale",
                              "5 minutes or more from now"),
    "timestamp a day ahead": (lambda cb: setattr(cb, "skew", 86400), "stale",
                              "5 minutes or more from now"),
    "timestamp far in the past": (header("Wechatpay-Timestamp", "0"), "stale", "from now"),
    "body not JSON": (wx_body(lambda e: b"id=1&resource=x"), "malformed", "body is not JSON"),
    "body not UTF-8": (wx_body(lambda e: b'{"id": "\xff"}'), "malformed", "body is not JSON"),
    "body empty": (wx_body(lambda e: b""), "malformed", "body is not JSON"),
    "body a list": (wx_body(lambda e: orjson.dumps([e])), "malformed",
                    "body is not a JSON object"),
    "body 100k levels deep": (wx_body(lambda e: b"[" * 30_000 + b"]" * 30_000), "malformed",
                              "body is not JSON"),
    "resource missing": (wx_body(lambda e: orjson.dumps({**e, "resource": None})), "malformed",
                         "resource is missing or not an object"),
    "event_type a number": (wx_body(lambda e: orjson.dumps({**e, "event_type": 1})),
                            "malformed", "event_type is missing or not a string"),
    "resource nonce a number": (wx_resource(nonce=12345678), "malformed",
                                "resource.nonce is missing or not a string"),
    "resource ciphertext null": (wx_resource(ciphertext=None), "malformed",
                                 "resource.ciphertext is missing or not a string"),
    "resource ciphertext not Base64": (wx_resource(ciphertext="%%%not base64%%%"),
                                       "undecryptable", "resource.ciphertext does not decrypt"),
    "resource with a bad GCM tag": (wx_body(bad_tag), "undecryptable",
                                    "resource.ciphertext does not decrypt"),
    "resource with another nonce": (wx_resource(nonce="AAAAAAAAAAAA"), "undecryptable",
                                    "does not decrypt"),
    "resource algorithm unknown": (wx_resource(algorithm="AES_128_CBC"), "malformed",
                                   "resource.algorithm is not AEAD_AES_256_GCM"),
    "amount a float": (wx_data(amount={"total": 1000.0}), "malformed",
                       "amount.total is not a whole number of fen"),
    "amount negative": (wx_data(amount={"total": -1000}), "malformed",
                        "amount.total is not a whole number of fen"),
    "amount a string": (wx_data(amount={"total": "1000"}), "malformed",
                        "amount.total is not a whole number of fen"),
    "amount null": (wx_data(amount=None), "malformed", "amount.total"),
    "amount a boolean": (wx_data(amount={"total": True}), "malformed", "amount.total"),
    "amount of another order": (wx_data(amount={"total": 999}), "amount_mismatch", ""),
    "amount huge": (wx_data(amount={"total": 10**18}), "amount_mismatch", ""),
    "out_trade_no a number": (wx_data(out_trade_no=12345), "malformed",
                              "out_trade_no is missing or not a string"),
    "out_trade_no unknown": (wx_data(out_trade_no="WX-NOT-OURS"), "unknown_order", ""),
    "another merchant": (wx_data(mchid="1999999999"), "wrong_merchant", ""),
}


@pytest.mark.parametrize("case", list(WECHATPAY))
async def test_wechatpay_malformed_callback(rigs: dict[str, Rig[Any, Any]], case: str) -> None:
    rig = rigs["wechatpay"]
    change, reason, detail = WECHATPAY[case]
    no = await new_order(rig)
    answer = await _refused(rig, no, wx_callback(rig, no, change), reason)
    refusal = answer.json()
    assert isinstance(refusal, dict) and refusal["code"] == "FAIL"
    assert refusal["message"].startswith(reason) and detail in refusal["message"]
    await _believed(rig, no, wx_callback(rig, no))


# -- Alipay --------------------------------------------------------------------------------


def ali_fields(rig: Rig[Any, Any], no: str) -> list[tuple[str, str]]:
    trade = rig.sim.trades.get(no)
    return [("app_id", rig.sim.app_id), ("seller_id", rig.sim.seller_id),
            ("out_trade_no", no), ("trade_no", trade.trade_no if trade else "2024x"),
            ("trade_status", "TRADE_SUCCESS"), ("total_amount", format_yuan(AMOUNT)),
            ("gmt_payment", "2026-01-01 10:00:00"), ("notify_id", uuid.uuid4().hex),
            ("notify_type", "trade_status_sync"), ("charset", "utf-8"), ("version", "1.0"),
            ("sign_type", "RSA2")]


def ali_signed(rig: Rig[Any, Any], fields: list[tuple[str, str]]) -> list[tuple[str, str]]:
    sign = ali_crypto.sign_response(rig.sim.alipay_key, ali_crypto.notify_content(dict(fields)))
    return [*fields, ("sign", sign)]


FORM = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}


def ali_callback(rig: Rig[Any, Any], no: str,
                 change: Callable[[list[tuple[str, str]]], list[tuple[str, str]]] | None = None,
                 *, sign_after: bool = False) -> bytes:
    """``change`` edits the fields before signing (``sign_after``: after, breaking it)."""
    fields = ali_fields(rig, no)
    if change is None:
        return post(rig, urlencode(ali_signed(rig, fields)).encode(), FORM)
    fields = change(ali_signed(rig, fields)) if sign_after else ali_signed(rig, change(fields))
    return post(rig, urlencode(fields).encode(), FORM)


def replace(name: str, value: str) -> Callable[[list[tuple[str, str]]], list[tuple[str, str]]]:
    return lambda fields: [(k, value if k == name else v) for k, v in fields]


def drop(name: str) -> Callable[[list[tuple[str, str]]], list[tuple[str, str]]]:
    return lambda fields: [(k, v) for k, v in fields if k != name]


def twice(name: str, value: str) -> Callable[[list[tuple[str, str]]], list[tuple[str, str]]]:
    return lambda fields: [*fields, (name, value)]


AlipayCase = tuple[Callable[[Rig[Any, Any], str], bytes], str, str]
ALIPAY: dict[str, AlipayCase] = {
    "sign missing": (lambda r, n: ali_callback(r, n, drop("sign"), sign_after=True),
                     "missing_signature", "field sign is missing"),
    "sign empty": (lambda r, n: ali_callback(r, n, replace("sign", ""), sign_after=True),
                   "missing_signature", "field sign is missing"),
    "sign not Base64": (lambda r, n: ali_callback(r, n, replace("sign", "%%%"),
                                                  sign_after=True),
                        "bad_signature", "field sign does not verify"),
    "sign of the wrong length": (
        lambda r, n: ali_callback(r, n, replace("sign", base64.b64encode(b"x").decode()),
                                  sign_after=True), "bad_signature", "does not verify"),
    "amount changed after signing": (
        lambda r, n: ali_callback(r, n, replace("total_amount", "0.01"), sign_after=True),
        "bad_signature", "does not verify"),
    "amount given twice": (lambda r, n: ali_callback(r, n, twice("total_amount", "0.01"),
                                                     sign_after=True),
                           "malformed", "field total_amount is given more than once"),
    "sign given twice": (lambda r, n: ali_callback(r, n, twice("sign", "x"), sign_after=True),
                         "malformed", "field sign is given more than once"),
    "amount not a number": (lambda r, n: ali_callback(r, n, replace("total_amount", "ten")),
                            "malformed", "total_amount 'ten' is not a yuan amount"),
    "amount negative": (lambda r, n: ali_callback(r, n, replace("total_amount", "-10.00")),
                        "malformed", "total_amount '-10.00' is negative"),
    "amount with sub-fen digits": (
        lambda r, n: ali_callback(r, n, replace("total_amount", "10.001")),
        "malformed", "is not a yuan amount"),
    "amount in exponent form": (lambda r, n: ali_callback(r, n, replace("total_amount", "1e1")),
                                "malformed", "is not a yuan amount"),
    "amount of another order": (lambda r, n: ali_callback(r, n, replace("total_amount",
                                                                        "9.99")),
                                "amount_mismatch", ""),
    "out_trade_no unknown": (lambda r, n: ali_callback(r, n, replace("out_trade_no",
                                                                     "AL-NOT-OURS")),
                             "unknown_order", ""),
    "out_trade_no missing": (lambda r, n: ali_callback(r, n, drop("out_trade_no")),
                             "malformed", "notify without out_trade_no"),
    "another app": (lambda r, n: ali_callback(r, n, replace("app_id", "2021000000000099")),
                    "wrong_merchant", ""),
    "charset unsupported": (lambda r, n: ali_callback(r, n, replace("charset", "ebcdic")),
                            "malformed", "unsupported charset 'ebcdic'"),
    "charset gbk, bytes not gbk": (
        lambda r, n: post(r, urlencode(ali_signed(r, ali_fields(r, n))).encode()
                          .replace(b"charset=utf-8", b"charset=gbk") + b"&subject=%FF%FF",
                          FORM),
        "malformed", "notify is not valid gbk text"),
    "body not URL-encoded": (lambda r, n: post(r, "out_trade_no=张三".encode(), FORM),
                             "malformed", "notify body is not URL-encoded"),
    "body not UTF-8": (lambda r, n: post(r, b"out_trade_no=\xff", FORM), "malformed",
                       "not URL-encoded"),
    "body empty": (lambda r, n: post(r, b"", FORM), "missing_signature",
                   "field sign is missing"),
    "body JSON": (lambda r, n: post(r, orjson.dumps(dict(ali_signed(r, ali_fields(r, n)))),
                                    {"Content-Type": "application/json"}),
                  "missing_signature", "field sign is missing"),
}


@pytest.mark.parametrize("case", list(ALIPAY))
async def test_alipay_malformed_notify(rigs: dict[str, Rig[Any, Any]], case: str) -> None:
    rig = rigs["alipay"]
    build, reason, detail = ALIPAY[case]
    no = await new_order(rig)
    answer = await _refused(rig, no, build(rig, no), reason)
    text = answer.body.decode()
    assert text.startswith(f"fail {reason}") and detail in text
    await _believed(rig, no, ali_callback(rig, no))


# -- UnionPay ------------------------------------------------------------------------------


def up_fields(rig: Rig[Any, Any], no: str) -> list[tuple[str, str]]:
    txn = rig.sim.txns.get(no)
    return [("version", "5.1.0"), ("encoding", "UTF-8"), ("signMethod", "01"),
            ("txnType", "01"), ("txnSubType", "01"), ("bizType", "000000"),
            ("accessType", "0"), ("merId", rig.sim.mer_id), ("orderId", no),
            ("txnTime", txn.txn_time if txn else "20260101100000"),
            ("txnAmt", str(AMOUNT)), ("currencyCode", "156"),
            ("queryId", txn.query_id if txn else "Q1"), ("respCode", "00"),
            ("respMsg", "Success!"), ("traceTime", "0101100000"),
            ("signPubKeyCert", certificate_pem(rig.sim.sign_cert))]


def up_signed(rig: Rig[Any, Any], fields: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [*fields, ("signature", up_crypto.sign_fields(rig.sim.sign_key, dict(fields)))]


def up_callback(rig: Rig[Any, Any], no: str,
                change: Callable[[list[tuple[str, str]]], list[tuple[str, str]]] | None = None,
                *, sign_after: bool = False) -> bytes:
    fields = up_fields(rig, no)
    if change is None:
        fields = up_signed(rig, fields)
    else:
        fields = change(up_signed(rig, fields)) if sign_after else up_signed(rig,
                                                                             change(fields))
    return post(rig, urlencode(fields, quote_via=quote).encode(), FORM)


UNIONPAY: dict[str, AlipayCase] = {
    "signature missing": (lambda r, n: up_callback(r, n, drop("signature"), sign_after=True),
                          "missing_signature", "fields signature and signPubKeyCert"),
    "certificate missing": (lambda r, n: up_callback(r, n, drop("signPubKeyCert"),
                                                     sign_after=True),
                            "missing_signature", "are required"),
    "signature not Base64": (lambda r, n: up_callback(r, n, replace("signature", "@@@"),
                                                      sign_after=True),
                             "bad_signature", "field signature does not verify"),
    "signature of the wrong length": (
        lambda r, n: up_callback(r, n, replace("signature", base64.b64encode(b"xy").decode()),
                                 sign_after=True), "bad_signature", "does not verify"),
    "certificate garbage": (lambda r, n: up_callback(r, n, replace("signPubKeyCert", "-----"),
                                                     sign_after=True),
                            "untrusted_certificate", "signPubKeyCert is not a current"),
    "amount changed after signing": (
        lambda r, n: up_callback(r, n, replace("txnAmt", "1"), sign_after=True),
        "bad_signature", "does not verify"),
    "amount given twice": (lambda r, n: up_callback(r, n, twice("txnAmt", "1"),
                                                    sign_after=True),
                           "malformed", "field txnAmt is given more than once"),
    "amount in yuan": (lambda r, n: up_callback(r, n, replace("txnAmt", "10.00")),
                       "malformed", "txnAmt '10.00' is not a whole number of fen"),
    "amount negative": (lambda r, n: up_callback(r, n, replace("txnAmt", "-1000")),
                        "malformed", "txnAmt is negative"),
    "amount garbage": (lambda r, n: up_callback(r, n, replace("txnAmt", "1,000")),
                       "malformed", "is not a whole number of fen"),
    "amount of another order": (lambda r, n: up_callback(r, n, replace("txnAmt", "999")),
                                "amount_mismatch", ""),
    "orderId unknown": (lambda r, n: up_callback(r, n, replace("orderId", "UPNOTOURS")),
                        "unknown_order", ""),
    "orderId missing": (lambda r, n: up_callback(r, n, drop("orderId")), "malformed",
                        "notification without orderId"),
    "another merchant": (lambda r, n: up_callback(r, n, replace("merId", "777290058110099")),
                         "wrong_merchant", ""),
    "body not UTF-8": (lambda r, n: post(r, b"orderId=\xff\xfe", FORM), "malformed",
                       "notification is not a UTF-8 form"),
    "percent-escape not UTF-8": (lambda r, n: post(r, b"orderId=%FF%FE", FORM), "malformed",
                                 "notification is not a UTF-8 form"),
    "body empty": (lambda r, n: post(r, b"", FORM), "missing_signature", "are required"),
}


@pytest.mark.parametrize("case", list(UNIONPAY))
async def test_unionpay_malformed_notification(rigs: dict[str, Rig[Any, Any]],
                                               case: str) -> None:
    rig = rigs["unionpay"]
    build, reason, detail = UNIONPAY[case]
    no = await new_order(rig)
    answer = await _refused(rig, no, build(rig, no), reason)
    text = answer.body.decode()
    assert text.startswith(reason) and detail in text
    await _believed(rig, no, up_callback(rig, no))


# -- mobile payment ------------------------------------------------------------------------


def mp_data(rig: Rig[Any, Any], no: str) -> dict[str, Any]:
    order = rig.sim.orders.get(no)
    return {"medOrgOrd": no, "payOrdId": order.pay_ord_id if order else "ORDX",
            "notifyType": "PAY", "ordStas": "6", "feeSumamt": format_yuan(AMOUNT),
            "setlTime": "2026-01-01 10:00:00"}


def mp_envelope(rig: Rig[Any, Any], data: dict[str, Any]) -> dict[str, Any]:
    sim = rig.sim
    return sm.seal(app_id=sim.app_id, app_secret=sim.app_secret, private_hex=sim.private_hex,
                   public_hex=sim.public_hex, data=data, timestamp=int(time.time()))


def mp_callback(rig: Rig[Any, Any], no: str, *,
                data: Callable[[dict[str, Any]], None] | None = None,
                envelope: Callable[[dict[str, Any]], bytes] | None = None) -> bytes:
    values = mp_data(rig, no)
    if data is not None:
        data(values)
    sealed = mp_envelope(rig, values)
    body = envelope(sealed) if envelope else orjson.dumps(sealed)
    return post(rig, body, {"Content-Type": "application/json"})


def mp_encrypted(rig: Rig[Any, Any], plaintext: bytes) -> str:
    """``plaintext`` as encData under the app's key (what only the platform can send)."""
    key = sm.derive_sm4_key(rig.sim.app_id, rig.sim.app_secret)
    return sm.sm4_encrypt(key, plaintext).hex().upper()


def mp_set(**values: Any) -> Callable[[dict[str, Any]], None]:
    return lambda data: data.update(values)


def mp_env(**values: Any) -> Callable[[dict[str, Any]], bytes]:
    return lambda e: orjson.dumps({**e, **values})


MOBILEPAY: dict[str, AlipayCase] = {
    "signData missing": (lambda r, n: mp_callback(r, n, envelope=lambda e: orjson.dumps(
        {k: v for k, v in e.items() if k != "signData"})), "missing_signature",
        "field signData is missing"),
    "signData not Base64": (lambda r, n: mp_callback(r, n, envelope=mp_env(signData="***")),
                            "bad_signature", "bad signature"),
    "signData of the wrong length": (
        lambda r, n: mp_callback(r, n, envelope=mp_env(signData=base64.b64encode(
            b"\x01" * 10).decode())), "bad_signature", "bad signature"),
    "timestamp a float": (lambda r, n: mp_callback(r, n, envelope=mp_env(timestamp=1.5)),
                          "malformed", "field timestamp is not text or an integer"),
    "timestamp null": (lambda r, n: mp_callback(r, n, envelope=mp_env(timestamp=None)),
                       "malformed", "field timestamp is not text or an integer"),
    "field added, deeply nested": (
        lambda r, n: mp_callback(r, n, envelope=lambda e: orjson.dumps(e)[:-1]
                                 + b',"x":' + b"[" * 1000 + b"]" * 1000 + b"}"),
        "malformed", "field x is not text or an integer"),
    "encData not hex": (lambda r, n: mp_callback(r, n, envelope=mp_env(encData="zz")),
                        "undecryptable", "encData is not hex"),
    "encData not whole blocks": (lambda r, n: mp_callback(r, n, envelope=mp_env(
        encData="00" * 7)), "undecryptable", "not a whole number of blocks"),
    "encData holding NaN": (lambda r, n: mp_callback(r, n, envelope=mp_env(
        encData=mp_encrypted(r, b'{"feeSumamt": NaN}'))),
        "undecryptable", "encData does not decrypt to JSON (NaN is not valid JSON)"),
    "encData nested too deep": (lambda r, n: mp_callback(r, n, envelope=mp_env(
        encData=mp_encrypted(r, b"[" * 3000 + b"]" * 3000))),
        "undecryptable", "encData does not decrypt to JSON (JSON nested too deeply)"),
    "encData nested just within the parser": (lambda r, n: mp_callback(r, n, envelope=mp_env(
        encData=mp_encrypted(r, b'{"x":' + b"[" * 980 + b"]" * 980 + b"}"))),
        "undecryptable", "nested too deeply"),
    "body not JSON": (lambda r, n: post(r, b"appId=x", {"Content-Type": "application/json"}),
                      "malformed", "notification is not JSON"),
    "body not UTF-8": (lambda r, n: post(r, b'{"appId": "\xff"}',
                                         {"Content-Type": "application/json"}),
                       "malformed", "notification is not JSON"),
    "body a list": (lambda r, n: post(r, b"[]", {"Content-Type": "application/json"}),
                    "malformed", "notification is not a JSON object"),
    "body 100k levels deep": (lambda r, n: post(r, b"[" * 30_000 + b"]" * 30_000,
                                                {"Content-Type": "application/json"}),
                              "malformed", "notification is not JSON"),
    "amount garbage": (lambda r, n: mp_callback(r, n, data=mp_set(feeSumamt="ten")),
                       "malformed", "no valid feeSumamt"),
    "amount negative": (lambda r, n: mp_callback(r, n, data=mp_set(feeSumamt="-10.00")),
                        "malformed", "feeSumamt is negative"),
    "amount with sub-fen digits": (lambda r, n: mp_callback(r, n, data=mp_set(
        feeSumamt="10.001")), "malformed", "no valid feeSumamt"),
    "amount of another order": (lambda r, n: mp_callback(r, n, data=mp_set(
        feeSumamt="9.99")), "amount_mismatch", ""),
    "medOrgOrd unknown": (lambda r, n: mp_callback(r, n, data=mp_set(medOrgOrd="MPNOTOURS")),
                          "unknown_order", ""),
    "medOrgOrd missing": (lambda r, n: mp_callback(r, n, data=mp_set(medOrgOrd="")),
                          "malformed", "notification without medOrgOrd"),
    "ordStas unknown": (lambda r, n: mp_callback(r, n, data=mp_set(ordStas="99")),
                        "malformed", "PAY notification with ordStas 99"),
    "another app": (lambda r, n: mp_callback(r, n, envelope=mp_env(appId="OTHER")),
                    "wrong_merchant", ""),
}


@pytest.mark.parametrize("case", list(MOBILEPAY))
async def test_mobilepay_malformed_notification(rigs: dict[str, Rig[Any, Any]],
                                                case: str) -> None:
    rig = rigs["mobilepay"]
    build, reason, detail = MOBILEPAY[case]
    no = await new_order(rig)
    answer = await _refused(rig, no, build(rig, no), reason)
    refusal = answer.json()
    assert isinstance(refusal, dict) and refusal["code"] == 1
    assert refusal["message"].startswith(reason) and detail in refusal["message"]
    await _believed(rig, no, mp_callback(rig, no))


# -- every gateway -------------------------------------------------------------------------


GENUINE = {"wechatpay": wx_callback, "alipay": ali_callback, "unionpay": up_callback,
           "mobilepay": mp_callback}


@pytest.mark.parametrize("gateway", list(RIGS))
@pytest.mark.parametrize("how", ["declared length", "chunked, still streaming"])
async def test_callback_over_the_limit_is_refused_while_it_streams(
        rigs: dict[str, Rig[Any, Any]], gateway: str, how: str) -> None:
    rig = rigs[gateway]
    no = await new_order(rig)
    if how == "declared length":  # 50 MB announced, none sent
        data = request("POST", rig.source.path, headers={"Content-Length": "52428800"},
                       length=False)
    else:  # 96 KiB sent of a body that never ends
        data = request("POST", rig.source.path, chunked(*[b"a" * 32768] * 3, end=False),
                       headers={"Transfer-Encoding": "chunked"}, length=False)
    answer = await _refused(rig, no, data, "too_large", timeout=2.0)
    assert b"callback body over the limit of 65536 bytes" in answer.body
    assert answer.headers.get("connection") == "close"
    await _believed(rig, no, GENUINE[gateway](rig, no))


@pytest.mark.parametrize("gateway", list(RIGS))
@pytest.mark.parametrize("content_type", [None, "text/plain", "application/octet-stream"])
async def test_genuine_callback_with_an_odd_content_type_is_believed_once(
        rigs: dict[str, Rig[Any, Any]], gateway: str, content_type: str | None) -> None:
    """The signature, not the Content-Type, is what proves a callback: refusing a genuine one
    for its header would leave a paid order unpaid until the gateway gives up."""
    rig = rigs[gateway]
    no = await new_order(rig)
    data = GENUINE[gateway](rig, no)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = [line for line in head.split(b"\r\n") if not line.startswith(b"Content-Type")]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}".encode())
    await _believed(rig, no, b"\r\n".join(lines) + b"\r\n\r\n" + body)
    await _believed(rig, no, data, duplicate=True)


@pytest.mark.parametrize("gateway", list(RIGS))
async def test_genuine_callback_sent_in_chunks_is_believed(
        rigs: dict[str, Rig[Any, Any]], gateway: str) -> None:
    rig = rigs[gateway]
    no = await new_order(rig)
    head, _, body = GENUINE[gateway](rig, no).partition(b"\r\n\r\n")
    lines = [line for line in head.split(b"\r\n") if not line.startswith(b"Content-Length")]
    pieces = [body[i:i + 100] for i in range(0, len(body), 100)]
    await _believed(rig, no, b"\r\n".join([*lines, b"Transfer-Encoding: chunked"])
                    + b"\r\n\r\n" + chunked(*pieces))


async def _refused(rig: Rig[Any, Any], no: str, data: bytes, reason: str, *,
                   timeout: float = 5.0) -> Answer:
    heard = len(rig.channel.messages)
    audits = len(await rig.store.audits(rig.gateway))
    answer = await exchange(rig.source.port, data, timeout=timeout)
    assert answer.status == 400, answer.body
    assert await rig.state(no) is OrderState.CREATED
    assert await rig.store.transitions(rig.gateway, no) == []
    assert await rig.store.events(rig.gateway, no) == []
    assert len(rig.channel.messages) == heard
    audited = await rig.store.audits(rig.gateway)
    assert len(audited) == audits + 1 and audited[-1].reason == reason
    return answer


async def _believed(rig: Rig[Any, Any], no: str, data: bytes, *,
                    duplicate: bool = False) -> None:
    heard = len(rig.channel.messages)
    answer = await exchange(rig.source.port, data)
    assert answer.status == 200, answer.body
    assert await rig.state(no) is OrderState.PAID
    assert len(rig.channel.messages) == heard + (0 if duplicate else 1)
    assert rig.channel.messages[-1].correlation_id == no
