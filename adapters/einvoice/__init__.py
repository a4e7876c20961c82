"""Fiscal medical e-invoice platform (医疗收费电子票据): issue, write off, query, picture link.

Modules, each owning one noun:

- ``codec``: exact JSON (Decimal amounts as JSON numbers).
- ``envelope``: the signed ``{appid, data, noise, version, sign}`` request and the answer
  check (``S0000``, Base64 JSON ``message``, configurable answer signature).
- ``models``: typed requests and answers, and the check that the amounts add up.
- ``config``: one platform account's settings (operation names, result codes, timeouts).
- ``client``: the calls, their error classification and the ``busNo`` idempotency.
- ``destination``: the channel destination (``type = "einvoice"``).

See ``docs/einvoice.md``.
"""

from adapters.einvoice.client import EinvoiceClient, Fetched, Issued, WrittenOff
from adapters.einvoice.config import EinvoicePlatformSettings, OperationKind
from adapters.einvoice.destination import (
    OPERATION_HEADER,
    EinvoiceDestination,
    EinvoiceDestinationConfig,
)
from adapters.einvoice.models import (
    AmountsInconsistent,
    BillState,
    InvalidRequest,
    IssueRequest,
    IssueResult,
    PictureLink,
    PictureRequest,
    RedNote,
    StateQuery,
    WriteOffRequest,
)

__all__ = [
    "OPERATION_HEADER",
    "AmountsInconsistent",
    "BillState",
    "EinvoiceClient",
    "EinvoiceDestination",
    "EinvoiceDestinationConfig",
    "EinvoicePlatformSettings",
    "Fetched",
    "InvalidRequest",
    "IssueRequest",
    "IssueResult",
    "Issued",
    "OperationKind",
    "PictureLink",
    "PictureRequest",
    "RedNote",
    "StateQuery",
    "WriteOffRequest",
    "WrittenOff",
]
