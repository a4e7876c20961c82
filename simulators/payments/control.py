"""A client for the simulators' control endpoints (demos, benchmarks and tests use it)."""

from __future__ import annotations

from typing import Any

import aiohttp


class SimControl:
    """Faults, the payer's "pay" action, statistics and crafted callbacks, over HTTP."""

    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        self.base = base_url.rstrip("/")
        self.session = session

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        async with self.session.request(method, self.base + path, json=body,
                                        timeout=aiohttp.ClientTimeout(total=10)) as resp:
            data = await resp.json()
            if resp.status >= 400:
                raise RuntimeError(f"{path}: HTTP {resp.status}: {data.get('error')}")
            return data

    async def faults(self, **faults: Any) -> Any:
        return await self.call("POST", "/_sim/faults", faults)

    async def pay(self, out_trade_no: str, **extra: Any) -> Any:
        return await self.call("POST", "/_sim/pay", {"out_trade_no": out_trade_no, **extra})

    async def stats(self) -> Any:
        return await self.call("GET", "/_sim/stats")

    async def notify(self, **fields: Any) -> Any:
        """Have the simulator send one crafted callback; returns the merchant's answer."""
        return await self.call("POST", "/_sim/notify", fields)

    async def notifications(self) -> Any:
        return await self.call("GET", "/_sim/notifications")

    async def release(self) -> Any:
        return await self.call("POST", "/_sim/release")

    async def keys(self) -> Any:
        return await self.call("GET", "/_sim/keys")

    async def bill_totals(self, day: str | None = None) -> Any:
        return await self.call("GET", "/_sim/bill-totals" + (f"?date={day}" if day else ""))
