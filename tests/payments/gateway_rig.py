"""Each payment gateway wired end to end for the tests, over real sockets.

A rig is the gateway's simulator (with its own keys, notifications compressed by
``time_factor=0.001``), our callback source on the test database, our client told to have
callbacks sent there, and the ``PaymentService`` over both, built on the test's ``Harness``
(the ``harness`` fixture). What differs per gateway is only how its keys and account
settings are made (``wechatpay_rig`` ...); ``wire`` does the rest. ``RIGS`` names them all
for the tests every gateway must pass (``test_payments_contract.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import aiohttp

from adapters.alipay.client import AlipayClient
from adapters.alipay.settings import AlipaySettings
from adapters.mobilepay import crypto as sm
from adapters.mobilepay.client import MobilePayClient
from adapters.mobilepay.settings import MobilePaySettings
from adapters.payments.model import OrderState, PaymentGateway, RefundState
from adapters.payments.notify import PaymentNotifySource
from adapters.payments.service import PaymentService
from adapters.payments.signing import (
    certificate_pem,
    issue_certificate,
    new_private_key,
    private_pem,
)
from adapters.payments.source import PaymentNotifyConfig
from adapters.payments.store import PaymentStore
from adapters.unionpay.client import UnionPayClient
from adapters.unionpay.settings import UnionPaySettings
from adapters.wechatpay.client import WechatPayClient
from adapters.wechatpay.settings import WechatPaySettings
from engine.database import Database
from engine.settings import Model, Secret
from simulators.payments.alipay import AlipaySimulator
from simulators.payments.control import SimControl
from simulators.payments.mobilepay import MobilePaySimulator
from simulators.payments.unionpay import UnionPaySimulator
from simulators.payments.wechatpay import WechatPaySimulator

WECHATPAY_MCHID, WECHATPAY_APPID = "1900000001", "wxd678efh567hg6787"
ALIPAY_APP_ID, ALIPAY_SELLER = "2021004100000001", "2088621000000001"
UNIONPAY_MER_ID = "777290058110048"
MOBILEPAY_APP_ID = "1GJ3K5L7M9N1P3Q5R7S9"
MOBILEPAY_AUTH = {"psn_no": "44000019900101000X", "pay_auth_no": "AUTH2024050112345678"}


class RunningSimulator(Protocol):
    @property
    def url(self) -> str: ...

    async def stop(self) -> None: ...


Sim = TypeVar("Sim", bound=RunningSimulator)
Client = TypeVar("Client", bound=PaymentGateway)


@dataclass
class Rig(Generic[Sim, Client]):
    """One gateway, end to end. ``kind`` and ``extra`` make a plain order of this gateway."""

    gateway: str
    sim: Sim
    control: SimControl
    source: PaymentNotifySource
    client: Client
    service: PaymentService
    store: PaymentStore
    channel: Any
    kind: str
    extra: dict[str, str] = field(default_factory=dict)

    async def state(self, no: str) -> OrderState | None:
        order = await self.store.order(self.gateway, no)
        return None if order is None else order.state

    async def is_(self, no: str, state: OrderState) -> bool:
        return await self.state(no) is state

    async def refund_is(self, no: str, state: RefundState) -> bool:
        refund = await self.store.refund(self.gateway, no)
        return refund is not None and refund.state is state


WechatPayRig = Rig[WechatPaySimulator, WechatPayClient]
AlipayRig = Rig[AlipaySimulator, AlipayClient]
UnionPayRig = Rig[UnionPaySimulator, UnionPayClient]
MobilePayRig = Rig[MobilePaySimulator, MobilePayClient]


@dataclass
class Harness:
    """What every rig is built on: the test's folder, database, HTTP session and channel."""

    tmp_path: Path
    db: Database
    http: aiohttp.ClientSession
    channel: Any

    def key_file(self, name: str, text: str) -> Secret:
        """Our side's own key, written where the settings reference it."""
        path = self.tmp_path / "keys" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return Secret(f"file:{path}")


@contextlib.asynccontextmanager
async def wire(harness: Harness, gateway: str, sim: Sim, settings: Model,
               client: Callable[[Any], Client], *, kind: str, extra: dict[str, str] | None = None,
               notify_field: str = "notify_url") -> AsyncIterator[Rig[Sim, Client]]:
    """Start our source for ``gateway`` and a client sending callbacks to it; on leaving,
    close the client, stop the source, then stop the (already started) simulator."""
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(sim.stop)
        source = PaymentNotifyConfig(type="payment_notify", gateway=gateway,
                                     listen="127.0.0.1:0", path=f"/notify/{gateway}",
                                     **{gateway: settings}).build("payments")
        source.use_database(harness.db)
        await source.start(harness.channel)
        stack.push_async_callback(source.stop)
        connected = client(settings.model_copy(update={notify_field: source.url}))
        await connected.start()
        stack.push_async_callback(connected.close)
        store = PaymentStore(harness.db)
        yield Rig(gateway, sim, SimControl(sim.url, harness.http), source, connected,
                  PaymentService(connected, store), store, harness.channel, kind, extra or {})


@contextlib.asynccontextmanager
async def wechatpay_rig(harness: Harness) -> AsyncIterator[WechatPayRig]:
    merchant = new_private_key()
    sim = WechatPaySimulator(mchid=WECHATPAY_MCHID, appid=WECHATPAY_APPID,
                             merchant_public_key=merchant.public_key(), time_factor=0.001)
    await sim.start()
    files = sim.write_keys(harness.tmp_path / "keys")
    settings = WechatPaySettings(
        mchid=WECHATPAY_MCHID, appid=WECHATPAY_APPID,
        merchant_serial="3775B6A45ACD588826D15E583A95F5DD",
        merchant_private_key=harness.key_file("merchant.pem", private_pem(merchant)),
        apiv3_key=Secret(f"file:{files['apiv3_key']}"),
        platform_certificates=[Secret(f"file:{files['platform_certificate']}")],
        base_url=sim.url, timeout=2.0)
    async with wire(harness, "wechatpay", sim, settings, WechatPayClient, kind="native") as rig:
        yield rig


@contextlib.asynccontextmanager
async def alipay_rig(harness: Harness) -> AsyncIterator[AlipayRig]:
    app_key = new_private_key()
    sim = AlipaySimulator(app_id=ALIPAY_APP_ID, seller_id=ALIPAY_SELLER,
                          app_public_key=app_key.public_key(), time_factor=0.001)
    await sim.start()
    files = sim.write_keys(harness.tmp_path / "keys")
    settings = AlipaySettings(
        app_id=ALIPAY_APP_ID, seller_id=ALIPAY_SELLER,
        app_private_key=harness.key_file("app.pem", private_pem(app_key)),
        alipay_public_key=Secret(f"file:{files['alipay_public_key']}"),
        gateway_url=sim.gateway_url, timeout=2.0)
    async with wire(harness, "alipay", sim, settings, AlipayClient, kind="precreate") as rig:
        yield rig


@contextlib.asynccontextmanager
async def unionpay_rig(harness: Harness) -> AsyncIterator[UnionPayRig]:
    key = new_private_key()
    cert = issue_certificate(key, "hospital merchant signing")
    sim = UnionPaySimulator(mer_id=UNIONPAY_MER_ID, merchant_certificate=cert,
                            time_factor=0.001)
    await sim.start()
    files = sim.write_keys(harness.tmp_path / "keys")
    settings = UnionPaySettings(
        mer_id=UNIONPAY_MER_ID,
        merchant_private_key=harness.key_file("merchant.pem", private_pem(key)),
        merchant_certificate=harness.key_file("merchant_cert.pem", certificate_pem(cert)),
        root_certificates=[Secret(f"file:{files['root_certificate']}")],
        gateway_url=sim.url, timeout=2.0)
    async with wire(harness, "unionpay", sim, settings, UnionPayClient, kind="qrcode",
                    notify_field="back_url") as rig:
        yield rig


@contextlib.asynccontextmanager
async def mobilepay_rig(harness: Harness) -> AsyncIterator[MobilePayRig]:
    private, public = sm.new_keypair()
    sim = MobilePaySimulator(app_id=MOBILEPAY_APP_ID, hospital_public_key="04" + public,
                             time_factor=0.001)
    await sim.start()
    files = sim.write_keys(harness.tmp_path / "keys")
    settings = MobilePaySettings(
        app_id=MOBILEPAY_APP_ID, app_secret=Secret(f"file:{files['app_secret']}"),
        private_key=harness.key_file("hospital.hex", private),
        platform_public_key=Secret(f"file:{files['platform_public_key']}"),
        org_code="H44010600001", base_url=sim.url, timeout=3.0)
    async with wire(harness, "mobilepay", sim, settings, MobilePayClient, kind="mobile",
                    extra=MOBILEPAY_AUTH) as rig:
        yield rig


RigMaker = Callable[[Harness], contextlib.AbstractAsyncContextManager[Rig[Any, Any]]]

RIGS: dict[str, RigMaker] = {"wechatpay": wechatpay_rig, "alipay": alipay_rig,
                             "unionpay": unionpay_rig, "mobilepay": mobilepay_rig}
"""Every gateway's rig, for the tests every gateway must pass."""
