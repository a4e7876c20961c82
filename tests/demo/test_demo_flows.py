"""`hisbridge demo --count N` on the repository's config.toml (ports remapped), run once as the
README runs it, then each flow checked against what the simulators held: HIS → FHIR and the
CDR, paid batches → e-invoices, insured visits' charges → the engine's 2204 uploads → the
platform's fee lines, settle requests for those fees → 2206 → 2207 → ClaimResponses, WeChat
Pay notifications → PaymentNotices. All over real sockets, in a subprocess."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from engine.hl7 import parse
from tests.conftest import REPO
from tests.demo.demo_config import remapped_config

COUNT = 100


@dataclass
class DemoRun:
    returncode: int
    stdout: str
    stderr: str
    summary: dict[str, Any]
    directory: Path

    def row(self, channel: str, destination: str) -> dict[str, Any]:
        for row in self.summary["destinations"]:
            if (row["channel"], row["destination"]) == (channel, destination):
                return dict(row)
        raise AssertionError(f"no row {channel}/{destination} in {self.summary['destinations']}")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    directory = tmp_path_factory.mktemp("demo")
    config, _ = remapped_config(directory)
    env = {k: v for k, v in os.environ.items() if k != "HISBRIDGE_NHSA_TOKEN"}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run(
        [sys.executable, "-m", "engine.cli", "demo", "--config", str(config),
         "--count", str(COUNT), "--rate", "400"],
        capture_output=True, text=True, timeout=120, cwd=directory, env=env,
    )
    summary_file = directory / "data" / "demo-summary.json"
    assert summary_file.exists(), result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(summary_file.read_text(encoding="utf-8"))
    return DemoRun(result.returncode, result.stdout, result.stderr, summary, directory)


def money(value: Any) -> Decimal:
    return Decimal(str(value))


def his_total(demo: DemoRun) -> int:
    """Everything the HIS sent: the --count stream plus each insured visit's A04 and DFT."""
    return COUNT + 2 * int(demo.summary["insurance"]["fee_batches"])


def test_the_demo_ends_by_itself_and_every_flow_adds_up(demo: DemoRun) -> None:
    assert demo.returncode == 0, demo.stdout[-4000:] + demo.stderr[-3000:]
    assert demo.summary["problems"] == []
    assert "every flow adds up" in demo.stdout
    assert demo.summary["received"]["his-inbound"] == his_total(demo)
    assert sum(demo.summary["his"]["messages"].values()) == his_total(demo)
    assert (demo.summary["duplicates"], demo.summary["refused"], demo.summary["key_reused"],
            demo.summary["mapping_errors"]) == (0, 0, 0, 0)
    for row in demo.summary["destinations"]:
        assert row["delivered"] > 0, row
        assert row["dead_lettered"] == 0, row
        assert row["state"] == "ok", row
    # The FHIR outage in the middle made deliveries to the FHIR server retry.
    assert demo.row("his-inbound", "fhir-charges")["retried"] + \
        demo.row("his-inbound", "fhir")["retried"] > 0


def test_patients_visits_and_charges_reach_the_fhir_server(demo: DemoRun) -> None:
    his, fhir = demo.summary["his"], demo.summary["fhir"]
    adt = sum(n for kind, n in his["messages"].items() if kind.startswith("ADT"))
    dft = his["messages"]["DFT^P03"]
    assert adt + dft == his_total(demo)
    assert fhir["Patient"] == his["patients"] > 0
    assert fhir["Encounter"] == his["visits"] > 0
    assert fhir["ChargeItem"] == his["charge_lines"] > 0
    assert demo.row("his-inbound", "fhir")["delivered"] == adt
    assert demo.row("his-inbound", "fhir-charges")["delivered"] == dft
    assert demo.row("his-inbound", "cdr")["delivered"] == his["cdr_copies"] == his_total(demo)


def test_insured_charges_reach_the_platform_through_the_engine_to_the_cent(
        demo: DemoRun) -> None:
    i = demo.summary["insurance"]
    n = i["requests"]
    # One DFT^P03 per insured visit, uploaded once by the HIS channel's nhsa destination.
    assert i["fee_batches"] == i["fee_uploads"] == n >= 3
    assert demo.row("his-inbound", "nhsa-fees")["delivered"] == n
    # Every line the HIS charged is at the platform once, to the cent; the Claims asked for
    # exactly those fees and the platform settled exactly them.
    assert i["fee_lines_held"] == i["fee_lines"] >= n
    held = money(i["fees_held"])
    assert held == money(i["fees_charged"]) == money(i["requested"]) > 0
    assert held == money(i["medfee_sumamt"])
    # Self-pay batches (no PV1-50) went nowhere near the platform.
    dft = demo.summary["his"]["messages"]["DFT^P03"]
    assert dft > n
    assert f"insurance fees: {n} insured charge batches from the HIS ({i['fee_lines']} " \
        "lines" in demo.stdout
    assert f"→ {n} uploads (2204) by the engine → {i['fee_lines']} fee lines at the platform" \
        in demo.stdout


def test_each_paid_batch_gets_exactly_one_einvoice(demo: DemoRun) -> None:
    e = demo.summary["einvoice"]
    assert e["paid_batches"] > 0
    assert e["issued"] == e["one_per_batch"] == e["paid_batches"]
    assert money(e["invoiced"]) == money(e["paid"]) > 0
    # Only paid batches go to the e-invoice destination (its filter), each sent once.
    assert demo.row("his-inbound", "einvoice")["delivered"] == e["paid_batches"]
    assert f"e-invoices: {e['issued']} issued for {e['paid_batches']} paid" in demo.stdout


def test_settle_requests_come_back_as_claimresponses_to_the_cent(demo: DemoRun) -> None:
    i = demo.summary["insurance"]
    n = i["requests"]
    assert n >= 3 and i["failures"] == []
    assert i["presettlements"] == i["settle_calls"] == n
    assert i["settlements"] == i["claim_responses"] == n
    for channel, destination in (("insurance-settle", "nhsa-presettle"),
                                 ("insurance-presettled", "nhsa-settle"),
                                 ("insurance-settled", "his-claimresponse")):
        assert demo.row(channel, destination)["delivered"] == n
    assert demo.summary["received"]["insurance-settle"] == n
    total = money(i["medfee_sumamt"])
    assert total == money(i["requested"]) == money(i["responses_submitted"]) > 0
    assert money(i["fund_pay_sumamt"]) + money(i["psn_part_amt"]) == total
    assert money(i["acct_pay"]) + money(i["psn_cash_pay"]) == money(i["psn_part_amt"])
    assert money(i["responses_benefit"]) == money(i["fund_pay_sumamt"]) > 0
    assert f"{n} settle requests" in demo.stdout
    assert f"→ {n} pre-settlements (2206) → {n} settlements (2207) → {n} ClaimResponses" \
        in demo.stdout


def test_payment_notifications_reach_the_his_once_each(demo: DemoRun) -> None:
    p = demo.summary["payments"]
    assert p["orders"] >= 3 and p["failures"] == []
    assert p["paid"] == p["orders"]
    assert p["refunds"] == 1
    # One notice per payment and one for the refund, however often the gateway called.
    assert p["payment_notices"] == p["orders"] + 1
    assert demo.summary["received"]["wechatpay-notify"] == p["orders"] + 1
    assert money(p["noticed_paid"]) == money(p["paid_amount"]) > 0
    assert money(p["noticed_refunded"]) == money(p["refunded_amount"]) > 0


def test_secrets_are_made_at_run_time_and_never_printed(demo: DemoRun) -> None:
    data = demo.directory / "data"
    made = [data / "einvoice-sim.key", data / "keys" / "wechatpay_apiv3.key",
            data / "keys" / "wechatpay_merchant.pem", data / "keys" / "wechatpay_platform.pem"]
    for path in made:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for path in (data / "einvoice-sim.key", data / "keys" / "wechatpay_apiv3.key"):
        value = path.read_text(encoding="utf-8").strip()
        assert len(value) >= 32
        assert value not in demo.stdout and value not in demo.stderr
    assert "PRIVATE KEY" not in demo.stdout + demo.stderr


def test_the_demo_logs_no_patient_data(demo: DemoRun) -> None:
    """What the demo prints while its patients flow through every channel (with the FHIR
    outage and the other faults) names no patient: their names, ID and card numbers, phones
    and streets, read back from the HL7 messages the engine stored."""
    values: set[str] = set()
    with sqlite3.connect(demo.directory / "data" / "hisbridge.db") as db:
        bodies = [row[0] for row in db.execute(
            "SELECT body FROM messages WHERE content_type = 'hl7v2'")]
    for body in bodies:
        msg = parse(body)
        values.add(msg.get("PID", 5, 1) + msg.get("PID", 5, 2))
        values.update(msg.get("PID", 3, 1, repetition=n) for n in range(1, 5))
        values.update((msg.get("PID", 13, 1), msg.get("PID", 11, 1)))
    values = {v for v in values if len(v) >= 2}
    assert len(values) > 100
    leaks = [(v, line) for line in (demo.stdout + demo.stderr).splitlines() for v in values
             if v in line]
    assert not leaks, leaks[:5]
