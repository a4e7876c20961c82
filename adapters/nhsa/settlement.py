"""Settlements: pre-settle, settle and cancel, outpatient (2206/2207/2208) and inpatient
(2303/2304/2305), the settlement query (5203) and the reversal of a lost call (2601).

The platform keeps ``medfee_sumamt = fund_pay_sumamt + psn_part_amt`` and
``psn_part_amt = acct_pay + psn_cash_pay``; the output model checks both, so an answer that
does not add up is refused before any money figure reaches the HIS.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from adapters.nhsa.fields import Amount, Code, DateTime, Flag, Node, Number


class OutpatientSettle(Node):
    """``input.data`` of 2206 (pre-settle) and, with the scope amounts, 2207 (settle)."""

    psn_no: Code
    mdtrt_cert_type: str = Field(pattern=r"^0[1-3]$")
    mdtrt_cert_no: Code
    med_type: Code
    medfee_sumamt: Amount
    psn_setlway: Code
    mdtrt_id: Code
    chrg_bchno: Code
    insutype: Code
    acct_used_flag: Flag


class OutpatientSettleFinal(OutpatientSettle):
    """``input.data`` of 2207: 2206's fields plus the scope amounts 2206 returned."""

    invono: str = ""
    fulamt_ownpay_amt: Amount
    overlmt_selfpay: Amount
    preselfpay_amt: Amount
    inscp_scp_amt: Amount


class OutpatientPreSettleInput(Node):
    data: OutpatientSettle


class OutpatientSettleInput(Node):
    data: OutpatientSettleFinal


class InpatientSettle(Node):
    """``input.data`` of 2303 (pre-settle) and, with the scope amounts, 2304 (settle).

    ``mid_setl_flag = "1"`` settles part of a stay that has not ended (mid-stay settlement).
    """

    psn_no: Code
    mdtrt_cert_type: str = Field(pattern=r"^0[1-3]$")
    mdtrt_cert_no: Code
    medfee_sumamt: Amount
    psn_setlway: Code
    mdtrt_id: Code
    insutype: Code
    mid_setl_flag: Flag
    acct_used_flag: Flag
    invono: str = ""


class InpatientSettleFinal(InpatientSettle):
    fulamt_ownpay_amt: Amount
    overlmt_selfpay: Amount
    preselfpay_amt: Amount
    inscp_scp_amt: Amount


class InpatientPreSettleInput(Node):
    data: InpatientSettle


class InpatientSettleInput(Node):
    data: InpatientSettleFinal


class SettlementCancel(Node):
    """``input.data`` of 2208 and 2305."""

    setl_id: Code
    mdtrt_id: Code
    psn_no: Code


class SettlementCancelInput(Node):
    data: SettlementCancel


class SettlementQuery(Node):
    """``input.data`` of 5203. Without ``setl_id`` the simulator (and, unconfirmed, some
    provinces) answers with the visit's latest settlement."""

    psn_no: Code
    mdtrt_id: Code
    setl_id: str = ""


class SettlementQueryInput(Node):
    data: SettlementQuery


class Reversal(Node):
    """``input.data`` of 2601: reverse the call sent as ``omsgid`` (transaction ``oinfno``)."""

    psn_no: Code
    omsgid: str = Field(min_length=30, max_length=30)
    oinfno: str = Field(pattern=r"^\d{4}$")


class ReversalInput(Node):
    data: Reversal


class SetlInfo(Node):
    """``output.setlinfo``: one settlement (or, negative, its cancellation)."""

    mdtrt_id: Code
    setl_id: str = ""  # empty in a pre-settlement (2206 / 2303)
    psn_no: Code
    psn_name: str = ""
    setl_time: DateTime | None = None
    medfee_sumamt: Number
    fulamt_ownpay_amt: Number
    overlmt_selfpay: Number
    preselfpay_amt: Number
    inscp_scp_amt: Number
    hifp_pay: Number | None = None
    fund_pay_sumamt: Number
    psn_part_amt: Number
    acct_pay: Number
    psn_cash_pay: Number
    hosp_part_amt: Number | None = None
    balc: Number
    refd_setl_flag: str = ""

    @model_validator(mode="after")
    def _adds_up(self) -> SetlInfo:
        if self.fund_pay_sumamt + self.psn_part_amt != self.medfee_sumamt:
            raise ValueError(
                f"fund_pay_sumamt {self.fund_pay_sumamt} + psn_part_amt {self.psn_part_amt}"
                f" != medfee_sumamt {self.medfee_sumamt}"
            )
        if self.acct_pay + self.psn_cash_pay != self.psn_part_amt:
            raise ValueError(
                f"acct_pay {self.acct_pay} + psn_cash_pay {self.psn_cash_pay}"
                f" != psn_part_amt {self.psn_part_amt}"
            )
        return self


class SetlDetail(Node):
    fund_pay_type: Code
    fund_payamt: Number
    inscp_scp_amt: Number | None = None
    fund_pay_type_name: str = ""


class SettlementOutput(Node):
    """``output`` of 2206, 2207, 2208, 2303, 2304, 2305 and 5203."""

    setlinfo: SetlInfo
    setldetail: list[SetlDetail] = Field(default_factory=list)
