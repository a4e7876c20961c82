"""The insurance mappings with the adapter and the simulator, the way the channels use them:
DFT^P03 → 2204 fee upload; a FHIR Claim → 2206; the 2206 answer → 2207; the 2207 answer →
a FHIR ClaimResponse for the HIS. Amounts are checked to the cent at the end."""

from __future__ import annotations

import json
from decimal import Decimal as D
from pathlib import Path

import pytest

from engine.contracts import Payload
from engine.errors import MappingError
from engine.mapping import load_mappings
from queues.contract import Envelope
from tests.conftest import SHARED

REPO = Path(__file__).resolve().parents[2]
SAMPLE = SHARED / "samples" / "hl7" / "dft_p03_outpatient_charges.hl7"
CLAIM = REPO / "mappings" / "fixtures" / "insurance_claim_to_2206" / \
    "outpatient_settle_request.in.json"


@pytest.fixture(scope="module")
def mappings():
    return load_mappings(REPO / "mappings")


def as_envelope(payload: Payload, key: str) -> Envelope:
    content = "json" if payload.content_type.endswith("json") else payload.content_type
    return Envelope(key, payload.body, dict(payload.headers), content)


async def test_his_charges_to_claimresponse(nhsa, kit, mappings):
    dest = await nhsa()
    psn_no, _, mdtrt_id = await kit.visit(dest, "D44039900001")
    card, batch = "D44039900001", "B20260315001"

    # DFT^P03 (3 charges) → 2204 through the standard mapping, then the adapter.
    [fees] = mappings["dft_to_nhsa_2204"].apply(Payload(
        SAMPLE.read_bytes(), "hl7v2", {"mdtrt_id": mdtrt_id, "psn_no": psn_no,
                                       "chrg_bchno": batch}))
    fees_env = as_envelope(fees, "dft-1")
    fees_env = Envelope(fees_env.message_id, fees_env.body,
                        {**fees_env.headers, "infno": "2204", "insuplc_admdvs": "440300"}, "json")
    priced = kit.decode(await dest.send(fees_env))["result"]
    assert [r["det_item_fee_sumamt"] for r in priced] == [D("180.00"), D("12.50"), D("7.20")]
    assert priced[2]["overlmt_amt"] == D("3.20")  # 2 × (3.60 - 2.00 ceiling)

    # The settle request: a FHIR Claim → 2206.
    claim = json.loads(CLAIM.read_text(encoding="utf-8"))
    claim["total"]["value"] = 199.70
    headers = {"mdtrt_id": mdtrt_id, "chrg_bchno": batch, "mdtrt_cert_no": card,
               "infno": "2206", "insuplc_admdvs": "440300"}
    [pre_in] = mappings["insurance_claim_to_2206"].apply(
        Payload(json.dumps(claim).encode(), "fhir+json", headers))
    pre_result = await dest.send(as_envelope(pre_in, "claim-1"))

    # The 2206 answer → 2207 (headers carried from the request), then settle.
    [settle_in] = mappings["insurance_2206_to_2207"].apply(Payload(
        pre_result.response or b"", "json", {**headers, "infno": "2207"}))
    settle_result = await dest.send(as_envelope(settle_in, "claim-1-2207"))
    info = kit.decode(settle_result)["setlinfo"]
    # in scope: 162.00 + 11.25 + 4.00 = 177.25; × 70 % = 124.075 → 124.08
    assert (info["medfee_sumamt"], info["inscp_scp_amt"], info["fund_pay_sumamt"],
            info["psn_part_amt"], info["acct_pay"]) == (
        D("199.70"), D("177.25"), D("124.08"), D("75.62"), D("75.62"))

    # The 2207 answer → a FHIR ClaimResponse (validated by the mapping).
    [response] = mappings["insurance_settlement_to_claimresponse"].apply(Payload(
        settle_result.response or b"", "json", {"claim_reference": "Claim/settle-1"}))
    resource = json.loads(response.body, parse_float=D)
    assert resource["resourceType"] == "ClaimResponse"
    assert resource["request"]["reference"] == "Claim/settle-1"
    totals = {t["category"]["coding"][0]["code"]: t["amount"]["value"]
              for t in resource["total"]}
    assert totals["submitted"] == D("199.70")
    assert totals["benefit"] == resource["payment"]["amount"]["value"] == D("124.08")
    assert totals["copay"] == totals["acct_pay"] + totals["psn_cash_pay"] == D("75.62")
    assert (await kit.state())["settlements"] == 1


def test_2207_cannot_be_built_without_the_batch(mappings):
    answer = (REPO / "mappings" / "fixtures" / "insurance_2206_to_2207" /
              "outpatient_presettlement.in.json").read_bytes()
    with pytest.raises(MappingError, match=r"from '@header:chrg_bchno'.*required value"):
        mappings["insurance_2206_to_2207"].apply(Payload(answer, "json",
                                                         {"mdtrt_cert_no": "D44039900001"}))
