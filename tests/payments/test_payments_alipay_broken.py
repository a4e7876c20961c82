"""Whatever Alipay answers, the client never crashes and never takes it for success: a money
call whose answer is unverified or unreadable is in doubt (the service queries first), a
read-only call's is transient when unverified and permanent when verified but wrong. The
gateway is a small scripted peer on a real socket that signs its answers with an Alipay key of
the test's own, unless the case is about the signature."""

from __future__ import annotations

import base64
import csv
import functools
import io
import zipfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import pytest
import pytest_asyncio
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from adapters.alipay import crypto
from adapters.alipay.bill import DETAIL_COLUMNS
from adapters.alipay.client import AlipayClient
from adapters.alipay.settings import AlipaySettings
from adapters.payments.bills import BillError
from adapters.payments.errors import GatewayRejected
from adapters.payments.model import Order, OrderRequest, OrderState, RefundRequest, Submit
from adapters.payments.signing import new_private_key, private_pem, public_pem
from engine.errors import InDoubtError, PermanentError, TransientError
from engine.settings import Secret
from tests.broken_peer import BrokenPeer, Reply

pytestmark = pytest.mark.asyncio(loop_scope="module")

BIG = 16 * 1024 * 1024 // 65536 + 1  # 64 KiB pieces: one more than the transport's limit


@functools.cache
def alipay_key() -> rsa.RSAPrivateKey:
    return new_private_key()


@dataclass(frozen=True)
class Node:
    """An answer whose ``<method>_response`` node is ``text`` (raw JSON, as signed), with a
    good ``sign`` unless one is given; ``node`` renames the node."""

    text: str
    sign: str | None = None
    node: str | None = None

    def reply(self, method: str) -> Reply:
        name = self.node or crypto.response_node_name(method)
        sign = crypto.sign_response(alipay_key(), self.text) if self.sign is None else self.sign
        body = '{"' + name + '":' + self.text + ',"sign":"' + sign + '"}'
        return Reply(body.encode("utf-8"), content_type="text/html")


def ok(**fields: str) -> Node:
    return Node(", ".join([f'"{k}": {v}' for k, v in {"code": '"10000"', "msg": '"Success"',
                                                      **fields}.items()]).join("{}"))


@dataclass
class Gateway:
    """The module's client and its scripted gateway; each test sets ``answer``."""

    client: AlipayClient
    answer: Callable[[web.Request, str], Node | Reply]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    keys = tmp_path_factory.mktemp("alipay-broken")
    (keys / "app.pem").write_text(private_pem(alipay_key()))
    (keys / "alipay.pem").write_text(public_pem(alipay_key().public_key()))

    def script(request: web.Request, body: bytes) -> Reply:
        method = dict(parse_qsl(body.decode())).get("method", "")
        case = state.answer(request, method)
        return case.reply(method) if isinstance(case, Node) else case

    async with BrokenPeer(script) as peer:
        client = AlipayClient(AlipaySettings(
            app_id="2021004100000001", app_private_key=Secret(f"file:{keys / 'app.pem'}"),
            alipay_public_key=Secret(f"file:{keys / 'alipay.pem'}"),
            gateway_url=f"{peer.url}/gateway.do", timeout=2.0))
        await client.start()
        state = Gateway(client, lambda _request, _method: Reply(status=500))
        yield state
        await client.close()


def answering(gateway: Gateway, case: Node | Reply) -> AlipayClient:
    gateway.answer = lambda _request, _method: case
    return gateway.client


ORDER = Order("alipay", "AL20240101", 1000, "门诊缴费", "precreate", OrderState.PAID,
              Submit.ACCEPTED, "2024010122001", 0, 0, 1.7e9, "", {})
REFUND = RefundRequest(ORDER, "AL20240101R1", 400, "退费", 1.7e9)
REFUNDED = '"4.00"'


@pytest.mark.parametrize(("case", "match"), [
    (Reply(b"<html><body>502 Bad Gateway</body></html>", content_type="text/html"),
     r"answer has no alipay_trade_refund_response"),
    (Reply(b""), r"answer has no alipay_trade_refund_response"),
    (Reply(b'{"alipay_trade_refund_response": "ok", "sign": "x"}'),
     r"answer has no alipay_trade_refund_response"),
    (Reply(b'{"alipay_trade_refund_response": null, "sign": "x"}'),
     r"answer has no alipay_trade_refund_response"),
    (Reply(b'{"alipay_trade_refund_response": [{"code": "10000"}], "sign": "x"}'),
     r"answer has no alipay_trade_refund_response"),
    (Reply(b'{"alipay_trade_refund_response": {"code": "10000", "refund_fee": "4.0'),
     r"answer has no alipay_trade_refund_response"),
    (Reply(b'{"alipay_trade_refund_response": {"code": "10000", "msg": "\xff\xfe"}, '
           b'"sign": "x"}'), r"answer signature not verified"),
    (Node('{"code": "10000"}', node="alipay_trade_query_response"),
     r"answer has no alipay_trade_refund_response"),
    (Node('{"code": "10000", "refund_fee": "4.00"}', sign=""),
     r"answer signature not verified"),
    (Node('{"code": "10000", "refund_fee": "4.00"}', sign="not Base64!"),
     r"answer signature not verified"),
    (Node('{"code": "10000", "refund_fee": "4.00"}',
          sign=base64.b64encode(b"short").decode()), r"answer signature not verified"),
    (Node('{"code": "10000", "refund_fee": "4.00"}', sign=crypto.sign_response(
        alipay_key(), '{"code": "10000", "refund_fee": "400.00"}')),
     r"answer signature not verified"),
    (b"[" + ok(refund_fee=REFUNDED).reply("alipay.trade.refund").body + b"]",
     r"answer signature not verified"),
    # Python's parser finds the node, orjson cannot read the answer's sign: unverified.
    (ok(refund_fee="NaN"), r"answer signature not verified"),
    (ok(refund_fee=REFUNDED, note='"\\ud800"'), r"answer signature not verified"),
    (Node('{"msg": "Success", "refund_fee": "4.00"}'), r"answer has no code"),
    (Node('{"code": null, "refund_fee": "4.00"}'), r"answer has no code"),
    (Node('{"code": ["10000"], "refund_fee": "4.00"}'), r"answer has no code"),
    (Node('{"code": true, "refund_fee": "4.00"}'), r"answer has no code"),
    (Node('{"code": "20000", "sub_code": "aop.unknow-error"}'),
     r"aop\.unknow-error, outcome unknown"),
    (ok(), r"Alipay answer lacks refund_fee; the refund may have been made"),
    (ok(refund_fee="null"), r"Alipay answer lacks refund_fee"),
    (ok(refund_fee="4.00"), r"Alipay answer's refund_fee is not a yuan amount \(float\)"),
    (ok(refund_fee="400"), r"Alipay answer's refund_fee is not a yuan amount \(int\)"),
    (ok(refund_fee='"4.001"'), r"Alipay answer's refund_fee is not a yuan amount \('4.001'\)"),
    (ok(refund_fee='"四元"'), r"Alipay answer's refund_fee is not a yuan amount \('四元'\)"),
    (ok(refund_fee='"-4.00"'), r"Alipay answer's refund_fee is negative"),
    (ok(refund_fee='"４.00"'), r"Alipay answer's refund_fee is not a yuan amount \('４.00'\)"),
    (ok(refund_fee='{"value": "4.00"}'),
     r"Alipay answer's refund_fee is not a yuan amount \(dict\)"),
    (Reply(b'{"alipay_trade_refund_response": {"code": "10000", "refu', cut_short=True),
     r"no answer \(ClientPayloadError\)"),
    (Reply(b" " * 65536, repeat=BIG), r"answer larger than 16777216 bytes"),
    (Reply(b"busy", status=502, content_type="text/plain"), r"HTTP 502 from Alipay"),
    (Reply(b'{"error_response": {"code": "40002", "sub_code": NaN}}'),
     r"answer is not JSON orjson can read"),
    # The gateway's unsigned "unknown, ask again": the refund may still be made.
    (Reply(b'{"error_response": {"code": "20000", "msg": "Service Currently Unavailable",'
           b' "sub_code": "aop.unknow-error"}}'), r"aop\.unknow-error, outcome unknown"),
    (Reply(b'{"error_response": {"code": "40004", "sub_code": "ACQ.SYSTEM_ERROR"}}'),
     r"ACQ\.SYSTEM_ERROR, outcome unknown"),
])
async def test_a_broken_refund_answer_is_in_doubt(
        gateway: Gateway, case: Node | Reply | bytes, match: str) -> None:
    client = answering(gateway, Reply(case) if isinstance(case, bytes) else case)
    with pytest.raises(InDoubtError, match=rf"^alipay\.trade\.refund: {match}"):
        await client.refund(REFUND)


async def test_a_refund_answered_with_a_smaller_total_is_refused(gateway: Gateway) -> None:
    client = answering(gateway, ok(refund_fee='"1.00"'))
    with pytest.raises(PermanentError, match=r"^alipay\.trade\.refund: Alipay answer states "
                                             r"less than this refund"):
        await client.refund(REFUND)


async def test_an_unsigned_gateway_error_turning_the_call_away_is_a_refusal(
        gateway: Gateway) -> None:
    client = answering(gateway, Reply(b'{"error_response": {"code": "40002", "msg": "Invalid '
                                      b'Arguments", "sub_code": "isv.invalid-app-id"}}'))
    with pytest.raises(GatewayRejected, match=r"^isv\.invalid-app-id: "):
        await client.refund(REFUND)


BARCODE = OrderRequest("AL20240102", 1000, "门诊缴费", "barcode", 1.7e9,
                       {"auth_code": "280000000000000000"})


@pytest.mark.parametrize(("case", "match"), [
    (ok(total_amount='"10.00"'), r"Alipay answer lacks trade_no"),
    (ok(trade_no="2024010122002", total_amount='"10.00"'),
     r"Alipay answer's trade_no is not text \(int\)"),
    (ok(trade_no='"2024010122002"'), r"Alipay answer lacks total_amount"),
    (ok(trade_no='"2024010122002"', total_amount='"ten"'),
     r"Alipay answer's total_amount is not a yuan amount \('ten'\)"),
])
async def test_a_barcode_payment_whose_figures_cannot_be_read_is_in_doubt(
        gateway: Gateway, case: Node, match: str) -> None:
    """Code 10000 on a barcode payment means the payer's money was taken."""
    client = answering(gateway, case)
    with pytest.raises(InDoubtError, match=rf"^alipay\.trade\.pay: {match}; the payment may "
                                           r"have been taken"):
        await client.create(BARCODE)


async def test_a_precreate_answer_without_its_qr_code_is_permanent(gateway: Gateway) -> None:
    client = answering(gateway, ok(qr_code="null"))
    with pytest.raises(PermanentError, match=r"^alipay\.trade\.precreate: Alipay answer lacks "
                                             r"qr_code"):
        await client.create(ORDER.request())


@pytest.mark.parametrize(("case", "error", "match"), [
    (Reply(b"<html>maintenance</html>"), TransientError,
     r"answer has no alipay_trade_query_response"),
    (Node('{"code": "10000", "trade_status": "TRADE_SUCCESS"}', sign="AAAA"), TransientError,
     r"answer signature not verified"),
    (ok(trade_status='"TRADE_SUCCESS"', total_amount="Infinity"), TransientError,
     r"answer signature not verified"),
    (ok(trade_status='"PAID"', total_amount='"10.00"'), PermanentError,
     r"unknown trade_status 'PAID'"),
    (ok(total_amount='"10.00"'), PermanentError, r"unknown trade_status 'None'"),
    (ok(trade_status='"TRADE_SUCCESS"', total_amount="10"), PermanentError,
     r"Alipay answer's total_amount is not a yuan amount \(int\)"),
    (ok(trade_status='"TRADE_SUCCESS"'), PermanentError, r"Alipay answer lacks total_amount"),
])
async def test_a_broken_query_answer_is_never_a_state(
        gateway: Gateway, case: Node | Reply, error: type[Exception], match: str) -> None:
    client = answering(gateway, case)
    with pytest.raises(error, match=rf"^alipay\.trade\.query: {match}") as caught:
        await client.query(ORDER)
    assert not isinstance(caught.value, InDoubtError)


def _detail(rows: list[list[str]] | None = None, totals: str = "0笔，商家实收：0.00元") -> bytes:
    out = io.StringIO()
    out.write("#支付宝业务明细查询\n")
    csv.writer(out, lineterminator="\n").writerows([list(DETAIL_COLUMNS), *(rows or [])])
    out.write(f"#交易合计：{totals}，商家优惠：0.00元\n#退款合计：0笔，商家实收：0.00元\n")
    return out.getvalue().encode("gbk")


def _zip(detail: bytes, method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        archive.writestr("20880156_20240501_业务明细.csv", detail)
    return buffer.getvalue()


def _patched(archive: bytes, *, method: int | None = None, flags: int | None = None) -> bytes:
    """``archive`` with the member's compression method or flags changed in both headers."""
    data = bytearray(archive)
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.index(signature) + offset
        if flags is not None:
            data[at:at + 2] = flags.to_bytes(2, "little")
        if method is not None:
            data[at + 2:at + 4] = method.to_bytes(2, "little")
    return bytes(data)


def _corrupted(archive: bytes) -> bytes:
    data = bytearray(archive)
    start = data.index(b"PK\x03\x04") + 30 + len("20880156_20240501_业务明细.csv".encode())
    data[start:start + 8] = b"\xff" * 8
    return bytes(data)


def _bill_script(file: Reply, url: str | None = None) -> Callable[[web.Request, str], Any]:
    def script(request: web.Request, method: str) -> Node | Reply:
        if request.path == "/bill.zip":
            return file
        link = f"http://{request.host}/bill.zip" if url is None else url
        return ok(bill_download_url=f'"{link}"')
    return script


async def test_the_bill_script_serves_a_good_bill(gateway: Gateway) -> None:
    gateway.answer = _bill_script(Reply(_zip(_detail()), content_type="application/zip"))
    assert (await gateway.client.trade_bill("2024-05-01")).totals.lines == 0


@pytest.mark.parametrize(("script", "error", "match"), [
    (_bill_script(Reply(b""), url=""), PermanentError,
     r"alipay\.data\.dataservice\.bill\.downloadurl\.query: Alipay answer lacks "
     r"bill_download_url"),
    (_bill_script(Reply(b"", status=404)), TransientError, r"download bill: HTTP 404"),
    (_bill_script(Reply(_zip(_detail())[:100], cut_short=True)), TransientError,
     r"download bill: no answer \(ClientPayloadError\)"),
    (_bill_script(Reply(b"<html>expired link</html>")), BillError,
     r"Alipay bill is not a zip file"),
    (_bill_script(Reply(_corrupted(_zip(_detail())))), BillError,
     r"Alipay bill detail file cannot be unzipped"),
    (_bill_script(Reply(_corrupted(_zip(_detail(), zipfile.ZIP_STORED)))), BillError,
     r"Alipay bill detail file cannot be unzipped: Bad CRC-32"),
    (_bill_script(Reply(_patched(_zip(_detail()), method=99))), BillError,
     r"Alipay bill detail file cannot be unzipped: .*compression method"),
    (_bill_script(Reply(_patched(_zip(_detail()), flags=0x801))), BillError,
     r"Alipay bill detail file cannot be unzipped: .*encrypted"),
    (_bill_script(Reply(_zip(_detail()).replace(b"20880156_", b"2088\xff156_"))), BillError,
     r"Alipay bill is not a zip file"),
    (_bill_script(Reply(_zip(_detail().decode("gbk").encode("utf-8")))), BillError,
     r"Alipay bill detail file is not GBK|lacks the expected header"),
    (_bill_script(Reply(_zip(_detail([["x" * 200_000]])))), BillError,
     r"Alipay bill detail file is not readable CSV: field larger than field limit"),
    (_bill_script(Reply(_zip(_detail(totals="9" * 5000 + "笔，商家实收：0.00元")))), BillError,
     r"Alipay bill detail file lacks its header or its totals"),
])
async def test_a_broken_bill_is_refused_naming_what_is_wrong(
        gateway: Gateway, script: Any, error: type[Exception], match: str) -> None:
    gateway.answer = script
    with pytest.raises(error, match=match):
        await gateway.client.trade_bill("2024-05-01")
