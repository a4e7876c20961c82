"""The standard mappings on the sample messages: valid FHIR, and the values right.

Each resource is re-validated here with fhir.resources (independently of the mapping's own
validation), and identifiers, names, dates, codes and amounts are checked field by field.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

from engine.contracts import Payload
from engine.errors import MappingError
from engine.hl7 import parse
from engine.mapping import CompiledMapping, load_mappings
from tests.conftest import SHARED

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = SHARED / "samples" / "hl7"
ID_CARD = "urn:oid:2.16.156.10011.1.3"


@pytest.fixture(scope="module")
def mappings() -> dict[str, CompiledMapping]:
    loaded = load_mappings(ROOT / "mappings")
    return {k: v for k, v in loaded.items() if isinstance(v, CompiledMapping)}


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def run(
    mapping: CompiledMapping, body: bytes, ctype: str = "hl7v2", **headers: str
) -> list[Payload]:
    return mapping.apply(Payload(body, ctype, headers))


def bundle_resources(payload: Payload) -> list[dict[str, Any]]:
    """The resources of a transaction Bundle, each validated by fhir.resources."""
    assert payload.content_type == "fhir+json"
    doc = json.loads(payload.body, parse_float=Decimal)
    get_fhir_model_class("Bundle").model_validate(doc)
    assert doc["resourceType"] == "Bundle" and doc["type"] == "transaction"
    out = []
    for entry in doc["entry"]:
        res = entry["resource"]
        get_fhir_model_class(res["resourceType"]).model_validate(res)
        assert entry["fullUrl"].startswith("urn:uuid:")
        out.append(entry)
    return out


def ident(resource: dict[str, Any], system: str) -> str:
    return next(i["value"] for i in resource["identifier"] if i.get("system") == system)


# -- ADT → Patient + Encounter ---------------------------------------------------------------


def test_a01_admission_maps_to_patient_and_encounter(mappings: dict[str, CompiledMapping]) -> None:
    [payload] = run(mappings["adt_to_fhir"], sample("adt_a01_inpatient_admission.hl7"))
    patient_entry, encounter_entry = bundle_resources(payload)
    patient = patient_entry["resource"]
    assert patient["resourceType"] == "Patient"
    assert patient_entry["request"] == {
        "method": "PUT",
        "url": "Patient?identifier=urn:hisbridge:hospital:SYFYY/mrn|0009876543",
    }
    mrn = patient["identifier"][0]
    assert mrn["value"] == "0009876543"
    assert mrn["system"] == "urn:hisbridge:hospital:SYFYY/mrn"
    assert mrn["type"]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR",
    }
    assert ident(patient, ID_CARD) == "330106196207120013"
    assert patient["name"] == [
        {"use": "official", "text": "陈国华", "family": "陈", "given": ["国华"]}
    ]
    assert patient["gender"] == "male"
    assert patient["birthDate"] == "1962-07-12"
    assert patient["address"] == [{
        "use": "home", "text": "浙江省杭州市文三路88号", "line": ["文三路88号"],
        "city": "杭州市", "state": "浙江省", "postalCode": "310012", "country": "CHN",
    }]
    assert patient["telecom"] == [{"system": "phone", "value": "13957100002", "use": "home"}]

    encounter = encounter_entry["resource"]
    assert encounter["resourceType"] == "Encounter"
    assert encounter["identifier"][0]["value"] == "Z20260402000045"
    assert encounter_entry["request"]["url"] == (
        "Encounter?identifier=urn:hisbridge:hospital:SYFYY/visit|Z20260402000045"
    )
    assert encounter["status"] == "in-progress"
    assert encounter["class"] == {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP",
    }
    assert encounter["subject"]["reference"] == patient_entry["fullUrl"]
    assert encounter["period"] == {"start": "2026-04-02T14:15:30+08:00"}
    assert encounter["participant"][0]["individual"] == {
        "identifier": {"value": "D1045"}, "display": "黄伟",
    }
    assert encounter["reasonCode"][0]["coding"][0] == {
        "system": "http://hl7.org/fhir/sid/icd-10", "code": "I20.000", "display": "不稳定性心绞痛",
    }
    assert encounter["location"][0]["location"]["display"] == "XNK 0612 03"


def test_a03_discharge_finishes_the_same_encounter(mappings: dict[str, CompiledMapping]) -> None:
    [admit] = run(mappings["adt_to_fhir"], sample("adt_a01_inpatient_admission.hl7"))
    [discharge] = run(mappings["adt_to_fhir"], sample("adt_a03_discharge.hl7"))
    _, enc_admit = bundle_resources(admit)
    _, enc = bundle_resources(discharge)
    # Same conditional-update URL: the discharge updates the admission's Encounter.
    assert enc["request"]["url"] == enc_admit["request"]["url"]
    assert enc["resource"]["status"] == "finished"
    assert enc["resource"]["period"] == {
        "start": "2026-04-02T14:15:30+08:00", "end": "2026-04-09T10:00:00+08:00",
    }


def test_a04_registration_keeps_the_insurance_card(mappings: dict[str, CompiledMapping]) -> None:
    [payload] = run(mappings["adt_to_fhir"], sample("adt_a04_outpatient_registration.hl7"))
    patient_entry, encounter_entry = bundle_resources(payload)
    patient = patient_entry["resource"]
    assert [i["value"] for i in patient["identifier"]] == [
        "0001234567", "370202198503150021", "Y37020000012345",
    ]
    card = patient["identifier"][2]
    assert card["system"] == "urn:hisbridge:insurance-card:QDYB"
    assert card["type"]["coding"][0]["code"] == "HC"
    assert card["assigner"]["display"] == "QDYB"
    # IN1-49 carries the same card: it is not added twice.
    assert sum(1 for i in patient["identifier"] if i["value"] == "Y37020000012345") == 1
    assert patient["name"][0]["text"] == "张晓明"
    assert patient["gender"] == "female"
    assert patient["birthDate"] == "1985-03-15"
    assert patient["address"][0]["text"] == "山东省青岛市香港中路61号"
    assert patient["telecom"][0]["value"] == "13805320001"
    encounter = encounter_entry["resource"]
    assert encounter["class"]["code"] == "AMB"
    assert encounter["identifier"][0]["value"] == "V20260315000123"


def test_a08_update_is_mapped_and_other_events_are_not(
    mappings: dict[str, CompiledMapping],
) -> None:
    body = sample("adt_a04_outpatient_registration.hl7")
    a08 = body.replace(b"ADT^A04^ADT_A01", b"ADT^A08^ADT_A01")
    [payload] = run(mappings["adt_to_fhir"], a08)
    assert bundle_resources(payload)[0]["resource"]["name"][0]["text"] == "张晓明"
    a02 = body.replace(b"ADT^A04^ADT_A01", b"ADT^A02^ADT_A02")
    assert run(mappings["adt_to_fhir"], a02) == []


def test_missing_medical_record_number_names_the_field(
    mappings: dict[str, CompiledMapping],
) -> None:
    body = sample("adt_a01_inpatient_admission.hl7").replace(
        b"0009876543^^^SYFYY^MR~330106196207120013^^^CHN^NNCHN", b""
    )
    with pytest.raises(MappingError) as err:
        run(mappings["adt_to_fhir"], body)
    text = str(err.value)
    assert "adt_to_fhir.toml" in text
    assert "PID-3[*].1 where .5" in text and "identifier[0].value" in text
    assert "required value is missing" in text
    assert "陈" not in text and "330106" not in text  # no patient data in the reason


# -- orders → ServiceRequest -----------------------------------------------------------------


@pytest.mark.parametrize("message_type", [b"ORM^O01^ORM_O01", b"OMG^O19^OMG_O19"])
def test_orders_map_to_one_service_request_per_order(
    mappings: dict[str, CompiledMapping], message_type: bytes,
) -> None:
    body = sample("orm_o01_nursing_orders.hl7").replace(b"ORM^O01^ORM_O01", message_type)
    [payload] = run(mappings["orders_to_servicerequest"], body)
    entries = bundle_resources(payload)
    assert len(entries) == 3
    requests = [e["resource"] for e in entries]
    assert [r["identifier"][0]["value"] for r in requests] == [
        "ORD0402001", "ORD0402002", "ORD0402003",
    ]
    assert [r["code"]["coding"][0]["code"] for r in requests] == ["N00101", "N00305", "N00411"]
    assert [r["code"]["text"] for r in requests] == ["一级护理", "持续吸氧", "心电监护"]
    assert [r["occurrenceTiming"]["code"]["coding"][0]["code"] for r in requests] == [
        "QD", "CONT", "CONT",
    ]
    first = requests[0]
    assert first["status"] == "active" and first["intent"] == "order"
    assert first["priority"] == "routine"
    assert first["requisition"]["value"] == "GRP0402A"
    assert first["subject"]["identifier"] == {
        "value": "0009876543", "system": "urn:hisbridge:hospital:SYFYY/mrn",
    }
    assert first["encounter"]["identifier"]["value"] == "Z20260402000045"
    assert first["authoredOn"] == "2026-04-02T15:30:00+08:00"
    assert first["requester"] == {"identifier": {"value": "D1045"}, "display": "黄伟"}
    assert entries[1]["request"]["url"] == (
        "ServiceRequest?identifier=urn:hisbridge:hospital:SYFYY/placer|ORD0402002"
    )


def test_cancelled_order_revokes_the_request(mappings: dict[str, CompiledMapping]) -> None:
    body = sample("orm_o01_nursing_orders.hl7").replace(b"ORC|NW|ORD0402002", b"ORC|CA|ORD0402002")
    [payload] = run(mappings["orders_to_servicerequest"], body)
    statuses = [e["resource"]["status"] for e in bundle_resources(payload)]
    assert statuses == ["active", "revoked", "active"]


# -- ORU → DiagnosticReport + Observation ----------------------------------------------------


def test_lab_result_maps_to_report_and_observations(
    mappings: dict[str, CompiledMapping],
) -> None:
    [payload] = run(mappings["oru_to_diagnosticreport"], sample("oru_r01_lab_result.hl7"))
    report_entry, *obs_entries = bundle_resources(payload)
    report = report_entry["resource"]
    assert report["resourceType"] == "DiagnosticReport"
    assert report["status"] == "final"
    assert report["identifier"][0]["value"] == "R0511009"
    assert report["code"]["coding"][0]["code"] == "GLU"
    assert report["effectiveDateTime"] == "2026-05-11T08:05:00+08:00"
    assert report["issued"] == "2026-05-11T10:30:00+08:00"
    assert report["subject"]["identifier"]["value"] == "0007654321"
    assert report["result"] == [{"reference": e["fullUrl"]} for e in obs_entries]
    glucose, hba1c = (e["resource"] for e in obs_entries)
    assert glucose["code"]["coding"][0] == {
        "system": "urn:hisbridge:cs:local", "code": "GLU", "display": "葡萄糖",
    }
    assert glucose["valueQuantity"] == {"value": Decimal("7.8"), "unit": "mmol/L"}
    assert glucose["referenceRange"][0] == {
        "text": "3.9-6.1",
        "low": {"value": Decimal("3.9"), "unit": "mmol/L"},
        "high": {"value": Decimal("6.1"), "unit": "mmol/L"},
    }
    assert glucose["interpretation"][0]["coding"][0]["code"] == "H"
    assert glucose["status"] == "final"
    assert glucose["effectiveDateTime"] == "2026-05-11T10:25:00+08:00"
    assert hba1c["valueQuantity"] == {"value": Decimal("6.9"), "unit": "%"}
    assert hba1c["referenceRange"][0]["low"]["value"] == Decimal("4.0")


def test_each_report_references_only_its_own_observations(
    mappings: dict[str, CompiledMapping],
) -> None:
    body = sample("oru_r01_lab_result.hl7").rstrip(b"\r") + (
        "\rOBR|2|LAB0511010^LIS|R0511010^LIS|K^钾^LOCAL|||20260511080500|||||||||||||||"
        "20260511103000|||F\rOBX|1|NM|K^钾^LOCAL||4.1|mmol/L|3.5-5.3|N|||F\r"
    ).encode()
    [payload] = run(mappings["oru_to_diagnosticreport"], body)
    entries = bundle_resources(payload)
    kinds = [e["resource"]["resourceType"] for e in entries]
    assert kinds == ["DiagnosticReport", "DiagnosticReport", "Observation", "Observation",
                     "Observation"]
    first, second = entries[0]["resource"], entries[1]["resource"]
    urls = [e["fullUrl"] for e in entries[2:]]
    assert [r["reference"] for r in first["result"]] == urls[:2]
    assert [r["reference"] for r in second["result"]] == urls[2:]


# -- DFT → ChargeItem and the insurance 2204 node --------------------------------------------


def test_charges_map_to_charge_items_with_the_national_code(
    mappings: dict[str, CompiledMapping],
) -> None:
    [payload] = run(mappings["dft_to_chargeitem"], sample("dft_p03_outpatient_charges.hl7"))
    items = [e["resource"] for e in bundle_resources(payload)]
    assert [i["identifier"][0]["value"] for i in items] == [
        "F20260315000123001", "F20260315000123002", "F20260315000123003",
    ]
    codings = [i["code"]["coding"] for i in items]
    assert [c[0]["code"] for c in codings] == ["310513001", "M0035", "X0101"]
    assert [c[1]["code"] for c in codings] == [
        "003105130010000", "C14010203200100000118", "XP01ABJ023A001010104463",
    ]
    assert {c[1]["system"] for c in codings} == {"urn:hisbridge:cs:nhsa-med-list"}
    assert [i["quantity"]["value"] for i in items] == [Decimal("1"), Decimal("1"), Decimal("2")]
    # The extended amounts, to the cent (the sample HIS swaps FT1-11 and FT1-12).
    assert [i["priceOverride"] for i in items] == [
        {"value": Decimal("180.00"), "currency": "CNY"},
        {"value": Decimal("12.50"), "currency": "CNY"},
        {"value": Decimal("7.20"), "currency": "CNY"},
    ]
    first = items[0]
    assert first["status"] == "billable"
    assert first["subject"]["identifier"]["value"] == "0001234567"
    assert first["context"]["identifier"]["value"] == "V20260315000123"
    assert first["occurrenceDateTime"] == "2026-03-15T09:10:00+08:00"
    assert first["performer"][0]["actor"]["display"] == "刘建国"
    assert first["costCenter"]["display"] == "口腔内科"


def test_national_code_is_looked_up_when_the_his_does_not_send_it(
    mappings: dict[str, CompiledMapping],
) -> None:
    body = sample("dft_p03_outpatient_charges.hl7").replace(
        "X0101^甲硝唑片^LOCAL^XP01ABJ023A001010104463^甲硝唑片^NHSA".encode(),
        "X0101^甲硝唑片^LOCAL".encode(),
    )
    [payload] = run(mappings["dft_to_chargeitem"], body)
    third = bundle_resources(payload)[2]["resource"]
    assert third["code"]["coding"][1]["code"] == "XP01ABJ023A001010104463"
    assert third["code"]["coding"][1]["display"] == "甲硝唑片"
    unknown = body.replace(b"X0101^", b"Z9999^")
    with pytest.raises(MappingError, match=r"code 'Z9999' is not in lookup table charge_codes"):
        run(mappings["dft_to_chargeitem"], unknown)


def test_2204_feedetail_has_exact_amounts_with_the_right_scale(
    mappings: dict[str, CompiledMapping],
) -> None:
    [payload] = run(
        mappings["dft_to_nhsa_2204"], sample("dft_p03_outpatient_charges.hl7"),
        mdtrt_id="MD370200000001", psn_no="37000000000000000001",
    )
    assert payload.content_type == "json"
    text = payload.body.decode()
    # The scale is in the JSON text itself: n16,2 / n16,4 / n16,6.
    assert '"det_item_fee_sumamt":7.20,"cnt":2.0000,"pric":3.600000' in text
    assert '"det_item_fee_sumamt":180.00,"cnt":1.0000,"pric":180.000000' in text
    details = json.loads(text, parse_float=Decimal)["feedetail"]
    assert len(details) == 3
    third = details[2]
    assert third == {
        "feedetl_sn": "F20260315000123003",
        "mdtrt_id": "MD370200000001",
        "psn_no": "37000000000000000001",
        "chrg_bchno": "HIS20260315091544007",
        "rx_circ_flag": "0",
        "fee_ocur_time": "2026-03-15 09:10:00",
        "med_list_codg": "XP01ABJ023A001010104463",
        "medins_list_codg": "X0101",
        "det_item_fee_sumamt": Decimal("7.20"),
        "cnt": Decimal("2.0000"),
        "pric": Decimal("3.600000"),
        "bilg_dept_codg": "KQNK",
        "bilg_dept_name": "口腔内科",
        "bilg_dr_codg": "D0217",
        "bilg_dr_name": "刘建国",
    }
    total = sum(d["det_item_fee_sumamt"] for d in details)
    assert total == Decimal("199.70")
    for d in details:
        assert d["cnt"] * d["pric"] == d["det_item_fee_sumamt"]


def test_2204_without_the_registration_id_names_the_header(
    mappings: dict[str, CompiledMapping],
) -> None:
    with pytest.raises(MappingError, match=r"@header:mdtrt_id.*required value is missing"):
        run(mappings["dft_to_nhsa_2204"], sample("dft_p03_outpatient_charges.hl7"),
            psn_no="37000000000000000001")


def test_a_standard_hl7_his_gets_the_same_amounts(mappings: dict[str, CompiledMapping]) -> None:
    """A HIS following HL7 v2.5 (FT1-11 extended, FT1-12 unit) maps to the same values."""
    body = sample("dft_p03_outpatient_charges.hl7").replace(
        b"|2|3.60^CNY|7.20^CNY|", b"|2|7.20^CNY|3.60^CNY|"
    )
    [payload] = run(mappings["dft_to_nhsa_2204"], body, mdtrt_id="M1", psn_no="P1")
    third = json.loads(payload.body, parse_float=Decimal)["feedetail"][2]
    assert (third["det_item_fee_sumamt"], third["pric"]) == (Decimal("7.20"), Decimal("3.600000"))


# -- FHIR Patient → ADT^A08, and the round trip ----------------------------------------------


def test_round_trip_adt_patient_adt_keeps_identity(mappings: dict[str, CompiledMapping]) -> None:
    original = parse(sample("adt_a04_outpatient_registration.hl7"))
    [bundle] = run(mappings["adt_to_fhir"], sample("adt_a04_outpatient_registration.hl7"))
    patient = bundle_resources(bundle)[0]["resource"]
    [a08] = run(mappings["patient_to_adt_a08"], json.dumps(patient).encode(), "fhir+json")
    assert a08.content_type == "hl7v2"
    back = parse(a08.body)
    assert back.message_type == "ADT^A08"
    assert back.get("MSH", 9, 3) == "ADT_A01"

    def ids(msg: Any) -> list[tuple[str, str, str]]:
        out = []
        for n in range(1, 5):
            value = msg.get("PID", 3, 1, repetition=n)
            if value:
                out.append((value, msg.get("PID", 3, 4, repetition=n),
                            msg.get("PID", 3, 5, repetition=n)))
        return out

    assert ids(back) == ids(original) == [
        ("0001234567", "QDKQYY", "MR"), ("370202198503150021", "CHN", "NNCHN"),
        ("Y37020000012345", "QDYB", "HC"),
    ]
    for field, comp in ((5, 1), (5, 2), (7, 1), (8, 1)):
        assert back.get("PID", field, comp) == original.get("PID", field, comp)
    assert back.get("PID", 13, 12) == original.get("PID", 13, 12) == "13805320001"
    assert back.get("PID", 11, 3) == "青岛市"
    assert back.get("EVN", 1) == "A08"
    assert len(back.control_id) == 20


def test_patient_from_the_fhir_corpus_maps_to_a08(mappings: dict[str, CompiledMapping]) -> None:
    example = SHARED / "corpora" / "fhir-r4" / "Patient" / "patient-example-chinese.json"
    body = example.read_bytes()
    [a08] = run(mappings["patient_to_adt_a08"], body, "fhir+json")
    msg = parse(a08.body)
    assert msg.get("PID", 3, 1) == "3112219680806371X"
    assert msg.get("PID", 5, 1) == "张无忌"  # text only: the whole name in XPN.1
    assert msg.get("PID", 7) == "19741225"
    assert msg.get("PID", 8) == "M"
    assert msg.get("PID", 14, 12) == "18337177888"  # a work phone goes to PID-14
