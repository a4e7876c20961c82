"""Finding out what happened to a settlement-type call whose answer was lost.

A 2207 / 2304 (settle) or 2208 / 2305 (cancel) that timed out, lost its connection, got an
HTTP 5xx or an unreadable answer may or may not have taken effect. Sending it again could
settle twice, so the adapter asks the platform instead:

Settle (2207 / 2304):
    1. wait ``delay`` seconds, so that a call still being processed can finish;
    2. query 5203 with ``psn_no`` and ``mdtrt_id``: a valid settlement of the visit with the
       same ``medfee_sumamt`` means the fees are settled: **took effect**, and the query's
       ``setlinfo`` is the result (the platform settles a visit's uploaded fees once, so a
       match is this call's settlement, or one that makes it unnecessary);
    3. otherwise reverse the lost call with 2601 (``omsgid`` = its msgid). The platform
       undoes it if it did commit after all and refuses that msgid from then on, so a
       request still in flight cannot commit later: **did not take effect**, a new attempt
       is safe.

Cancel (2208 / 2305):
    query 5203 with the ``setl_id`` being cancelled: ``vali_flag = "0"`` means the
    settlement is cancelled (**took effect**); a valid settlement means it is not, and the
    lost call is reversed as above (**did not take effect**).

If the platform cannot be asked (down, timing out, answering nonsense) the outcome stays
**unknown**: the caller raises ``InDoubtError`` and keeps the call in its ledger, so the next
attempt resolves it before sending anything.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from adapters.nhsa.client import NhsaClient, Refused
from adapters.nhsa.envelope import encode_json
from adapters.nhsa.ledger import Pending
from engine.errors import PermanentError, TransientError

State = Literal["took_effect", "not_in_effect", "unknown"]

DEFAULT_ABSENT = ("未查询到", "不存在", "not found")


@dataclass(frozen=True, slots=True)
class Resolution:
    state: State
    reason: str
    output: Any = None


class Resolver:
    def __init__(
        self,
        client: NhsaClient,
        *,
        query_infno: str = "5203",
        reverse_infno: str = "2601",
        reverse: bool = True,
        delay: float = 0.5,
        timeout: float = 5.0,
        absent_messages: tuple[str, ...] = DEFAULT_ABSENT,
    ) -> None:
        self.client = client
        self.query_infno = query_infno
        self.reverse_infno = reverse_infno
        self.reverse = reverse
        self.delay = delay
        self.timeout = timeout
        self.absent_messages = absent_messages

    async def resolve(self, pending: Pending) -> Resolution:
        if self.delay:
            await asyncio.sleep(self.delay)
        if pending.kind == "cancel":
            return await self._resolve_cancel(pending)
        return await self._resolve_settle(pending)

    async def _query(self, pending: Pending, setl_id: str) -> tuple[str, Any, str]:
        """("found", output) / ("absent", None) / ("unknown", None) with a reason."""
        data = {"psn_no": pending.psn_no, "mdtrt_id": pending.mdtrt_id}
        if setl_id:
            data["setl_id"] = setl_id
        try:
            reply = await self.client.call(
                self.query_infno, encode_json({"data": data}),
                insuplc_admdvs=pending.insuplc_admdvs, time_limit=self.timeout,
            )
        except Refused as exc:
            if any(text in exc.err_msg for text in self.absent_messages):
                return "absent", None, f"{self.query_infno}: {exc.err_msg}"
            return "unknown", None, str(exc)
        except (TransientError, PermanentError) as exc:
            return "unknown", None, f"{self.query_infno} failed: {exc}"
        return "found", reply.output, f"{self.query_infno} msgid={reply.msgid}"

    async def _reverse(self, pending: Pending, why: str) -> Resolution:
        if not self.reverse:
            return Resolution("not_in_effect", why)
        data = {"psn_no": pending.psn_no, "omsgid": pending.msgid, "oinfno": pending.infno}
        try:
            reply = await self.client.call(
                self.reverse_infno, encode_json({"data": data}),
                insuplc_admdvs=pending.insuplc_admdvs, time_limit=self.timeout,
            )
        except (TransientError, PermanentError) as exc:
            return Resolution("unknown", f"{why}; reversal {self.reverse_infno} failed: {exc}")
        return Resolution(
            "not_in_effect", f"{why}; reversed by {self.reverse_infno} msgid={reply.msgid}"
        )

    async def _resolve_settle(self, pending: Pending) -> Resolution:
        state, output, reason = await self._query(pending, "")
        if state == "unknown":
            return Resolution("unknown", reason)
        if state == "found" and self._is_our_settlement(pending, output):
            return Resolution("took_effect", f"settlement found by {reason}", output)
        why = "no matching settlement" if state == "found" else "no settlement"
        return await self._reverse(pending, f"{why} ({reason})")

    async def _resolve_cancel(self, pending: Pending) -> Resolution:
        state, output, reason = await self._query(pending, pending.setl_id)
        if state != "found":
            return Resolution("unknown", f"settlement {pending.setl_id} not readable: {reason}")
        info = output.get("setlinfo") if isinstance(output, dict) else None
        if isinstance(info, dict) and str(info.get("vali_flag", "1")) == "0":
            return Resolution("took_effect", f"settlement cancelled, per {reason}", output)
        return await self._reverse(pending, f"settlement still valid ({reason})")

    @staticmethod
    def _is_our_settlement(pending: Pending, output: Any) -> bool:
        info = output.get("setlinfo") if isinstance(output, dict) else None
        if not isinstance(info, dict):
            return False
        if str(info.get("mdtrt_id")) != pending.mdtrt_id:
            return False
        if str(info.get("vali_flag", "1")) == "0":
            return False
        try:
            return Decimal(str(info.get("medfee_sumamt"))) == Decimal(pending.medfee_sumamt)
        except InvalidOperation:
            return False
