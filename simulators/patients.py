"""Fictional Chinese patients, visits and charges for simulators, demos and benchmarks.

Identity numbers follow GB 11643 (area code, birth date, sequence, ISO 7064 MOD 11-2 check
digit) so that validators accept them; none belongs to a real person.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal

SURNAMES = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡"
    "余杜叶程苏魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯"
    "龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤"
)
GIVEN = (
    "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超秀兰霞平刚桂英华玉萍红娥玲芬燕彬建国晓明志"
    "强海燕建华文俊雪梅子涵浩然欣怡宇轩梓萱一诺"
)
AREAS = [
    ("330106", "浙江省", "杭州市", "西湖区"), ("370202", "山东省", "青岛市", "市南区"),
    ("110105", "北京市", "北京市", "朝阳区"), ("440305", "广东省", "深圳市", "南山区"),
    ("510107", "四川省", "成都市", "武侯区"), ("420106", "湖北省", "武汉市", "武昌区"),
    ("320102", "江苏省", "南京市", "玄武区"), ("610113", "陕西省", "西安市", "雁塔区"),
]
STREETS = ["文三路", "解放路", "人民路", "中山路", "建设路", "和平路", "长江路", "友谊路"]
DEPARTMENTS = [("XNK", "心内科"), ("KQNK", "口腔内科"), ("HXK", "呼吸内科"), ("GK", "骨科"),
               ("EK", "儿科"), ("FK", "妇科"), ("PFK", "皮肤科")]
DOCTORS = [("D0217", "刘", "建国"), ("D1045", "黄", "伟"), ("D0333", "孙", "丽"),
           ("D0518", "周", "海燕"), ("D0720", "吴", "志强")]
CHARGE_ITEMS = [
    ("310513001", "根管治疗术(单根管)", "003105130010000", Decimal("180.00")),
    ("M0035", "一次性口腔检查盘", "C14010203200100000118", Decimal("12.50")),
    ("X0101", "甲硝唑片", "XP01ABJ023A001010104463", Decimal("1.80")),
    ("250101001", "血常规", "002501010010000", Decimal("20.00")),
    ("110200001", "普通门诊诊查费", "001102000010000", Decimal("10.00")),
    ("X0207", "阿莫西林胶囊", "XJ01CAA040E001010100929", Decimal("0.65")),
    ("270800005", "心电图检查", "002708000050000", Decimal("25.00")),
]
# How self-paying outpatients pay at the window, the kiosk or on their phone (HL7 FT1-7 of a
# PY line; lower-cased, these are the keys of mappings/lookups/einvoice_pay_channels.csv).
PAY_CHANNELS = [("WECHAT", "微信支付"), ("ALIPAY", "支付宝"), ("UNIONPAY", "银联"),
                ("CASH", "现金")]
_PAY_WEIGHTS = [5, 3, 1, 1]
CASHIERS = [("SF01", "收费员01"), ("SF02", "收费员02"), ("ZZJ01", "自助机01")]

_WEIGHTS = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
_CHECK = "10X98765432"


def id_card_number(area: str, birth: date, seq: int, female: bool) -> str:
    """An 18-digit resident identity number with a valid check digit."""
    seq = seq % 1000
    if (seq % 2 == 0) != female:  # odd sequence = male, even = female
        seq = (seq + 1) % 1000
    body = f"{area}{birth:%Y%m%d}{seq:03d}"
    total = sum(int(d) * w for d, w in zip(body, _WEIGHTS, strict=True))
    return body + _CHECK[total % 11]


@dataclass
class Patient:
    mrn: str
    family: str
    given: str
    sex: str  # M / F
    birth: date
    id_card: str
    phone: str
    province: str
    city: str
    district: str
    street: str
    postcode: str
    insurance_card: str


@dataclass(frozen=True, slots=True)
class Coverage:
    """An insured visit as the HIS knows it once the front desk has registered it with the
    insurance platform: the person (1101's ``psn_no``, insurance type and insured area) and
    the insurance visit (2201's ``mdtrt_id``). The HIS sends these with every message of the
    visit (see ``simulators.hl7_messages``)."""

    psn_no: str
    mdtrt_id: str
    insutype: str  # 310 employees, 390 residents ...
    insuplc_admdvs: str  # the insured area (6 digits)
    insutype_name: str = ""


@dataclass
class Visit:
    number: str
    kind: str  # I inpatient / O outpatient
    dept_code: str
    dept_name: str
    doctor: tuple[str, str, str]
    bed: str = ""
    started: datetime = field(default_factory=datetime.now)
    coverage: Coverage | None = None  # an insured visit; None: self-pay


@dataclass
class Charge:
    code: str
    name: str
    insurance_code: str
    unit_price: Decimal
    quantity: int
    transaction_id: str = ""

    @property
    def amount(self) -> Decimal:
        return (self.unit_price * self.quantity).quantize(Decimal("0.01"))


@dataclass
class Payment:
    """The patient paid a charge batch in full: one HL7 PY line (FT1-6 = PY)."""

    channel: str  # FT1-7.1, e.g. WECHAT
    channel_name: str
    amount: Decimal
    cashier: tuple[str, str]  # FT1-24: who took it (a window or a kiosk)
    transaction_id: str = ""


@dataclass
class PatientFactory:
    seed: int | None = None
    rng: random.Random = field(init=False)
    _counter: int = field(default=0, init=False)
    _visits: int = field(default=0, init=False)
    _visit_base: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self._visit_base = self.rng.randrange(10**6)

    def patient(self) -> Patient:
        r = self.rng
        self._counter += 1
        female = r.random() < 0.5
        birth = date(1940, 1, 1) + timedelta(days=r.randrange(0, 30000))
        area, province, city, district = r.choice(AREAS)
        given = "".join(r.choice(GIVEN) for _ in range(r.choice((1, 2))))
        return Patient(
            mrn=f"{r.randrange(10**9):010d}",
            family=r.choice(SURNAMES),
            given=given,
            sex="F" if female else "M",
            birth=birth,
            id_card=id_card_number(area, birth, r.randrange(1000), female),
            phone=f"1{r.choice('3456789')}{r.randrange(10**9):09d}",
            province=province, city=city, district=district,
            street=f"{r.choice(STREETS)}{r.randrange(1, 300)}号",
            postcode=f"{area[:3]}0{r.randrange(10, 99)}",
            insurance_card=f"{area}{r.randrange(10**10):010d}",
        )

    def visit(self, kind: str | None = None) -> Visit:
        r = self.rng
        kind = kind or r.choice("IO")
        dept = r.choice(DEPARTMENTS)
        # Visit numbers are unique within a run (a million visits a day), like a HIS sequence.
        self._visits += 1
        serial = (self._visit_base + self._visits) % 10**6
        return Visit(
            number=f"{'Z' if kind == 'I' else 'V'}{datetime.now():%Y%m%d}{serial:06d}",
            kind=kind, dept_code=dept[0], dept_name=dept[1], doctor=r.choice(DOCTORS),
            bed=f"{r.randrange(1, 40):02d}" if kind == "I" else "",
        )

    def charges(self, visit: Visit, n: int | None = None) -> list[Charge]:
        r = self.rng
        picked = r.sample(CHARGE_ITEMS, n or r.randrange(1, 4))
        return [
            Charge(code, name, ins, price, r.randrange(1, 4),
                   transaction_id=f"F{visit.number[1:]}{i + 1:03d}")
            for i, (code, name, ins, price) in enumerate(picked)
        ]

    def payment(self, visit: Visit, charges: list[Charge]) -> Payment:
        """The patient pays the whole batch through one channel."""
        r = self.rng
        channel, name = r.choices(PAY_CHANNELS, _PAY_WEIGHTS)[0]
        return Payment(channel, name, sum((c.amount for c in charges), Decimal("0.00")),
                       r.choice(CASHIERS), transaction_id=f"P{visit.number[1:]}001")
