"""1101: person and insurance information, looked up by certificate before any visit."""

from __future__ import annotations

from pydantic import Field

from adapters.nhsa.fields import Code, Date, DateTime, Node, Number


class PersonQuery(Node):
    """``input.data`` of 1101.

    ``mdtrt_cert_type``: 01 e-voucher token, 02 resident ID card, 03 social-security card;
    ``mdtrt_cert_no`` is the token, ID number or card number accordingly.
    """

    mdtrt_cert_type: str = Field(pattern=r"^0[1-3]$")
    mdtrt_cert_no: Code
    card_sn: str = ""
    begntime: DateTime | None = None
    psn_cert_type: str = ""
    certno: str = ""
    psn_name: str = ""


class PersonQueryInput(Node):
    data: PersonQuery


class BaseInfo(Node):
    psn_no: Code
    psn_cert_type: str = ""
    certno: str = ""
    psn_name: str = ""
    gend: str = ""
    naty: str = ""
    brdy: Date | None = None
    age: Number | None = None


class InsuInfo(Node):
    """One insurance the person holds; ``balc`` is the personal-account balance."""

    balc: Number
    insutype: Code
    psn_type: str = ""
    psn_insu_stas: str = ""
    psn_insu_date: Date | None = None
    paus_insu_date: Date | None = None
    cvlserv_flag: str = ""
    insuplc_admdvs: str = Field(pattern=r"^\d{6}$")
    emp_name: str = ""


class IdetInfo(Node):
    psn_idet_type: str = ""
    psn_type_lv: str = ""
    memo: str = ""
    begntime: DateTime | None = None
    endtime: DateTime | None = None


class PersonInfo(Node):
    """``output`` of 1101."""

    baseinfo: BaseInfo
    insuinfo: list[InsuInfo]
    idetinfo: list[IdetInfo] = Field(default_factory=list)
