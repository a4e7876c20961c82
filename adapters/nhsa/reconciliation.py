"""3201: the daily reconciliation of totals between the hospital and the platform."""

from __future__ import annotations

from pydantic import Field

from adapters.nhsa.fields import Amount, Code, Date, Node


class ReconciliationTotals(Node):
    """``input.data`` of 3201: the hospital's totals for one insurance type and clearing type.

    ``clr_type``: 11 outpatient, 21 inpatient. ``setl_optins`` is the clearing agency
    (the insured persons' area code).
    """

    insutype: Code
    clr_type: Code
    setl_optins: str = Field(pattern=r"^\d{6}$")
    stmt_begndate: Date
    stmt_enddate: Date
    medfee_sumamt: Amount
    fund_pay_sumamt: Amount
    acct_pay: Amount
    fixmedins_setl_cnt: int = Field(ge=0)


class ReconciliationInput(Node):
    data: ReconciliationTotals


class StmtInfo(Node):
    setl_optins: str
    stmt_rslt: str
    stmt_rslt_dscr: str = ""


class ReconciliationOutput(Node):
    """``output`` of 3201: ``stmt_rslt = "0"`` when both sides agree."""

    stmtinfo: StmtInfo
