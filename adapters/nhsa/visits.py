"""Visits: outpatient registration (2201/2202/2203) and inpatient admission/discharge (2401/2402).

A visit gets its ``mdtrt_id`` from 2201 or 2401; every later fee, settlement and cancellation
names it.
"""

from __future__ import annotations

from pydantic import Field

from adapters.nhsa.fields import Code, DateTime, Node


class OutpatientRegistration(Node):
    """``input.data`` of 2201."""

    psn_no: Code
    insutype: Code
    begntime: DateTime
    mdtrt_cert_type: str = Field(pattern=r"^0[1-3]$")
    mdtrt_cert_no: Code
    ipt_otp_no: Code
    atddr_no: str = ""
    dr_name: str = ""
    dept_code: Code
    dept_name: str
    caty: str = ""


class OutpatientRegistrationInput(Node):
    data: OutpatientRegistration


class VisitRef(Node):
    mdtrt_id: Code
    psn_no: Code
    ipt_otp_no: str = ""


class VisitOutput(Node):
    """``output`` of 2201 and 2401."""

    data: VisitRef


class RegistrationCancel(Node):
    """``input.data`` of 2202."""

    psn_no: Code
    mdtrt_id: Code
    ipt_otp_no: Code


class RegistrationCancelInput(Node):
    data: RegistrationCancel


class Diagnosis(Node):
    diag_type: Code
    diag_srt_no: str = "1"
    diag_code: Code
    diag_name: str
    diag_dept: str = ""
    dise_dor_no: str = ""
    dise_dor_name: str = ""
    diag_time: DateTime | None = None
    vali_flag: str = "1"


class OutpatientVisitInfo(Node):
    """``input.mdtrtinfo`` of 2203."""

    mdtrt_id: Code
    psn_no: Code
    med_type: Code
    begntime: DateTime
    main_cond_dscr: str = ""
    dise_codg: str = ""
    dise_name: str = ""


class OutpatientVisitInput(Node):
    mdtrtinfo: OutpatientVisitInfo
    diseinfo: list[Diagnosis] = Field(default_factory=list)


class Admission(Node):
    """``input.mdtrtinfo`` of 2401."""

    psn_no: Code
    insutype: Code
    begntime: DateTime
    mdtrt_cert_type: str = Field(pattern=r"^0[1-3]$")
    mdtrt_cert_no: Code
    med_type: Code
    ipt_no: Code
    medrcdno: str = ""
    atddr_no: str = ""
    chfpdr_name: str = ""
    adm_diag_dscr: str = ""
    adm_dept_codg: Code
    adm_dept_name: str
    adm_bed: str = ""
    dscg_maindiag_code: Code
    dscg_maindiag_name: str


class AdmissionInput(Node):
    mdtrtinfo: Admission
    diseinfo: list[Diagnosis] = Field(default_factory=list)


class Discharge(Node):
    """``input.dscginfo`` of 2402."""

    mdtrt_id: Code
    psn_no: Code
    insutype: Code
    endtime: DateTime
    dise_codg: Code
    dise_name: str
    dscg_way: str = "1"


class DischargeInput(Node):
    dscginfo: Discharge
    diseinfo: list[Diagnosis] = Field(default_factory=list)


class EmptyOutput(Node):
    """Transactions whose success carries no data (2202, 2203, 2205, 2302, 2402, 2601)."""
