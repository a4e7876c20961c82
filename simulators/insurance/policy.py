"""How the simulated platform prices fee lines and splits a settlement between funds and the
patient. Pure functions over ``Decimal``; every amount is rounded half-up to the cent.

Per line (2204 / 2301):

- over the unit price ceiling: ``overlmt_amt = (pric - uplmt) × cnt``;
- class C: the whole line is ``fulamt_ownpay_amt``;
- class B: ``preselfpay_amt = (sumamt - overlmt_amt) × selfpay_prop`` (10 % for employees'
  insurance 310, 15 % for residents' 390);
- ``inscp_scp_amt = sumamt - fulamt_ownpay_amt - overlmt_amt - preselfpay_amt``.

Per settlement (2206/2207, 2303/2304):

- inpatient stays first pay a deductible out of the in-scope amount (800.00 for 310,
  600.00 for 390); outpatient has none;
- the pooled fund pays ``hifp_pay = (inscp_scp_amt - deductible) × ratio``: 310 outpatient
  70 %, inpatient 85 % (+5 % for retirees, psn_type 1102); 390 outpatient 50 %, inpatient
  70 %;
- ``fund_pay_sumamt = hifp_pay``; ``psn_part_amt = medfee_sumamt - fund_pay_sumamt``;
- the personal account (310 only, when ``acct_used_flag = 1``) pays what it can of the
  patient's part; the rest is ``psn_cash_pay``.

So ``medfee_sumamt = fund_pay_sumamt + psn_part_amt`` and
``psn_part_amt = acct_pay + psn_cash_pay`` hold exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from simulators.insurance.catalogue import Item

CENT = Decimal("0.01")
ZERO = Decimal("0.00")

CLASS_B_SELFPAY = {"310": Decimal("0.10"), "390": Decimal("0.15")}
FUND_RATIO = {
    ("310", "otp"): Decimal("0.70"),
    ("310", "ipt"): Decimal("0.85"),
    ("390", "otp"): Decimal("0.50"),
    ("390", "ipt"): Decimal("0.70"),
}
RETIREE_BONUS = Decimal("0.05")
DEDUCTIBLE = {("310", "ipt"): Decimal("800.00"), ("390", "ipt"): Decimal("600.00")}
FUND_TYPE = {
    "310": ("310100", "职工基本医疗保险统筹基金"),
    "390": ("390100", "城乡居民基本医疗保险基金"),
}


def money(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


@dataclass(frozen=True, slots=True)
class PricedLine:
    sumamt: Decimal
    uplmt: Decimal
    selfpay_prop: Decimal
    fulamt_ownpay_amt: Decimal
    overlmt_amt: Decimal
    preselfpay_amt: Decimal
    inscp_scp_amt: Decimal


def price_line(item: Item, insutype: str, cnt: Decimal, pric: Decimal,
               sumamt: Decimal) -> PricedLine:
    if item.chrgitm_lv == "03":
        return PricedLine(sumamt, item.uplmt, Decimal("1"), sumamt, ZERO, ZERO, ZERO)
    overlmt = ZERO
    if item.uplmt > 0 and pric > item.uplmt:
        overlmt = min(sumamt, money((pric - item.uplmt) * cnt))
    prop = CLASS_B_SELFPAY.get(insutype, Decimal("0.10")) if item.chrgitm_lv == "02" else ZERO
    preselfpay = money((sumamt - overlmt) * prop)
    inscp = sumamt - overlmt - preselfpay
    return PricedLine(sumamt, item.uplmt, prop, ZERO, overlmt, preselfpay, inscp)


@dataclass(frozen=True, slots=True)
class Figures:
    medfee_sumamt: Decimal
    fulamt_ownpay_amt: Decimal
    overlmt_selfpay: Decimal
    preselfpay_amt: Decimal
    inscp_scp_amt: Decimal
    act_pay_dedc: Decimal
    hifp_pay: Decimal
    fund_pay_sumamt: Decimal
    psn_part_amt: Decimal
    acct_pay: Decimal
    psn_cash_pay: Decimal
    balc: Decimal
    fund_ratio: Decimal


def settle_figures(
    lines: list[PricedLine], *, insutype: str, psn_type: str, kind: str, balance: Decimal,
    use_account: bool,
) -> Figures:
    """Split the lines' total between the pooled fund, the account and cash."""
    medfee = sum((ln.sumamt for ln in lines), ZERO)
    fulamt = sum((ln.fulamt_ownpay_amt for ln in lines), ZERO)
    overlmt = sum((ln.overlmt_amt for ln in lines), ZERO)
    preself = sum((ln.preselfpay_amt for ln in lines), ZERO)
    inscp = sum((ln.inscp_scp_amt for ln in lines), ZERO)
    deductible = min(inscp, DEDUCTIBLE.get((insutype, kind), ZERO))
    ratio = FUND_RATIO.get((insutype, kind), Decimal("0.50"))
    if insutype == "310" and psn_type == "1102":
        ratio = min(Decimal("1"), ratio + RETIREE_BONUS)
    hifp = money((inscp - deductible) * ratio)
    fund = hifp
    part = medfee - fund
    acct = min(balance, part) if (use_account and insutype == "310") else ZERO
    acct = max(acct, ZERO)
    return Figures(
        medfee_sumamt=medfee, fulamt_ownpay_amt=fulamt, overlmt_selfpay=overlmt,
        preselfpay_amt=preself, inscp_scp_amt=inscp, act_pay_dedc=deductible, hifp_pay=hifp,
        fund_pay_sumamt=fund, psn_part_amt=part, acct_pay=acct, psn_cash_pay=part - acct,
        balc=balance - acct, fund_ratio=ratio,
    )
