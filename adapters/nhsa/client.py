"""The national platform client: one HTTP session, the envelope, the gateway headers, the
operator sign-in, and the translation of every failure into hisbridge's errors.

Failures, from the caller's point of view:

    NotSent (TransientError)         the request never left (connection refused, connect
                                     timeout): nothing can have happened on the platform.
    Unanswered (TransientError)      the request was (or may have been) sent but no usable
                                     answer came back: read timeout, dropped connection,
                                     HTTP 5xx. For a settlement this is *in doubt*.
    MalformedAnswer (PermanentError) an HTTP 200 answer that cannot be read: not JSON, no
                                     ``infcode``, no ``output``, a non-numeric amount, figures
                                     that do not add up.
    Refused (PermanentError)         the platform refused the call (``infcode`` != "0") or
                                     the gateway refused the signature (HTTP 401/403).
    TransientError                   HTTP 408/429, or a refusal classified ``transient``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from pydantic import ValidationError

from adapters.http import AnswerTooLarge, read_capped
from adapters.nhsa.auth import GatewayAuth, NoAuth
from adapters.nhsa.classify import Classifier
from adapters.nhsa.envelope import (
    Answer,
    MalformedAnswer,
    MsgIdGenerator,
    decode_answer,
    encode_json,
    encode_request,
    now_text,
)
from adapters.nhsa.fields import Node
from adapters.nhsa.session import SignInSession
from adapters.nhsa.session_models import SignInOutput
from adapters.nhsa.transactions import lookup
from engine.errors import PermanentError, TransientError

log = logging.getLogger("hisbridge.adapters.nhsa")

__all__ = ["MalformedAnswer", "NhsaClient", "NotSent", "Refused", "Reply", "Unanswered"]


class NotSent(TransientError):
    """The request never reached the platform."""


class Unanswered(TransientError):
    """The request may have been processed, but no usable answer arrived."""


class Refused(PermanentError):
    """The platform (or its gateway) refused the call.

    Attributes:
        infcode: the platform's code (``"http-401"`` for a gateway refusal).
        err_msg: the platform's message.
    """

    def __init__(self, message: str, *, infcode: str, err_msg: str) -> None:
        super().__init__(message)
        self.infcode = infcode
        self.err_msg = err_msg


@dataclass(frozen=True, slots=True)
class Institution:
    """The envelope fields that identify the hospital, its system and operator."""

    fixmedins_code: str
    fixmedins_name: str
    mdtrtarea_admvs: str
    recer_sys_code: str = "HIS"
    infver: str = "V1.0"
    opter_type: str = "1"
    opter: str = "hisbridge"
    opter_name: str = "hisbridge"
    dev_no: str = ""
    dev_safe_info: str = ""
    cainfo: str = ""
    signtype: str = ""
    mac: str = ""
    ip: str = ""


@dataclass(frozen=True, slots=True)
class Reply:
    """A successful call: the ``msgid`` sent, the decoded answer and its ``output``."""

    infno: str
    msgid: str
    answer: Answer
    peer_time: float | None

    @property
    def output(self) -> Any:
        return self.answer.output


def describe_validation(exc: ValidationError, where: str) -> str:
    """A short reason for a validation failure; values are shown only for numbers (a name or
    an ID number must not end up in a dead-letter reason)."""
    parts = []
    for err in exc.errors(include_url=False)[:3]:
        loc = ".".join(str(p) for p in err["loc"])
        text = f"{where}.{loc}: {err['msg']}" if loc else f"{where}: {err['msg']}"
        if err["type"].startswith(("decimal", "float", "int")) and isinstance(
            err.get("input"), (str, int, float)
        ):
            text += f" (got {str(err['input'])[:32]!r})"
        parts.append(text)
    more = len(exc.errors()) - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


class NhsaClient:
    """Calls the national platform's single ``callService`` endpoint."""

    def __init__(
        self,
        url: str,
        institution: Institution,
        *,
        auth: GatewayAuth | None = None,
        classifier: Classifier | None = None,
        timeout: float = 10.0,
        connect_timeout: float = 3.0,
        timeouts: dict[str, float] | None = None,
        msgid_node: int | None = None,
        sign_in: bool = True,
        sign_in_ttl: float = 12 * 3600.0,
        renew_daily: bool = True,
        validate_output: bool = True,
        max_answer_bytes: int = 8 * 1024 * 1024,
        peer_time_header: str | None = None,
        concurrency: int = 100,
    ) -> None:
        self.url = url
        self.institution = institution
        self.auth = auth or NoAuth()
        self.classifier = classifier or Classifier()
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.timeouts = dict(timeouts or {})
        self.new_msgid = MsgIdGenerator(institution.fixmedins_code, msgid_node)
        self.validate_output = validate_output
        self.max_answer_bytes = max_answer_bytes
        self.peer_time_header = peer_time_header
        self.signs_in = sign_in
        self.session = SignInSession(self._sign_in, ttl=sign_in_ttl, renew_daily=renew_daily)
        self._concurrency = concurrency
        self._http: aiohttp.ClientSession | None = None
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}
        inst = institution
        self._fields = {
            "mdtrtarea_admvs": inst.mdtrtarea_admvs,
            "recer_sys_code": inst.recer_sys_code,
            "dev_no": inst.dev_no,
            "dev_safe_info": inst.dev_safe_info,
            "cainfo": inst.cainfo,
            "signtype": inst.signtype,
            "infver": inst.infver,
            "opter_type": inst.opter_type,
            "opter": inst.opter,
            "opter_name": inst.opter_name,
            "fixmedins_code": inst.fixmedins_code,
            "fixmedins_name": inst.fixmedins_name,
        }

    async def start(self) -> None:
        if self._http is None:
            connector = aiohttp.TCPConnector(limit=self._concurrency, ttl_dns_cache=300)
            self._http = aiohttp.ClientSession(
                connector=connector, json_serialize=lambda v: encode_json(v).decode()
            )

    async def close(self, *, sign_out: bool = False) -> None:
        sign_no = self.session.forget()
        if sign_out and sign_no and self._http is not None:
            opter = self.institution.opter
            body = encode_json({"signOut": {"sign_no": sign_no, "opter_no": opter}})
            try:
                await self.exchange("9002", body, sign_no=sign_no, time_limit=3.0)
            except (TransientError, PermanentError) as exc:
                # The error's text can quote the platform's answer: at DEBUG only.
                log.warning("9002 sign-out failed (%s)", type(exc).__name__)
                log.debug("9002 sign-out failure: %s", exc)
        if self._http is not None:
            http, self._http = self._http, None
            await http.close()

    # -- one HTTP exchange ------------------------------------------------------------------

    async def exchange(
        self,
        infno: str,
        input_json: bytes,
        *,
        msgid: str | None = None,
        sign_no: str = "",
        insuplc_admdvs: str = "",
        time_limit: float | None = None,
    ) -> tuple[str, Answer, float | None]:
        """Send one envelope and decode the answer, without judging its ``infcode``.

        Returns:
            (msgid, answer, peer processing time in seconds if the peer reports it)
        """
        if self._http is None:
            raise NotSent("nhsa client is not started")
        msgid = msgid or self.new_msgid()
        fields = dict(self._fields)
        fields["infno"] = infno
        fields["msgid"] = msgid
        fields["insuplc_admdvs"] = insuplc_admdvs
        fields["inf_time"] = now_text()
        fields["sign_no"] = sign_no
        body = encode_request(fields, input_json)
        headers = {"Content-Type": "application/json;charset=utf-8"}
        headers.update(self.auth.headers(infno))
        total = time_limit or self.timeouts.get(infno, self.timeout)
        client_timeout = self._timeouts.get(total)
        if client_timeout is None:
            client_timeout = aiohttp.ClientTimeout(
                total=total, connect=min(self.connect_timeout, total)
            )
            self._timeouts[total] = client_timeout
        try:
            async with self._http.post(
                self.url, data=body, headers=headers, timeout=client_timeout
            ) as resp:
                try:
                    raw = await read_capped(resp, self.max_answer_bytes)
                except AnswerTooLarge:
                    raise MalformedAnswer(
                        f"{infno} answer larger than {self.max_answer_bytes} bytes") from None
                status = resp.status
                peer = resp.headers.get(self.peer_time_header) if self.peer_time_header else None
        except aiohttp.ConnectionTimeoutError:
            raise NotSent(f"{infno} could not connect within {self.connect_timeout:g}s") from None
        except aiohttp.ClientConnectorError as exc:
            raise NotSent(f"{infno} could not connect: {exc.os_error or exc}") from None
        except TimeoutError:
            raise Unanswered(f"{infno} msgid={msgid}: no answer within {total:g}s") from None
        except aiohttp.ClientError as exc:
            raise Unanswered(
                f"{infno} msgid={msgid}: connection failed: {type(exc).__name__}: {exc}"
            ) from None
        peer_time = _peer_seconds(peer)
        if status != 200:
            self._raise_for_status(infno, msgid, status, raw)
        return msgid, decode_answer(raw, infno), peer_time

    @staticmethod
    def _raise_for_status(infno: str, msgid: str, status: int, raw: bytes) -> None:
        snippet = raw[:200].decode("utf-8", "replace")
        if status in (401, 403):
            raise Refused(
                f"{infno}: the gateway refused the call (HTTP {status}): {snippet}",
                infcode=f"http-{status}", err_msg=snippet,
            )
        if status in (408, 429):
            raise NotSent(f"{infno}: the platform asked to come back later (HTTP {status})")
        if status >= 500:
            raise Unanswered(f"{infno} msgid={msgid}: HTTP {status}: {snippet}")
        raise Refused(f"{infno}: HTTP {status}: {snippet}", infcode=f"http-{status}",
                      err_msg=snippet)

    # -- a judged call ------------------------------------------------------------------------

    async def call(
        self,
        infno: str,
        input_json: bytes,
        *,
        insuplc_admdvs: str = "",
        time_limit: float | None = None,
        before_send: Callable[[str], Awaitable[None]] | None = None,
    ) -> Reply:
        """Send a transaction and judge the answer.

        Signs in first when needed; a refusal classified ``resign`` renews the sign-in and
        sends once more with a new ``msgid``. ``before_send`` is awaited with each ``msgid``
        before it goes out (the in-doubt ledger writes it down there).

        Raises:
            Refused, MalformedAnswer: permanent.
            NotSent, Unanswered, TransientError: transient.
        """
        for attempt in (1, 2):
            sign_no = await self.session.sign_no() if self.signs_in else ""
            msgid = self.new_msgid()
            if before_send is not None:
                await before_send(msgid)
            started = time.perf_counter()
            msgid, answer, peer = await self.exchange(
                infno, input_json, msgid=msgid, sign_no=sign_no,
                insuplc_admdvs=insuplc_admdvs, time_limit=time_limit,
            )
            verdict = self.classifier.verdict(answer.infcode, answer.err_msg)
            log.debug("%s msgid=%s infcode=%s in %.1f ms", infno, msgid, answer.infcode,
                      (time.perf_counter() - started) * 1000)
            if verdict == "success":
                self._check_output(infno, msgid, answer)
                return Reply(infno, msgid, answer, peer)
            if verdict == "resign" and attempt == 1 and self.signs_in:
                log.info("%s: platform asked for a new sign-in; signing in again", infno)
                self.session.invalidate(sign_no)
                continue
            if verdict == "resend" and attempt == 1:
                log.info("%s msgid=%s refused as a repeat; resending with a new msgid",
                         infno, msgid)
                continue
            text = f"{infno} refused (infcode {answer.infcode}): {answer.err_msg or 'no err_msg'}"
            if verdict == "transient":
                raise TransientError(text)
            raise Refused(text, infcode=answer.infcode, err_msg=answer.err_msg)
        raise AssertionError("unreachable")  # pragma: no cover

    def _check_output(self, infno: str, msgid: str, answer: Answer) -> None:
        if not self.validate_output:
            return
        transaction = lookup(infno)
        if transaction is None or transaction.output is None:
            return
        if not answer.has_output:
            raise MalformedAnswer(f"{infno} msgid={msgid}: infcode 0 but the answer has no output")
        try:
            transaction.output.model_validate(answer.output)
        except ValidationError as exc:
            raise MalformedAnswer(
                f"{infno} msgid={msgid}: invalid output: {describe_validation(exc, 'output')}"
            ) from None

    async def call_model(self, infno: str, model: Node, **kwargs: Any) -> Any:
        """Send a typed input model; returns the typed output model (or None)."""
        reply = await self.call(infno, encode_json(model.model_dump(exclude_none=True)), **kwargs)
        transaction = lookup(infno)
        if transaction is None or transaction.output is None or not reply.answer.has_output:
            return None
        return transaction.output.model_validate(reply.output)

    async def _sign_in(self) -> str:
        inst = self.institution
        body = encode_json({"signIn": {"opter_no": inst.opter, "mac": inst.mac, "ip": inst.ip}})
        msgid, answer, _ = await self.exchange("9001", body)
        if self.classifier.verdict(answer.infcode, answer.err_msg) == "resend":
            msgid, answer, _ = await self.exchange("9001", body)
        if self.classifier.verdict(answer.infcode, answer.err_msg) != "success":
            raise Refused(
                f"9001 sign-in refused (infcode {answer.infcode}): {answer.err_msg}",
                infcode=answer.infcode, err_msg=answer.err_msg,
            )
        try:
            out = SignInOutput.model_validate(answer.output)
        except ValidationError as exc:
            raise MalformedAnswer(
                f"9001 msgid={msgid}: invalid output: {describe_validation(exc, 'output')}"
            ) from None
        log.info("signed in to the national platform (9001)")
        return out.signinoutb.sign_no


def _peer_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return int(value) / 1_000_000
    except ValueError:
        return None
