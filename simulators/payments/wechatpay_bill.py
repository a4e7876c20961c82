"""The WeChat Pay simulator's trade bill: what it booked, written the way WeChat Pay does
(UTF-8 with BOM, backtick-prefixed values, a summary row; see ``adapters.wechatpay.bill``)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from adapters.payments.money import fen_to_yuan
from adapters.wechatpay.bill import COLUMNS, SUMMARY
from simulators.payments.core import china_now

FEE_RATE = Decimal("0.006")


@dataclass(frozen=True)
class Booking:
    """One bill line: a payment, or a refund (``refund_id`` set)."""

    at: str
    day: str
    transaction_id: str
    out_trade_no: str
    openid: str
    trade_type: str
    description: str
    amount_fen: int
    refund_id: str = ""
    out_refund_no: str = ""
    refund_fen: int = 0


@dataclass(frozen=True)
class BillRow:
    cells: list[str]
    amount: Decimal
    refund: Decimal
    fee: Decimal


class TradeBillBook:
    def __init__(self, appid: str, mchid: str) -> None:
        self.appid = appid
        self.mchid = mchid
        self.bookings: list[Booking] = []

    def book(self, **fields: Any) -> None:
        now = china_now()
        self.bookings.append(Booking(now.strftime("%Y-%m-%d %H:%M:%S"), now.date().isoformat(),
                                     **fields))

    def rows(self, day: str) -> list[BillRow]:
        rows = []
        for b in self.bookings:
            if b.day != day:
                continue
            refund_line = bool(b.refund_id)
            amount = Decimal("0.00") if refund_line else fen_to_yuan(b.amount_fen)
            refund = fen_to_yuan(b.refund_fen)
            fee = (Decimal(0) if refund_line else amount * FEE_RATE).quantize(
                Decimal("0.00001"), ROUND_HALF_UP)
            cells = [b.at, self.appid, self.mchid, "0", "", b.transaction_id, b.out_trade_no,
                     b.openid or "sim-openid", b.trade_type,
                     "REFUND" if refund_line else "SUCCESS", "OTHERS", "CNY", f"{amount:.2f}",
                     "0.00", b.refund_id or "0", b.out_refund_no or "0", f"{refund:.2f}", "0.00",
                     "ORIGINAL" if refund_line else "", "SUCCESS" if refund_line else "",
                     b.description[:30], "", f"{fee}", "0.60%", f"{amount:.2f}",
                     f"{refund:.2f}", ""]
            rows.append(BillRow(cells, amount, refund, fee))
        return rows

    def totals(self, day: str) -> dict[str, Any]:
        rows = self.rows(day)
        return {"lines": len(rows),
                "paid": str(sum((r.amount for r in rows), Decimal("0.00"))),
                "refunded": str(sum((r.refund for r in rows), Decimal("0.00"))),
                "fees": str(sum((r.fee for r in rows), Decimal("0.00000")))}

    def csv(self, day: str) -> bytes:
        rows = self.rows(day)
        totals = self.totals(day)
        lines = [",".join(COLUMNS)]
        lines += [",".join("`" + c for c in row.cells) for row in rows]
        lines.append(",".join(SUMMARY))
        summary = (f"{len(rows)}.0", totals["paid"], totals["refunded"], "0.0", totals["fees"],
                   totals["paid"], totals["refunded"])
        lines.append(",".join("`" + c for c in summary))
        return ("\ufeff" + "\n".join(lines) + "\n").encode("utf-8")
