"""The hospital's front desk as the demo plays it: insured outpatients registering and
settling their bill, and self-paying patients paying by WeChat Pay.

``InsuranceDesk`` does what the HIS cashier's workstation does with the national insurance
platform directly: it signs in (9001), looks the patient up by card (1101) and registers the
visit (2201). From then on the HIS knows the insurance visit (``mdtrt_id``) and the insured
person (``psn_no``) and sends them with the visit's messages (``Visit.coverage``; see
``simulators.hl7_messages``): the charges go to the engine as a DFT^P03 batch, and the
engine uploads them (2204). When the fees are at the platform the desk keeps the settle
request as a FHIR Claim on the HIS's FHIR server and posts the same Claim to the engine's
settle channel, which pre-settles (2206), settles (2207) and answers the HIS with a
ClaimResponse.

``PaymentDesk`` creates WeChat Pay orders through ``PaymentService`` (the kiosk shows the QR
code), lets the simulated payer pay, and refunds part of an order; the gateway's
notifications reach the engine's ``payment_notify`` source by themselves.

Everything here is fictional: the seeded insured persons of the insurance simulator and
invented amounts. Nothing identifying is logged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import random
import secrets
import time
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import aiohttp

from adapters.nhsa.client import NhsaClient
from adapters.nhsa.config import NhsaDestinationConfig
from adapters.nhsa.envelope import encode_json
from adapters.payments.model import Order, OrderState
from adapters.payments.service import PaymentService
from adapters.payments.store import PaymentStore
from adapters.wechatpay.client import WechatPayClient
from adapters.wechatpay.settings import WechatPaySettings
from simulators.patients import Charge, Coverage, Patient, PatientFactory, Visit
from simulators.payments.control import SimControl

# Seeded persons of the insurance simulator, by social-security card (mdtrt_cert_type 03):
# employees in work and retired, a resident without personal account, an account that runs
# short (docs/insurance.md, "Seeded persons").
CARDS = ("D44039900001", "D44039900002", "D44039900003", "D44039900004")

# (hospital code, name, national catalogue code, price, quantities): an outpatient bill's
# lines, coded the way the platform's catalogue knows them.
CONSULTATION = ("110200001", "普通门诊诊查费", "001102000010000", Decimal("10.00"), (1,))
FEE_ITEMS = (
    ("250101001", "血常规", "002501000010000", Decimal("20.00"), (1,)),
    ("X0207", "阿莫西林胶囊", "XJ01CAA040A001010100001", Decimal("0.55"), (12, 24)),  # > ceiling
    ("X0101", "甲硝唑片", "XP01ABJ023A001010104463", Decimal("1.80"), (6, 12)),
    ("310513001", "根管治疗术(单根管)", "003105130010000", Decimal("180.00"), (1,)),  # class B
    ("M0035", "一次性口腔检查盘", "C14010203200100000118", Decimal("12.50"), (1,)),
    ("X0715", "美托洛尔缓释片", "XC07ABM070A001020100002", Decimal("2.50"), (14, 28)),
    ("X9901", "进口营养补充剂", "XN99ZZZ999Z999999999999", Decimal("88.00"), (1,)),  # class C
)
DEPARTMENTS = (("KQNK", "口腔内科", "A12"), ("XNK", "心内科", "A03.04"), ("HXK", "呼吸内科",
                                                                     "A03.01"))
DOCTORS = (("D0217", "刘", "建国"), ("D1045", "黄", "伟"), ("D0333", "孙", "丽"))

NHSA = "urn:hisbridge:nhsa"


@dataclass(frozen=True, slots=True)
class InsuredVisit:
    """An insured outpatient registered with the platform (1101, 2201), and the charges the
    HIS sends for the visit as one DFT^P03 batch (``batch``, FT1-3)."""

    card: str
    patient: Patient
    visit: Visit
    charges: list[Charge]
    batch: str

    @property
    def coverage(self) -> Coverage:
        assert self.visit.coverage is not None
        return self.visit.coverage

    @property
    def total(self) -> Decimal:
        return sum((c.amount for c in self.charges), Decimal("0.00"))


@dataclass(frozen=True, slots=True)
class SettleRequest:
    """One settle request the desk posted: what the engine must turn into a settlement."""

    claim_id: str
    mdtrt_id: str
    chrg_bchno: str
    total: Decimal
    accepted: bool  # the engine answered 2xx


class InsuranceDesk:
    """Insured outpatients at the cashier: ``register`` a visit, then ``settle`` it.

    Args:
        nhsa: the settle channel's nhsa destination (platform URL, institution, gateway).
        claims_url: the engine's HTTP source for settle requests.
        fhir_url: the HIS's FHIR server, where the desk keeps its Claims.
        msgid_node: this workstation's digit in the msgid sequence (not the engine's).
    """

    def __init__(self, nhsa: NhsaDestinationConfig, *, claims_url: str, fhir_url: str,
                 msgid_node: int = 9, seed: int | None = None) -> None:
        self.config = nhsa.model_copy(update={"msgid_node": msgid_node})
        self.claims_url = claims_url
        self.fhir_url = fhir_url.rstrip("/")
        self.rng = random.Random(seed)
        self.requests: list[SettleRequest] = []
        self.failures: list[str] = []
        self._seq = itertools.count(1)
        self._run = f"{datetime.now():%H%M%S}{secrets.randbelow(100):02d}"
        self._people = PatientFactory(seed)
        self._patients: dict[str, Patient] = {}  # the HIS's record of each card holder
        self._client: NhsaClient | None = None
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._client = self.config.client()
        await self._client.start()
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        await self._client.session.sign_no()  # 9001: the operator signs in once

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
        if self._http is not None:
            await self._http.close()

    async def _call(self, infno: str, body: dict[str, Any], insuplc: str = "") -> Any:
        assert self._client is not None
        reply = await self._client.call(infno, encode_json(body), insuplc_admdvs=insuplc,
                                        time_limit=10.0)
        return reply.output

    async def register(self) -> InsuredVisit:
        """An insured outpatient at the window: person lookup (1101) and visit (2201).

        Returns the visit with its coverage and the charges the doctor will order; the HIS
        sends them (``simulators.his.outpatient_visit``), the engine uploads them.
        """
        n = next(self._seq)
        card = CARDS[(n - 1) % len(CARDS)]
        info = await self._call("1101", {"data": {"mdtrt_cert_type": "03",
                                                  "mdtrt_cert_no": card}})
        base = info["baseinfo"]
        psn_no = base["psn_no"]
        insurance = info["insuinfo"][0]
        insutype, area = insurance["insutype"], insurance["insuplc_admdvs"]
        dept_code, dept_name, caty = self.rng.choice(DEPARTMENTS)
        doctor = self.rng.choice(DOCTORS)
        now = datetime.now()
        number = f"MZ{now:%Y%m%d}{self._run}{n:04d}"  # the HIS outpatient number
        visit = await self._call("2201", {"data": {
            "psn_no": psn_no, "insutype": insutype, "begntime": f"{now:%Y-%m-%d %H:%M:%S}",
            "mdtrt_cert_type": "03", "mdtrt_cert_no": card, "ipt_otp_no": number,
            "atddr_no": doctor[0], "dr_name": doctor[1] + doctor[2], "dept_code": dept_code,
            "dept_name": dept_name, "caty": caty}}, area)
        coverage = Coverage(psn_no=psn_no, mdtrt_id=visit["data"]["mdtrt_id"],
                            insutype=insutype, insuplc_admdvs=area)
        batch = f"B{now:%Y%m%d}{self._run}{n:04d}"
        lines = [CONSULTATION, *self.rng.sample(FEE_ITEMS, self.rng.randrange(1, 4))]
        charges = [Charge(code, name, national, price, self.rng.choice(quantities),
                          transaction_id=f"{batch}-{i}")
                   for i, (code, name, national, price, quantities) in enumerate(lines, start=1)]
        return InsuredVisit(
            card=card, patient=self._patient(card, base),
            visit=Visit(number=number, kind="O", dept_code=dept_code, dept_name=dept_name,
                        doctor=doctor, started=now, coverage=coverage),
            charges=charges, batch=batch)

    def _patient(self, card: str, base: dict[str, Any]) -> Patient:
        """The HIS's patient record of a card holder: one medical record number per person,
        identity as the platform knows it."""
        if card not in self._patients:
            name = str(base.get("psn_name") or "")
            self._patients[card] = dataclasses.replace(
                self._people.patient(), family=name[:1], given=name[1:],
                sex="F" if base.get("gend") == "2" else "M",
                birth=date.fromisoformat(str(base["brdy"])), id_card=str(base["certno"]),
                insurance_card=card)
        return self._patients[card]

    async def settle(self, insured: InsuredVisit, fees: Decimal) -> SettleRequest:
        """Ask the engine to settle the visit's batch: ``fees`` is what the platform holds
        for it (what the engine uploaded), the Claim's total."""
        assert self._http is not None
        coverage = insured.coverage
        now = datetime.now()
        # The settle request's own number: unique across runs, since the engine keeps every
        # message it received (and drops a repeated Idempotency-Key as a duplicate).
        claim_id = f"settle-{insured.batch[1:]}"
        claim = _claim(claim_id, psn_no=coverage.psn_no, card=insured.card,
                       insutype=coverage.insutype, mdtrt_id=coverage.mdtrt_id,
                       batch=insured.batch, total=fees, created=now)
        body = encode_json(claim)
        fhir_headers = {"Content-Type": "application/fhir+json"}
        # The HIS keeps its settle request; the ClaimResponse will point at it.
        await self._keep_claim(claim_id, body)
        headers = {**fhir_headers, "Idempotency-Key": claim_id,
                   "mdtrt_cert_no": insured.card, "chrg_bchno": insured.batch,
                   "insuplc_admdvs": coverage.insuplc_admdvs,
                   "claim_reference": f"Claim/{claim_id}"}
        async with self._http.post(self.claims_url, data=body, headers=headers) as r:
            accepted = 200 <= r.status < 300
            if not accepted:
                self.failures.append(f"{claim_id}: HTTP {r.status}")
        request = SettleRequest(claim_id, coverage.mdtrt_id, insured.batch, fees, accepted)
        self.requests.append(request)
        return request

    async def _keep_claim(self, claim_id: str, body: bytes, attempts: int = 20) -> None:
        """PUT the Claim on the HIS's FHIR server, retrying while it is unavailable."""
        assert self._http is not None
        url = f"{self.fhir_url}/Claim/{claim_id}"
        for attempt in range(1, attempts + 1):
            try:
                async with self._http.put(
                        url, data=body, headers={"Content-Type": "application/fhir+json"}) as r:
                    if r.status < 500:
                        r.raise_for_status()
                        return
            except aiohttp.ClientConnectionError:
                if attempt == attempts:
                    raise
            await asyncio.sleep(0.5)
        raise RuntimeError(f"the FHIR server did not take Claim/{claim_id}")


def _claim(claim_id: str, *, psn_no: str, card: str, insutype: str, mdtrt_id: str, batch: str,
           total: Decimal, created: datetime) -> dict[str, Any]:
    """The settle request as the HIS sends it (see mappings/insurance_claim_to_2206.toml)."""
    return {
        "resourceType": "Claim",
        "id": claim_id,
        "contained": [{
            "resourceType": "Coverage", "id": "cov", "status": "active",
            "type": {"coding": [{"system": f"{NHSA}:insutype", "code": insutype}]},
            "identifier": [{
                "type": {"coding": [{"system": f"{NHSA}:mdtrt_cert_type", "code": "03",
                                     "display": "社会保障卡"}]},
                "system": f"{NHSA}:mdtrt_cert", "value": card}],
            "beneficiary": {"identifier": {"system": f"{NHSA}:psn_no", "value": psn_no}},
            "payor": [{"display": "国家医保信息平台"}],
        }],
        "identifier": [{"system": f"{NHSA}:mdtrt_id", "value": mdtrt_id},
                       {"system": f"{NHSA}:chrg_bchno", "value": batch}],
        "extension": [{"url": f"{NHSA}:acct_used_flag", "valueBoolean": True}],
        "status": "active",
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type",
                             "code": "professional"}]},
        "subType": {"coding": [{"system": f"{NHSA}:med_type", "code": "11",
                                "display": "普通门诊"}]},
        "use": "claim",
        "patient": {"identifier": {"system": f"{NHSA}:psn_no", "value": psn_no}},
        "created": created.astimezone().isoformat(timespec="seconds"),
        "priority": {"coding": [{"code": "normal"}]},
        "insurance": [{"sequence": 1, "focal": True, "coverage": {"reference": "#cov"}}],
        "total": {"value": total, "currency": "CNY"},
    }


class PaymentDesk:
    """Self-paying patients paying by WeChat Pay at the kiosk.

    Args:
        settings: the merchant account (the payment_notify source's table), with the
            ``notify_url`` of the engine's callback source.
        store: the engine's payment store (orders are recorded before they are sent).
        control_url: the simulator's base URL (its ``/_sim/pay`` plays the payer).
    """

    AMOUNTS_FEN = (1000, 1250, 2590, 4380, 6600, 8800, 12000, 18650)

    def __init__(self, settings: WechatPaySettings, store: PaymentStore, control_url: str, *,
                 seed: int | None = None) -> None:
        self.settings = settings
        self.store = store
        self.control_url = control_url
        self.rng = random.Random(seed)
        self.orders: list[str] = []
        self.refunds: list[tuple[str, str, int]] = []
        self.failures: list[str] = []
        self._seq = itertools.count(1)
        # Order numbers stay unique across runs: the engine's store keeps every order.
        self._prefix = f"HIS{datetime.now():%y%m%d%H%M%S}{secrets.token_hex(2).upper()}"
        self._client: WechatPayClient | None = None
        self._http: aiohttp.ClientSession | None = None
        self._service: PaymentService | None = None

    async def start(self) -> None:
        self._client = WechatPayClient(self.settings)
        await self._client.start()
        await self.store.start()
        self._service = PaymentService(self._client, self.store)
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
        if self._http is not None:
            await self._http.close()

    async def pay(self) -> str:
        """Create a QR order for a charge and let the payer pay it; returns out_trade_no."""
        assert self._service is not None and self._http is not None
        no = f"{self._prefix}{next(self._seq):03d}"
        await self._service.create_order(no, self.rng.choice(self.AMOUNTS_FEN), "门诊缴费",
                                         "native")
        await SimControl(self.control_url, self._http).pay(no)
        self.orders.append(no)
        return no

    async def refund_part(self, out_trade_no: str, within: float = 10.0) -> None:
        """Refund a fifth of a paid order (a test cancelled after payment), once the
        payment's own notification has arrived."""
        assert self._service is not None
        deadline = time.monotonic() + within
        order = await self.store.order("wechatpay", out_trade_no)
        while order is None or order.state is not OrderState.PAID:
            if time.monotonic() > deadline:
                self.failures.append(f"{out_trade_no}: not paid within {within:g}s")
                return
            await asyncio.sleep(0.1)
            order = await self.store.order("wechatpay", out_trade_no)
        amount = order.amount_fen // 5
        no = f"{out_trade_no}R1"
        await self._service.refund(out_trade_no, no, amount, "检查取消")
        self.refunds.append((out_trade_no, no, amount))

    async def order_states(self) -> list[Order]:
        found = [await self.store.order("wechatpay", no) for no in self.orders]
        return [o for o in found if o is not None]
