"""The WeChat Pay trade bill (交易账单, ``bill_type=ALL``) CSV.

Layout (wechatpay-php ``tests/fixtures/bill.ALL.csv`` and the v3 docs): UTF-8 with a BOM;
a header of 27 columns; one row per payment or refund, every value prefixed with a backtick
(so spreadsheets keep long numbers as text); then a summary header of seven columns
(总交易单数, 应结订单总金额, 退款总金额 ...) and one summary row (counts may be
written ``45.0``). Refund rows carry 0.00 in 应结订单金额 and the refund in
退款金额; fees carry five decimals.
"""

from __future__ import annotations

import csv
import io
from decimal import Decimal

from adapters.payments.bills import Bill, BillError, BillLine, BillTotals, decimal_of

COLUMNS = (
    "交易时间", "公众账号ID", "商户号", "特约商户号", "设备号", "微信订单号",
    "商户订单号", "用户标识", "交易类型", "交易状态", "付款银行", "货币种类",
    "应结订单金额", "代金券金额", "微信退款单号", "商户退款单号", "退款金额",
    "充值券退款金额", "退款类型", "退款状态", "商品名称", "商户数据包", "手续费", "费率",
    "订单金额", "申请退款金额", "费率备注",
)
SUMMARY = (
    "总交易单数", "应结订单总金额", "退款总金额", "充值券退款总金额", "手续费总金额",
    "订单总金额", "申请退款总金额",
)


def _cell(value: str) -> str:
    value = value.strip()
    return value[1:] if value.startswith("`") else value


def parse_trade_bill(data: bytes) -> Bill:
    """Parse a trade bill and check that its summary equals the sum of its rows.

    Raises:
        BillError: not UTF-8, unexpected columns, a malformed row or a summary that does not
            add up.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BillError("WeChat Pay bill is not UTF-8") from None
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:  # a field beyond the csv module's limit, a broken quote
        raise BillError(f"WeChat Pay bill is not readable CSV: {exc}") from None
    if not rows or [c.strip() for c in rows[0]] != list(COLUMNS):
        raise BillError("WeChat Pay bill does not start with the trade bill header")
    index = {name: i for i, name in enumerate(COLUMNS)}
    lines: list[BillLine] = []
    summary: list[str] | None = None
    for number, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if [c.strip() for c in row] == list(SUMMARY):
            rest = [r for r in rows[number:] if r]
            if len(rest) != 1 or len(rest[0]) != len(SUMMARY):
                raise BillError("WeChat Pay bill summary row is missing or malformed")
            summary = [_cell(c) for c in rest[0]]
            break
        if len(row) != len(COLUMNS):
            raise BillError(f"WeChat Pay bill line {number} has {len(row)} columns")
        cells = [_cell(c) for c in row]

        def get(name: str, cells: list[str] = cells) -> str:
            return cells[index[name]]

        refund = decimal_of(get("退款金额"), f"line {number} 退款金额")
        lines.append(BillLine(
            kind="refund" if get("交易状态") == "REFUND" else "payment",
            out_trade_no=get("商户订单号"),
            gateway_trade_no=get("微信订单号"),
            amount=decimal_of(get("应结订单金额"), f"line {number} 应结订单金额"),
            refund=refund,
            out_refund_no=get("商户退款单号") if refund else "",
            fee=decimal_of(get("手续费"), f"line {number} 手续费"),
            time=get("交易时间"),
        ))
    if summary is None:
        raise BillError("WeChat Pay bill has no summary")
    count = decimal_of(summary[0], "总交易单数")
    # Bounded before int(): 1e999999999 is a finite Decimal but no int fits it in memory.
    if count != count.to_integral_value() or not 0 <= count <= 10**9:
        raise BillError("WeChat Pay bill 总交易单数 is not a whole number")
    stated = BillTotals(
        lines=int(count),
        paid=decimal_of(summary[1], "应结订单总金额"),
        refunded=decimal_of(summary[2], "退款总金额"),
        fees=decimal_of(summary[4], "手续费总金额"),
    )
    return Bill.checked(lines, stated)


def format_amount(value: Decimal, places: int = 2) -> str:
    """Bill text for an amount (the simulator writes bills with it)."""
    return f"{value.quantize(Decimal(1).scaleb(-places))}"
