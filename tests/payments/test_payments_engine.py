"""A payment callback channel inside a running engine: WeChat Pay simulator → our
``payment_notify`` source → engine channel → HTTP destination (the HIS), all real HTTP."""

from __future__ import annotations

import secrets
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from adapters.payments.model import OrderState
from adapters.payments.service import PaymentService
from adapters.payments.signing import new_private_key, private_pem
from adapters.payments.source import PaymentNotifyConfig
from adapters.payments.store import PaymentStore
from adapters.wechatpay.client import WechatPayClient
from engine.config import parse_config
from engine.runtime import Engine
from simulators.payments.control import SimControl
from simulators.payments.wechatpay import WechatPaySimulator


@pytest.fixture
async def his() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A stand-in HIS endpoint that records what the engine delivers."""
    received: list[dict[str, Any]] = []

    async def take(request: web.Request) -> web.Response:
        received.append(orjson.loads(await request.read()))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/his/payments", take)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/his/payments", received
    await runner.cleanup()


async def test_payment_events_flow_through_the_engine_once(
        tmp_path: Path, his: tuple[str, list[dict[str, Any]]], http: aiohttp.ClientSession,
        eventually: Any) -> None:
    his_url, received = his
    merchant = new_private_key()
    apiv3 = secrets.token_hex(16)
    sim = WechatPaySimulator(merchant_public_key=merchant.public_key(),
                             apiv3_key=apiv3.encode(), time_factor=0.001)
    await sim.start()
    files = sim.write_keys(tmp_path / "keys")
    merchant_file = tmp_path / "keys" / "merchant.pem"
    merchant_file.write_text(private_pem(merchant))
    db_path = tmp_path / "hisbridge.db"
    config = parse_config(textwrap.dedent(f"""
        [store]
        path = "{db_path}"
        synchronous = "NORMAL"
        [admin]
        enabled = false
        [retry]
        initial_delay = 0.05
        jitter = 0.0

        [[channels]]
        name = "wechatpay-notify"
        [channels.source]
        type = "payment_notify"
        gateway = "wechatpay"
        listen = "127.0.0.1:0"
        path = "/notify/wechatpay"
        [channels.source.wechatpay]
        mchid = "{sim.mchid}"
        appid = "{sim.appid}"
        merchant_serial = "MERCHANT-SERIAL-1"
        merchant_private_key = "file:{merchant_file}"
        apiv3_key = "file:{files['apiv3_key']}"
        platform_certificates = ["file:{files['platform_certificate']}"]
        base_url = "{sim.url}"
        [[channels.destinations]]
        type = "http"
        name = "his"
        url = "{his_url}"
    """), file="payments.toml", base_dir=tmp_path)
    engine = Engine(config)
    await engine.start()
    client = None
    try:
        source = config.channels[0].source
        assert isinstance(source, PaymentNotifyConfig)
        assert source.wechatpay is not None
        port = engine.source_port("wechatpay-notify")
        client = WechatPayClient(source.wechatpay.model_copy(update={
            "notify_url": f"http://127.0.0.1:{port}/notify/wechatpay"}))
        await client.start()
        service = PaymentService(client, PaymentStore(engine.db))
        control = SimControl(sim.url, http)
        await control.faults(duplicate_notifications=5)

        await service.create_order("WXE0000001", 2590, "门诊缴费", "native")
        await control.pay("WXE0000001")

        async def delivered() -> bool:
            return len(received) >= 1

        await eventually(delivered)
        await sim.notifier.idle()
        order = await service.store.order("wechatpay", "WXE0000001")
        assert order is not None
        assert order.state is OrderState.PAID
        await service.refund("WXE0000001", "WXE0000001R1", 590)

        async def two() -> bool:
            return len(received) >= 2

        await eventually(two)
        await sim.notifier.idle()
        assert [(e["event"], e["out_trade_no"], e.get("refund_fen")) for e in received] == [
            ("payment", "WXE0000001", None), ("refund", "WXE0000001", 590)]
        assert received[0]["amount"] == "25.90"
    finally:
        if client is not None:
            await client.close()
        await engine.stop(grace=1.0)
        await sim.stop()
