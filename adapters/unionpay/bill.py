"""The UnionPay settlement file, as hisbridge models it.

The real files (``INN<yyMMdd>88ZM_<merId>`` and friends, fixed-width records inside a zip
delivered as ``fileContent``) are not publicly specified well enough to reproduce, so the
simulator and this parser agree on a documented stand-in with the same delivery (Base64 of
a deflated zip, one ``INN...`` member) and the same facts per line::

    H|<merId>|<settle date yyyyMMdd>|<detail lines>
    D|01|<orderId>|<queryId>||<txnTime>|<txnAmt fen>|<fee fen>|<masked card>
    D|04|<refund orderId>|<queryId>|<origQryId>|<txnTime>|<txnAmt fen>|<fee fen>|<masked card>
    T|<consumes>|<consumed fen>|<refunds>|<refunded fen>|<fees fen>

Text is UTF-8; amounts are integer fen (converted to ``Decimal`` yuan for ``Bill``).
"""

from __future__ import annotations

import io
import zipfile

from adapters.payments.bills import ZIP_ERRORS, Bill, BillError, BillLine, BillTotals
from adapters.payments.money import AmountError, fen_to_yuan, parse_fen

MAX_FILE = 64 * 1024 * 1024


def parse_bill_file(archive: bytes) -> Bill:
    """Parse the zip a settlement-file download delivers (``BillError`` when off)."""
    try:
        with zipfile.ZipFile(io.BytesIO(archive)) as zf:
            members = [i for i in zf.infolist() if i.filename.startswith("INN")]
            if len(members) != 1 or members[0].file_size > MAX_FILE:
                raise BillError("UnionPay settlement zip lacks its (single) INN file")
            data = zf.read(members[0])
    except ZIP_ERRORS as exc:
        raise BillError(f"UnionPay settlement file is not a readable zip: {exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise BillError("UnionPay settlement file is not UTF-8") from None
    return parse_settlement_text(text)


def _fen(text: str, what: str) -> int:
    try:
        return parse_fen(text)
    except AmountError:
        raise BillError(f"UnionPay settlement {what} is not an amount in fen") from None


def parse_settlement_text(text: str) -> Bill:
    records = [line.split("|") for line in text.splitlines() if line.strip()]
    if not records or records[0][0] != "H" or len(records[0]) != 4:
        raise BillError("UnionPay settlement file lacks its H record")
    if records[-1][0] != "T" or len(records[-1]) != 6:
        raise BillError("UnionPay settlement file lacks its T record")
    lines: list[BillLine] = []
    for number, rec in enumerate(records[1:-1], start=2):
        if rec[0] != "D" or len(rec) != 9 or rec[1] not in ("01", "04"):
            raise BillError(f"UnionPay settlement line {number} is not a D record")
        amount = fen_to_yuan(_fen(rec[6], f"line {number} txnAmt"))
        fee = fen_to_yuan(_fen(rec[7], f"line {number} fee"))
        if rec[1] == "01":
            lines.append(BillLine("payment", rec[2], rec[3], amount, fee=fee, time=rec[5]))
        else:
            lines.append(BillLine("refund", "", rec[4], fen_to_yuan(0), refund=amount,
                                  out_refund_no=rec[2], fee=fee, time=rec[5]))
    if _fen(records[0][3], "line count") != len(lines):
        raise BillError("UnionPay settlement H record count does not add up")
    t = records[-1]
    consumes, refunds = _fen(t[1], "consume count"), _fen(t[3], "refund count")
    if consumes + refunds != len(lines) or consumes != sum(x.kind == "payment" for x in lines):
        raise BillError("UnionPay settlement counts do not add up")
    stated = BillTotals(len(lines), fen_to_yuan(_fen(t[2], "consumed total")),
                        fen_to_yuan(_fen(t[4], "refunded total")),
                        fen_to_yuan(_fen(t[5], "fee total")))
    return Bill.checked(lines, stated)
