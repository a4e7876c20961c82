"""Fee details: outpatient (2204/2205) and inpatient (2301/2302) upload and cancel.

The platform prices every line against its catalogue and answers per line how much is fully
self-paid, over the price ceiling, paid first by the patient (class B items) and within the
policy scope; settlement sums those lines.
"""

from __future__ import annotations

from pydantic import Field

from adapters.nhsa.fields import Amount, Code, DateTime, Node, Number, Price, Quantity


class FeeDetail(Node):
    """One line of ``input.feedetail`` (2204 outpatient, 2301 inpatient).

    ``feedetl_sn`` is unique within the visit; ``det_item_fee_sumamt`` must equal
    ``cnt`` × ``pric`` to the cent.
    """

    feedetl_sn: Code
    mdtrt_id: Code
    psn_no: Code
    chrg_bchno: str = ""
    dise_codg: str = ""
    rxno: str = ""
    rx_circ_flag: str = "0"
    fee_ocur_time: DateTime
    med_list_codg: Code
    medins_list_codg: Code
    det_item_fee_sumamt: Amount
    cnt: Quantity
    pric: Price
    sin_dos_dscr: str = ""
    used_frqu_dscr: str = ""
    prd_days: Number | None = None
    medc_way_dscr: str = ""
    bilg_dept_codg: Code
    bilg_dept_name: str
    bilg_dr_codg: str = ""
    bilg_dr_name: str = ""
    hosp_appr_flag: str = ""
    drord_no: str = ""
    med_type: str = ""


class FeeUploadInput(Node):
    feedetail: list[FeeDetail] = Field(min_length=1)


class FeeResult(Node):
    """One line of ``output.result``: how the platform priced an uploaded line."""

    feedetl_sn: Code
    det_item_fee_sumamt: Number
    cnt: Number
    pric: Number
    pric_uplmt_amt: Number | None = None
    selfpay_prop: Number | None = None
    fulamt_ownpay_amt: Number
    overlmt_amt: Number
    preselfpay_amt: Number
    inscp_scp_amt: Number
    chrgitm_lv: str = ""
    med_chrgitm_type: str = ""


class FeeUploadOutput(Node):
    result: list[FeeResult]


class OutpatientFeeCancel(Node):
    """``input.data`` of 2205: cancel the unsettled lines of one charge batch."""

    mdtrt_id: Code
    chrg_bchno: Code
    psn_no: Code


class OutpatientFeeCancelInput(Node):
    data: OutpatientFeeCancel


class InpatientFeeCancel(Node):
    """One line of ``input.data`` of 2302; ``feedetl_sn = "0000"`` cancels every line."""

    feedetl_sn: Code
    mdtrt_id: Code
    psn_no: Code
    memo: str = ""


class InpatientFeeCancelInput(Node):
    data: list[InpatientFeeCancel] = Field(min_length=1)
