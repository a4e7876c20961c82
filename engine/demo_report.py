"""What ``hisbridge demo`` reports: what the HIS sent, what went where, what the simulated
peers hold, and whether every flow adds up (counts and amounts to the cent).

``HisTally`` counts the HIS traffic as it leaves; ``Report.gather`` reads the engine's
metrics and asks each simulator (the FHIR server's store, the e-invoice platform's
``/_control/bills``, the insurance platform's fee lines and ``/control/settlements``, the
payment store) and lists every mismatch in ``problems``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp

from adapters.nhsa import NhsaDestinationConfig
from adapters.payments.model import OrderState, RefundState
from engine.config import Config
from engine.errors import RejectedInput
from engine.hl7 import parse
from engine.runtime import Engine
from simulators.front_desk import InsuranceDesk, PaymentDesk
from simulators.peers import Peers

CENT = Decimal("0.01")


# -- what the HIS sent ---------------------------------------------------------------------


@dataclass
class HisTally:
    """Counts the HIS traffic as it goes out, to compare with what the peers hold."""

    types: Counter[str] = field(default_factory=Counter)
    patients: set[str] = field(default_factory=set)
    visits: set[str] = field(default_factory=set)
    charge_lines: set[str] = field(default_factory=set)
    paid_batches: dict[str, Decimal] = field(default_factory=dict)  # busNo → amount
    # Charge batches of insured visits (PV1-50 set): batch → amount, and their lines.
    insured_batches: dict[str, Decimal] = field(default_factory=dict)
    insured_lines: set[str] = field(default_factory=set)

    def watch(self, messages: Iterable[str], stop: asyncio.Event) -> Iterator[str]:
        for text in messages:
            if stop.is_set():
                return
            self.add(text)
            yield text

    def add(self, text: str) -> None:
        try:
            msg = parse(text.encode("utf-8"))
        except RejectedInput:
            return
        kind = msg.message_type.replace(msg.component_sep, "^")
        self.types[kind] += 1
        if kind.startswith("ADT"):
            self.patients.add(msg.get("PID", 3, 1))
            if msg.get("PV1", 19):
                self.visits.add(msg.get("PV1", 19))
        elif kind.startswith("DFT"):
            insured = bool(msg.get("PV1", 50))
            charged = Decimal("0.00")
            for n in range(1, len(msg.segment_indexes("FT1")) + 1):
                if msg.get("FT1", 6, occurrence=n) != "PY":
                    self.charge_lines.add(msg.get("FT1", 2, occurrence=n))
                    if insured:
                        self.insured_lines.add(msg.get("FT1", 2, occurrence=n))
                        charged += Decimal(msg.get("FT1", 11, occurrence=n))
            if insured:
                batch = msg.get("FT1", 3, occurrence=1) or msg.control_id
                self.insured_batches[batch] = charged
            if msg.get("PV1", 49):
                batch = msg.get("FT1", 3, occurrence=1) or msg.control_id
                self.paid_batches[f"DFT-{batch}"] = Decimal(msg.get("PV1", 49))


# -- the summary ---------------------------------------------------------------------------


def _yuan(value: Decimal) -> str:
    return f"¥{value.quantize(CENT):,}"


@dataclass
class Report:
    """What went where, what the simulators hold, and whether it all adds up."""

    rows: list[dict[str, Any]]
    received: dict[str, int]
    totals: dict[str, int]
    his: dict[str, Any]
    fhir: dict[str, int]
    einvoice: dict[str, Any]
    insurance: dict[str, Any]
    payments: dict[str, Any]
    problems: list[str]

    @classmethod
    async def gather(cls, config: Config, engine: Engine, peers: Peers, tally: HisTally,
                     insurance: InsuranceDesk | None, payments: PaymentDesk | None) -> Report:
        m = engine.metrics
        rows = []
        for rt in engine.channels.values():
            for d in rt.destinations:
                labels = {"channel": d.channel, "destination": d.name}
                rows.append({"channel": d.channel, "destination": d.name,
                             "delivered": int(m.sent.get(**labels)),
                             "retried": int(m.retried.get(**labels)),
                             "dead_lettered": int(m.dead_lettered.get(**labels)),
                             "state": d.health.state})
        received = {name: int(m.received.get(channel=name)) for name in engine.channels}
        totals = {"received": int(m.received.total()), "duplicates": int(m.duplicates.total()),
                  "refused": int(m.refused.total()), "key_reused": int(m.key_reused.total()),
                  "filtered": int(m.filtered.total()),
                  "mapping_errors": int(m.mapping_errors.total())}
        report = cls(rows, received, totals, {}, {}, {}, {}, {}, [])
        report._his(tally, peers)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            await report._einvoice(tally, peers, http)
            await report._insurance(config, insurance, peers, tally, http)
        await report._payments(payments, peers)
        for row in rows:
            if row["dead_lettered"]:
                report.problems.append(f"{row['channel']}/{row['destination']}: "
                                       f"{row['dead_lettered']} dead-lettered")
        return report

    def _resources(self, peers: Peers, rtype: str) -> list[dict[str, Any]]:
        return [r for fhir in peers.fhir.values() for r in fhir.resources.get(rtype, {}).values()]

    def _his(self, tally: HisTally, peers: Peers) -> None:
        stored: Counter[str] = Counter()
        for fhir in peers.fhir.values():
            stored.update({rtype: len(found) for rtype, found in fhir.resources.items()})
        self.fhir = dict(sorted(stored.items()))
        self.his = {"messages": dict(sorted(tally.types.items())),
                    "patients": len(tally.patients), "visits": len(tally.visits),
                    "charge_lines": len(tally.charge_lines),
                    "cdr_copies": sum(len(r.received) for r in peers.mllp.values())}
        if not peers.fhir:
            return
        for rtype, expected in (("Patient", len(tally.patients)),
                                ("Encounter", len(tally.visits)),
                                ("ChargeItem", len(tally.charge_lines))):
            if self.fhir.get(rtype, 0) != expected:
                self.problems.append(f"FHIR {rtype}: {self.fhir.get(rtype, 0)} stored, "
                                     f"{expected} sent by the HIS")

    async def _einvoice(self, tally: HisTally, peers: Peers,
                        http: aiohttp.ClientSession) -> None:
        if not peers.einvoice:
            return
        issued, amount, missing = 0, Decimal("0.00"), []
        platforms = [p.url for p in peers.einvoice.values()]
        for bus_no, paid in tally.paid_batches.items():
            bills = []
            for url in platforms:
                async with http.get(f"{url}/_control/bills", params={"busNo": bus_no}) as r:
                    bills += (await r.json())["bills"]
            if len(bills) != 1 or Decimal(str(bills[0]["totalAmt"])) != paid:
                missing.append(bus_no)
                continue
            issued += 1
            amount += paid
        counted = 0
        for url in platforms:
            async with http.get(f"{url}/_control/stats") as r:
                counted += int((await r.json())["bills"])
        paid_total = sum(tally.paid_batches.values(), Decimal("0.00"))
        self.einvoice = {"paid_batches": len(tally.paid_batches), "paid": paid_total,
                         "issued": counted, "one_per_batch": issued, "invoiced": amount}
        if missing or counted != len(tally.paid_batches):
            self.problems.append(f"e-invoices: {counted} issued for {len(tally.paid_batches)} "
                                 f"paid batches ({len(missing)} without exactly one)")

    def _delivered_by_nhsa(self, config: Config, infno: str) -> int:
        """Deliveries of the nhsa destinations that send ``infno``."""
        names = {(c.name, d.name) for c in config.channels for d in c.destinations
                 if isinstance(d, NhsaDestinationConfig) and d.infno == infno}
        return sum(r["delivered"] for r in self.rows
                   if (r["channel"], r["destination"]) in names)

    def _fees(self, config: Config, peers: Peers, tally: HisTally) -> list[tuple[bool, str]]:
        """The insured visits' charges: sent by the HIS, uploaded (2204) by the engine, held
        by the platform; every line once, to the cent."""
        held = peers.insurance_fees()
        sent = sum(tally.insured_batches.values(), Decimal("0.00"))
        uploaded = sum((f.amount for f in held), Decimal("0.00"))
        self.insurance.update({
            "fee_batches": len(tally.insured_batches), "fee_lines": len(tally.insured_lines),
            "fees_charged": sent, "fee_uploads": self._delivered_by_nhsa(config, "2204"),
            "fee_lines_held": len(held), "fees_held": uploaded})
        return [
            (self.insurance["fee_uploads"] == len(tally.insured_batches),
             f"{len(tally.insured_batches)} insured charge batches, "
             f"{self.insurance['fee_uploads']} fee uploads (2204)"),
            (len(held) == len(tally.insured_lines) and uploaded == sent,
             f"the platform holds {len(held)} fee lines ({uploaded}); the HIS charged "
             f"{len(tally.insured_lines)} ({sent})"),
        ]

    async def _insurance(self, config: Config, desk: InsuranceDesk | None, peers: Peers,
                         tally: HisTally, http: aiohttp.ClientSession) -> None:
        if desk is None:
            return
        settled: list[dict[str, Any]] = []
        for sim in peers.insurance.values():
            async with http.get(f"{sim.url}/control/settlements") as r:
                settled += [s for s in await r.json() if s.get("vali_flag") != "0"]
        sums = {k: sum((Decimal(str(s[k])) for s in settled), Decimal("0.00"))
                for k in ("medfee_sumamt", "fund_pay_sumamt", "psn_part_amt", "acct_pay",
                          "psn_cash_pay")}
        responses = self._resources(peers, "ClaimResponse")
        answered = {k: Decimal("0.00") for k in ("submitted", "benefit", "copay")}
        for res in responses:
            for total in res.get("total", []):
                code = total["category"]["coding"][0]["code"]
                if code in answered:
                    answered[code] += Decimal(str(total["amount"]["value"]))
        requested = sum((r.total for r in desk.requests if r.accepted), Decimal("0.00"))
        checks = self._fees(config, peers, tally)
        self.insurance |= {
            "requests": len(desk.requests), "requested": requested,
            "failures": list(desk.failures),
            "presettlements": self._delivered_by_nhsa(config, "2206"),
            "settle_calls": self._delivered_by_nhsa(config, "2207"),
            "settlements": len(settled), **sums,
            "claim_responses": len(responses), "responses_submitted": answered["submitted"],
            "responses_benefit": answered["benefit"], "responses_copay": answered["copay"]}
        checks += [
            (self.insurance["fees_held"] == requested,
             f"fees at the platform {self.insurance['fees_held']} vs requested {requested}"),
            (len(settled) == len(desk.requests) == len(responses)
             == self.insurance["presettlements"] == self.insurance["settle_calls"],
             f"{len(desk.requests)} settle requests, {self.insurance['presettlements']} "
             f"pre-settlements, {len(settled)} settlements, {len(responses)} ClaimResponses"),
            (sums["medfee_sumamt"] == requested == answered["submitted"],
             f"settled {sums['medfee_sumamt']} vs requested {requested} vs answered "
             f"{answered['submitted']}"),
            (sums["fund_pay_sumamt"] + sums["psn_part_amt"] == sums["medfee_sumamt"],
             "funds + patients' part != settled total"),
            (sums["acct_pay"] + sums["psn_cash_pay"] == sums["psn_part_amt"],
             "account + cash != patients' part"),
            (answered["benefit"] == sums["fund_pay_sumamt"], "ClaimResponse benefit != funds"),
        ]
        self.problems += [f"insurance: {text}" for ok, text in checks if not ok]
        self.problems += [f"insurance desk: {f}" for f in desk.failures]

    async def _payments(self, desk: PaymentDesk | None, peers: Peers) -> None:
        if desk is None:
            return
        orders = await desk.order_states()
        paid = [o for o in orders if o.state is not OrderState.CREATED]
        paid_fen = sum(o.amount_fen for o in paid)
        refunds = [await desk.store.refund("wechatpay", no) for _, no, _ in desk.refunds]
        refunded_fen = sum(r.amount_fen for r in refunds
                           if r is not None and r.state is RefundState.SUCCESS)
        notices = self._resources(peers, "PaymentNotice")
        noticed = {"paid": Decimal("0.00"), "refunded": Decimal("0.00")}
        for res in notices:
            code = res.get("paymentStatus", {}).get("coding", [{}])[0].get("code", "")
            if code in noticed:
                noticed[code] += Decimal(str(res["amount"]["value"]))
        self.payments = {
            "orders": len(desk.orders), "paid": len(paid), "paid_amount": Decimal(paid_fen) / 100,
            "refunds": len(refunds), "refunded_amount": Decimal(refunded_fen) / 100,
            "payment_notices": len(notices), "noticed_paid": noticed["paid"],
            "noticed_refunded": noticed["refunded"], "failures": list(desk.failures)}
        expected = len(desk.orders) + len(desk.refunds)
        if len(paid) != len(desk.orders) or len(notices) != expected:
            self.problems.append(f"payments: {len(desk.orders)} orders, {len(paid)} paid, "
                                 f"{len(notices)} PaymentNotices (expected {expected})")
        if noticed["paid"] != Decimal(paid_fen) / 100 or \
                noticed["refunded"] != Decimal(refunded_fen) / 100:
            self.problems.append("payments: PaymentNotice amounts differ from the orders")
        self.problems += [f"payment desk: {f}" for f in desk.failures]

    def data(self) -> dict[str, Any]:
        totals = {("received_total" if k == "received" else k): v
                  for k, v in self.totals.items()}
        return {"destinations": self.rows, "received": self.received, **totals,
                "his": self.his, "fhir": self.fhir, "einvoice": self.einvoice,
                "insurance": self.insurance, "payments": self.payments,
                "problems": self.problems}

    def text(self) -> str:
        head = ("channel/destination", "delivered", "retried", "dead-lettered", "state")
        table = [head] + [(f"{r['channel']}/{r['destination']}", str(r["delivered"]),
                           str(r["retried"]), str(r["dead_lettered"]), r["state"])
                          for r in self.rows]
        widths = [max(len(r[i]) for r in table) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                 for r in table]
        lines.insert(1, "  ".join("-" * w for w in widths))
        t = self.totals
        lines += ["", "received: " + ", ".join(f"{k} {v}" for k, v in self.received.items()),
                  f"duplicates {t['duplicates']}, refused {t['refused']}, reused control ids "
                  f"{t['key_reused']}, filtered {t['filtered']}, mapping errors "
                  f"{t['mapping_errors']}", ""]
        his = self.his
        lines.append("HIS sent: " + ", ".join(f"{k} {v}" for k, v in his["messages"].items()))
        if self.fhir:
            lines.append("FHIR server holds: " + ", ".join(
                f"{k} {v}" for k, v in self.fhir.items()) + f" (HIS: {his['patients']} "
                f"patients, {his['visits']} visits, {his['charge_lines']} charge lines)")
        if his["cdr_copies"]:
            lines.append(f"clinical data repository: {his['cdr_copies']} message(s) "
                         "acknowledged")
        e = self.einvoice
        if e:
            lines.append(f"e-invoices: {e['issued']} issued for {e['paid_batches']} paid charge "
                         f"batches ({_yuan(e['invoiced'])} invoiced of {_yuan(e['paid'])} paid)")
        i = self.insurance
        if i:
            lines.append(f"insurance fees: {i['fee_batches']} insured charge batches from the "
                         f"HIS ({i['fee_lines']} lines, {_yuan(i['fees_charged'])}) → "
                         f"{i['fee_uploads']} uploads (2204) by the engine → "
                         f"{i['fee_lines_held']} fee lines at the platform "
                         f"({_yuan(i['fees_held'])})")
            lines.append(f"insurance: {i['requests']} settle requests ({_yuan(i['requested'])})"
                         f" → {i['presettlements']} pre-settlements (2206) → "
                         f"{i['settlements']} settlements (2207) → {i['claim_responses']} "
                         "ClaimResponses at the HIS")
            lines.append(f"  settled {_yuan(i['medfee_sumamt'])} = funds "
                         f"{_yuan(i['fund_pay_sumamt'])} + patients "
                         f"{_yuan(i['psn_part_amt'])} (account {_yuan(i['acct_pay'])} + cash "
                         f"{_yuan(i['psn_cash_pay'])}); ClaimResponses: submitted "
                         f"{_yuan(i['responses_submitted'])}, benefit "
                         f"{_yuan(i['responses_benefit'])}")
        p = self.payments
        if p:
            lines.append(f"payments (WeChat Pay): {p['paid']}/{p['orders']} orders paid "
                         f"({_yuan(p['paid_amount'])}), {p['refunds']} refund(s) "
                         f"({_yuan(p['refunded_amount'])}) → {p['payment_notices']} "
                         f"PaymentNotices at the HIS ({_yuan(p['noticed_paid'])} paid, "
                         f"{_yuan(p['noticed_refunded'])} refunded)")
        lines.append("")
        if self.problems:
            lines.append("PROBLEMS:")
            lines += [f"  - {p}" for p in self.problems]
        else:
            lines.append("every flow adds up: nothing lost, nothing doubled, amounts to the cent")
        return "\n".join(lines)
