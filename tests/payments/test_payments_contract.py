"""What every payment gateway must do, run against each gateway's simulator."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.payments.gateway_rig import RIGS, Harness, Rig


@pytest.fixture(params=sorted(RIGS))
async def rig(request: pytest.FixtureRequest, harness: Harness) -> AsyncIterator[Rig[Any, Any]]:
    async with RIGS[request.param](harness) as wired:
        yield wired


async def test_notification_replayed_15_times_changes_the_order_once(rig: Rig[Any, Any],
                                                                      eventually: Any) -> None:
    await rig.control.faults(duplicate_notifications=15)
    await rig.service.create_order("RP20240001", 700, "治疗费", rig.kind, rig.extra)
    await rig.control.pay("RP20240001")

    async def all_delivered() -> bool:
        records = await rig.control.notifications()
        return len(records) == 1 and records[0]["delivered"] == 15

    await eventually(all_delivered, within=15)
    moves = await rig.store.transitions(rig.gateway, "RP20240001")
    assert [(t.from_state, t.to_state) for t in moves] == [("created", "paid")]
    assert len(await rig.store.events(rig.gateway, "RP20240001")) == 1
    assert rig.channel.calls == 1
    assert (await rig.control.stats())["charges"] == 1
