"""Whatever WeChat Pay answers, the client never crashes and never takes it for success: a
refund whose answer is unverified or unreadable is in doubt (the service queries first), a
query's is transient when unverified and permanent when verified but wrong. The gateway is a
small scripted peer on a real socket that signs its answers with a platform key of the test's
own, unless the case is about the signature."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from adapters.payments.bills import BillError
from adapters.payments.model import Order, OrderState, RefundRequest, Submit
from adapters.payments.signing import new_private_key, private_pem, public_pem
from adapters.wechatpay.bill import COLUMNS, SUMMARY
from adapters.wechatpay.client import WechatPayClient
from adapters.wechatpay.crypto import sign_response
from adapters.wechatpay.settings import WechatPaySettings
from engine.errors import InDoubtError, PermanentError, TransientError
from engine.settings import Secret
from tests.broken_peer import BrokenPeer, Reply

pytestmark = pytest.mark.asyncio(loop_scope="module")

SERIAL = "PUB_KEY_ID_0114232024062500000000000001"
BIG = 16 * 1024 * 1024 // 65536 + 1  # 64 KiB pieces: one more than the transport's limit


@functools.cache
def platform_key() -> rsa.RSAPrivateKey:
    return new_private_key()


@dataclass(frozen=True)
class Signed:
    """An answer signed by the platform key; ``headers`` replace (``None``: drop) the
    Wechatpay-* headers after signing."""

    body: bytes
    status: int = 200
    headers: dict[str, str | None] = field(default_factory=dict)

    def reply(self) -> Reply:
        ts, nonce = str(int(time.time())), "5K8264ILTKCH16CQ2502SI8ZNMTM67VS"
        headers: dict[str, str | None] = {
            "Wechatpay-Timestamp": ts, "Wechatpay-Nonce": nonce, "Wechatpay-Serial": SERIAL,
            "Wechatpay-Signature": sign_response(platform_key(), ts, nonce, self.body),
            **self.headers}
        return Reply(self.body, status=self.status,
                     headers={k: v for k, v in headers.items() if v is not None})


def js(value: Any, **kw: Any) -> Signed:
    return Signed(json.dumps(value, ensure_ascii=False).encode(), **kw)


@dataclass
class Gateway:
    """The module's client and its scripted gateway; each test sets ``answer``."""

    client: WechatPayClient
    answer: Callable[[web.Request], Signed | Reply]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    keys = tmp_path_factory.mktemp("wechatpay-broken")
    (keys / "merchant.pem").write_text(private_pem(platform_key()))
    (keys / "platform.pem").write_text(public_pem(platform_key().public_key()))
    (keys / "apiv3").write_text("0123456789abcdef0123456789abcdef")

    def script(request: web.Request, _body: bytes) -> Reply:
        case = state.answer(request)
        return case.reply() if isinstance(case, Signed) else case

    async with BrokenPeer(script) as peer:
        client = WechatPayClient(WechatPaySettings(
            mchid="1900000001", appid="wxd678efh567hg6787", merchant_serial="1",
            merchant_private_key=Secret(f"file:{keys / 'merchant.pem'}"),
            apiv3_key=Secret(f"file:{keys / 'apiv3'}"),
            platform_public_key=Secret(f"file:{keys / 'platform.pem'}"),
            platform_public_key_id=SERIAL, base_url=peer.url, timeout=2.0))
        await client.start()
        state = Gateway(client, lambda _request: Reply(status=500))
        yield state
        await client.close()


def answering(gateway: Gateway, script: Callable[[web.Request], Signed | Reply]
              ) -> WechatPayClient:
    gateway.answer = script
    return gateway.client


ORDER = Order("wechatpay", "WX20240101", 1000, "门诊缴费", "native", OrderState.PAID,
              Submit.ACCEPTED, "4200000001", 0, 0, 1.7e9, "", {})
REFUND = RefundRequest(ORDER, "WX20240101R1", 400, "退费", 1.7e9)
GOOD_REFUND = {"refund_id": "50000000", "status": "SUCCESS", "amount": {"refund": 400}}


@pytest.mark.parametrize(("case", "match"), [
    (Reply(b"<html><body>502 Bad Gateway</body></html>", content_type="text/html"),
     r"answer signature not verified \(unsigned\)"),
    (Signed(b"upstream says hello"), r"answer is not JSON"),
    (Signed(b"<html><body>maintenance</body></html>"), r"answer is not JSON"),
    (Signed(b'{"status": "SUCCESS", "note": "\xff\xfe"}'), r"answer is not JSON"),
    (Signed(b"[" * 5000 + b"]" * 5000), r"answer is not JSON"),
    (Signed(b"[]"), r"answer is not a JSON object"),
    (Signed(b'"SUCCESS"'), r"answer is not a JSON object"),
    (Signed(b"null"), r"answer is not a JSON object"),
    (Signed(b""), r"WeChat Pay answer lacks status; the refund may have been made"),
    (js({}), r"WeChat Pay answer lacks status"),
    (js({**GOOD_REFUND, "status": None}), r"WeChat Pay answer lacks status"),
    (js({**GOOD_REFUND, "status": 1}), r"WeChat Pay answer's status is not text \(int\)"),
    (js({**GOOD_REFUND, "status": "REFUNDED?"}), r"unknown refund status 'REFUNDED\?'"),
    (js({**GOOD_REFUND, "amount": None}), r"WeChat Pay answer lacks amount\.refund"),
    (js({**GOOD_REFUND, "amount": [400]}), r"WeChat Pay answer lacks amount\.refund"),
    (js({**GOOD_REFUND, "amount": {"refund": "400"}}),
     r"WeChat Pay answer's amount\.refund is not a whole number of fen \(str\)"),
    (js({**GOOD_REFUND, "amount": {"refund": 4.0}}),
     r"WeChat Pay answer's amount\.refund is not a whole number of fen \(float\)"),
    (js({**GOOD_REFUND, "amount": {"refund": True}}),
     r"WeChat Pay answer's amount\.refund is not a whole number of fen \(bool\)"),
    (js({**GOOD_REFUND, "amount": {"refund": -400}}),
     r"WeChat Pay answer's amount\.refund is negative"),
    (js(GOOD_REFUND, headers={"Wechatpay-Signature": None}),
     r"answer signature not verified \(unsigned\)"),
    (js(GOOD_REFUND, headers={"Wechatpay-Serial": None}),
     r"answer signature not verified \(unsigned\)"),
    (js(GOOD_REFUND, headers={"Wechatpay-Signature": "not-Base64-at-all!"}),
     r"answer signature not verified \(bad_signature\)"),
    (js(GOOD_REFUND, headers={"Wechatpay-Signature": base64.b64encode(b"short").decode()}),
     r"answer signature not verified \(bad_signature\)"),
    (js(GOOD_REFUND, headers={"Wechatpay-Signature": sign_response(
        platform_key(), str(int(time.time())), "N", b"{}")}),
     r"answer signature not verified \(bad_signature\)"),
    (js(GOOD_REFUND, headers={"Wechatpay-Timestamp": "yesterday"}),
     r"answer signature not verified \(stale\)"),
    (js(GOOD_REFUND, headers={"Wechatpay-Timestamp": str(int(time.time()) - 600)}),
     r"answer signature not verified \(stale\)"),
    (js(GOOD_REFUND, headers={"Wechatpay-Serial": "PUB_KEY_ID_SOMEONE_ELSE"}),
     r"answer signature not verified \(unknown_serial\)"),
    (js(GOOD_REFUND, headers={"Wechatpay-Nonce": "随机串"}),
     r"answer signature not verified \(malformed_header\)"),
    (js(GOOD_REFUND, headers={"Wechatpay-Timestamp": "".join(
        chr(0x660 + int(d)) for d in str(int(time.time())))}),
     r"answer signature not verified \(malformed_header\)"),
    (Reply(b'{"status": "SUCCESS", "amount": {"refund"', cut_short=True),
     r"no answer \(ClientPayloadError\)"),
    (Reply(b" " * 65536, repeat=BIG), r"answer larger than 16777216 bytes"),
    (js({"code": "SYSTEM_ERROR"}, status=500), r"HTTP 500 from WeChat Pay"),
    (Reply(b"", status=302, headers={"Location": "/login"}),
     r"answer signature not verified \(unsigned\)"),
    (js(["PARAM_ERROR"], status=400), r"answer is not a JSON object"),
])
async def test_a_broken_refund_answer_is_in_doubt(
        gateway: Gateway, case: Signed | Reply, match: str) -> None:
    client = answering(gateway, lambda _request: case)
    with pytest.raises(InDoubtError, match=rf"^refund: {match}"):
        await client.refund(REFUND)


GOOD_TRADE = {"trade_state": "SUCCESS", "transaction_id": "4200000001",
              "amount": {"total": 1000}}


@pytest.mark.parametrize(("case", "error", "match"), [
    (Reply(b"<html>maintenance</html>", content_type="text/html"), TransientError,
     r"answer signature not verified \(unsigned\)"),
    (Signed(b"[]"), TransientError, r"answer is not a JSON object"),
    (js(GOOD_TRADE, headers={"Wechatpay-Signature": "AAAA"}), TransientError,
     r"answer signature not verified \(bad_signature\)"),
    (Reply(b'{"trade_state": "SUC', cut_short=True), TransientError,
     r"no answer \(ClientPayloadError\)"),
    (js({**GOOD_TRADE, "trade_state": None}), PermanentError,
     r"WeChat Pay answer lacks trade_state"),
    (js({**GOOD_TRADE, "trade_state": ["SUCCESS"]}), PermanentError,
     r"WeChat Pay answer's trade_state is not text \(list\)"),
    (js({**GOOD_TRADE, "trade_state": "PAID"}), PermanentError,
     r"unknown trade_state 'PAID'"),
    (js({**GOOD_TRADE, "amount": {"total": "1000"}}), PermanentError,
     r"WeChat Pay answer's amount\.total is not a whole number of fen \(str\)"),
    (js({**GOOD_TRADE, "amount": {"total": 10.00}}), PermanentError,
     r"WeChat Pay answer's amount\.total is not a whole number of fen \(float\)"),
    (js({"trade_state": "SUCCESS"}), PermanentError, r"WeChat Pay answer lacks amount\.total"),
])
async def test_a_broken_query_answer_is_never_a_state(
        gateway: Gateway, case: Signed | Reply, error: type[Exception], match: str) -> None:
    client = answering(gateway, lambda _request: case)
    with pytest.raises(error, match=rf"^query order: {match}") as caught:
        await client.query(ORDER)
    assert not isinstance(caught.value, InDoubtError)


@pytest.mark.parametrize(("case", "match"), [
    (js({}), r"WeChat Pay answer lacks code_url"),
    (js({"code_url": None}), r"WeChat Pay answer lacks code_url"),
    (js({"code_url": 42}), r"WeChat Pay answer's code_url is not text \(int\)"),
])
async def test_a_create_answer_without_its_qr_code_is_permanent(
        gateway: Gateway, case: Signed, match: str) -> None:
    client = answering(gateway, lambda _request: case)
    with pytest.raises(PermanentError, match=rf"^create order: {match}"):
        await client.create(ORDER.request())


BILL = ("\ufeff" + ",".join(COLUMNS) + "\n" + ",".join(SUMMARY) + "\n"
        "`0,`0.00,`0.00,`0.00,`0.00000,`0.00,`0.00\n").encode()
"""An empty day's trade bill: the header, no lines, the summary."""


def _bill_script(file: Reply, **info: Any) -> Callable[[web.Request], Signed | Reply]:
    def script(request: web.Request) -> Signed | Reply:
        if request.path == "/bill-file":
            return file
        digest = hashlib.sha1(file.body, usedforsecurity=False).hexdigest()
        return js({"hash_type": "SHA1", "hash_value": digest,
                   "download_url": f"http://{request.host}/bill-file?token=t", **info})
    return script


async def test_the_bill_script_serves_a_good_bill(gateway: Gateway) -> None:
    client = answering(gateway, _bill_script(Reply(BILL, content_type="text/plain")))
    assert (await client.trade_bill("2024-05-01")).totals.lines == 0


@pytest.mark.parametrize(("script", "error", "match"), [
    (_bill_script(Reply(BILL), download_url=None), PermanentError,
     r"trade bill: WeChat Pay answer lacks download_url"),
    (_bill_script(Reply(BILL), download_url="http://[::1/bill"), PermanentError,
     r"trade bill: WeChat Pay answer's download_url is not an http\(s\) URL"),
    (_bill_script(Reply(BILL), download_url="file:///etc/passwd"), PermanentError,
     r"trade bill: WeChat Pay answer's download_url is not an http\(s\) URL"),
    (_bill_script(Reply(BILL), hash_type=["SHA1"]), BillError,
     r"trade bill: unsupported bill hash \"\['SHA1'\]\""),
    (_bill_script(Reply(BILL), hash_value=None), BillError,
     r"trade bill: downloaded bill does not match its SHA-1"),
    (_bill_script(Reply(b"not found", status=404)), TransientError,
     r"download bill: HTTP 404"),
    (_bill_script(Reply(BILL[:200], cut_short=True)), TransientError,
     r"download bill: no answer \(ClientPayloadError\)"),
    (_bill_script(Reply(BILL.decode().encode("gb18030"))), BillError,
     r"WeChat Pay bill is not UTF-8"),
    (_bill_script(Reply(BILL.replace(b"`0,", b"`" + b"9" * 200_000 + b","))), BillError,
     r"WeChat Pay bill is not readable CSV: field larger than field limit"),
    (_bill_script(Reply(BILL.replace(b"`0,", b"`1e999999999,"))), BillError,
     r"WeChat Pay bill 总交易单数 is not a whole number"),
])
async def test_a_broken_bill_is_refused_naming_what_is_wrong(
        gateway: Gateway, script: Any, error: type[Exception], match: str) -> None:
    client = answering(gateway, script)
    with pytest.raises(error, match=match):
        await client.trade_bill("2024-05-01")
