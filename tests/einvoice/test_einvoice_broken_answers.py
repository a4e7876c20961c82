"""Whatever the e-invoice platform answers, the destination never crashes and never takes it
for success: an issue or write-off it cannot trust or read is in doubt (the platform may have
acted), a query's is transient. The platform is a small scripted peer on a real socket, which
signs its answers with the shared key unless the case is about the signature."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from adapters.einvoice import OPERATION_HEADER, EinvoiceDestination, EinvoiceDestinationConfig
from adapters.einvoice.codec import encode_json
from adapters.einvoice.envelope import response_signature
from engine.errors import InDoubtError, PermanentError, TransientError
from queues.contract import Envelope
from tests.broken_peer import BrokenPeer, Reply

MakeIssue = Callable[..., dict[str, Any]]
Answer = Callable[[str, str], Reply]
"""Builds the reply from the request's noise and the shared key."""

INVOICE = {"billBatchCode": "44060126", "billNo": "0000000001", "random": "a1b2c3"}


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def signed(message: str, *, result: str = "S0000", sign: str | None = None,
           noise: str | None = None, **extra: Any) -> Answer:
    """A signed envelope around ``message``; ``sign`` / ``noise`` replace the right ones."""

    def build(request_noise: str, key: str) -> Reply:
        echoed = request_noise if noise is None else noise
        body: dict[str, Any] = {"result": result, "message": message, "noise": echoed}
        body["sign"] = sign if sign is not None else response_signature(
            result=result, message=message, noise=echoed, key=key)
        body.update(extra)
        return Reply(json.dumps(body, ensure_ascii=False).encode())

    return build


def data(value: Any) -> Answer:
    """A signed success whose Base64 ``message`` holds ``value`` as JSON."""
    return signed(_b64(json.dumps(value).encode()))


def raw(reply: Reply) -> Answer:
    return lambda _noise, _key: reply


@pytest.fixture
async def destination(key_file: tuple[str, Path]) -> AsyncIterator[Callable[..., Any]]:
    """``await destination(answer, **config)``: a started destination whose platform answers
    every request with ``answer(noise, key)``."""
    opened: list[tuple[BrokenPeer, EinvoiceDestination]] = []

    async def make(answer: Answer, **config: Any) -> EinvoiceDestination:
        def script(_request: web.Request, body: bytes) -> Reply:
            return answer(json.loads(body)["noise"], key_file[0])

        peer = BrokenPeer(script)
        await peer.start()
        settings = {"type": "einvoice", "name": "einvoice", "url": peer.url,
                    "appid": "HOSP0001", "key": f"file:{key_file[1]}", "timeout": 2.0,
                    "lookup_before_issue": "never", **config}
        dest = EinvoiceDestinationConfig.model_validate(settings).build("settlements")
        await dest.start()
        opened.append((peer, dest))
        return dest

    yield make
    for peer, dest in opened:
        await dest.close()
        await peer.stop()


BROKEN: list[Any] = [
    pytest.param(raw(Reply(b"upstream says hello")), r"untrusted answer: the answer is not JSON",
                 id="not-json"),
    pytest.param(raw(Reply(b"<html><body>502 Bad Gateway</body></html>",
                           content_type="text/html")),
                 r"untrusted answer: the answer is not JSON", id="html-page"),
    pytest.param(raw(Reply(b"")), r"untrusted answer: the answer is not JSON", id="empty"),
    pytest.param(raw(Reply(b'{"result": "S0000", "message": "\xff\xfe"}')),
                 r"untrusted answer: the answer is not JSON", id="not-utf8"),
    pytest.param(raw(Reply(b"[" * 100_000 + b"]" * 100_000)),
                 r"untrusted answer: the answer is not JSON", id="nested-too-deep"),
    pytest.param(raw(Reply(b'["S0000", "e30="]')),
                 r"untrusted answer: the answer is not a JSON object", id="list"),
    pytest.param(raw(Reply(b'"S0000"')), r"untrusted answer: the answer is not a JSON object",
                 id="string"),
    pytest.param(raw(Reply(b'{"message": "e30="}')),
                 r"untrusted answer: the answer has no result code", id="no-result"),
    pytest.param(raw(Reply(b'{"result": 0, "message": "e30="}')),
                 r"untrusted answer: the answer has no result code", id="numeric-result"),
    pytest.param(raw(Reply(b'{"result": "S0000", "message": null}')),
                 r"untrusted answer: the answer's message is not a string", id="null-message"),
    pytest.param(raw(Reply(b'{"result": "S0000", "message": "e30="}')),
                 r"untrusted answer: the answer is not signed", id="unsigned"),
    pytest.param(signed(_b64(b"{}"), sign="not hex at all"),
                 r"untrusted answer: the answer's signature does not match", id="sign-garbage"),
    pytest.param(signed(_b64(b"{}"), sign="签名"),
                 r"untrusted answer: the answer's signature does not match", id="sign-non-ascii"),
    pytest.param(signed(_b64(b"{}"), sign="0" * 32),
                 r"untrusted answer: the answer's signature does not match", id="sign-wrong"),
    pytest.param(signed(_b64(b"{}"), sign="A1B2"),
                 r"untrusted answer: the answer's signature does not match", id="sign-short"),
    pytest.param(signed(_b64(b"{}"), noise="another request"),
                 r"untrusted answer: the answer does not echo the request's noise",
                 id="foreign-noise"),
    pytest.param(signed("eyJiaWxsTm8iOiIxIn0=*"),
                 r"untrusted answer: the answer's message is not valid Base64", id="not-base64"),
    pytest.param(signed("电子票据"),
                 r"untrusted answer: the answer's message is not valid Base64",
                 id="base64-non-ascii"),
    pytest.param(signed(_b64(b"billNo=0000000001")),
                 r"untrusted answer: the answer's message is not Base64 of UTF-8 JSON",
                 id="base64-not-json"),
    pytest.param(signed(_b64("电子票据".encode("gbk"))),
                 r"untrusted answer: the answer's message is not Base64 of UTF-8 JSON",
                 id="base64-not-utf8"),
    pytest.param(signed(_b64(b'{"billNo": "1", "x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}")),
                 r"untrusted answer: the answer's message is not Base64 of UTF-8 JSON",
                 id="base64-nested-too-deep"),
    pytest.param(data([INVOICE]),
                 r"untrusted answer: the answer's message is not a JSON object", id="data-list"),
    pytest.param(data("0000000001"),
                 r"untrusted answer: the answer's message is not a JSON object",
                 id="data-string"),
    pytest.param(data(None),
                 r"untrusted answer: the answer's message is not a JSON object", id="data-null"),
    pytest.param(data({"billBatchCode": "44060126"}),
                 r"success answer with missing or malformed billNo", id="data-missing-key"),
    pytest.param(data({**INVOICE, "billNo": 1}),
                 r"success answer with missing or malformed billNo", id="data-number"),
    pytest.param(data({**INVOICE, "billBatchCode": None, "billNo": {"no": 1}}),
                 r"success answer with missing or malformed billBatchCode, billNo",
                 id="data-null-and-object"),
    pytest.param(signed(_b64(b'{"billBatchCode": "44060126", "billNo": "1", "totalAmt": '
                             b'1e999999999}')),
                 r"untrusted answer: the answer's message is not Base64 of UTF-8 JSON",
                 id="amount-out-of-range"),
    pytest.param(raw(Reply(b'{"result": "S0000", "message": "eyJi', cut_short=True)),
                 r"connection failed \(ClientPayloadError\)", id="cut-short"),
    pytest.param(raw(Reply(b'{"result": "S0000", "message": "' + b"A" * 500_000 + b'"}')),
                 r"answer larger than 400000 bytes", id="too-large"),
    pytest.param(raw(Reply(b'{"result": "S0000", "message": "' + b"A" * 500_000 + b'"}',
                           chunked=True)),
                 r"answer larger than 400000 bytes", id="too-large-chunked"),
]


@pytest.mark.parametrize(("answer", "match"), BROKEN)
async def test_a_broken_issue_answer_is_in_doubt_never_success(
        destination: Callable[..., Any], make_issue: MakeIssue, answer: Answer, match: str,
) -> None:
    dest = await destination(answer, operation="outpatient",
                             max_response_bytes=400_000)
    with pytest.raises(InDoubtError, match=rf"^invoiceEBillOutpatient: {match}"):
        await dest.send(Envelope("m-1", encode_json(make_issue("BROKEN-1")), {}, "json"))


STATE = {"billBatchCode": "44060126", "billNo": "0000000001"}


@pytest.mark.parametrize(("answer", "error", "match"), [
    (raw(Reply(b"<html>maintenance</html>", content_type="text/html")), TransientError,
     r"untrusted answer: the answer is not JSON"),
    (signed("%%%"), TransientError, r"untrusted answer: the answer's message is not valid"),
    (data({"state": [1]}), TransientError, r"success answer with missing or malformed state"),
    (data({"isScarlet": "0"}), TransientError, r"success answer with missing or malformed state"),
    (raw(Reply(b'{"result": "S0000"', cut_short=True)), TransientError,
     r"connection failed \(ClientPayloadError\)"),
    (raw(Reply(b"not found", status=404, content_type="text/plain")), PermanentError,
     r"HTTP 404 from the e-invoice platform"),
    (signed("票据不存在", result="E2005"), PermanentError, r"refused: E2005 票据不存在"),
])
async def test_a_broken_query_answer_is_transient_not_in_doubt(
        destination: Callable[..., Any], answer: Answer, error: type[Exception], match: str,
) -> None:
    dest = await destination(answer)
    with pytest.raises(error, match=rf"^getEBillStatesByBillInfo\W+{match}") as caught:
        await dest.send(Envelope("m-2", encode_json(STATE), {OPERATION_HEADER: "state"},
                                 "json"))
    assert not isinstance(caught.value, InDoubtError)
