"""Fixtures for the e-invoice tests: a real simulator on an ephemeral port, a key made at
runtime, settings that reference it by file, and a valid settlement-shaped issue request."""

from __future__ import annotations

import copy
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from adapters.einvoice import EinvoiceClient
from adapters.einvoice.config import EinvoicePlatformSettings
from simulators.einvoice import EinvoiceSimulator

APPID = "HOSP0001"

# The sample DFT^P03 visit: 180.00 + 12.50 + 2 × 3.60 = 199.70, of which the insurance
# fund pays 120.00, the personal account 30.00 and the patient 49.70 by WeChat Pay.
ISSUE: dict[str, Any] = {
    "busNo": "SETL20260315000123",
    "busType": "02",
    "payer": "测试患者",
    "busDateTime": "20260315091544000",
    "placeCode": "MZ01",
    "payee": "收费员01",
    "author": "收费员01",
    "totalAmt": "199.70",
    "contact": {"payerType": "1", "tel": "13800000000"},
    "visit": {"visitNo": "V20260315000123", "consultationDate": "20260315",
              "category": "口腔内科"},
    "money": {"fundPay": "120.00", "accountPay": "30.00", "cashPay": "49.70",
              "ownPay": "12.50"},
    "payChannelDetail": [
        {"payChannelCode": "YBTCJJ", "payChannelValue": "120.00"},
        {"payChannelCode": "YBK", "payChannelValue": "30.00"},
        {"payChannelCode": "WX", "payChannelValue": "49.70"},
    ],
    "chargeDetail": [
        {"sortNo": 1, "chargeCode": "05", "chargeName": "治疗费", "amt": "180.00"},
        {"sortNo": 2, "chargeCode": "09", "chargeName": "材料费", "amt": "19.70",
         "selfAmt": "12.50"},
    ],
    "listDetail": [
        {"chargeCode": "05", "chargeName": "治疗费", "code": "310513001",
         "name": "根管治疗", "std": "180.00", "number": "1", "amt": "180.00"},
        {"chargeCode": "09", "chargeName": "材料费", "code": "M0035",
         "name": "一次性口腔检查盘", "std": "12.50", "number": "1", "amt": "12.50"},
        {"chargeCode": "09", "chargeName": "材料费", "code": "X0101",
         "name": "牙片", "std": "3.60", "number": "2", "amt": "7.20"},
    ],
}


def issue_body(bus_no: str = "SETL20260315000123", **changes: Any) -> dict[str, Any]:
    """A fresh copy of the valid request, with ``busNo`` and top-level fields replaced."""
    body = copy.deepcopy(ISSUE)
    body["busNo"] = bus_no
    body.update(changes)
    return body


@pytest.fixture
def key_file(tmp_path: Path) -> tuple[str, Path]:
    key = secrets.token_hex(16)
    path = tmp_path / "einvoice.key"
    path.write_text(key + "\n", encoding="utf-8")
    return key, path


SimulatorFactory = Callable[..., Awaitable[EinvoiceSimulator]]


@pytest.fixture
async def make_simulator(
    tmp_path: Path, key_file: tuple[str, Path]
) -> AsyncIterator[SimulatorFactory]:
    started: list[EinvoiceSimulator] = []

    async def make(**options: Any) -> EinvoiceSimulator:
        sim = EinvoiceSimulator(tmp_path / f"einvoice-{len(started)}.db",
                                accounts={APPID: key_file[0]}, **options)
        await sim.start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        await sim.stop()


@pytest.fixture
async def simulator(make_simulator: SimulatorFactory) -> EinvoiceSimulator:
    return await make_simulator()


@pytest.fixture
def make_settings(
    simulator: EinvoiceSimulator, key_file: tuple[str, Path]
) -> Callable[..., EinvoicePlatformSettings]:
    def make(**overrides: Any) -> EinvoicePlatformSettings:
        values: dict[str, Any] = {"url": simulator.url, "appid": APPID,
                                  "key": f"file:{key_file[1]}", "timeout": 2.0}
        values.update(overrides)
        return EinvoicePlatformSettings.model_validate(values)

    return make


@pytest.fixture
async def client(
    make_settings: Callable[..., EinvoicePlatformSettings],
) -> AsyncIterator[EinvoiceClient]:
    c = EinvoiceClient(make_settings())
    await c.start()
    yield c
    await c.close()


class Control:
    """The simulator's control endpoint, over HTTP like any operator would use it."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session, self.url = session, url

    async def faults(self, *rules: dict[str, Any]) -> None:
        async with self.session.post(f"{self.url}/_control/faults",
                                     json={"faults": list(rules)}) as resp:
            assert resp.status == 200, await resp.text()

    async def stats(self) -> dict[str, Any]:
        async with self.session.get(f"{self.url}/_control/stats") as resp:
            result: dict[str, Any] = await resp.json()
            return result

    async def bills(self, bus_no: str) -> dict[str, Any]:
        async with self.session.get(f"{self.url}/_control/bills",
                                    params={"busNo": bus_no}) as resp:
            result: dict[str, Any] = await resp.json()
            return result


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


@pytest.fixture
def control(http: aiohttp.ClientSession, simulator: EinvoiceSimulator) -> Control:
    return Control(http, simulator.url)


@pytest.fixture
def make_issue() -> Callable[..., dict[str, Any]]:
    """``make_issue(bus_no, **top_level_changes)``: a valid issue request body."""
    return issue_body
