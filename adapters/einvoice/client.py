"""The e-invoice platform client: signed calls, error classification, idempotent operations.

Every call is classified at this boundary:

- connection refused, connect timeout           → ``TransientError`` (nothing was sent)
- timeout or broken connection after sending,   → ``InDoubtError`` for issue / write-off
  HTTP 408/429/5xx, an answer that fails          (the platform may have acted), else
  verification (signature, Base64, JSON)           ``TransientError``
- other HTTP status (404 unknown operation ...) → ``PermanentError``
- ``result`` other than ``S0000``                → ``PermanentError``, or ``TransientError``
                                                   for codes listed in ``results.transient``

Idempotency: ``busNo`` is the business key. Before issuing, the client asks the platform
for an invoice of that ``busNo`` (``lookup_before_issue``) and returns it instead of issuing
again, so a retry after a lost answer never makes a second invoice. A write-off of a voided
invoice returns the existing red note without writing another.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
from pydantic import ValidationError

from adapters.einvoice.config import EinvoicePlatformSettings, OperationKind
from adapters.einvoice.envelope import Answer, ResponseInvalid, open_answer, seal
from adapters.einvoice.models import (
    BillRef,
    BillState,
    BusNoQuery,
    IssueRequest,
    IssueResult,
    PictureLink,
    PictureRequest,
    RedNote,
    StateQuery,
    WireModel,
    WriteOffRequest,
)
from adapters.http import AnswerTooLarge, read_capped
from engine.errors import HisbridgeError, InDoubtError, PermanentError, TransientError

log = logging.getLogger(__name__)

A = TypeVar("A", bound=WireModel)

_DOUBT_MEMORY = 10_000


@dataclass(frozen=True, slots=True)
class Issued:
    """An invoice for a business number: newly issued, or found already issued."""

    invoice: IssueResult
    existing: bool
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WrittenOff:
    """A voided invoice's red note. ``already`` when it was voided before this call;
    ``red_note`` is None only if the platform's state answer does not report the note."""

    red_note: RedNote | None
    already: bool
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Fetched:
    """A read-only answer (state, picture link) with its decoded data."""

    value: Any
    data: dict[str, Any] = field(default_factory=dict)


class EinvoiceClient:
    """Calls one platform account. One HTTP session for its lifetime (``start``/``close``)."""

    def __init__(self, settings: EinvoicePlatformSettings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        # Business numbers whose last issue attempt was in doubt (for ``after_doubt``).
        self._doubts: OrderedDict[str, None] = OrderedDict()
        # busNo → its lock; an entry goes away when nobody holds or waits for it.
        self._locks: dict[str, _KeyLock] = {}

    async def start(self) -> None:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(
                total=self.settings.timeout, sock_connect=self.settings.connect_timeout
            )
            self._session = aiohttp.ClientSession(timeout=timeout, raise_for_status=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- one call ----------------------------------------------------------------------------

    async def call(
        self, operation: str, payload: Mapping[str, Any], *, moves_money: bool
    ) -> Answer:
        """Post one signed request and return the verified answer (success or refusal).

        Raises:
            TransientError / InDoubtError / PermanentError: see the module docstring. A
                refusal (``result`` not ``S0000``) is returned, not raised: the caller knows
                which codes it can act on.
        """
        if self._session is None:
            raise TransientError("the e-invoice client is not started")
        settings = self.settings
        doubt = InDoubtError if moves_money else TransientError
        hint = "; the platform may have acted: query before retrying" if moves_money else ""
        sealed = seal(payload, appid=settings.appid, key=settings.key.get(),
                      version=settings.version)
        url = f"{settings.url}/{operation}"
        try:
            async with self._session.post(
                url,
                data=sealed.body,
                headers={"Content-Type": "application/json;charset=utf-8"},
            ) as resp:
                status = resp.status
                retry_after = _retry_after(resp.headers.get("Retry-After"))
                raw = await read_capped(resp, settings.max_response_bytes)
        except aiohttp.ConnectionTimeoutError:
            raise TransientError(
                f"{operation}: could not connect within {settings.connect_timeout:g}s"
            ) from None
        except aiohttp.ClientConnectorError as exc:
            raise TransientError(f"{operation}: cannot connect: {exc.strerror or exc}") from None
        except TimeoutError:
            raise doubt(f"{operation}: no answer within {settings.timeout:g}s{hint}") from None
        except AnswerTooLarge:
            raise doubt(
                f"{operation}: answer larger than {settings.max_response_bytes} bytes{hint}"
            ) from None
        except aiohttp.ClientError as exc:
            raise doubt(f"{operation}: connection failed ({type(exc).__name__}){hint}") from None
        if status in (408, 429) or status >= 500:
            raise doubt(f"{operation}: HTTP {status}{hint}", retry_after=retry_after)
        if status != 200:
            raise PermanentError(f"{operation}: HTTP {status} from the e-invoice platform")
        try:
            return open_answer(
                raw, key=settings.key.get(), noise=sealed.noise,
                check=settings.response_signature,
            )
        except ResponseInvalid as exc:
            log.warning("e-invoice %s: untrusted answer: %s", operation, exc.reason)
            raise doubt(f"{operation}: untrusted answer: {exc}{hint}") from None

    def refusal(self, operation: str, answer: Answer) -> HisbridgeError:
        """The error for a non-success ``result``: transient if listed so, else permanent."""
        text = f"{operation} refused: {answer.result} {answer.message[:500]}".rstrip()
        if answer.result in self.settings.results.transient:
            return TransientError(text)
        return PermanentError(text)

    def _op(self, kind: OperationKind) -> str:
        name: str | None = getattr(self.settings.operations, kind)
        if name is None:
            raise PermanentError(f"the e-invoice operation {kind!r} is not configured")
        return name

    async def _success(
        self, kind: OperationKind, payload: Mapping[str, Any], model: type[A], *,
        moves_money: bool = False,
    ) -> tuple[A, dict[str, Any]]:
        operation = self._op(kind)
        answer = await self.call(operation, payload, moves_money=moves_money)
        if not answer.ok:
            raise self.refusal(operation, answer)
        return _read_answer(operation, answer, model, moves_money=moves_money), answer.data

    # -- issue -------------------------------------------------------------------------------

    async def issue(self, kind: OperationKind, request: IssueRequest) -> Issued:
        """Issue the invoice of ``request.bus_no``, or return the one already issued.

        Raises:
            AmountsInconsistent: before anything is sent, when the amounts do not add up.
            InDoubtError: the platform may have issued it; a later call finds it by busNo.
        """
        request.check_amounts()
        operation = self._op(kind)
        # One attempt per busNo at a time in this process: two deliveries of the same
        # settlement must not both find "no invoice yet" and both issue.
        async with self._busy(request.bus_no):
            try:
                return await self._issue_once(operation, request)
            except InDoubtError:
                self._remember_doubt(request.bus_no)
                raise

    async def _issue_once(self, operation: str, request: IssueRequest) -> Issued:
        bus_no = request.bus_no
        if self._should_look_up(bus_no):
            found = await self.find_by_bus_no(bus_no, request.bus_date_time)
            if found is not None:
                self._doubts.pop(bus_no, None)
                log.info("e-invoice %s already issued as %s/%s", bus_no,
                         found.invoice.bill_batch_code, found.invoice.bill_no)
                return found
        answer = await self.call(operation, request.wire(), moves_money=True)
        if answer.ok:
            invoice = _read_answer(operation, answer, IssueResult, moves_money=True)
            self._doubts.pop(bus_no, None)
            log.info("e-invoice %s issued as %s/%s", bus_no, invoice.bill_batch_code,
                     invoice.bill_no)
            return Issued(invoice, existing=False, data=answer.data)
        if answer.result in self.settings.results.duplicate_bus_no:
            found = await self.find_by_bus_no(bus_no, request.bus_date_time)
            if found is not None:
                self._doubts.pop(bus_no, None)
                return found
            raise PermanentError(
                f"{operation}: the platform calls busNo {bus_no} a duplicate "
                f"({answer.result}) but no invoice is found for it"
            )
        raise self.refusal(operation, answer)

    @contextlib.asynccontextmanager
    async def _busy(self, bus_no: str) -> AsyncIterator[None]:
        entry = self._locks.get(bus_no)
        if entry is None:
            entry = self._locks[bus_no] = _KeyLock()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._locks[bus_no]

    def _should_look_up(self, bus_no: str) -> bool:
        mode = self.settings.lookup_before_issue
        if self.settings.operations.by_bus_no is None or mode == "never":
            return False
        return mode == "always" or bus_no in self._doubts

    def _remember_doubt(self, bus_no: str) -> None:
        self._doubts[bus_no] = None
        self._doubts.move_to_end(bus_no)
        while len(self._doubts) > _DOUBT_MEMORY:
            self._doubts.popitem(last=False)

    async def find_by_bus_no(self, bus_no: str, bus_date_time: str | None = None) -> Issued | None:
        """The invoice issued for ``bus_no``, or None when the platform has none."""
        operation = self._op("by_bus_no")
        query = BusNoQuery(bus_no=bus_no, bus_date_time=bus_date_time)
        answer = await self.call(operation, query.wire(), moves_money=False)
        if answer.result in self.settings.results.not_found:
            return None
        if not answer.ok:
            raise self.refusal(operation, answer)
        invoice = _read_answer(operation, answer, IssueResult, moves_money=False)
        return Issued(invoice, existing=True, data=answer.data)

    # -- write-off, state, picture -----------------------------------------------------------

    async def resolve(self, ref: BillRef) -> tuple[str, str, IssueResult | None]:
        """Batch code and number of the invoice ``ref`` names (looked up by busNo if needed)."""
        if ref.bill_batch_code and ref.bill_no:
            return ref.bill_batch_code, ref.bill_no, None
        assert ref.bus_no is not None  # BillRef's validator guarantees one or the other
        found = await self.find_by_bus_no(ref.bus_no)
        if found is None:
            raise PermanentError(f"no e-invoice was issued for busNo {ref.bus_no}")
        return found.invoice.bill_batch_code, found.invoice.bill_no, found.invoice

    async def write_off(self, request: WriteOffRequest) -> WrittenOff:
        """Void an invoice with a red note; a voided invoice reports its existing note."""
        batch, number, _ = await self.resolve(request)
        if self.settings.check_state_before_write_off:
            state = await self.state(StateQuery(bill_batch_code=batch, bill_no=number))
            if state.value.written_off:
                return WrittenOff(state.value.red_note(), already=True, data=state.data)
        operation = self._op("write_off")
        payload = {**request.wire(), "billBatchCode": batch, "billNo": number}
        answer = await self.call(operation, payload, moves_money=True)
        if answer.ok:
            note = _read_answer(operation, answer, RedNote, moves_money=True)
            log.info("e-invoice %s/%s written off by red note %s/%s", batch, number,
                     note.e_scarlet_bill_batch_code, note.e_scarlet_bill_no)
            return WrittenOff(note, already=False, data=answer.data)
        if answer.result in self.settings.results.already_written_off:
            state = await self.state(StateQuery(bill_batch_code=batch, bill_no=number))
            return WrittenOff(state.value.red_note(), already=True, data=state.data)
        raise self.refusal(operation, answer)

    async def state(self, query: BillRef) -> Fetched:
        """``Fetched.value`` is a ``BillState``."""
        batch, number, _ = await self.resolve(query)
        value, data = await self._success(
            "state", {"billBatchCode": batch, "billNo": number}, BillState
        )
        return Fetched(value, data)

    async def picture(self, request: PictureRequest) -> Fetched:
        """``Fetched.value`` is a ``PictureLink`` to the invoice's file."""
        batch, number, found = await self.resolve(request)
        payload = {**request.wire(), "billBatchCode": batch, "billNo": number}
        if request.random is None and found is not None and found.random:
            payload["random"] = found.random
        value, data = await self._success("picture", payload, PictureLink)
        return Fetched(value, data)


@dataclass(slots=True)
class _KeyLock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 <= seconds <= 86_400 else None


def _read_answer(operation: str, answer: Answer, model: type[A], *, moves_money: bool) -> A:
    """A success answer as ``model``; a success lacking what it must carry is untrusted."""
    try:
        return model.model_validate(answer.data)
    except ValidationError as exc:
        fields = ", ".join(".".join(str(p) for p in e["loc"]) for e in exc.errors())
        doubt = InDoubtError if moves_money else TransientError
        raise doubt(f"{operation}: success answer with missing or malformed {fields}") from None

