"""The nhsa destination inside the engine, configured as proposed for config.toml: a settle
request (FHIR Claim) posted to an HTTP channel is mapped to 2206 and pre-settled at the
simulator; a Claim that cannot be mapped is dead-lettered, not sent."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp

from engine.runtime import Engine
from tests.conftest import engine_config, wait_for

REPO = Path(__file__).resolve().parents[2]
CLAIM = REPO / "mappings" / "fixtures" / "insurance_claim_to_2206" / \
    "outpatient_settle_request.in.json"


async def test_settle_request_channel(tmp_path, engines, sim, kit, nhsa):
    dest = await nhsa()
    psn_no, _, mdtrt_id = await kit.visit(dest, "D44039900001")
    await kit.call(dest, "2204", kit.fees(psn_no, mdtrt_id, "B20260315001"))
    before = (await kit.state())["messages"]

    body = f"""
        [[channels]]
        name = "insurance-settle"

        [channels.source]
        type = "http"
        listen = "127.0.0.1:0"
        path = "/insurance/claims"
        content_type = "fhir+json"

        [[channels.destinations]]
        type = "nhsa"
        name = "nhsa-presettle"
        mapping = "insurance_claim_to_2206"
        infno = "2206"
        insuplc_admdvs = "440300"
        url = "{sim.url}"
        fixmedins_code = "H44030500001"
        fixmedins_name = "深圳市示例人民医院"
        mdtrtarea_admvs = "440300"
        opter = "0001"
        opter_name = "收费员甲"
        auth = {{ scheme = "x-tif", paasid = "hisbridge-test", token = "${{NHSA_TEST_TOKEN}}" }}
    """
    engine = Engine(engine_config(tmp_path, body))
    await engine.start()
    engines.append(engine)
    url = f"http://127.0.0.1:{engine.source_port('insurance-settle')}/insurance/claims"

    claim = json.loads(CLAIM.read_text(encoding="utf-8"))
    for identifier in claim["identifier"]:
        if identifier["system"] == "urn:hisbridge:nhsa:mdtrt_id":
            identifier["value"] = mdtrt_id
    broken = {**claim, "patient": {"display": "no identifier"}}
    async with aiohttp.ClientSession() as http:
        for document in (claim, broken):
            async with http.post(url, json=document,
                                 headers={"Content-Type": "application/fhir+json"}) as r:
                assert r.status in (200, 202), await r.text()

    await wait_for(lambda: engine.metrics.sent.total() == 1
                   and engine.metrics.dead_lettered.total() == 1)
    state = await kit.state()
    # 9001 + 2206 reached the simulator; the broken Claim did not.
    assert state["messages"] == before + 2
    assert state["settlements"] == 0  # a pre-settlement moves no money
