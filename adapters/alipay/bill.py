"""The Alipay trade bill: a zip of GBK CSV files (``<pid>_<date>_业务明细.csv`` and a
``..._业务明细(汇总).csv``), as ``alipay.data.dataservice.bill.downloadurl.query`` hands out.

The detail file: ``#`` comment lines (title, account, period), a dashed line naming the
detail list, a header row, one row per trade (业务类型 交易) or refund (退款, with a negative
商家实收 and the 退款批次号/请求号), the closing dashed line, then the stated totals
``#交易合计：N笔，商家实收：X元，...`` and ``#退款合计：M笔，商家实收：-Y元，...``.
Cells are often padded with tabs so spreadsheets keep them as text; they are stripped.
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from collections.abc import Iterator
from decimal import Decimal

from adapters.payments.bills import (
    ZIP_ERRORS,
    Bill,
    BillError,
    BillLine,
    BillTotals,
    decimal_of,
)

DETAIL_COLUMNS = (
    "支付宝交易号", "商户订单号", "业务类型", "商品名称", "创建时间", "完成时间",
    "门店编号", "门店名称", "操作员", "终端号", "对方账户", "订单金额（元）",
    "商家实收（元）", "支付宝红包（元）", "集分宝（元）", "支付宝优惠（元）",
    "商家优惠（元）", "券核销金额（元）", "券名称", "商家红包消费金额（元）",
    "卡消费金额（元）", "退款批次号/请求号", "服务费（元）", "分润（元）", "备注",
)
_TOTAL = re.compile(r"^#(交易|退款)合计：([0-9]{1,9})笔，商家实收：(-?[0-9.]{1,20})元")
MAX_UNZIPPED = 64 * 1024 * 1024


def _entry_name(info: zipfile.ZipInfo) -> str:
    if info.flag_bits & 0x800:
        return info.filename
    # Alipay writes GBK names without the UTF-8 flag; zipfile decoded them as cp437.
    try:
        return info.filename.encode("cp437").decode("gbk")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return info.filename


def parse_bill_zip(data: bytes) -> Bill:
    """Find the detail CSV in the zip and parse it (``BillError`` when anything is off)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except ZIP_ERRORS:
        raise BillError("Alipay bill is not a zip file") from None
    with archive:
        details = [i for i in archive.infolist()
                   if _entry_name(i).endswith("业务明细.csv") and "汇总" not in _entry_name(i)]
        if len(details) != 1:
            raise BillError("Alipay bill zip has no (single) 业务明细 file")
        info = details[0]
        if info.file_size > MAX_UNZIPPED:
            raise BillError("Alipay bill detail file is too large")
        try:
            with archive.open(info) as handle:
                raw = handle.read(MAX_UNZIPPED + 1)
        except ZIP_ERRORS as exc:
            raise BillError(f"Alipay bill detail file cannot be unzipped: {exc}") from None
    if len(raw) > MAX_UNZIPPED:
        raise BillError("Alipay bill detail file is too large")
    try:
        text = raw.decode("gbk")
    except UnicodeDecodeError:
        raise BillError("Alipay bill detail file is not GBK") from None
    return parse_detail_csv(text)


def _csv_rows(text: str) -> Iterator[list[str]]:
    """The rows one at a time (a bill can hold a day's trades), errors as ``BillError``."""
    try:
        yield from csv.reader(io.StringIO(text))
    except csv.Error as exc:  # a field beyond the csv module's limit, a broken quote
        raise BillError(f"Alipay bill detail file is not readable CSV: {exc}") from None


def parse_detail_csv(text: str) -> Bill:
    lines: list[BillLine] = []
    stated: dict[str, tuple[int, Decimal]] = {}
    header_seen = False
    index: dict[str, int] = {}
    for number, row in enumerate(_csv_rows(text), start=1):
        if not row:
            continue
        first = row[0].strip()
        if first.startswith("#"):
            total = _TOTAL.match(",".join(row).strip())
            if total:
                stated[total.group(1)] = (int(total.group(2)),
                                          decimal_of(total.group(3), f"{total.group(1)}合计"))
            continue
        cells = [c.strip() for c in row]
        if not header_seen:
            if tuple(cells) != DETAIL_COLUMNS:
                raise BillError("Alipay bill detail file lacks the expected header")
            header_seen = True
            index = {name: i for i, name in enumerate(DETAIL_COLUMNS)}
            continue
        if len(cells) != len(DETAIL_COLUMNS):
            raise BillError(f"Alipay bill line {number} has {len(cells)} columns")

        def get(name: str, cells: list[str] = cells, index: dict[str, int] = index) -> str:
            return cells[index[name]]

        received = decimal_of(get("商家实收（元）"), f"line {number} 商家实收")
        fee = decimal_of(get("服务费（元）"), f"line {number} 服务费")
        kind = get("业务类型")
        if kind == "交易":
            lines.append(BillLine("payment", get("商户订单号"), get("支付宝交易号"), received,
                                  fee=fee, time=get("完成时间")))
        elif kind == "退款":
            lines.append(BillLine("refund", get("商户订单号"), get("支付宝交易号"),
                                  Decimal("0.00"), refund=-received,
                                  out_refund_no=get("退款批次号/请求号"), fee=fee,
                                  time=get("完成时间")))
        else:
            raise BillError(f"Alipay bill line {number}: unknown 业务类型 {kind[:10]!r}")
    if not header_seen or set(stated) != {"交易", "退款"}:
        raise BillError("Alipay bill detail file lacks its header or its totals")
    payments = sum(1 for x in lines if x.kind == "payment")
    if stated["交易"][0] != payments or stated["退款"][0] != len(lines) - payments:
        raise BillError("Alipay bill counts do not add up")
    fees = sum((x.fee for x in lines), Decimal("0"))
    return Bill.checked(lines, BillTotals(len(lines), stated["交易"][1], -stated["退款"][1],
                                          fees))
