"""Whatever the insurance mobile-payment platform answers, the client never crashes and never
takes it for success: a 6202 payment or 6203 refund whose answer cannot be opened, verified
or read is in doubt (the service queries first), a 6301 query's is transient when it cannot
be opened and permanent when verified but wrong. The platform is a small scripted peer on a
real socket that seals its answers with keys of the test's own (SM4 data, SM2 signature),
unless the case is about the envelope."""

from __future__ import annotations

import base64
import functools
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from adapters.mobilepay import crypto as sm
from adapters.mobilepay.client import MobilePayClient
from adapters.mobilepay.settings import MobilePaySettings
from adapters.payments.model import Order, OrderState, RefundRequest, Submit
from engine.errors import InDoubtError, PermanentError, TransientError
from engine.settings import Secret
from tests.broken_peer import BrokenPeer, Reply

pytestmark = pytest.mark.asyncio(loop_scope="module")

APP_ID, SECRET = "1GJ3K5L7M9N1P3Q5R7S9", "a6f0c1e2d3b4a5968778695a4b3c2d1e"
BIG = 16 * 1024 * 1024 // 65536 + 1  # 64 KiB pieces: one more than the transport's limit


@functools.cache
def keys() -> tuple[str, str]:
    """One SM2 pair for both sides: what is tested is the envelope, not whose key it is."""
    return sm.new_keypair()


def _encrypted(plaintext: bytes, secret: str = SECRET) -> str:
    return sm.sm4_encrypt(sm.derive_sm4_key(APP_ID, secret), plaintext).hex().upper()


@dataclass(frozen=True)
class Sealed:
    """An answer sealed by the platform: ``data`` in ``encData``, ``code`` and ``message``
    signed beside it; ``changes`` replace (``None``: drop) envelope fields after sealing."""

    data: dict[str, Any]
    code: Any = 0
    changes: dict[str, Any] = field(default_factory=dict)

    def reply(self) -> Reply:
        private, public = keys()
        envelope = sm.seal(app_id=APP_ID, app_secret=SECRET, private_hex=private,
                           public_hex=public, data=self.data, timestamp=int(time.time()),
                           extra={"code": self.code, "message": "成功"})
        envelope.update(self.changes)
        envelope = {k: v for k, v in envelope.items() if v is not None}
        return Reply(json.dumps(envelope, ensure_ascii=False).encode())


@dataclass
class Gateway:
    """The module's client and its scripted platform; each test sets ``answer``."""

    client: MobilePayClient
    answer: Sealed | Reply


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    folder = tmp_path_factory.mktemp("mobilepay-broken")
    (folder / "secret").write_text(SECRET)
    (folder / "private.hex").write_text(keys()[0])
    (folder / "public.hex").write_text("04" + keys()[1])

    def script(_request: web.Request, _body: bytes) -> Reply:
        case = state.answer
        return case.reply() if isinstance(case, Sealed) else case

    async with BrokenPeer(script) as peer:
        client = MobilePayClient(MobilePaySettings(
            app_id=APP_ID, app_secret=Secret(f"file:{folder / 'secret'}"),
            private_key=Secret(f"file:{folder / 'private.hex'}"),
            platform_public_key=Secret(f"file:{folder / 'public.hex'}"),
            org_code="H44010600001", base_url=peer.url, timeout=3.0))
        await client.start()
        state = Gateway(client, Reply(status=500))
        yield state
        await client.close()


def answering(gateway: Gateway, case: Sealed | Reply) -> MobilePayClient:
    gateway.answer = case
    return gateway.client


ORDER = Order("mobilepay", "MP20240101", 1000, "门诊缴费", "mobile", OrderState.PAID,
              Submit.ACCEPTED, "ORD4401000001", 0, 0, 1.7e9, "",
              {"pay_ord_id": "ORD4401000001", "pay_token": "TK1", "pay_auth_no": "AUTH1"})
REFUND = RefundRequest(ORDER, "MP20240101R1", 400, "退费", 1.7e9)
REFUNDED = {"appRefdSn": "MP20240101R1", "refdStas": "SUCC", "totlRefdAmt": "4.00"}
SEALED = Sealed(REFUNDED).reply()
ENVELOPE = json.loads(SEALED.body)
OTHER = json.loads(Sealed({**REFUNDED, "totlRefdAmt": "400.00"}).reply().body)
"""Another answer's envelope: its signature covers other data."""


@pytest.mark.parametrize(("case", "match"), [
    (Reply(b"<html><body>502 Bad Gateway</body></html>", content_type="text/html"),
     r"answer not verified \(JSONDecodeError\)"),
    (Reply(b""), r"answer not verified \(JSONDecodeError\)"),
    (Reply(SEALED.body.replace("成功".encode(), "成功".encode("gbk"))),
     r"answer not verified \(JSONDecodeError\)"),
    (Reply(b"[" + SEALED.body + b"]"), r"answer not verified \(ValueError\)"),
    (Reply(b'"code=0"'), r"answer not verified \(ValueError\)"),
    (Sealed(REFUNDED, changes={"signData": None}), r"answer not verified \(EnvelopeError\)"),
    (Sealed(REFUNDED, changes={"encData": None}), r"answer not verified \(EnvelopeError\)"),
    (Sealed(REFUNDED, changes={"appId": 1234}), r"answer not verified \(EnvelopeError\)"),
    (Sealed(REFUNDED, changes={"appId": "short"}), r"answer not verified \(EnvelopeError\)"),
    (Sealed(REFUNDED, changes={"encType": "AES"}), r"answer not verified \(EnvelopeError\)"),
    (Sealed(REFUNDED, changes={"signData": "not Base64!"}),
     r"answer not verified \(EnvelopeError\)"),
    (Sealed(REFUNDED, changes={"signData": base64.b64encode(b"\x01" * 63).decode()}),
     r"answer not verified \(EnvelopeError\)"),
    (Sealed(REFUNDED, changes={"signData": OTHER["signData"]}),
     r"answer not verified \(EnvelopeError\)"),
    (Sealed(REFUNDED, changes={"code": 1002}), r"answer not verified \(EnvelopeError\)"),
    (Sealed(REFUNDED, changes={"encData": "zz-not-hex"}),
     r"answer not verified \(EnvelopeError\)"),
    (Sealed(REFUNDED, changes={"encData": ENVELOPE["encData"][:-2]}),
     r"answer not verified \(EnvelopeError\)"),
    (Sealed(REFUNDED, changes={"encData": _encrypted(b'{"refdStas": "SUCC"}', "another")}),
     r"answer not verified \(EnvelopeError\)"),
    (Sealed(REFUNDED, changes={"encData": _encrypted(b"refdStas=SUCC")}),
     r"answer not verified \(EnvelopeError\)"),
    (Sealed(REFUNDED, changes={"encData": _encrypted(b'["SUCC"]')}),
     r"answer not verified \(EnvelopeError\)"),
    (Sealed(REFUNDED, changes={"encData": _encrypted(b'{"totlRefdAmt": NaN}')}),
     r"answer not verified \(EnvelopeError\)"),
    (Sealed(REFUNDED, changes={"encData": _encrypted(b"[" * 3000 + b"]" * 3000)}),
     r"answer not verified \(EnvelopeError\)"),
    (Sealed(REFUNDED, changes={"timestamp": 1.5}), r"answer not verified \(EnvelopeError\)"),
    (Sealed(REFUNDED, code=None), r"answer has no code"),
    (Sealed(REFUNDED, code="成功"), r"answer has no code"),
    (Sealed(REFUNDED, code=[0]), r"answer has no code"),
    (Sealed(REFUNDED, code=5000), r"platform busy, outcome unknown"),
    (Sealed({}), r"unknown refdStas ''; the refund may have been made"),
    (Sealed({**REFUNDED, "refdStas": ["SUCC"]}), r"unknown refdStas \"\['SUCC'\]\""),
    (Sealed({**REFUNDED, "totlRefdAmt": None}), r"answer has no valid totlRefdAmt \(NoneType\)"),
    (Sealed({**REFUNDED, "totlRefdAmt": "4.001"}), r"answer has no valid totlRefdAmt \('4.001'\)"),
    (Sealed({**REFUNDED, "totlRefdAmt": "四元"}), r"answer has no valid totlRefdAmt \('四元'\)"),
    (Sealed({**REFUNDED, "totlRefdAmt": True}), r"answer has no valid totlRefdAmt \(bool\)"),
    (Reply(SEALED.body, cut_short=True), r"no answer \(ClientPayloadError\)"),
    (Reply(b" " * 65536, repeat=BIG), r"answer larger than 16777216 bytes"),
    (Reply(b"busy", status=503), r"HTTP 503 from the platform"),
])
async def test_a_broken_refund_answer_is_in_doubt(
        gateway: Gateway, case: Sealed | Reply, match: str) -> None:
    client = answering(gateway, case)
    with pytest.raises(InDoubtError, match=rf"^6203 refund: {match}"):
        await client.refund(REFUND)


async def test_a_numeric_code_written_as_text_is_read(gateway: Gateway) -> None:
    client = answering(gateway, Sealed(REFUNDED, code="0"))
    assert (await client.refund(REFUND)).amount_fen == 400


PAID = {"payOrdId": "ORD4401000001", "ordStas": "6", "feeSumamt": "10.00",
        "setlTime": "2024-01-01 10:00:00"}


@pytest.mark.parametrize(("case", "match"), [
    (Sealed({**PAID, "ordStas": None}), r"unknown ordStas 'None'"),
    (Sealed({**PAID, "feeSumamt": "ten"}), r"answer has no valid feeSumamt \('ten'\)"),
    (Sealed({**PAID, "feeSumamt": ["10.00"]}), r"answer has no valid feeSumamt \(list\)"),
])
async def test_a_6202_payment_whose_answer_cannot_be_read_is_in_doubt(
        gateway: Gateway, case: Sealed, match: str) -> None:
    client = answering(gateway, case)
    with pytest.raises(InDoubtError, match=rf"^6202 pay: {match}; the payment may have been "
                                           r"taken"):
        await client.pay(ORDER)


@pytest.mark.parametrize(("case", "error", "match"), [
    (Reply(b"<html>maintenance</html>"), TransientError,
     r"6301 query: answer not verified \(JSONDecodeError\)"),
    (Sealed(PAID, changes={"signData": OTHER["signData"]}), TransientError,
     r"6301 query: answer not verified \(EnvelopeError\)"),
    (Sealed(PAID, code=None), TransientError, r"6301 query: answer has no code"),
    (Sealed({**PAID, "ordStas": "PAID"}), PermanentError, r"6301 query: unknown ordStas 'PAID'"),
    (Sealed({**PAID, "feeSumamt": None}), PermanentError,
     r"6301 query: answer has no valid feeSumamt \(NoneType\)"),
])
async def test_a_broken_query_answer_is_never_a_state(
        gateway: Gateway, case: Sealed | Reply, error: type[Exception], match: str) -> None:
    client = answering(gateway, case)
    with pytest.raises(error, match=rf"^{match}") as caught:
        await client.query(ORDER)
    assert not isinstance(caught.value, InDoubtError)


@pytest.mark.parametrize(("info", "match"), [
    ("SUCC", r"answer's refdInfo is not an object \(str\)"),
    ([REFUNDED], r"answer's refdInfo is not an object \(list\)"),
    ({**REFUNDED, "refdStas": "DONE"}, r"unknown refdStas 'DONE'"),
])
async def test_a_broken_refund_query_answer_is_not_an_unknown_refund(
        gateway: Gateway, info: Any, match: str) -> None:
    """Read as "no such refund", the service would send the refund again."""
    client = answering(gateway, Sealed({"refdInfo": info}))
    with pytest.raises(PermanentError, match=rf"^6301 refund query: {match}"):
        await client.query_refund(REFUND)


async def test_a_fee_upload_answer_without_its_order_id_is_permanent(gateway: Gateway) -> None:
    client = answering(gateway, Sealed({"payToken": "TK1"}))
    with pytest.raises(PermanentError, match=r"^6201 fee upload: answer lacks payOrdId"):
        await client.create(ORDER.request())
