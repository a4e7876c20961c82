"""The e-invoice platform as a channel destination.

The envelope's body is the request as JSON (an issue request, a write-off, a state or
picture query); the operation comes from the ``einvoice-operation`` header, else from the
destination's ``operation`` setting. ``Result.response`` is the platform's decoded answer
as JSON (amounts exact), ``Result.detail`` names the invoice without patient data.

Config (one ``[[channels.destinations]]`` entry)::

    type = "einvoice"
    name = "einvoice"
    url = "http://127.0.0.1:8085"
    appid = "HOSP0001"
    key = "${HISBRIDGE_EINVOICE_KEY}"
    operation = "outpatient"
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, get_args

from adapters.einvoice.client import EinvoiceClient
from adapters.einvoice.codec import encode_json
from adapters.einvoice.config import ISSUE_KINDS, EinvoicePlatformSettings, OperationKind
from adapters.einvoice.models import (
    IssueRequest,
    PictureRequest,
    StateQuery,
    WriteOffRequest,
    parse_model,
)
from adapters.exact_json import decode_json
from engine.contracts import Result
from engine.errors import PermanentError
from engine.settings import DestinationSettings
from queues.contract import Envelope

OPERATION_HEADER = "einvoice-operation"
_KINDS: dict[str, OperationKind] = {kind: kind for kind in get_args(OperationKind)}


class EinvoiceDestinationConfig(DestinationSettings, EinvoicePlatformSettings):
    """A destination that issues, voids and queries fiscal medical e-invoices.

    Attributes:
        operation: what to do with each envelope unless its ``einvoice-operation`` header
            says otherwise: ``outpatient``, ``inpatient``, ``registration`` (issue),
            ``write_off``, ``state``, ``by_bus_no``, ``picture``.
    """

    type: Literal["einvoice"]
    operation: OperationKind | None = None

    def build(self, channel: str) -> EinvoiceDestination:
        return EinvoiceDestination(self, channel)


class EinvoiceDestination:
    """Satisfies ``engine.contracts.Destination``."""

    def __init__(self, config: EinvoiceDestinationConfig, channel: str) -> None:
        self.config = config
        self.channel = channel
        self.client = EinvoiceClient(config)

    async def start(self) -> None:
        await self.client.start()

    async def close(self) -> None:
        await self.client.close()

    async def send(self, envelope: Envelope) -> Result:
        kind = self._operation(envelope.headers)
        try:
            body = decode_json(envelope.body)
        except ValueError:
            raise PermanentError(f"e-invoice {kind}: the body is not JSON") from None
        if not isinstance(body, dict):
            raise PermanentError(f"e-invoice {kind}: the body is not a JSON object")
        if kind in ISSUE_KINDS:
            request = parse_model(IssueRequest, body, what=f"{kind} e-invoice request")
            issued = await self.client.issue(kind, request)
            invoice = issued.invoice
            how = "found already issued" if issued.existing else "issued"
            detail = f"busNo {request.bus_no} {how}: {invoice.bill_batch_code}/{invoice.bill_no}"
            return _result(detail, issued.data)
        if kind == "write_off":
            write_off = parse_model(WriteOffRequest, body, what="write-off request")
            done = await self.client.write_off(write_off)
            note = done.red_note
            red = f"{note.e_scarlet_bill_batch_code}/{note.e_scarlet_bill_no}" if note else "?"
            how = "already written off" if done.already else "written off"
            return _result(f"{how}: red note {red}", done.data)
        if kind == "state":
            fetched = await self.client.state(parse_model(StateQuery, body, what="state query"))
            return _result(f"state {fetched.value.state}", fetched.data)
        if kind == "picture":
            request_p = parse_model(PictureRequest, body, what="picture request")
            fetched = await self.client.picture(request_p)
            return _result(f"{fetched.value.file_type} link", fetched.data)
        # by_bus_no
        bus_no = body.get("busNo")
        if not isinstance(bus_no, str) or not bus_no:
            raise PermanentError("e-invoice by_bus_no: the body has no busNo")
        found = await self.client.find_by_bus_no(bus_no, body.get("busDateTime"))
        if found is None:
            return _result(f"no invoice for busNo {bus_no}", {})
        return _result(
            f"busNo {bus_no}: {found.invoice.bill_batch_code}/{found.invoice.bill_no}",
            found.data,
        )

    def _operation(self, headers: Mapping[str, str]) -> OperationKind:
        value: str | None = None
        for name, header in headers.items():
            if name.lower() == OPERATION_HEADER:
                value = header.strip()
                break
        if value is None:
            value = self.config.operation
        if value is None:
            raise PermanentError(
                f"e-invoice destination {self.config.name}: no operation (set `operation` "
                f"or the {OPERATION_HEADER} header)"
            )
        kind = _KINDS.get(value)
        if kind is not None:
            return kind
        raise PermanentError(
            f"unknown e-invoice operation {value!r} (expected one of {', '.join(_KINDS)})"
        )


def _result(detail: str, data: Mapping[str, object]) -> Result:
    return Result(detail=detail, response=encode_json(data), content_type="json")
