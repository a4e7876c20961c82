"""A settlement whose answer is lost is resolved by asking the platform, never by sending it
again: exactly one settlement ends up in the simulator, and the right result is returned."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from adapters.nhsa.ledger import SqliteLedger
from engine.errors import InDoubtError, TransientError

FAST = {"timeouts": {"2207": 0.5, "2208": 0.5}}


@pytest.mark.parametrize("mode", ["hang", "drop"])
async def test_commit_then_timeout_ends_with_one_settlement(nhsa, kit, mode):
    dest = await nhsa(**FAST)
    settle, pre = await kit.presettled(dest, "D44039900001")
    await kit.faults({"commit_then": {"mode": mode, "seconds": 5, "times": 1,
                                      "infnos": ["2207"]}})

    result = await dest.send(kit.envelope("2207", settle, key="settle-1"))

    assert "took effect" in result.detail and "answer lost" in result.detail
    info = kit.decode(result)["setlinfo"]
    assert info["fund_pay_sumamt"] == D("37.45")
    assert info["acct_pay"] == D("108.75")
    assert info["psn_cash_pay"] == pre["setlinfo"]["psn_cash_pay"]
    state = await kit.state()
    assert (state["settlements"], state["valid_settlements"]) == (1, 1)
    rows = await kit.settlements()
    assert [r["setl_id"] for r in rows] == [info["setl_id"]]
    assert len(dest.ledger) == 0  # resolved: nothing left in doubt

    # A redelivery of the same message (the engine retrying) changes nothing either.
    await kit.faults(None)
    with pytest.raises(Exception, match="no unsettled fees"):
        await dest.send(kit.envelope("2207", settle, key="settle-1"))
    assert (await kit.state())["settlements"] == 1


async def test_lost_before_processing_is_reversed_then_retried_once(nhsa, kit):
    dest = await nhsa(**FAST)
    settle, _ = await kit.presettled(dest, "D44039900001")
    await kit.faults({"drop": {"times": 1, "infnos": ["2207"]}})

    with pytest.raises(TransientError, match="did not take effect") as info:
        await dest.send(kit.envelope("2207", settle, key="settle-2"))
    assert not isinstance(info.value, InDoubtError)
    assert "reversed by 2601" in str(info.value)
    assert (await kit.state())["settlements"] == 0

    result = await dest.send(kit.envelope("2207", settle, key="settle-2"))
    assert kit.decode(result)["setlinfo"]["fund_pay_sumamt"] == D("37.45")
    assert (await kit.state())["settlements"] == 1


async def test_platform_unreachable_keeps_the_call_in_doubt_until_resolved(nhsa, kit):
    dest = await nhsa(**FAST)
    settle, _ = await kit.presettled(dest, "D44039900001")
    await kit.faults({"commit_then": {"mode": "hang", "seconds": 5, "times": 1,
                                      "infnos": ["2207"]},
                      "error": {"status": 503, "infnos": ["5203", "2601"]}})

    with pytest.raises(InDoubtError, match="outcome unknown"):
        await dest.send(kit.envelope("2207", settle, key="settle-3"))
    assert (await kit.state())["settlements"] == 1  # it did commit
    # Still unreachable: the retry does not send a second 2207.
    with pytest.raises(InDoubtError, match="still in doubt"):
        await dest.send(kit.envelope("2207", settle, key="settle-3"))
    assert (await kit.state())["settlements"] == 1

    await kit.faults(None)
    result = await dest.send(kit.envelope("2207", settle, key="settle-3"))
    assert "earlier attempt" in result.detail
    assert kit.decode(result)["setlinfo"]["psn_part_amt"] == D("108.75")
    assert (await kit.state())["settlements"] == 1


async def test_ledger_survives_a_restart(nhsa, kit, tmp_path):
    ledger = str(tmp_path / "ledger.db")
    dest = await nhsa(in_doubt={"ledger": ledger}, **FAST)
    settle, _ = await kit.presettled(dest, "D44039900001")
    await kit.faults({"commit_then": {"mode": "drop", "times": 1, "infnos": ["2207"]},
                      "error": {"status": 503, "infnos": ["5203"]}})
    with pytest.raises(InDoubtError):
        await dest.send(kit.envelope("2207", settle, key="settle-4"))
    await dest.close()
    pending = await SqliteLedger(ledger).get("settle-4")
    assert pending is not None and pending.infno == "2207" and len(pending.msgid) == 30

    await kit.faults(None)
    fresh = await nhsa(in_doubt={"ledger": ledger}, **FAST)
    result = await fresh.send(kit.envelope("2207", settle, key="settle-4"))
    assert "took effect" in result.detail
    assert (await kit.state())["settlements"] == 1
    assert await SqliteLedger(ledger).get("settle-4") is None


async def test_cancellation_in_doubt_is_resolved_by_query(nhsa, kit):
    dest = await nhsa(**FAST)
    settle, _ = await kit.presettled(dest, "D44039900001")
    out = kit.decode(await dest.send(kit.envelope("2207", settle)))
    d = settle["data"]
    await kit.faults({"commit_then": {"mode": "hang", "seconds": 5, "times": 1,
                                      "infnos": ["2208"]}})
    result = await dest.send(kit.envelope("2208", {"data": {
        "setl_id": out["setlinfo"]["setl_id"], "mdtrt_id": d["mdtrt_id"],
        "psn_no": d["psn_no"]}}))
    assert "took effect" in result.detail
    assert kit.decode(result)["setlinfo"]["vali_flag"] == "0"
    state = await kit.state()
    assert (state["cancellations"], state["valid_settlements"]) == (1, 0)


async def test_malformed_settlement_answer_is_resolved_not_dead_lettered(nhsa, kit):
    dest = await nhsa(**FAST)
    settle, _ = await kit.presettled(dest, "D44039900001")
    await kit.faults({"malformed": {"kind": "non_numeric_amount", "times": 1,
                                    "infnos": ["2207"]}})
    result = await dest.send(kit.envelope("2207", settle))
    assert "invalid output" in result.detail  # why it was resolved
    assert kit.decode(result)["setlinfo"]["fund_pay_sumamt"] == D("37.45")
    assert (await kit.state())["settlements"] == 1


async def test_refused_settlement_is_not_left_in_doubt(nhsa, kit):
    dest = await nhsa(**FAST)
    settle, _ = await kit.presettled(dest, "D44039900001")
    settle["data"]["medfee_sumamt"] = "146.21"
    with pytest.raises(Exception, match="does not match the uploaded fees"):
        await dest.send(kit.envelope("2207", settle, key="settle-5"))
    assert await dest.ledger.get("settle-5") is None
