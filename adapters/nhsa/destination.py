"""The nhsa destination: an engine envelope in, one national-platform transaction out.

Envelope body (JSON), either:

- the transaction's ``input`` object (``{"data": {...}}``, ``{"feedetail": [...]}`` ...),
  with the transaction code in the ``infno`` header (or the destination's ``infno``) and
  the insured person's area in the ``insuplc_admdvs`` header (or the destination's default);
- or a request document ``{"infno": "2207", "insuplc_admdvs": "440300", "input": {...}}``
  (recognised by its ``input`` key), for mappings that produce the code and area themselves.

Everything else in the envelope (``msgid``, institution, operator, ``sign_no``, ``inf_time``)
belongs to the adapter. The ``Result`` carries the platform's ``output`` as JSON so the engine
can route it on (to the HIS, or to the next step of a workflow).

Settlement-type transactions (2207, 2304, 2208, 2305, and any the config adds) are written to
the in-doubt ledger before they are sent. A lost answer is resolved inside ``send`` (see
``adapters.nhsa.indoubt``):

- took effect: ``send`` returns the settlement found by the query as its result;
- did not take effect (reversed or never reached the platform): ``TransientError``, the
  engine's retry sends a fresh call;
- unknown (the platform cannot be asked now): ``InDoubtError``; the ledger keeps the call and
  the next attempt of the same message resolves it before sending anything, so a retry is
  never a blind resend.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from pydantic import ValidationError

from adapters.exact_json import decode_json
from adapters.nhsa.client import (
    MalformedAnswer,
    NhsaClient,
    NotSent,
    Refused,
    Reply,
    Unanswered,
    describe_validation,
)
from adapters.nhsa.envelope import encode_json
from adapters.nhsa.indoubt import Resolution, Resolver
from adapters.nhsa.ledger import Ledger, Pending
from adapters.nhsa.transactions import Kind, lookup
from engine.contracts import Result
from engine.errors import InDoubtError, PermanentError, TransientError
from queues.contract import Envelope

log = logging.getLogger("hisbridge.adapters.nhsa")

_PSN_NODES = ("data", "mdtrtinfo", "dscginfo")


class NhsaDestination:
    """Satisfies ``engine.contracts.Destination``."""

    def __init__(
        self,
        name: str,
        client: NhsaClient,
        resolver: Resolver,
        ledger: Ledger,
        *,
        infno: str | None = None,
        insuplc_admdvs: str | None = None,
        kinds: dict[str, Kind] | None = None,
        validate_input: bool = True,
        sign_out_on_close: bool = False,
    ) -> None:
        self.name = name
        self.client = client
        self.resolver = resolver
        self.ledger = ledger
        self.infno = infno
        self.insuplc_admdvs = insuplc_admdvs or ""
        self.kinds = dict(kinds or {})
        self.validate_input = validate_input
        self.sign_out_on_close = sign_out_on_close
        self.last_peer_time: float | None = None

    async def start(self) -> None:
        await self.client.start()

    async def close(self) -> None:
        await self.client.close(sign_out=self.sign_out_on_close)
        await self.ledger.close()

    def kind_of(self, infno: str) -> Kind:
        if infno in self.kinds:
            return self.kinds[infno]
        transaction = lookup(infno)
        return transaction.kind if transaction else "plain"

    async def send(self, envelope: Envelope) -> Result:
        infno, insuplc, input_obj = self._read(envelope)
        input_json = encode_json(input_obj)
        kind = self.kind_of(infno)
        if kind == "plain":
            reply = await self.client.call(infno, input_json, insuplc_admdvs=insuplc)
            return self._result(reply)
        return await self._send_money(envelope.message_id, infno, kind, insuplc, input_obj,
                                      input_json)

    # -- reading the envelope -----------------------------------------------------------------

    def _read(self, envelope: Envelope) -> tuple[str, str, dict[str, Any]]:
        try:
            doc = decode_json(envelope.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise PermanentError(f"nhsa destination {self.name}: body is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise PermanentError(f"nhsa destination {self.name}: body must be a JSON object")
        infno = envelope.headers.get("infno") or self.infno or ""
        insuplc = envelope.headers.get("insuplc_admdvs") or self.insuplc_admdvs
        if "input" in doc:
            infno = str(doc.get("infno") or infno)
            insuplc = str(doc.get("insuplc_admdvs") or insuplc)
            doc = doc["input"]
            if not isinstance(doc, dict):
                raise PermanentError(f"nhsa destination {self.name}: input must be an object")
        if not infno or len(infno) != 4 or not infno.isdigit():
            raise PermanentError(
                f"nhsa destination {self.name}: no transaction code (infno header,"
                f" document infno or destination infno), got {infno!r}"
            )
        transaction = lookup(infno)
        if self.validate_input and transaction is not None:
            try:
                transaction.input.model_validate(doc)
            except ValidationError as exc:
                raise PermanentError(
                    f"{infno} input invalid: {describe_validation(exc, 'input')}"
                ) from None
        if _psn_no(doc) and not insuplc:
            raise PermanentError(
                f"{infno}: insuplc_admdvs is required when the input names a person"
                " (from 1101 insuinfo): give it as a header, in the document or in config"
            )
        return infno, insuplc, doc

    def _result(self, reply: Reply, detail: str = "") -> Result:
        self.last_peer_time = reply.peer_time
        response = encode_json(reply.output) if reply.answer.has_output else None
        text = detail or f"{reply.infno} msgid={reply.msgid} infcode={reply.answer.infcode}"
        if reply.answer.warn_msg:
            text += f" warn={reply.answer.warn_msg[:200]}"
        return Result(detail=text, response=response, content_type="json" if response else None)

    # -- settlement-type calls ------------------------------------------------------------------

    async def _send_money(
        self, key: str, infno: str, kind: Kind, insuplc: str, input_obj: dict[str, Any],
        input_json: bytes,
    ) -> Result:
        earlier = await self.ledger.get(key)
        if earlier is not None:
            resolution = await self.resolver.resolve(earlier)
            if resolution.state == "took_effect":
                await self.ledger.remove(key)
                return self._resolved(earlier, resolution, "earlier attempt")
            if resolution.state == "unknown":
                raise InDoubtError(
                    f"{infno}: earlier attempt msgid={earlier.msgid} is still in doubt"
                    f" ({resolution.reason}); not sending again until it is resolved"
                )
            await self.ledger.remove(key)
            log.info("%s: earlier attempt msgid=%s did not take effect; sending again",
                     infno, earlier.msgid)

        data = input_obj.get("data")
        data = data if isinstance(data, dict) else {}
        template = Pending(
            key=key, msgid="", infno=infno, kind=kind, psn_no=str(data.get("psn_no", "")),
            mdtrt_id=str(data.get("mdtrt_id", "")), setl_id=str(data.get("setl_id", "")),
            medfee_sumamt=str(data.get("medfee_sumamt", "")), insuplc_admdvs=insuplc,
            sent_at=0.0,
        )
        sent: Pending | None = None

        async def before_send(msgid: str) -> None:
            nonlocal sent
            sent = dataclasses.replace(template, msgid=msgid, sent_at=time.time())
            await self.ledger.put(sent)

        try:
            reply = await self.client.call(
                infno, input_json, insuplc_admdvs=insuplc, before_send=before_send
            )
        except (Unanswered, MalformedAnswer) as exc:
            if sent is None:
                raise
            return await self._lost(sent, exc)
        except (NotSent, Refused, TransientError, PermanentError):
            # Known not to have taken effect: nothing reached the platform, or it refused.
            await self.ledger.remove(key)
            raise
        await self.ledger.remove(key)
        return self._result(reply)

    async def _lost(self, sent: Pending, exc: Exception) -> Result:
        # The error may quote the answer (an error page echoing the request, an HTML page
        # naming the person): its text goes to DEBUG only.
        log.warning("%s msgid=%s: answer lost (%s); resolving", sent.infno, sent.msgid,
                    type(exc).__name__)
        log.debug("%s msgid=%s: answer lost: %s", sent.infno, sent.msgid, exc)
        resolution = await self.resolver.resolve(sent)
        if resolution.state == "took_effect":
            await self.ledger.remove(sent.key)
            return self._resolved(sent, resolution, f"answer lost ({exc})")
        if resolution.state == "not_in_effect":
            await self.ledger.remove(sent.key)
            raise TransientError(
                f"{sent.infno} msgid={sent.msgid}: {exc}; did not take effect"
                f" ({resolution.reason}); safe to retry"
            )
        raise InDoubtError(
            f"{sent.infno} msgid={sent.msgid}: {exc}; outcome unknown ({resolution.reason});"
            " the next attempt queries before sending"
        )

    def _resolved(self, pending: Pending, resolution: Resolution, why: str) -> Result:
        log.info("%s msgid=%s took effect (%s)", pending.infno, pending.msgid, resolution.reason)
        return Result(
            detail=f"{pending.infno} msgid={pending.msgid} took effect: {why}; {resolution.reason}",
            response=encode_json(resolution.output),
            content_type="json",
        )


def _psn_no(doc: dict[str, Any]) -> str:
    for node in _PSN_NODES:
        value = doc.get(node)
        if isinstance(value, dict) and value.get("psn_no"):
            return str(value["psn_no"])
    for node in ("feedetail", "data"):
        value = doc.get(node)
        if isinstance(value, list) and value and isinstance(value[0], dict) and value[0].get(
            "psn_no"
        ):
            return str(value[0]["psn_no"])
    return ""
