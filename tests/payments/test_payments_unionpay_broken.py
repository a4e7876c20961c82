"""Whatever UnionPay answers, the client never crashes and never takes it for success: a refund
whose answer is unverified, unreadable or without a ``respCode`` is in doubt (the service
queries first), and a query answer without the original transaction's result is never read as
"failed". The gateway is a small scripted peer on a real socket that signs its answers with a
certificate issued by a root of the test's own, unless the case is about the signature."""

from __future__ import annotations

import base64
import datetime as dt
import functools
import io
import zipfile
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlencode

import pytest
import pytest_asyncio
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from adapters.payments.bills import BillError
from adapters.payments.model import Order, OrderState, RefundRequest, Submit
from adapters.payments.signing import (
    certificate_pem,
    issue_certificate,
    new_private_key,
    private_pem,
)
from adapters.unionpay import crypto
from adapters.unionpay.client import UnionPayClient
from adapters.unionpay.settings import UnionPaySettings
from engine.errors import InDoubtError, PermanentError, TransientError
from engine.settings import Secret
from tests.broken_peer import BrokenPeer, Reply

pytestmark = pytest.mark.asyncio(loop_scope="module")

BIG = 16 * 1024 * 1024 // 65536 + 1  # 64 KiB pieces: one more than the transport's limit
SIGNER = "CFCA@中国银联股份有限公司@00040000:SIGN@test"


@dataclass(frozen=True)
class Pki:
    key: rsa.RSAPrivateKey
    root: x509.Certificate
    signer: x509.Certificate
    stranger: x509.Certificate  # self-issued, with the right name
    other_name: x509.Certificate  # issued by the root, for someone else


@functools.cache
def pki() -> Pki:
    """One key for everything (root, gateway signer, merchant): what is tested is the chain."""
    key = new_private_key()
    root = issue_certificate(key, "UnionPay Test Root", ca=True)
    return Pki(key, root, issue_certificate(key, SIGNER, issuer_key=key, issuer=root),
               issue_certificate(key, SIGNER),
               issue_certificate(key, "Some Bank signing", issuer_key=key, issuer=root))


@dataclass(frozen=True)
class Fields:
    """An answer of form fields signed by the gateway; ``changes`` replace (``None``: drop)
    fields after signing, ``cert`` signs with another certificate."""

    values: dict[str, str]
    changes: dict[str, str | None] = field(default_factory=dict)
    cert: str = "signer"

    def reply(self) -> Reply:
        p = pki()
        fields = {"version": "5.1.0", "encoding": "UTF-8", "signMethod": "01",
                  "signPubKeyCert": certificate_pem(getattr(p, self.cert)), **self.values}
        fields["signature"] = crypto.sign_fields(p.key, fields)
        fields.update({k: v for k, v in self.changes.items() if v is not None})
        fields = {k: v for k, v in fields.items() if self.changes.get(k, "") is not None}
        return Reply(urlencode(fields).encode(), content_type="text/plain")


def ok(*, changes: dict[str, str | None] | None = None, cert: str = "signer",
       **values: str) -> Fields:
    return Fields({"respCode": "00", "respMsg": "success", **values}, changes or {}, cert)


@dataclass
class Gateway:
    """The module's client and its scripted gateway; each test sets ``answer``."""

    client: UnionPayClient
    answer: Fields | Reply


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    keys = tmp_path_factory.mktemp("unionpay-broken")
    (keys / "merchant.pem").write_text(private_pem(pki().key))
    (keys / "merchant_cert.pem").write_text(certificate_pem(pki().signer))
    (keys / "root.pem").write_text(certificate_pem(pki().root))

    def script(_request: web.Request, _body: bytes) -> Reply:
        case = state.answer
        return case.reply() if isinstance(case, Fields) else case

    async with BrokenPeer(script) as peer:
        client = UnionPayClient(UnionPaySettings(
            mer_id="777290058110048",
            merchant_private_key=Secret(f"file:{keys / 'merchant.pem'}"),
            merchant_certificate=Secret(f"file:{keys / 'merchant_cert.pem'}"),
            root_certificates=[Secret(f"file:{keys / 'root.pem'}")],
            gateway_url=peer.url, timeout=2.0))
        await client.start()
        state = Gateway(client, Reply(status=500))
        yield state
        await client.close()


def answering(gateway: Gateway, case: Fields | Reply) -> UnionPayClient:
    gateway.answer = case
    return gateway.client


ORDER = Order("unionpay", "UP2024010101", 1000, "门诊缴费", "qrcode", OrderState.PAID,
              Submit.ACCEPTED, "202401011000001", 0, 0, 1.7e9, "", {})
REFUND = RefundRequest(ORDER, "UP2024010101R1", 400, "退费", 1.7e9)
REFUNDED = {"txnAmt": "400", "queryId": "202401011000002"}


@pytest.mark.parametrize(("case", "match"), [
    (Reply(b"<html><body>502 Bad Gateway</body></html>", content_type="text/html"),
     r"answer not verified \(missing_signature\)"),
    (Reply(b""), r"answer not verified \(missing_signature\)"),
    (Reply(b'{"respCode": "00", "txnAmt": "400"}'),
     r"answer not verified \(missing_signature\)"),
    (Reply(b"respCode=00&txnAmt=400&signature=\xff\xfe"), r"unreadable answer"),
    (ok(**REFUNDED, changes={"signature": None}), r"answer not verified \(missing_signature\)"),
    (ok(**REFUNDED, changes={"signPubKeyCert": None}),
     r"answer not verified \(missing_signature\)"),
    (ok(**REFUNDED, changes={"signPubKeyCert": "-----BEGIN CERTIFICATE-----\nnonsense"}),
     r"answer not verified \(untrusted_certificate\)"),
    (ok(**REFUNDED, changes={"signPubKeyCert": "证书"}),
     r"answer not verified \(untrusted_certificate\)"),
    (ok(**REFUNDED, cert="stranger"), r"answer not verified \(untrusted_certificate\)"),
    (ok(**REFUNDED, cert="other_name"), r"answer not verified \(untrusted_certificate\)"),
    (ok(**REFUNDED, changes={"signature": "not Base64!"}),
     r"answer not verified \(bad_signature\)"),
    (ok(**REFUNDED, changes={"signature": base64.b64encode(b"short").decode()}),
     r"answer not verified \(bad_signature\)"),
    (ok(**REFUNDED, changes={"txnAmt": "40000"}), r"answer not verified \(bad_signature\)"),
    (ok(**REFUNDED, changes={"signMethod": "02"}), r"answer not verified \(bad_signature\)"),
    (Fields(REFUNDED), r"answer has no respCode"),
    (Fields({**REFUNDED, "respCode": ""}), r"answer has no respCode"),
    (Fields({**REFUNDED, "respCode": "03"}), r"respCode 03, outcome unknown"),
    (ok(), r"UnionPay answer's txnAmt is not a whole number of fen \(''\); the refund may "
           r"have been made"),
    (ok(txnAmt="4.00"), r"UnionPay answer's txnAmt is not a whole number of fen \('4.00'\)"),
    (ok(txnAmt="-400"), r"UnionPay answer's txnAmt is not a whole number of fen \('-400'\)"),
    (ok(txnAmt="４００"), r"UnionPay answer's txnAmt is not a whole number of fen"),
    (ok(txnAmt="²"), r"UnionPay answer's txnAmt is not a whole number of fen"),
    (Reply(b"respCode=00&txnAmt=400&signature=", cut_short=True),
     r"no answer \(ClientPayloadError\)"),
    (Reply(b" " * 65536, repeat=BIG), r"answer larger than 16777216 bytes"),
    (Reply(b"busy", status=503), r"HTTP 503 from UnionPay"),
])
async def test_a_broken_refund_answer_is_in_doubt(
        gateway: Gateway, case: Fields | Reply, match: str) -> None:
    client = answering(gateway, case)
    with pytest.raises(InDoubtError, match=rf"^refund: {match}"):
        await client.refund(REFUND)


QUERIED = {"txnAmt": "400", "queryId": "202401011000002", "traceTime": "0101100000"}


@pytest.mark.parametrize(("case", "error", "match"), [
    (Reply(b"<html>maintenance</html>"), TransientError,
     r"answer not verified \(missing_signature\)"),
    (ok(**QUERIED, origRespCode="00", cert="stranger"), TransientError,
     r"answer not verified \(untrusted_certificate\)"),
    (Fields({**QUERIED, "origRespCode": "00"}), TransientError, r"answer has no respCode"),
    (ok(**QUERIED), PermanentError, r"UnionPay answer has no valid origRespCode \(''\)"),
    (ok(**QUERIED, origRespCode="0"), PermanentError,
     r"UnionPay answer has no valid origRespCode \('0'\)"),
    (ok(**QUERIED, origRespCode="success"), PermanentError,
     r"UnionPay answer has no valid origRespCode \('success'\)"),
    (ok(origRespCode="00"), PermanentError,
     r"UnionPay answer's txnAmt is not a whole number of fen \(''\)"),
    (ok(**{**QUERIED, "txnAmt": "4.00"}, origRespCode="00"), PermanentError,
     r"UnionPay answer's txnAmt is not a whole number of fen \('4.00'\)"),
])
async def test_a_broken_refund_query_answer_is_never_a_refund_state(
        gateway: Gateway, case: Fields | Reply, error: type[Exception], match: str) -> None:
    """Read as "failed", a refund's amount would be free for a second refund."""
    client = answering(gateway, case)
    with pytest.raises(error, match=rf"^query: {match}") as caught:
        await client.query_refund(REFUND)
    assert not isinstance(caught.value, InDoubtError)


async def test_a_query_answer_without_the_original_result_is_not_a_closed_order(
        gateway: Gateway) -> None:
    client = answering(gateway, ok(**QUERIED))
    with pytest.raises(PermanentError, match=r"^query: UnionPay answer has no valid "
                                             r"origRespCode"):
        await client.query(ORDER)


async def test_a_qr_code_answer_without_its_code_is_permanent(gateway: Gateway) -> None:
    client = answering(gateway, ok(qrCode=""))
    with pytest.raises(PermanentError, match=r"^apply QR code: UnionPay answer lacks qrCode"):
        await client.create(ORDER.request())


DAY = dt.date(2024, 5, 1)
SETTLEMENT = b"H|777290058110048|20240501|0\nT|0|0|0|0|0\n"


def _zip(text: bytes = SETTLEMENT, method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        archive.writestr("INN240501_777290058110048", text)
    return buffer.getvalue()


def _file(content: bytes) -> Fields:
    return ok(fileContent=base64.b64encode(content).decode())


def _encrypted(archive: bytes) -> bytes:
    data = bytearray(archive)
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.index(signature) + offset
        data[at] |= 1
    return bytes(data)


async def test_a_good_settlement_file_is_read(gateway: Gateway) -> None:
    client = answering(gateway, _file(zlib.compress(_zip())))
    assert (await client.settlement_file(DAY)).totals.lines == 0


@pytest.mark.parametrize(("case", "match"), [
    (ok(), r"UnionPay fileContent is not Base64 of deflated data \(it ends early\)"),
    (ok(fileContent="not Base64!"), r"UnionPay fileContent is not Base64 of deflated data$"),
    (_file(_zip()), r"UnionPay fileContent is not Base64 of deflated data$"),
    (_file(zlib.compress(_zip())[:-6]),
     r"UnionPay fileContent is not Base64 of deflated data \(it ends early\)"),
    (_file(zlib.compress(b"\0" * (64 * 1024 * 1024 + 1), 9)),
     r"UnionPay fileContent inflates to more than 67108864 bytes"),
    (_file(zlib.compress(b"<html>no file today</html>")),
     r"UnionPay settlement file is not a readable zip"),
    (_file(zlib.compress(_encrypted(_zip()))),
     r"UnionPay settlement file is not a readable zip: .*encrypted"),
    (_file(zlib.compress(_zip(method=zipfile.ZIP_STORED).replace(SETTLEMENT[:12],
                                                                 b"\xff" * 12))),
     r"UnionPay settlement file is not a readable zip: Bad CRC-32"),
    (_file(zlib.compress(_zip(SETTLEMENT.replace(b"|0\n", b"|\xb2\n", 1)))),
     r"UnionPay settlement file is not UTF-8"),
    (_file(zlib.compress(_zip(SETTLEMENT.replace(b"|0\n", "|²\n".encode(), 1)))),
     r"UnionPay settlement line count is not an amount in fen"),
])
async def test_a_broken_settlement_file_is_refused_naming_what_is_wrong(
        gateway: Gateway, case: Fields, match: str) -> None:
    client = answering(gateway, case)
    with pytest.raises(BillError, match=match):
        await client.settlement_file(DAY)
