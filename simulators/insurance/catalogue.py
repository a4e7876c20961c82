"""What the simulated platform knows before any traffic: its catalogue and insured persons.

Everything here is fictional. Identity numbers use the unassigned area code 440399 (with a
valid check digit so that format checks pass) and names are invented.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class Item:
    """A catalogue entry.

    ``chrgitm_lv``: 01 class A (fully in scope), 02 class B (a share paid first by the
    patient), 03 class C (outside the scope, fully self-paid). ``uplmt``: the unit price
    ceiling, 0 for none. ``med_chrgitm_type``: the fee category (01 bed ... 09 Western
    medicine, 11 Chinese patent medicine ...).
    """

    code: str
    name: str
    chrgitm_lv: str
    med_chrgitm_type: str
    uplmt: Decimal


CATALOGUE: dict[str, Item] = {
    i.code: i
    for i in (
        Item("001102000010000", "普通门诊诊察费", "01", "02", Decimal("10.00")),
        Item("001201000010000", "普通病房床位费", "01", "01", Decimal("50.00")),
        Item("001204000010000", "一级护理", "01", "07", Decimal("30.00")),
        Item("002501000010000", "血细胞分析", "01", "04", Decimal("20.00")),
        Item("002703000010000", "X线计算机体层(CT)平扫", "02", "03", Decimal("260.00")),
        Item("003306000010000", "阑尾切除术", "01", "06", Decimal("1200.00")),
        Item("003105130010000", "根管治疗术(单根管)", "02", "05", Decimal("200.00")),
        Item("XJ01CAA040A001010100001", "阿莫西林胶囊", "01", "09", Decimal("0.50")),
        Item("XC07ABM070A001020100002", "美托洛尔缓释片", "02", "09", Decimal("2.80")),
        Item("XP01ABJ023A001010104463", "甲硝唑片", "01", "09", Decimal("2.00")),
        Item("ZA12BAF0123010100003", "复方丹参滴丸", "02", "11", Decimal("1.20")),
        Item("C14010203200100000118", "一次性使用口腔器械盒", "02", "08", Decimal("15.00")),
        Item("C01020000001", "一次性使用输液器", "02", "08", Decimal("5.00")),
        Item("XN99ZZZ999Z999999999999", "进口营养补充剂", "03", "09", Decimal("0")),
    )
}


def _check_digit(first17: str) -> str:
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    total = sum(int(d) * w for d, w in zip(first17, weights, strict=True))
    return "10X98765432"[total % 11]


def id_number(birth: str, seq: str) -> str:
    """A fictional resident ID number (area 440399) with a valid check digit."""
    first17 = f"440399{birth}{seq}"
    return first17 + _check_digit(first17)


@dataclass(frozen=True, slots=True)
class Person:
    psn_no: str
    name: str
    gend: str
    brdy: str
    certno: str
    ss_card_no: str
    evoucher: str
    insutype: str
    psn_type: str
    psn_insu_stas: str
    insuplc_admdvs: str
    emp_name: str
    cvlserv_flag: str
    balc: Decimal


PERSONS: tuple[Person, ...] = (
    Person("44039900000001", "林晓峰", "1", "1985-03-15", id_number("19850315", "001"),
           "D44039900001", "EV4403990001A", "310", "1101", "1", "440300",
           "示例科技有限公司", "0", Decimal("1000.00")),
    Person("44039900000002", "陈淑华", "2", "1956-11-02", id_number("19561102", "022"),
           "D44039900002", "EV4403990002B", "310", "1102", "1", "440300",
           "示例纺织厂(退休)", "0", Decimal("3560.80")),
    Person("44039900000003", "王子涵", "2", "2016-06-30", id_number("20160630", "042"),
           "D44039900003", "EV4403990003C", "390", "1501", "1", "440300", "", "0",
           Decimal("0.00")),
    Person("44039900000004", "赵建国", "1", "1970-01-20", id_number("19700120", "013"),
           "D44039900004", "EV4403990004D", "310", "1101", "1", "440300",
           "示例物流有限公司", "1", Decimal("12.30")),
    Person("44039900000005", "刘芳", "2", "1992-08-08", id_number("19920808", "064"),
           "D44039900005", "EV4403990005E", "390", "1501", "1", "440100", "", "0",
           Decimal("0.00")),
    Person("44039900000006", "孙立", "1", "1979-05-05", id_number("19790505", "035"),
           "D44039900006", "EV4403990006F", "310", "1101", "2", "440300",
           "示例建筑公司", "0", Decimal("200.00")),
)
