"""Insurance test fixtures: a simulator on an ephemeral port with a gateway secret made at
runtime, destinations built from config models, and helpers that talk to both over HTTP."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from adapters.nhsa import NhsaDestination, NhsaDestinationConfig
from engine.contracts import Result
from queues.contract import Envelope
from simulators.insurance import GatewayCheck, Simulator, serve

INSTITUTION = "H44030500001"
PAASID = "hisbridge-test"


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> str:
    value = secrets.token_hex(16)
    monkeypatch.setenv("NHSA_TEST_TOKEN", value)
    return value


@pytest.fixture
async def sim(tmp_path: Path, token: str) -> AsyncIterator[Simulator]:
    simulator = await serve(
        "127.0.0.1", 0, db_path=tmp_path / "sim.db",
        gateway=GatewayCheck("x-tif", {PAASID: token}),
        pipe_password=secrets.token_hex(8),
    )
    try:
        yield simulator
    finally:
        await simulator.close()


def nhsa_settings(base_url: str, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "type": "nhsa", "name": "nhsa", "url": base_url, "fixmedins_code": INSTITUTION,
        "fixmedins_name": "深圳市示例人民医院", "mdtrtarea_admvs": "440300",
        "opter": "0001", "opter_name": "收费员甲",
        "auth": {"scheme": "x-tif", "paasid": PAASID, "token": "${NHSA_TEST_TOKEN}"},
        "timeout": 5.0,
        "in_doubt": {"delay": 0.05, "timeout": 2.0},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


@pytest.fixture
def nhsa_config() -> Callable[..., NhsaDestinationConfig]:
    """``nhsa_config(base_url, **overrides)``: the test destination's config model."""

    def make(base_url: str, **overrides: Any) -> NhsaDestinationConfig:
        return NhsaDestinationConfig.model_validate(nhsa_settings(base_url, **overrides))

    return make


MakeDestination = Callable[..., Awaitable[NhsaDestination]]


@pytest.fixture
async def nhsa(sim: Simulator) -> AsyncIterator[MakeDestination]:
    """``await nhsa(**overrides)``: a started destination pointed at the simulator."""
    made: list[NhsaDestination] = []

    async def make(**overrides: Any) -> NhsaDestination:
        config = NhsaDestinationConfig.model_validate(nhsa_settings(sim.url, **overrides))
        destination = config.build("insurance")
        await destination.start()
        made.append(destination)
        return destination

    yield make
    for destination in made:
        await destination.close()


class Kit:
    """Helpers bound to one simulator (fixtures cannot be imported under importlib mode)."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self._counter = 0

    def envelope(self, infno: str, body: Any, *, key: str | None = None,
                 insuplc: str | None = "440300") -> Envelope:
        self._counter += 1
        headers = {"infno": infno}
        if insuplc:
            headers["insuplc_admdvs"] = insuplc
        raw = body if isinstance(body, bytes) else json.dumps(
            body, ensure_ascii=False, default=str).encode()
        return Envelope(key or f"msg-{self._counter}", raw, headers, "json")

    async def call(self, destination: NhsaDestination, infno: str, body: Any,
                   **kw: Any) -> Any:
        """Send and return the decoded ``output`` (decimals as ``Decimal``)."""
        return self.decode(await destination.send(self.envelope(infno, body, **kw)))

    @staticmethod
    def decode(result: Result) -> Any:
        if result.response is None:
            return None
        return json.loads(result.response, parse_float=Decimal)

    async def state(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as http, \
                http.get(f"{self.sim.url}/control/state") as r:
            assert r.status == 200
            return dict(await r.json())

    async def settlements(self) -> list[dict[str, Any]]:
        async with aiohttp.ClientSession() as http, \
                http.get(f"{self.sim.url}/control/settlements") as r:
            return list(json.loads(await r.read(), parse_float=Decimal))

    async def faults(self, spec: dict[str, Any] | None) -> None:
        async with aiohttp.ClientSession() as http:
            if spec is None:
                async with http.delete(f"{self.sim.url}/control/faults") as r:
                    assert r.status == 200
            else:
                async with http.post(f"{self.sim.url}/control/faults", json=spec) as r:
                    assert r.status == 200, await r.text()


    # -- building blocks of the outpatient flow ------------------------------------------

    OTP_LINES = (  # (catalogue code, hospital code, cnt, pric, sumamt)
        ("001102000010000", "Z001", "1", "10.00", "10.00"),
        ("XJ01CAA040A001010100001", "X0102", "24", "0.55", "13.20"),
        ("XC07ABM070A001020100002", "X0715", "14", "2.50", "35.00"),
        ("XN99ZZZ999Z999999999999", "X9901", "1", "88.00", "88.00"),
    )

    async def visit(self, dest: NhsaDestination, card: str) -> tuple[str, str, str]:
        """1101 by social-security card, then 2201: (psn_no, insutype, mdtrt_id)."""
        info = await self.call(dest, "1101", {"data": {
            "mdtrt_cert_type": "03", "mdtrt_cert_no": card}}, insuplc=None)
        psn_no = info["baseinfo"]["psn_no"]
        insutype = info["insuinfo"][0]["insutype"]
        out = await self.call(dest, "2201", {"data": {
            "psn_no": psn_no, "insutype": insutype, "begntime": "2026-03-15 09:10:00",
            "mdtrt_cert_type": "03", "mdtrt_cert_no": card, "ipt_otp_no": f"MZ{self._counter}",
            "atddr_no": "D0217", "dr_name": "刘建国", "dept_code": "KQNK",
            "dept_name": "口腔内科", "caty": "A12"}})
        return psn_no, insutype, out["data"]["mdtrt_id"]

    def fees(self, psn_no: str, mdtrt_id: str, batch: str,
             lines: tuple[tuple[str, str, str, str, str], ...] | None = None) -> dict[str, Any]:
        return {"feedetail": [
            {"feedetl_sn": f"{batch}-{i}", "mdtrt_id": mdtrt_id, "psn_no": psn_no,
             "chrg_bchno": batch, "rx_circ_flag": "0", "fee_ocur_time": "2026-03-15 09:15:44",
             "med_list_codg": code, "medins_list_codg": hosp, "det_item_fee_sumamt": amt,
             "cnt": cnt, "pric": pric, "bilg_dept_codg": "KQNK", "bilg_dept_name": "口腔内科",
             "bilg_dr_codg": "D0217", "bilg_dr_name": "刘建国", "hosp_appr_flag": "1"}
            for i, (code, hosp, cnt, pric, amt) in enumerate(lines or self.OTP_LINES, start=1)
        ]}

    @staticmethod
    def settle_input(psn_no: str, insutype: str, mdtrt_id: str, batch: str, card: str,
                     medfee: str | Decimal, scope: dict[str, Any] | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {
            "psn_no": psn_no, "mdtrt_cert_type": "03", "mdtrt_cert_no": card, "med_type": "11",
            "medfee_sumamt": str(medfee), "psn_setlway": "01", "mdtrt_id": mdtrt_id,
            "chrg_bchno": batch, "insutype": insutype, "acct_used_flag": "1",
        }
        if scope is not None:
            data.update({k: str(scope[k]) for k in (
                "fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt", "inscp_scp_amt")})
            data["invono"] = ""
        return {"data": data}

    async def presettled(self, dest: NhsaDestination, card: str
                         ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Visit, fees and 2206 for ``card``: (2207 input, 2206 output)."""
        psn_no, insutype, mdtrt_id = await self.visit(dest, card)
        batch = f"B{self._counter}"
        await self.call(dest, "2204", self.fees(psn_no, mdtrt_id, batch))
        pre = await self.call(dest, "2206", self.settle_input(
            psn_no, insutype, mdtrt_id, batch, card, "146.20"))
        return self.settle_input(psn_no, insutype, mdtrt_id, batch, card, "146.20",
                                 pre["setlinfo"]), pre


@pytest.fixture
def kit(sim: Simulator) -> Kit:
    return Kit(sim)
