"""The simulated e-invoice platform: aiohttp handlers for the operations, files and control.

Routes:

- ``POST /<operation>``: the platform (signed envelope in, signed answer out).
- ``GET /files/<token>.pdf``: the printable invoice behind ``pictureUrl`` / ``fileUrl``.
- ``GET|POST|DELETE /_control/faults``: list, replace (``{"faults": [...]}``), clear faults.
- ``GET /_control/stats``: requests per operation, invoices, write-offs, faults fired.
- ``GET /_control/bills?busNo=...``: every invoice recorded for a business number.

Result codes: ``S0000`` success; ``E0001`` request signature mismatch; ``E0002`` malformed
envelope or data; ``E0003`` unknown appid; ``E0004`` noise reused; ``E1001`` invalid field;
``E1002`` amounts do not add up; ``E2001`` busNo already invoiced; ``E2002`` no such
invoice; ``E2003`` already written off; ``E2004`` no invoice for busNo; ``E9999`` busy.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import logging
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from aiohttp import web

from simulators.einvoice.checks import (
    FIELD_INVALID,
    Refused,
    check_bill_ref,
    check_issue,
    check_write_off,
    text,
    timestamp,
)
from simulators.einvoice.faults import Fault, Faults
from simulators.einvoice.files import invoice_pdf, pattern_png
from simulators.einvoice.ledger import Bill, Ledger

log = logging.getLogger(__name__)

SUCCESS = "S0000"
_ENVELOPE_KEYS = ("appid", "data", "noise", "version", "sign")
_NOISE_MEMORY = 100_000

Handler = Callable[[dict[str, Any], web.Request], Awaitable[dict[str, Any]]]


def _md5_upper(value: str) -> str:
    return hashlib.md5(value.encode("utf-8")).hexdigest().upper()  # noqa: S324 - the protocol's


def _no_constants(name: str) -> Any:
    raise ValueError(name)


class EinvoiceSimulator:
    """A fiscal e-invoice platform on ``host:port`` (port 0 picks a free one).

    Args:
        db_path: SQLite file holding invoices and number sequences.
        accounts: appid → signing key.
        region: the first four digits of batch codes.
        sign_responses: sign answers (``noise`` echo + ``sign``) as the adapter expects.
        duplicate_bus_no: ``reject`` a second issue for a busNo (``E2001``, as real
            platforms do) or ``allow`` it (a careless platform: then only the client's
            lookup keeps one invoice per settlement).
    """

    def __init__(
        self,
        db_path: str | Path,
        *,
        accounts: Mapping[str, str],
        host: str = "127.0.0.1",
        port: int = 0,
        region: str = "3702",
        sign_responses: bool = True,
        duplicate_bus_no: Literal["reject", "allow"] = "reject",
    ) -> None:
        self.host, self.port = host, port
        self.accounts = dict(accounts)
        self.sign_responses = sign_responses
        self.duplicate_bus_no = duplicate_bus_no
        self.ledger = Ledger(db_path, region=region)
        self.faults = Faults()
        self.requests: Counter[str] = Counter()
        self._noises: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._handlers: dict[str, Handler] = {
            "invoiceEBillOutpatient": self._issuer("outpatient"),
            "invEBillHospitalized": self._issuer("inpatient"),
            "invEBillRegistration": self._issuer("registration"),
            "writeOffEBill": self._write_off,
            "getEBillStatesByBillInfo": self._state,
            "getEBillByBusNo": self._by_bus_no,
            "getEBillPictureUrl": self._picture,
        }

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self.ledger.open()
        app = web.Application(client_max_size=2 * 1024 * 1024)
        app.router.add_get("/_control/faults", self._get_faults)
        app.router.add_post("/_control/faults", self._set_faults)
        app.router.add_delete("/_control/faults", self._clear_faults)
        app.router.add_get("/_control/stats", self._stats)
        app.router.add_get("/_control/bills", self._bills)
        app.router.add_get("/files/{token}.pdf", self._file)
        app.router.add_post("/{operation}", self._platform)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.ledger.close()

    async def _pause(self, seconds: float) -> None:
        """Sleep, but end at once when the simulator stops (held answers must not hang it)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    # -- the platform ------------------------------------------------------------------------

    async def _platform(self, request: web.Request) -> web.StreamResponse:
        operation = request.match_info["operation"]
        handler = self._handlers.get(operation)
        if handler is None:
            return web.Response(status=404, text=f"unknown operation {operation}")
        self.requests[operation] += 1
        if (fault := self.faults.take("latency", operation)) is not None:
            await self._pause(fault.seconds)
        if (fault := self.faults.take("server_error", operation)) is not None:
            return web.Response(status=fault.status, text="simulated server error")
        try:
            _appid, key, noise, data = self._open(await request.read())
        except _EnvelopeRefused as refused:
            return self._answer(refused.key, refused.noise, refused.code, refused.message,
                                operation)
        if self.faults.take("busy", operation) is not None:
            return self._answer(key, noise, "E9999", "系统繁忙 (system busy), retry later",
                                operation)
        try:
            payload = await handler(data, request)
        except Refused as refused:
            return self._answer(key, noise, refused.code, refused.message, operation)
        if (fault := self.faults.take("commit_then_timeout", operation)) is not None:
            log.info("e-invoice simulator: holding the %s answer for %gs", operation,
                     fault.seconds)
            await self._pause(fault.seconds)
        return self._answer(key, noise, SUCCESS, payload, operation)

    def _open(self, raw: bytes) -> tuple[str, str, str, dict[str, Any]]:
        """Parse and verify the envelope; returns (appid, key, noise, decoded data)."""
        try:
            envelope = json.loads(raw)
        except ValueError:
            raise _EnvelopeRefused("E0002", "request body is not JSON") from None
        if not isinstance(envelope, dict):
            raise _EnvelopeRefused("E0002", "request body is not a JSON object")
        for name in _ENVELOPE_KEYS:
            if not isinstance(envelope.get(name), str) or not envelope[name]:
                raise _EnvelopeRefused("E0002", f"envelope field {name} is missing or empty")
        extra = sorted(set(envelope) - set(_ENVELOPE_KEYS))
        if extra:
            raise _EnvelopeRefused("E0002", f"unknown envelope fields: {', '.join(extra)}")
        appid, data, noise, version, sign = (envelope[k] for k in _ENVELOPE_KEYS)
        key = self.accounts.get(appid)
        if key is None:
            raise _EnvelopeRefused("E0003", "unknown appid")
        if version != "1.0":
            raise _EnvelopeRefused("E0002", "unsupported version (expected 1.0)", key, noise)
        expected = _md5_upper(f"appid={appid}&data={data}&noise={noise}&key={key}"
                              f"&version={version}")
        if sign.upper() != expected:
            raise _EnvelopeRefused("E0001", "签名验证失败 (request signature mismatch)",
                                   key, noise)
        if len(noise) > 64:
            raise _EnvelopeRefused("E0002", "noise is longer than 64 characters", key, noise)
        if (appid, noise) in self._noises:
            raise _EnvelopeRefused("E0004", "noise already used (replayed request)", key, noise)
        self._noises[(appid, noise)] = None
        while len(self._noises) > _NOISE_MEMORY:
            self._noises.popitem(last=False)
        try:
            decoded = base64.b64decode(data.encode("ascii"), validate=True).decode("utf-8")
            payload = json.loads(decoded, parse_float=Decimal, parse_constant=_no_constants)
        except (binascii.Error, UnicodeError, ValueError):
            raise _EnvelopeRefused("E0002", "data is not Base64 of UTF-8 JSON", key,
                                   noise) from None
        if not isinstance(payload, dict):
            raise _EnvelopeRefused("E0002", "data is not a JSON object", key, noise)
        return appid, key, noise, payload

    def _answer(
        self, key: str | None, noise: str | None, result: str,
        content: dict[str, Any] | str, operation: str,
    ) -> web.Response:
        if isinstance(content, dict):
            message = base64.b64encode(
                json.dumps(content, ensure_ascii=False).encode("utf-8")
            ).decode("ascii")
            if self.faults.take("broken_base64", operation) is not None:
                message = "*" + message[1:-2] + "%"
        else:
            message = content
        body: dict[str, Any] = {"result": result, "message": message}
        if self.sign_responses and key is not None and noise is not None:
            sign = _md5_upper(f"result={result}&message={message}&noise={noise}&key={key}")
            if self.faults.take("bad_signature", operation) is not None:
                sign = _md5_upper(sign)
            body["noise"] = noise
            body["sign"] = sign
        return web.json_response(body, dumps=lambda v: json.dumps(v, ensure_ascii=False))

    # -- operations --------------------------------------------------------------------------

    def _issuer(self, kind: str) -> Handler:
        async def issue(data: dict[str, Any], request: web.Request) -> dict[str, Any]:
            facts = check_issue(kind, data)
            bill, duplicate = await self.ledger.issue(
                kind,
                bus_no=facts.bus_no,
                total_amt=f"{facts.total_amt:.2f}",
                bus_date_time=facts.bus_date_time,
                request=json.dumps(data, ensure_ascii=False, default=str),
                allow_duplicate=self.duplicate_bus_no == "allow",
            )
            if duplicate:
                raise Refused("E2001", "业务流水号已开票 (busNo already has an invoice)")
            return self._bill_answer(bill, request)

        return issue

    def _links(self, bill: Bill, request: web.Request) -> str:
        return f"{request.url.origin()}/files/{bill.token}.pdf"

    def _bill_answer(self, bill: Bill, request: web.Request) -> dict[str, Any]:
        link = self._links(bill, request)
        qr = pattern_png(f"{bill.bill_batch_code}{bill.bill_no}{bill.random}")
        return {
            "billBatchCode": bill.bill_batch_code,
            "billNo": bill.bill_no,
            "random": bill.random,
            "createTime": bill.create_time,
            "billQRCode": base64.b64encode(qr).decode("ascii"),
            "pictureUrl": link,
            "pictureNetUrl": link,
        }

    def _red_answer(self, bill: Bill) -> dict[str, Any]:
        return {
            "eScarletBillBatchCode": bill.red_batch_code,
            "eScarletBillNo": bill.red_no,
            "eScarletRandom": bill.red_random,
            "scarletCreateTime": bill.red_create_time,
        }

    async def _write_off(self, data: dict[str, Any], request: web.Request) -> dict[str, Any]:
        batch, number, reason = check_write_off(data)
        bill, outcome = await self.ledger.write_off(batch, number, reason=reason)
        if outcome == "missing" or bill is None:
            raise Refused("E2002", "票据不存在 (no such invoice)")
        if outcome == "already":
            raise Refused("E2003", "票据已冲红，不能重复冲红 (already written off)")
        link = self._links(bill, request)
        qr = pattern_png(f"{bill.red_batch_code}{bill.red_no}")
        return {
            "eScarletBillBatchCode": bill.red_batch_code,
            "eScarletBillNo": bill.red_no,
            "eScarletRandom": bill.red_random,
            "createTime": bill.red_create_time,
            "billQRCode": base64.b64encode(qr).decode("ascii"),
            "pictureUrl": link,
            "pictureNetUrl": link,
        }

    async def _state(self, data: dict[str, Any], request: web.Request) -> dict[str, Any]:
        batch, number = check_bill_ref(data)
        bill = await self.ledger.get(batch, number)
        if bill is None:
            raise Refused("E2002", "票据不存在 (no such invoice)")
        answer: dict[str, Any] = {
            "billBatchCode": bill.bill_batch_code,
            "billNo": bill.bill_no,
            "state": "2" if bill.written_off else "1",
            "isScarlet": "1" if bill.written_off else "0",
        }
        if bill.written_off:
            answer.update(self._red_answer(bill))
        return answer

    async def _by_bus_no(self, data: dict[str, Any], request: web.Request) -> dict[str, Any]:
        bus_no = text(data, "busNo", max_len=60)
        assert bus_no is not None
        if data.get("busDateTime") is not None:
            timestamp(data, "busDateTime")
        bill = await self.ledger.by_bus_no(bus_no)
        if bill is None:
            raise Refused("E2004", "未找到业务流水号对应的票据 (no invoice for busNo)")
        answer = self._bill_answer(bill, request)
        answer["state"] = "2" if bill.written_off else "1"
        answer["isScarlet"] = "1" if bill.written_off else "0"
        return answer

    async def _picture(self, data: dict[str, Any], request: web.Request) -> dict[str, Any]:
        batch, number = check_bill_ref(data)
        bill = await self.ledger.get(batch, number)
        if bill is None:
            raise Refused("E2002", "票据不存在 (no such invoice)")
        random_code = data.get("random")
        if random_code is not None and random_code != bill.random:
            raise Refused(FIELD_INVALID, "random does not match the invoice's check code")
        file_type = data.get("fileType", "PDF")
        if file_type != "PDF":
            raise Refused(FIELD_INVALID, "fileType must be PDF")
        return {"billBatchCode": batch, "billNo": number, "fileType": "PDF",
                "fileUrl": self._links(bill, request)}

    # -- files and control -------------------------------------------------------------------

    async def _file(self, request: web.Request) -> web.Response:
        bill = await self.ledger.by_token(request.match_info["token"])
        if bill is None:
            raise web.HTTPNotFound(text="no such file")
        state = (f"WRITTEN OFF by red note {bill.red_batch_code}/{bill.red_no}"
                 if bill.written_off else "normal")
        pdf = invoice_pdf([
            "Medical fiscal e-invoice (simulated)",
            f"Batch code: {bill.bill_batch_code}",
            f"Number: {bill.bill_no}",
            f"Check code: {bill.random}",
            f"Amount: {bill.total_amt} CNY",
            f"Business number: {bill.bus_no}",
            f"Issued: {bill.create_time}",
            f"State: {state}",
        ])
        return web.Response(body=pdf, content_type="application/pdf")

    async def _get_faults(self, request: web.Request) -> web.Response:
        return web.json_response({"faults": [f.as_json() for f in self.faults.rules],
                                  "fired": self.faults.fired})

    async def _set_faults(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            specs = body.get("faults") if isinstance(body, dict) else None
            if not isinstance(specs, list):
                raise ValueError('expected {"faults": [...]}')
            rules = [Fault.parse(spec) for spec in specs]
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        self.faults.replace(rules)
        return web.json_response({"faults": [f.as_json() for f in rules]})

    async def _clear_faults(self, request: web.Request) -> web.Response:
        self.faults.clear()
        return web.json_response({"faults": []})

    async def _stats(self, request: web.Request) -> web.Response:
        totals = await self.ledger.totals()
        return web.json_response({"requests": dict(self.requests), **totals,
                                  "faults_fired": self.faults.fired})

    async def _bills(self, request: web.Request) -> web.Response:
        bus_no = request.query.get("busNo", "")
        bills = await self.ledger.bills_for(bus_no)
        return web.json_response({
            "busNo": bus_no,
            "count": len(bills),
            "bills": [{"billBatchCode": b.bill_batch_code, "billNo": b.bill_no,
                       "state": b.state, "totalAmt": b.total_amt,
                       "redBatchCode": b.red_batch_code, "redNo": b.red_no} for b in bills],
        })


class _EnvelopeRefused(Exception):
    def __init__(self, code: str, message: str, key: str | None = None,
                 noise: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.key, self.noise = code, message, key, noise
