"""The simulator itself: persistent state across a restart, 3201 reconciliation, the
accounting invariants over many random bills, and its control endpoint."""

from __future__ import annotations

import random
from datetime import date
from decimal import Decimal as D

import aiohttp
import pytest

from simulators.insurance import GatewayCheck, serve
from simulators.insurance.catalogue import CATALOGUE, PERSONS, id_number
from simulators.insurance.policy import money, price_line, settle_figures


async def test_state_survives_a_restart(tmp_path, token, nhsa, nhsa_config, kit, sim):
    dest = await nhsa()
    settle, _ = await kit.presettled(dest, "D44039900001")
    out = await kit.call(dest, "2207", settle)
    await sim.close()

    again = await serve(db_path=tmp_path / "sim.db",
                        gateway=GatewayCheck("x-tif", {"hisbridge-test": token}))
    fresh = nhsa_config(again.url).build("c")
    await fresh.start()
    try:
        kit.sim = again
        d = settle["data"]
        found = await kit.call(fresh, "5203", {"data": {"psn_no": d["psn_no"],
                                                        "mdtrt_id": d["mdtrt_id"]}})
        assert found["setlinfo"]["setl_id"] == out["setlinfo"]["setl_id"]
        person = await kit.call(fresh, "1101", {"data": {
            "mdtrt_cert_type": "03", "mdtrt_cert_no": "D44039900001"}}, insuplc=None)
        assert person["insuinfo"][0]["balc"] == D("891.25")
        state = await kit.state()
        assert (state["persons"], state["settlements"], state["valid_settlements"]) == (6, 1, 1)
        # msgids seen before the restart are still refused as repeats.
        assert state["messages"] >= 6
    finally:
        await fresh.close()
        await again.close()


async def test_reconciliation_totals(nhsa, kit):
    dest = await nhsa()
    totals = {"medfee": D("0"), "fund": D("0"), "acct": D("0")}
    setl_ids = []
    for card in ("D44039900001", "D44039900004", "D44039900001"):
        settle, _ = await kit.presettled(dest, card)
        info = (await kit.call(dest, "2207", settle))["setlinfo"]
        setl_ids.append((info, settle["data"]))
    # Cancel the last one: it no longer counts.
    info, d = setl_ids[-1]
    await kit.call(dest, "2208", {"data": {"setl_id": info["setl_id"], "mdtrt_id":
                                           d["mdtrt_id"], "psn_no": d["psn_no"]}})
    for info, _ in setl_ids[:-1]:
        totals["medfee"] += info["medfee_sumamt"]
        totals["fund"] += info["fund_pay_sumamt"]
        totals["acct"] += info["acct_pay"]
    today = date.today().isoformat()

    def body(medfee, fund, acct, count):
        return {"data": {"insutype": "310", "clr_type": "11", "setl_optins": "440300",
                         "stmt_begndate": today, "stmt_enddate": today,
                         "medfee_sumamt": str(medfee), "fund_pay_sumamt": str(fund),
                         "acct_pay": str(acct), "fixmedins_setl_cnt": count}}

    assert totals == {"medfee": D("292.40"), "fund": D("74.90"), "acct": D("121.05")}
    ok = await kit.call(dest, "3201", body(totals["medfee"], totals["fund"], totals["acct"], 2))
    assert ok["stmtinfo"] == {"setl_optins": "440300", "stmt_rslt": "0",
                              "stmt_rslt_dscr": "对账一致 (balanced)"}
    off = await kit.call(dest, "3201", body(totals["medfee"], D("74.91"), totals["acct"], 3))
    assert off["stmtinfo"]["stmt_rslt"] == "1"
    assert "fund_pay_sumamt: hospital 74.91, platform 74.90" in off["stmtinfo"]["stmt_rslt_dscr"]
    assert "fixmedins_setl_cnt: hospital 3, platform 2" in off["stmtinfo"]["stmt_rslt_dscr"]


@pytest.mark.parametrize("seed", range(5))
def test_accounting_invariants_hold_for_random_bills(seed):
    rng = random.Random(seed)
    items = list(CATALOGUE.values())
    for person in PERSONS:
        for kind in ("otp", "ipt"):
            lines = []
            for _ in range(rng.randint(1, 12)):
                item = rng.choice(items)
                cnt = D(rng.randint(1, 40))
                pric = D(rng.randint(1, 300_00)) / 100
                lines.append(price_line(item, person.insutype, cnt, pric, money(cnt * pric)))
            for line in lines:
                assert line.inscp_scp_amt + line.fulamt_ownpay_amt + line.overlmt_amt \
                    + line.preselfpay_amt == line.sumamt
                assert line.inscp_scp_amt >= 0
            f = settle_figures(lines, insutype=person.insutype, psn_type=person.psn_type,
                               kind=kind, balance=person.balc, use_account=rng.random() < .8)
            assert f.medfee_sumamt == f.fund_pay_sumamt + f.psn_part_amt
            assert f.psn_part_amt == f.acct_pay + f.psn_cash_pay
            assert 0 <= f.acct_pay <= person.balc
            assert f.balc == person.balc - f.acct_pay
            assert f.fund_pay_sumamt <= f.inscp_scp_amt
            for value in (f.hifp_pay, f.acct_pay, f.psn_cash_pay):
                assert value == value.quantize(D("0.01"))


def test_seed_identity_numbers_are_fictional_and_well_formed():
    for person in PERSONS:
        assert person.certno.startswith("440399")  # an unassigned area code
        assert id_number(person.certno[6:14], person.certno[14:17]) == person.certno


async def test_control_endpoint_rejects_unknown_faults(sim):
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{sim.url}/control/faults", json={"meteor": {}}) as r:
            assert r.status == 400
            assert "unknown fault 'meteor'" in (await r.json())["error"]
        async with http.post(f"{sim.url}/control/faults",
                             json={"error": {"status": 500, "times": 2}}) as r:
            assert (await r.json())["error"]["times"] == 2
        async with http.get(f"{sim.url}/control/state") as r:
            assert (await r.json())["faults"]["error"]["status"] == 500
