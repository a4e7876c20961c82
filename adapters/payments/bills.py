"""What every gateway's daily bill parses to, for reconciliation against our orders.

Bill amounts stay in ``Decimal`` yuan: fees carry more than two decimals (WeChat Pay writes
``0.00018``), so they cannot be fen.
"""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from engine.errors import PermanentError


class BillError(PermanentError):
    """A bill that cannot be trusted: bad hash, unreadable, or totals that do not add up."""


ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError,
              ValueError, OSError)
"""What zipfile raises for a damaged archive (bad CRC or header, truncated or undecodable
data, a name that is not UTF-8, an offset before the start) or one it cannot open (encrypted,
an unknown compression method). Gateways deliver their bills zipped."""


@dataclass(frozen=True, slots=True)
class BillLine:
    """One line of a bill: a payment (``refund`` 0) or a refund (``amount`` 0)."""

    kind: str  # "payment" | "refund"
    out_trade_no: str
    gateway_trade_no: str
    amount: Decimal
    refund: Decimal = Decimal("0.00")
    out_refund_no: str = ""
    fee: Decimal = Decimal("0")
    time: str = ""


@dataclass(frozen=True, slots=True)
class BillTotals:
    """Lines, money received, money refunded and fees, as the bill states them."""

    lines: int
    paid: Decimal
    refunded: Decimal
    fees: Decimal


@dataclass(frozen=True, slots=True)
class Bill:
    lines: list[BillLine]
    totals: BillTotals

    @classmethod
    def checked(cls, lines: list[BillLine], stated: BillTotals) -> Bill:
        """A bill whose stated totals equal the sums of its lines (else ``BillError``)."""
        computed = totals_of(lines)
        if computed != stated:
            raise BillError(f"bill totals do not add up: stated {stated}, lines sum to {computed}")
        return cls(lines, stated)


def totals_of(lines: list[BillLine]) -> BillTotals:
    return BillTotals(
        lines=len(lines),
        paid=sum((x.amount for x in lines), Decimal("0")),
        refunded=sum((x.refund for x in lines), Decimal("0")),
        fees=sum((x.fee for x in lines), Decimal("0")),
    )


def decimal_of(text: str, what: str) -> Decimal:
    """A bill cell as Decimal; an empty cell is zero; anything else unreadable is an error."""
    value = text.strip()
    if value == "":
        return Decimal("0")
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise BillError(f"bill {what} is not a number: {value[:20]!r}") from None
    if not number.is_finite():
        raise BillError(f"bill {what} is not a number: {value[:20]!r}")
    return number
