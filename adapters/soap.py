"""Regional insurance SOAP services (and any other WSDL), through zeep.

The WSDL is loaded once, when the destination starts, from a local file or a URL; zeep
reads it and builds each request envelope and reads each answer, and aiohttp carries them
(one HTTP session per destination), so no call ever fetches the WSDL again or blocks the
event loop. Operations of the commonest shape (strings in, strings out) are written and read
by ``adapters.soap_plain`` instead, which agrees with zeep byte for byte at a fifth of the
cost and hands anything else back to zeep.

Two shapes of regional service are supported:

- **operations** (ASMX style): many operations with positional string parameters, each
  answering an XML document *as a string* (plus, often, a ``message`` out parameter). The
  envelope body is a JSON list (positional arguments) or object (named arguments); the
  operation comes from the ``operation`` header or the config.
- **pipe**: one operation taking a whole request document, ``<request><head>…</head>
  <body>…</body></request>``. The envelope body is the ``<body>`` element (XML) produced by
  a mapping; the adapter adds the ``<head>`` (version, function number from the ``funcno``
  header or config, organisation, credentials from a secret, the message id) and passes
  the document as the operation's single string argument.

Hostile XML: every answer is refused before parsing if it declares a DTD or an entity, then
parsed with DTD loading, entities and network access off (zeep's own parses, of the WSDL and
of multipart answers, with ``forbid_dtd``, ``forbid_entities`` and ``forbid_external``); every
string
result that holds XML is checked the same way and parsed with entities, DTD loading and
network access off. A refusal is a ``PermanentError`` naming the reason; nothing is fetched.

Outcomes: a SOAP fault, an unreadable answer, HTTP 4xx, or a business code outside
``success_codes`` (read with ``code_path`` from the result document) is permanent; refused
connections, timeouts and HTTP 5xx without a fault are transient, except that a timeout or
lost connection on an operation listed in ``in_doubt_operations`` raises ``InDoubtError``
(the request may have been processed: the workflow must query before any retry).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import re
from decimal import Decimal
from typing import Any, Literal, NoReturn

import aiohttp
import orjson
import zeep
import zeep.exceptions
import zeep.helpers
from lxml import etree
from pydantic import Field
from zeep.settings import Settings
from zeep.transports import Transport

from adapters.http import AnswerTooLarge, read_capped
from adapters.soap_plain import PlainOperation, plain_operations
from engine.contracts import Result
from engine.errors import ConfigError, InDoubtError, PermanentError, TransientError
from engine.settings import DestinationSettings, Model, Secret
from queues.contract import Envelope

log = logging.getLogger("hisbridge.adapters.soap")

ZEEP_SETTINGS = Settings(
    strict=True, forbid_dtd=True, forbid_entities=True, forbid_external=True,
    xml_huge_tree=False,
)
_HOSTILE = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
    huge_tree=False,
)


def parse_untrusted(text: str | bytes, where: str) -> etree._Element:
    """Parse XML from a peer; a DTD or entity declaration is refused before parsing.

    Raises:
        PermanentError: hostile or malformed XML, with ``where`` in the message.
    """
    raw = text.encode("utf-8") if isinstance(text, str) else text
    if _HOSTILE.search(raw):
        raise PermanentError(
            f"{where}: XML declaring a DTD or entities refused (XXE / entity expansion)"
        )
    try:
        return etree.fromstring(raw, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise PermanentError(f"{where}: malformed XML: {exc}") from None


class PipeConfig(Model):
    """The single-operation shape: how the request document's head is built.

    ``tags`` renames the head's elements for services that spell them differently.
    """

    operation: str = "Invoke"
    root: str = "request"
    version: str = "1.0"
    funcno: str | None = None
    org: str
    user: str
    password: Secret
    tags: dict[str, str] = Field(default_factory=lambda: {
        "version": "version", "funcno": "funcno", "org": "orgcode", "user": "userid",
        "password": "password", "msgid": "msgid",
    })
    code_path: str = "/response/head/code"
    message_path: str = "/response/head/message"


class SoapDestinationConfig(DestinationSettings):
    """A SOAP service described by a WSDL (``type = "soap"``).

    Attributes:
        wsdl: local path or http(s) URL, loaded once at start.
        service, port: which WSDL service/port to use (the first by default).
        address: overrides the endpoint address given in the WSDL.
        operation: default operation (the ``operation`` header overrides it).
        timeout, operation_timeouts: seconds per call, per operation.
        result_part: the output part holding the result document (default: the first
            string part that holds XML).
        message_part: an output part carrying a message (ASMX ``message`` out parameter).
        code_path, message_path: XPath into the result document for the business code and
            its message; a code outside ``success_codes`` is a permanent error.
        in_doubt_operations: operations that move money (a lost answer is in doubt).
        pipe: set for the single-operation "pipe" shape.
    """

    type: Literal["soap"]
    wsdl: str = Field(min_length=1)
    service: str | None = None
    port: str | None = None
    address: str | None = None
    operation: str | None = None
    timeout: float = Field(default=10.0, gt=0)
    connect_timeout: float = Field(default=3.0, gt=0)
    wsdl_timeout: float = Field(default=10.0, gt=0)
    operation_timeouts: dict[str, float] = Field(default_factory=dict)
    result_part: str | None = None
    message_part: str | None = None
    code_path: str | None = None
    message_path: str | None = None
    success_codes: list[str] = Field(default_factory=lambda: ["0"])
    in_doubt_operations: list[str] = Field(default_factory=list)
    pipe: PipeConfig | None = None
    max_response_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    peer_time_header: str | None = None

    def build(self, channel: str) -> SoapDestination:
        return SoapDestination(f"{channel}/{self.name}", self)


class _Reply:
    """The ``requests.Response`` shape zeep's ``process_reply`` reads."""

    __slots__ = ("content", "encoding", "headers", "status_code")

    def __init__(self, status: int, content: bytes, headers: dict[str, str]) -> None:
        self.status_code = status
        self.content = content
        self.headers = headers
        self.encoding = "utf-8"


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value))
    if isinstance(value, (dt.date, dt.time, bytes)):
        return value.isoformat() if not isinstance(value, bytes) else value.decode()
    raise TypeError(type(value).__name__)


class SoapDestination:
    """Satisfies ``engine.contracts.Destination``."""

    def __init__(self, name: str, config: SoapDestinationConfig) -> None:
        self.name = name
        self.config = config
        self._client: Any = None
        self._service: Any = None
        self._address = ""
        self._soap12 = False
        self._http: aiohttp.ClientSession | None = None
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}
        self._plain: dict[str, PlainOperation] = {}
        self.last_peer_time: float | None = None

    async def start(self) -> None:
        if self._client is None:
            self._client = await asyncio.to_thread(self._load_wsdl)
            proxy = self._service
            self._address = self.config.address or proxy._binding_options["address"]
            self._soap12 = type(proxy._binding).__name__ == "Soap12Binding"
            self._plain = plain_operations(self._client, proxy._binding)
        if self._http is None:
            connector = aiohttp.TCPConnector(limit=self.config.concurrency)
            self._http = aiohttp.ClientSession(connector=connector)

    def _load_wsdl(self) -> Any:
        cfg = self.config
        try:
            client = zeep.Client(  # type: ignore[no-untyped-call]
                cfg.wsdl, settings=ZEEP_SETTINGS,
                transport=Transport(  # type: ignore[no-untyped-call]
                    timeout=cfg.wsdl_timeout, operation_timeout=cfg.timeout
                ),
            )
            self._service = (
                client.bind(cfg.service, cfg.port) if cfg.service or cfg.port else client.service
            )
        except (OSError, zeep.exceptions.Error, etree.XMLSyntaxError, ValueError) as exc:
            raise ConfigError(f"soap destination {self.name}: cannot load WSDL"
                              f" {cfg.wsdl}: {exc}") from None
        except Exception as exc:  # requests' errors when the WSDL URL is unreachable
            raise ConfigError(f"soap destination {self.name}: cannot load WSDL"
                              f" {cfg.wsdl}: {type(exc).__name__}: {exc}") from None
        operations = {op for op in self._service._binding._operations}
        for op in [cfg.operation, *(cfg.operation_timeouts or {})]:
            if op and op not in operations:
                raise ConfigError(f"soap destination {self.name}: operation {op!r} is not"
                                  f" in the WSDL (has: {', '.join(sorted(operations))})")
        return client

    async def close(self) -> None:
        if self._http is not None:
            http, self._http = self._http, None
            await http.close()

    # -- sending -----------------------------------------------------------------------------

    async def send(self, envelope: Envelope) -> Result:
        if self._client is None or self._http is None:
            raise TransientError(f"soap destination {self.name} is not started")
        operation, args, kwargs = self._arguments(envelope)
        binding = self._service._binding
        op = binding.get(operation)
        if op is None:
            raise PermanentError(f"{self.name}: operation {operation!r} is not in the WSDL")
        plain = None if kwargs else self._plain.get(operation)
        body = plain.request(args) if plain is not None else None
        if body is None:
            plain = None
            try:
                message = self._client.create_message(self._service, operation, *args, **kwargs)
            except (TypeError, ValueError, zeep.exceptions.Error) as exc:
                raise PermanentError(
                    f"{operation}: arguments do not fit the WSDL: {exc}") from None
            body = etree.tostring(message, xml_declaration=True, encoding="utf-8")
        status, raw, headers = await self._post(operation, op.soapaction, body)
        if status not in (200, 500) or (status == 500 and b"Fault" not in raw):
            self._raise_for_status(operation, status, raw)
        if _HOSTILE.search(raw):
            raise PermanentError(
                f"{operation}: answer declares a DTD or entities; refused (XXE / entity"
                " expansion)"
            )
        try:
            serialized = self._read_reply(binding, op, plain, status, raw, headers)
        except zeep.exceptions.Fault as fault:
            raise PermanentError(
                f"{operation}: SOAP fault {fault.code or ''}: {fault.message}".replace("  ", " ")
            ) from None
        except (zeep.exceptions.Error, etree.XMLSyntaxError, ValueError) as exc:
            raise PermanentError(f"{operation}: unreadable answer: {exc}") from None
        except (LookupError, AttributeError, TypeError) as exc:
            # zeep trusts the answer's shape; a peer's odd one must not escape as a crash.
            raise PermanentError(f"{operation}: unreadable answer: {type(exc).__name__}:"
                                 f" {exc}") from None
        label = operation
        if self.config.pipe is not None:
            label += f" funcno={envelope.headers.get('funcno') or self.config.pipe.funcno}"
        return self._result(label, serialized)

    def _read_reply(self, binding: Any, op: Any, plain: PlainOperation | None, status: int,
                    raw: bytes, headers: dict[str, str]) -> Any:
        """The answer as plain dicts and strings (``zeep.helpers.serialize_object``).

        zeep's ``process_reply`` without its per-call parser and plugin machinery: the answer
        is parsed once, by the module's safe parser; a fault goes to zeep's fault reader; a
        plain operation's answer is read by its codec, anything it declines by zeep's
        deserializer. Multipart (MTOM/XOP) answers, which need zeep's decoder, take zeep's
        own path.
        """
        if "multipart/related" in headers.get("Content-Type", "").lower():
            result = binding.process_reply(self._client, op, _Reply(status, raw, headers))
            return zeep.helpers.serialize_object(result, dict)  # type: ignore[no-untyped-call]
        doc = etree.fromstring(raw, _PARSER)
        if status != 200 or doc.find("soap-env:Body/soap-env:Fault",
                                     namespaces=binding.nsmap) is not None:
            return binding.process_error(doc, op)
        if plain is not None:
            read = plain.reply(doc)
            if read is not None:
                return read[0]
        body = doc.find("soap-env:Body", namespaces=binding.nsmap)
        if body is not None and len(body) == 0:
            raise ValueError("the SOAP Body is empty")
        result = op.process_reply(doc)
        return zeep.helpers.serialize_object(result, dict)  # type: ignore[no-untyped-call]

    def _arguments(self, envelope: Envelope) -> tuple[str, list[Any], dict[str, Any]]:
        pipe = self.config.pipe
        operation = (envelope.headers.get("operation") or self.config.operation
                     or (pipe.operation if pipe else ""))
        if not operation:
            raise PermanentError(f"{self.name}: no operation (header or config)")
        if pipe is not None:
            return operation, [self._pipe_document(envelope, pipe)], {}
        if envelope.content_type == "xml":
            return operation, [envelope.body.decode("utf-8")], {}
        try:
            value = orjson.loads(envelope.body) if envelope.body.strip() else []
        except orjson.JSONDecodeError as exc:
            raise PermanentError(f"{operation}: arguments are not JSON: {exc}") from None
        if isinstance(value, list):
            return operation, [_argument(v) for v in value], {}
        if isinstance(value, dict):
            return operation, [], {k: _argument(v) for k, v in value.items()}
        return operation, [_argument(value)], {}

    def _pipe_document(self, envelope: Envelope, pipe: PipeConfig) -> str:
        funcno = envelope.headers.get("funcno") or pipe.funcno
        if not funcno:
            raise PermanentError(f"{self.name}: pipe call without funcno (header or config)")
        body = parse_untrusted(envelope.body, f"{self.name} pipe body")
        if etree.QName(body).localname != "body":
            wrapper = etree.Element("body")
            wrapper.append(body)
            body = wrapper
        root = etree.Element(pipe.root)
        head = etree.SubElement(root, "head")
        values = {"version": pipe.version, "funcno": funcno, "org": pipe.org,
                  "user": pipe.user, "password": pipe.password.get(),
                  "msgid": envelope.message_id}
        for key, value in values.items():
            etree.SubElement(head, pipe.tags.get(key, key)).text = value
        root.append(body)
        return str(etree.tostring(root, encoding="unicode"))

    async def _post(self, operation: str, action: str | None,
                    body: bytes) -> tuple[int, bytes, dict[str, str]]:
        assert self._http is not None
        if self._soap12:
            headers = {"Content-Type": f'application/soap+xml; charset=utf-8; action="{action}"'}
        else:
            headers = {"Content-Type": "text/xml; charset=utf-8",
                       "SOAPAction": f'"{action or ""}"'}
        total = self.config.operation_timeouts.get(operation, self.config.timeout)
        timeout = self._timeouts.get(total)
        if timeout is None:
            timeout = aiohttp.ClientTimeout(total=total,
                                            connect=min(self.config.connect_timeout, total))
            self._timeouts[total] = timeout
        in_doubt = operation in self.config.in_doubt_operations
        try:
            async with self._http.post(self._address, data=body, headers=headers,
                                       timeout=timeout) as resp:
                try:
                    raw = await read_capped(resp, self.config.max_response_bytes)
                except AnswerTooLarge:
                    self._too_large(operation, self.config.max_response_bytes)
                peer = resp.headers.get(self.config.peer_time_header or "", "")
                self.last_peer_time = int(peer) / 1e6 if peer.isdigit() else None
                return resp.status, raw, dict(resp.headers)
        except aiohttp.ClientConnectorError as exc:
            raise TransientError(f"{operation}: cannot connect: {exc.os_error or exc}") from None
        except aiohttp.ConnectionTimeoutError:
            raise TransientError(f"{operation}: connect timeout") from None
        except TimeoutError:
            text = f"{operation}: no answer within {total:g}s"
            raise (InDoubtError(text + " (may have been processed: query before retrying)")
                   if in_doubt else TransientError(text)) from None
        except aiohttp.ClientError as exc:
            text = f"{operation}: connection failed: {type(exc).__name__}: {exc}"
            raise (InDoubtError(text + " (may have been processed: query before retrying)")
                   if in_doubt else TransientError(text)) from None

    def _too_large(self, operation: str, limit: int) -> NoReturn:
        """An answer not read: the call was processed or refused, and which is unknown."""
        text = f"{operation}: answer larger than {limit} bytes"
        if operation in self.config.in_doubt_operations:
            raise InDoubtError(text + " (may have been processed: query before retrying)")
        raise PermanentError(text)

    def _raise_for_status(self, operation: str, status: int, raw: bytes) -> None:
        snippet = raw[:200].decode("utf-8", "replace")
        if status >= 500 or status in (408, 429):
            if status in (502, 504) and operation in self.config.in_doubt_operations:
                raise InDoubtError(f"{operation}: HTTP {status} (may have been processed)")
            raise TransientError(f"{operation}: HTTP {status}: {snippet}")
        raise PermanentError(f"{operation}: HTTP {status}: {snippet}")

    # -- reading the result ------------------------------------------------------------------

    def _result(self, operation: str, value: Any) -> Result:
        cfg = self.config
        parts: dict[str, Any] = value if isinstance(value, dict) else {"result": value}
        documents: dict[str, etree._Element] = {}
        for key, part in parts.items():
            if isinstance(part, str) and part.lstrip().startswith("<"):
                where = f"{operation} result" + ("" if key == "result" else f" {key}")
                documents[key] = parse_untrusted(part, where)
        name: str | None = cfg.result_part or next(iter(documents), None)
        if cfg.result_part and cfg.result_part not in parts:
            raise PermanentError(f"{operation}: answer has no part {cfg.result_part!r}")
        document = documents.get(name) if name else None
        code_path = cfg.code_path or (cfg.pipe.code_path if cfg.pipe else None)
        message_path = cfg.message_path or (cfg.pipe.message_path if cfg.pipe else None)
        if code_path:
            if document is None:
                raise PermanentError(f"{operation}: answer holds no result document")
            code = _xpath_text(document, code_path)
            if code not in cfg.success_codes:
                text = _xpath_text(document, message_path) if message_path else ""
                if not text and cfg.message_part:
                    text = str(parts.get(cfg.message_part) or "")
                raise PermanentError(f"{operation} refused (code {code or 'missing'}): "
                                     f"{text or 'no message'}")
        if document is not None and name is not None:
            return Result(detail=f"{operation} ok", response=parts[name].encode("utf-8"),
                          content_type="xml")
        return Result(detail=f"{operation} ok",
                      response=orjson.dumps(parts, default=_json_default), content_type="json")


def _argument(value: Any) -> Any:
    """JSON scalars become the strings these services take; null stays absent."""
    if value is None or isinstance(value, (str, list, dict)):
        return value
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


@functools.lru_cache(maxsize=256)
def _xpath(path: str) -> etree.XPath:
    """Configured paths are few and fixed: compile each once, not on every answer."""
    return etree.XPath(path)


def _xpath_text(document: etree._Element, path: str) -> str:
    found = _xpath(path)(document.getroottree())
    if isinstance(found, list):
        if not found:
            return ""
        first = found[0]
        return (first.text or "").strip() if isinstance(first, etree._Element) else str(first)
    return str(found).strip()
