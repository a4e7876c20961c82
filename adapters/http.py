"""HTTP in and out (aiohttp).

The source accepts posts of HL7, JSON or XML on configured paths and answers 2xx only after
ingest has committed; 503 with Retry-After when the engine cannot take the message now; 4xx
with a specific reason for bad input. Several channels may share one listening port with
different paths.

The destination keeps one pooled ``ClientSession`` per destination and classifies answers by
status (2xx ack; 408, 429, 5xx and connection errors retry; other 4xx dead-letter), all
overridable per destination with ``outcomes``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import re
from collections.abc import Awaitable, Callable
from email.utils import parsedate_to_datetime
from typing import ClassVar, Literal

import aiohttp
import orjson
from aiohttp import hdrs, web
from lxml import etree
from pydantic import Field, field_validator

from engine.contracts import Ingest, Result
from engine.errors import ConfigError, PermanentError, RejectedInput, TransientError
from engine.hl7 import Hl7Message, build_ack, parse
from engine.hl7_batch import answer_batch, is_batch
from engine.message import CONTENT_TYPES, Message
from engine.settings import DestinationSettings, HostPort, Model, Secret, split_host_port
from queues.contract import Envelope

log = logging.getLogger(__name__)

HL7_MEDIA = "x-application/hl7-v2+er7"

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Headers the engine sets on messages itself (answers routed with ``response_to``).
_RESERVED_HEADERS = {"idempotency-key", "in-reply-to", "from-destination", "mapping"}
_MAX_HEADER_VALUE = 1000
_MAX_IDEMPOTENCY_KEY = 200
_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}")


class HttpSourceConfig(Model):
    """An HTTP endpoint receiving messages for one channel.

    Attributes:
        listen: ``host:port``; channels may share it with different ``path``s.
        content_type: what the body is; ``auto`` decides from the Content-Type header.
        token: if set, requests must carry ``Authorization: Bearer <token>``; while the
            secret cannot be resolved, requests are answered 503 (the source still starts).
        max_body_bytes: larger bodies are refused with 413: from Content-Length before any
            of the body is read, else as soon as the streamed body passes the limit.
        pass_headers: request headers copied onto the message's headers, under the name as
            written here (HTTP matching is case-insensitive), so mappings read them with
            ``@header:<name>`` and ``response_to`` channels receive them with the answer
            (a settle request carries ``mdtrt_cert_no`` and ``chrg_bchno`` to the 2207
            mapping this way). Absent headers are skipped; values are cut at 1,000 chars.
        batch: an HL7 v2 body holding a batch (FHS/BHS, or several MSH): ``split`` stores
            its messages, all or none, and answers the acknowledgement batch; ``reject``
            answers 400.
    """

    type: Literal["http"]
    listen: HostPort
    path: str = Field(default="/", pattern=r"^/[A-Za-z0-9_./{}-]*$")
    content_type: Literal["auto", "hl7v2", "json", "fhir+json", "xml", "text"] = "auto"
    token: Secret | None = None
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    default_encoding: str = "utf-8"
    pass_headers: list[str] = Field(default_factory=list)
    batch: Literal["split", "reject"] = "split"

    @field_validator("pass_headers")
    @classmethod
    def _header_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _TOKEN.fullmatch(name):
                raise ValueError(f"{name!r} is not an HTTP header name")
            if name.lower() in _RESERVED_HEADERS:
                raise ValueError(f"{name!r} is set by the engine itself and cannot be passed")
        lowered = [n.lower() for n in value]
        dupes = sorted({n for n in lowered if lowered.count(n) > 1})
        if dupes:
            raise ValueError(f"header names listed twice: {', '.join(dupes)}")
        return value

    def build(self, channel: str) -> HttpSource:
        return HttpSource(self, channel)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpListener:
    """One aiohttp server per address, shared by every source that listens there."""

    _by_address: ClassVar[dict[str, HttpListener]] = {}

    def __init__(self, listen: str) -> None:
        self.listen = listen
        self.routes: dict[str, Handler] = {}
        self.runner: web.AppRunner | None = None
        self.port = 0
        self.max_body = 1024 * 1024

    @classmethod
    async def attach(cls, listen: str, path: str, handler: Handler, max_body: int) -> HttpListener:
        listener = cls._by_address.get(listen)
        if listener is None or listener.runner is None:
            listener = cls(listen)
            cls._by_address[listen] = listener
        if path in listener.routes:
            raise RuntimeError(f"{listen}{path} already has a source")
        listener.routes[path] = handler
        listener.max_body = max(listener.max_body, max_body)
        if listener.runner is None:
            await listener._start()
        return listener

    async def detach(self, path: str) -> None:
        self.routes.pop(path, None)
        if not self.routes and self.runner is not None:
            runner, self.runner = self.runner, None
            HttpListener._by_address.pop(self.listen, None)
            await runner.cleanup()

    async def _start(self) -> None:
        app = web.Application(client_max_size=self.max_body)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        host, port = split_host_port(self.listen)
        site = web.TCPSite(self.runner, host, port, reuse_address=True)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        handler = self.routes.get(request.path)
        if handler is None:
            return _problem(404, f"no source at {request.path}")
        return await handler(request)


class HttpSource:
    def __init__(self, config: HttpSourceConfig, channel: str) -> None:
        self.config = config
        self.channel = channel
        self._listener: HttpListener | None = None
        self._ingest: Ingest | None = None
        self._inflight = 0
        self._stopping = False

    @property
    def port(self) -> int:
        return self._listener.port if self._listener else 0

    async def start(self, ingest: Ingest) -> None:
        self._ingest = ingest
        self._listener = await HttpListener.attach(
            self.config.listen, self.config.path, self._handle, self.config.max_body_bytes
        )
        log.info("http source %s listening on %s%s", self.channel, self.config.listen,
                 self.config.path)

    async def stop(self) -> None:
        self._stopping = True
        for _ in range(50):
            if not self._inflight:
                break
            await asyncio.sleep(0.1)
        if self._listener is not None:
            await self._listener.detach(self.config.path)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self._stopping:
            return _problem(503, "shutting down", retry_after=5)
        if request.method != "POST" and request.method != "PUT":
            return _problem(405, "use POST or PUT")
        if self.config.token is not None:
            try:
                expected = f"Bearer {self.config.token.get()}"
            except ConfigError as exc:
                log.warning("http source %s: token not available: %s", self.channel, exc)
                return _problem(503, "the source's token is not configured", retry_after=30)
            if not _constant_time_equal(request.headers.get("Authorization", ""), expected):
                return _problem(401, "missing or wrong bearer token")
        length = request.content_length
        if length is not None and length > self.config.max_body_bytes:
            return _too_large(f"body of {length} bytes exceeds {self.config.max_body_bytes}")
        self._inflight += 1
        try:
            return await self._receive(request)
        finally:
            self._inflight -= 1

    async def _receive(self, request: web.Request) -> web.StreamResponse:
        content_type = self._content_type(request)
        if content_type is None:
            if hdrs.CONTENT_TYPE not in request.headers:
                return _problem(415, "Content-Type header is missing")
            given = request.headers[hdrs.CONTENT_TYPE][:100]
            return _problem(415, f"unsupported Content-Type {given!r}")
        try:
            headers = self._headers(request)
        except RejectedInput as exc:
            return _problem(400, str(exc))
        body = await _read_bounded(request, self.config.max_body_bytes)
        if body is None:
            return _too_large(f"body exceeds {self.config.max_body_bytes} bytes")
        if content_type == "hl7v2" and is_batch(body):
            # One idempotency key cannot name several messages: each has its MSH-10.
            return await self._receive_batch(body, {
                k: v for k, v in headers.items() if k != "Idempotency-Key"})
        try:
            hl7 = _validate(body, content_type, self.config.default_encoding, request.charset)
        except RejectedInput as exc:
            if content_type == "hl7v2":
                partial = exc.partial if isinstance(exc.partial, Hl7Message) else None
                ack = build_ack(partial, exc.code, text=str(exc), error_code=exc.hl7_error)
                return web.Response(status=400, body=ack.encode(), content_type=HL7_MEDIA)
            return _problem(400, str(exc))
        message = Message(
            channel=self.channel, content_type=content_type, body=body, headers=headers,
            correlation_id=_text_header(request, "X-Correlation-Id"),
        )
        assert self._ingest is not None
        try:
            result = await self._ingest(message, hl7=hl7)
        except RejectedInput as exc:  # a control id an earlier, different message holds
            ack = build_ack(hl7, exc.code, text=str(exc), error_code=exc.hl7_error)
            return web.Response(status=409, body=ack.encode(), content_type=HL7_MEDIA)
        except TransientError as exc:
            return _problem(503, str(exc), retry_after=int(exc.retry_after or 5))
        if hl7 is not None:
            ack = build_ack(hl7, "AA")
            return web.Response(
                status=200, body=ack.encode(hl7.encoding, errors="replace"),
                content_type=HL7_MEDIA,
                headers={"X-Message-Id": result.message_id},
            )
        status = 200 if result.duplicate else 202
        return web.json_response(
            {"message_id": result.message_id, "duplicate": result.duplicate}, status=status
        )

    async def _receive_batch(self, body: bytes, headers: dict[str, str]) -> web.StreamResponse:
        """An HL7 batch: 200 and the acknowledgement batch when all of it was stored, 400
        when refused as it is (409 for a reused control id), 503 when the engine cannot take
        it now."""
        try:
            if self.config.batch == "reject":
                raise RejectedInput("HL7 batches (FHS/BHS, or several MSH) are not accepted "
                                    "here: post one message per request", hl7_error="200")
            assert self._ingest is not None
            answer = await answer_batch(body, self._ingest, self.channel, headers=headers,
                                        default_encoding=self.config.default_encoding)
        except RejectedInput as exc:
            ack = build_ack(None, exc.code, text=str(exc), error_code=exc.hl7_error)
            return web.Response(status=400, body=ack.encode(), content_type=HL7_MEDIA)
        status = {"AA": 200, "AR": 409 if answer.reused else 400}.get(answer.code, 503)
        return web.Response(status=status, body=answer.body, content_type=HL7_MEDIA,
                            headers={"Retry-After": "5"} if status == 503 else {})

    def _headers(self, request: web.Request) -> dict[str, str]:
        """The request headers the message keeps (``pass_headers`` and Idempotency-Key).

        An Idempotency-Key is refused rather than cut when too long: two keys that share a
        prefix would otherwise dedup as one and the second message would be lost.
        """
        headers = {}
        for name in self.config.pass_headers:
            value = _text_header(request, name)
            if value is not None:
                headers[name] = value[:_MAX_HEADER_VALUE]
        idem = _text_header(request, "Idempotency-Key")
        if idem:
            if len(idem) > _MAX_IDEMPOTENCY_KEY:
                raise RejectedInput(
                    f"Idempotency-Key is {len(idem)} characters, at most "
                    f"{_MAX_IDEMPOTENCY_KEY} are accepted")
            headers["Idempotency-Key"] = idem
        _text_header(request, "X-Correlation-Id")
        return headers

    def _content_type(self, request: web.Request) -> str | None:
        if self.config.content_type != "auto":
            return self.config.content_type
        media = request.content_type.lower()
        if "hl7" in media or media == "application/edi-hl7":
            return "hl7v2"
        if media == "application/fhir+json":
            return "fhir+json"
        if media.endswith("json"):
            return "json"
        if media.endswith("xml"):
            return "xml"
        if media.startswith("text/"):
            return "text"
        return None


async def _read_bounded(request: web.Request, limit: int) -> bytes | None:
    """The body, or None as soon as more than ``limit`` bytes have arrived.

    Read chunk by chunk so a chunked (or decompressed) body over the limit is refused while
    it streams, never held whole in memory; Content-Length was checked before this.
    """
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _text_header(request: web.Request, name: str) -> str | None:
    """A header value that is kept as text; bytes that are not UTF-8 are refused."""
    value = request.headers.get(name)
    if value is None:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RejectedInput(f"header {name} is not valid UTF-8") from None
    return value


def _validate(
    body: bytes, content_type: str, default_encoding: str, charset: str | None = None
) -> Hl7Message | None:
    """Refuse bodies that are not what they claim; return the parsed HL7 when it is HL7.

    HL7 is decoded by its MSH-18 (else ``default_encoding``), plain text by the request's
    ``charset`` (else ``default_encoding``); JSON is UTF-8 by definition and XML declares
    its own encoding.
    """
    if not body:
        raise RejectedInput("empty body")
    if content_type == "hl7v2":
        return parse(body, default_encoding=default_encoding)
    if content_type in ("json", "fhir+json"):
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise RejectedInput(f"body is not valid JSON: {exc}") from None
        if content_type == "fhir+json":
            _check_fhir_shape(doc)
        return None
    if content_type == "xml":
        parse_xml(body)
    elif content_type == "text":
        _check_text(body, charset or default_encoding)
    return None


def _check_fhir_shape(doc: object) -> None:
    if not isinstance(doc, dict):
        raise RejectedInput(
            f"FHIR body must be a JSON object with resourceType, not {_json_kind(doc)}")
    rtype = doc.get("resourceType")
    if not isinstance(rtype, str) or not _RESOURCE_TYPE.fullmatch(rtype):
        shown = ("nothing" if "resourceType" not in doc else
                 _json_kind(rtype) if rtype is None else f"{_json_kind(rtype)} {str(rtype)[:40]!r}")
        raise RejectedInput(f"FHIR resourceType must be a resource name, got {shown}")


def _json_kind(value: object) -> str:
    kinds = {list: "an array", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", dict: "an object"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def _check_text(body: bytes, encoding: str) -> None:
    try:
        body.decode(encoding)
    except LookupError:
        raise RejectedInput(f"unknown charset {encoding[:40]!r}") from None
    except UnicodeDecodeError as exc:
        raise RejectedInput(
            f"body is not valid {encoding} text: undecodable byte at offset {exc.start}"
        ) from None


def secure_xml_parser() -> etree.XMLParser:
    """An lxml parser with DTDs, entity expansion and network access off."""
    return etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
        huge_tree=False, remove_pis=True,
    )


def parse_xml(body: bytes) -> etree._Element:
    """Parse untrusted XML; any DOCTYPE is refused outright (XXE, billion laughs)."""
    if re.search(rb"<!DOCTYPE|<!ENTITY", body[:65536], re.IGNORECASE):
        raise RejectedInput("XML with a DOCTYPE or ENTITY declaration is not accepted")
    try:
        return etree.fromstring(body, secure_xml_parser())
    except etree.XMLSyntaxError as exc:
        raise RejectedInput(f"body is not well-formed XML: {exc}") from None


def _problem(status: int, detail: str, *, retry_after: int | None = None) -> web.Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return web.json_response({"error": detail[:500]}, status=status, headers=headers)


def _too_large(detail: str) -> web.Response:
    """413, and the connection is not kept: the rest of the body is never wanted."""
    response = _problem(413, detail)
    response.force_close()
    return response


def _constant_time_equal(a: str, b: str) -> bool:
    # surrogateescape: header bytes that are not UTF-8 compare (unequal) instead of raising.
    return hmac.compare_digest(a.encode("utf-8", "surrogateescape"),
                               b.encode("utf-8", "surrogateescape"))


# -- destination ----------------------------------------------------------------------------

OutcomeName = Literal["ack", "retry", "dead_letter"]
_DEFAULT_OUTCOMES: dict[str, OutcomeName] = {
    "2xx": "ack", "408": "retry", "425": "retry", "429": "retry", "5xx": "retry",
    "4xx": "dead_letter", "3xx": "dead_letter",
}
_MEDIA = {
    "hl7v2": HL7_MEDIA, "json": "application/json", "fhir+json": "application/fhir+json",
    "xml": "application/xml", "text": "text/plain",
}


DEFAULT_MAX_ANSWER_BYTES = 8 * 1024 * 1024


class AnswerTooLarge(Exception):
    """Raised by ``read_capped``: the peer's answer is longer than the caller allows."""


async def read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """An answer's whole body, read no further than ``limit`` bytes.

    Every outbound client reads through here, so no peer can fill the engine's memory: a
    declared length over the limit is not read at all, a streamed body stops at it
    (``AnswerTooLarge``). A body cut short raises ``aiohttp.ClientPayloadError``; reading
    chunk by chunk until the end is what makes it whole (``content.read(n)`` would return
    only what has arrived so far).
    """
    if resp.content_length is not None and resp.content_length > limit:
        raise AnswerTooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise AnswerTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


class HttpDestinationConfig(DestinationSettings):
    """Posts each envelope to a URL.

    Attributes:
        outcomes: status (``"404"``) or class (``"4xx"``) → ``ack``/``retry``/``dead_letter``;
            the most specific entry wins over the defaults.
        token: sent as ``Authorization: Bearer``.
        max_answer_bytes: the most of an answer's body the engine reads; a longer one is
            not kept (the status still decides the outcome).
    """

    type: Literal["http"]
    url: str = Field(pattern=r"^https?://")
    method: Literal["POST", "PUT"] = "POST"
    headers: dict[str, str] = Field(default_factory=dict)
    token: Secret | None = None
    timeout: float = Field(default=30.0, gt=0)
    connect_timeout: float = Field(default=5.0, gt=0)
    outcomes: dict[str, OutcomeName] = Field(default_factory=dict)
    max_answer_bytes: int = Field(default=DEFAULT_MAX_ANSWER_BYTES, ge=1024)

    @field_validator("outcomes")
    @classmethod
    def _status_keys(cls, value: dict[str, OutcomeName]) -> dict[str, OutcomeName]:
        for key in value:
            if not re.fullmatch(r"[1-5](\d\d|xx)", key):
                raise ValueError(
                    f"outcome key {key!r} must be a status like 404 or a class like 4xx"
                )
        return value

    def build(self, channel: str) -> HttpDestination:
        return HttpDestination(self)


class HttpSender:
    """An aiohttp session for one destination plus the status → outcome rules.

    Shared by the HTTP and FHIR destinations.
    """

    def __init__(
        self, *, timeout: float, connect_timeout: float, outcomes: dict[str, OutcomeName],
        headers: dict[str, str], token: Secret | None, concurrency: int,
        max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES,
    ) -> None:
        self.max_answer_bytes = max_answer_bytes
        self.outcomes = {**_DEFAULT_OUTCOMES, **outcomes}
        self.timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=connect_timeout)
        self.headers = dict(headers)
        self.token = token
        self.concurrency = concurrency
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=max(1, self.concurrency), keepalive_timeout=60)
        self.session = aiohttp.ClientSession(
            connector=connector, timeout=self.timeout, headers=self.headers,
            json_serialize=lambda o: orjson.dumps(o).decode(),
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    def outcome_for(self, status: int) -> OutcomeName:
        return self.outcomes.get(str(status)) or self.outcomes.get(f"{status // 100}xx", "retry")

    async def request(
        self, method: str, url: str, body: bytes, content_type: str,
        extra_headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes | None, dict[str, str]]:
        """One request; connection failures and timeouts become TransientError.

        The answer's body is None when it is larger than ``max_answer_bytes``: reading stops
        there, so a peer cannot fill the engine's memory. The status alone still decides the
        outcome (the peer has answered; whether it took the message does not depend on how
        much it said).
        """
        if self.session is None:
            raise TransientError("destination is not started")
        headers = {"Content-Type": _MEDIA.get(content_type, "application/octet-stream")}
        if self.token is not None:
            # Resolved per request (Secret caches it), so a destination whose token is not
            # on this machine yet still starts and retries until it is.
            try:
                headers["Authorization"] = f"Bearer {self.token.get()}"
            except ConfigError as exc:
                raise TransientError(f"{method} {url}: token not available: {exc}") from None
        if extra_headers:
            headers.update(extra_headers)
        try:
            async with self.session.request(method, url, data=body, headers=headers) as resp:
                try:
                    payload: bytes | None = await read_capped(resp, self.max_answer_bytes)
                except AnswerTooLarge:
                    payload = None
                return resp.status, payload, dict(resp.headers)
        except TimeoutError:
            raise TransientError(f"{method} {url}: timed out") from None
        except aiohttp.ClientError as exc:
            raise TransientError(f"{method} {url}: {exc.__class__.__name__} {exc}"[:300]) from None

    def classify(
        self, status: int, body: bytes | None, headers: dict[str, str], what: str
    ) -> None:
        """Raise the error the status stands for; return normally for success."""
        outcome = self.outcome_for(status)
        if outcome == "ack":
            return
        snippet = (body[:300].decode("utf-8", errors="replace").strip() if body is not None
                   else f"(answer over {self.max_answer_bytes} bytes, not read)")
        text = f"{what} answered {status}" + (f": {snippet}" if snippet else "")
        if outcome == "retry":
            raise TransientError(text, retry_after=retry_after_seconds(headers.get("Retry-After")))
        raise PermanentError(text)


def retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    with contextlib.suppress(TypeError, ValueError):
        import time

        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    return None


class HttpDestination:
    def __init__(self, config: HttpDestinationConfig) -> None:
        self.config = config
        self.sender = HttpSender(
            timeout=config.timeout, connect_timeout=config.connect_timeout,
            outcomes=config.outcomes, headers=config.headers, token=config.token,
            concurrency=config.concurrency, max_answer_bytes=config.max_answer_bytes,
        )

    async def start(self) -> None:
        await self.sender.start()

    async def close(self) -> None:
        await self.sender.close()

    async def send(self, envelope: Envelope) -> Result:
        extra = {"X-Message-Id": envelope.message_id}
        status, body, headers = await self.sender.request(
            self.config.method, self.config.url, envelope.body, envelope.content_type, extra
        )
        self.sender.classify(status, body, headers, self.config.url)
        if body is None:
            return Result(detail=f"HTTP {status} (answer over {self.config.max_answer_bytes}"
                          " bytes, not kept)")
        return Result(detail=f"HTTP {status}", response=body or None,
                      content_type=_response_type(headers))


def _response_type(headers: dict[str, str]) -> str | None:
    media = headers.get("Content-Type", "").split(";")[0].strip().lower()
    if "fhir+json" in media:
        return "fhir+json"
    if media.endswith("json"):
        return "json"
    if media.endswith("xml"):
        return "xml"
    if "hl7" in media:
        return "hl7v2"
    return "text" if media.startswith("text/") else None


assert set(_MEDIA) <= set(CONTENT_TYPES)
