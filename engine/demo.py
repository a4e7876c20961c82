"""``hisbridge demo``: the repository's deployment against simulated peers, end to end.

It starts a simulator for every peer the config points at (``simulators.peers``), then the
engine, then plays the hospital:

- the HIS streams ADT and DFT^P03 traffic into the first MLLP source (patients and visits go
  to the FHIR server, charge lines become ChargeItems, paid batches get an e-invoice, and the
  clinical data repository receives a copy of everything);
- the front desk settles insured outpatients (``simulators.front_desk.InsuranceDesk``: 9001,
  1101, 2201, 2204 directly, then a FHIR Claim to the engine, which runs 2206 → 2207 → a
  ClaimResponse to the HIS);
- patients pay by WeChat Pay (``PaymentDesk``) and one payment is partly refunded; the
  gateway's notifications flow through the ``payment_notify`` channel to the HIS as
  PaymentNotices.

A short FHIR outage in the middle makes retries visible. At the end it prints what went where
per channel and destination, what each simulator holds, and whether the amounts add up; the
same figures are written to ``<store dir>/demo-summary.json``. It exits 1 if a flow does not
add up. Without ``--count`` or ``--duration`` it runs until Ctrl-C, with the admin API up.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp

from adapters.fhir import FhirDestinationConfig
from adapters.http import HttpSourceConfig
from adapters.mllp import MllpSourceConfig
from adapters.nhsa import NhsaDestinationConfig
from adapters.payments.model import OrderState, RefundState
from adapters.payments.source import PaymentNotifyConfig
from adapters.payments.store import PaymentStore
from engine.config import ChannelConfig, Config
from engine.errors import RejectedInput
from engine.hl7 import parse
from engine.runtime import Engine
from simulators.front_desk import InsuranceDesk, PaymentDesk
from simulators.his import HisSender, traffic
from simulators.peers import Peers, start_peers

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
            for n in range(1, len(msg.segment_indexes("FT1")) + 1):
                if msg.get("FT1", 6, occurrence=n) != "PY":
                    self.charge_lines.add(msg.get("FT1", 2, occurrence=n))
            if msg.get("PV1", 49):
                batch = msg.get("FT1", 3, occurrence=1) or msg.control_id
                self.paid_batches[f"DFT-{batch}"] = Decimal(msg.get("PV1", 49))


# -- progress ------------------------------------------------------------------------------


class Progress:
    def __init__(self, engine: Engine, out: Any = sys.stdout) -> None:
        self.engine = engine
        self.out = out
        self.sent = 0
        self.acked: dict[str, int] = {}
        self.tty = out.isatty()

    def on_ack(self, cid: str, code: str, latency: float) -> None:
        self.sent += 1
        self.acked[code] = self.acked.get(code, 0) + 1

    def line(self) -> str:
        m = self.engine.metrics
        return (
            f"HIS sent {self.sent:>6}  ACK {self.acked.get('AA', 0):>6}  "
            f"received {int(m.received.total()):>6}  delivered {int(m.sent.total()):>6}  "
            f"retries {int(m.retried.total()):>4}  dead letters {int(m.dead_lettered.total()):>3}"
        )

    async def run(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            self.show()

    def show(self, final: bool = False) -> None:
        if self.tty:
            self.out.write("\r" + self.line() + ("\n" if final else ""))
        elif final or int(time.monotonic() * 2) % 10 == 0:
            self.out.write(self.line() + "\n")
        self.out.flush()


async def _drained(engine: Engine, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        depths = [await engine.backend.depth(rt.worker.queue) for rt in engine.channels.values()]
        depths += [await engine.backend.depth(d.queue) for rt in engine.channels.values()
                   for d in rt.destinations]
        if not any(depths):
            return True
        await asyncio.sleep(0.2)
    return False


# -- the flows -----------------------------------------------------------------------------


@dataclass
class Plan:
    """How much of each flow to run: a number (``--count``) or until ``stop``."""

    settlements: int | None
    payments: int | None
    spread: float  # seconds over which the counted flows are spread
    stop: asyncio.Event


def _channel(config: Config, kind: type, dest_kind: type | None = None) -> ChannelConfig | None:
    for ch in config.channels:
        if ch.enabled and isinstance(ch.source, kind) and (
                dest_kind is None or any(isinstance(d, dest_kind) for d in ch.destinations)):
            return ch
    return None


def _local(listen: str) -> str:
    host = listen.rpartition(":")[0]
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host  # noqa: S104


def _claims_fhir(config: Config, channel: ChannelConfig) -> str | None:
    """The FHIR server the settlement chain answers to (following ``response_to``)."""
    by_name = {c.name: c for c in config.channels}
    seen: set[str] = set()
    todo = [channel]
    while todo:
        ch = todo.pop(0)
        seen.add(ch.name)
        for dest in ch.destinations:
            if isinstance(dest, FhirDestinationConfig):
                return dest.base_url
            if dest.response_to and dest.response_to not in seen:
                todo.append(by_name[dest.response_to])
    return None


async def _paced(count: int | None, plan: Plan, step: Any, failures: list[str],
                 interval: float) -> None:
    """Run ``step`` ``count`` times spread over the plan, or every ``interval`` s until stop."""
    pause = plan.spread / count if count else interval
    for n in itertools.count():
        if (count is not None and n >= count) or (count is None and plan.stop.is_set()):
            return
        try:
            await step()
        except Exception as exc:  # one failed visit or payment does not end the demo
            failures.append(f"{type(exc).__name__}: {str(exc)[:200]}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(plan.stop.wait(), pause)


async def run_insurance(desk: InsuranceDesk, plan: Plan) -> None:
    await _paced(plan.settlements, plan, desk.settle_request, desk.failures, 2.0)


async def run_payments(desk: PaymentDesk, plan: Plan, peers: Peers) -> None:
    await _paced(plan.payments, plan, desk.pay, desk.failures, 3.0)
    if desk.orders:
        try:
            await desk.refund_part(desk.orders[0])
        except Exception as exc:
            desk.failures.append(f"refund: {type(exc).__name__}: {str(exc)[:200]}")
    # Wait for the gateway's notifications (and the refund's) to reach the engine.
    deadline = time.monotonic() + 15.0
    while time.monotonic() < deadline:
        orders = await desk.order_states()
        refunds = [await desk.store.refund("wechatpay", no) for _, no, _ in desk.refunds]
        if all(o.state is not OrderState.CREATED for o in orders) and all(
                r is not None and not r.state.pending for r in refunds):
            break
        await asyncio.sleep(0.2)
    for sim in peers.wechatpay.values():
        with contextlib.suppress(TimeoutError):
            await sim.notifier.idle(5.0)


async def _outage(peers: Peers, after: float) -> None:
    await asyncio.sleep(after)
    if await peers.fault(3.0):
        print("\n-- FHIR server answers 503 for 3 s: deliveries retry with backoff --")


# -- the run -------------------------------------------------------------------------------


async def run_demo(
    config: Config, *, count: int | None, duration: float | None, rate: float, faults: bool,
) -> int:
    his_channel = _channel(config, MllpSourceConfig)
    if his_channel is None or not isinstance(his_channel.source, MllpSourceConfig):
        print("the config has no MLLP source to send HIS traffic to", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="hisbridge-demo-") as workdir:
        peers = await start_peers(config, Path(workdir))
        engine = Engine(config)
        try:
            await engine.start()
        except BaseException:
            await peers.stop()
            raise
        try:
            return await _run(config, engine, peers, his_channel, count=count,
                              duration=duration, rate=rate, faults=faults)
        finally:
            await engine.stop()
            await peers.stop()


async def _run(config: Config, engine: Engine, peers: Peers, his_channel: ChannelConfig, *,
               count: int | None, duration: float | None, rate: float, faults: bool) -> int:
    assert isinstance(his_channel.source, MllpSourceConfig)
    host = _local(his_channel.source.listen)
    port = engine.source_port(his_channel.name)
    print(f"hisbridge demo: HIS → MLLP {host}:{port} → "
          f"{len(his_channel.destinations)} destination(s); "
          f"{len(engine.channels)} channel(s) in all")
    if engine.admin:
        print(f"admin API and dashboard: http://127.0.0.1:{engine.admin.port}/ "
              f"(token in {config.resolve(config.store.path).parent / 'admin.token'})")
    for name in peers.names():
        print(f"simulator: {name}")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    if count is None and duration is None:
        def first_interrupt() -> None:
            # The first Ctrl-C ends the stream and shows the summary; a second one (the
            # default handler again) stops at once.
            stop.set()
            loop.remove_signal_handler(signal.SIGINT)

        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signal.SIGINT, first_interrupt)
        print("streaming until Ctrl-C (the summary follows; Ctrl-C twice to quit at once)")
    elif duration:
        loop.call_later(duration, stop.set)
    spread = count / rate if count else 0.0
    plan = Plan(settlements=max(3, min(20, count // 30)) if count else None,
                payments=max(3, min(10, count // 50)) if count else None,
                spread=spread, stop=stop)

    tally = HisTally()
    progress = Progress(engine)
    tasks: list[asyncio.Task[Any]] = [asyncio.create_task(progress.run())]
    if faults:
        after = spread * 0.3 if count else min(5.0, (duration or 10) * 0.3)
        tasks.append(asyncio.create_task(_outage(peers, after)))
    sender = HisSender(host, port, connections=2)
    messages = tally.watch(itertools.islice(traffic(), count) if count else traffic(), stop)
    work: list[asyncio.Task[Any]] = [
        asyncio.create_task(sender.send(messages, rate=rate, on_ack=progress.on_ack))]

    insurance = await _insurance_desk(config, engine)
    if insurance is not None:
        work.append(asyncio.create_task(run_insurance(insurance, plan)))
    payments = await _payment_desk(config, engine, peers)
    if payments is not None:
        work.append(asyncio.create_task(run_payments(payments, plan, peers)))
    try:
        await asyncio.gather(*work)
        drained = await _drained(engine, 60.0)
        progress.show(final=True)
        report = await Report.gather(config, engine, peers, tally, insurance, payments)
        if not drained:
            report.problems.append("queues did not drain within 60 s")
        print()
        print(report.text())
        path = config.resolve(config.store.path).parent / "demo-summary.json"
        path.write_text(json.dumps(report.data(), ensure_ascii=False, indent=2, default=str)
                        + "\n", encoding="utf-8")
        print(f"\nsummary written to {path}")
        return 1 if report.problems else 0
    finally:
        for task in (*tasks, *work):
            task.cancel()
        for desk in (insurance, payments):
            if desk is not None:
                await desk.close()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)


async def _insurance_desk(config: Config, engine: Engine) -> InsuranceDesk | None:
    channel = _channel(config, HttpSourceConfig, NhsaDestinationConfig)
    if channel is None or not isinstance(channel.source, HttpSourceConfig):
        return None
    nhsa = next(d for d in channel.destinations if isinstance(d, NhsaDestinationConfig))
    fhir = _claims_fhir(config, channel)
    if fhir is None:
        return None
    url = (f"http://{_local(channel.source.listen)}:{engine.source_port(channel.name)}"
           f"{channel.source.path}")
    used = {d.msgid_node for c in config.channels for d in c.destinations
            if isinstance(d, NhsaDestinationConfig)}
    node = next(n for n in range(9, -1, -1) if n not in used)
    desk = InsuranceDesk(nhsa, claims_url=url, fhir_url=fhir, msgid_node=node)
    await desk.start()
    return desk


async def _payment_desk(config: Config, engine: Engine, peers: Peers) -> PaymentDesk | None:
    channel = _channel(config, PaymentNotifyConfig)
    if channel is None or not isinstance(channel.source, PaymentNotifyConfig):
        return None
    account = channel.source.wechatpay
    if account is None or not peers.wechatpay:
        return None
    notify = (f"http://{_local(channel.source.listen)}:{engine.source_port(channel.name)}"
              f"{channel.source.path}")
    sim = next(iter(peers.wechatpay.values()))
    desk = PaymentDesk(account.model_copy(update={"notify_url": notify}),
                       PaymentStore(engine.db), sim.url)
    await desk.start()
    return desk


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
                  "refused": int(m.refused.total()), "filtered": int(m.filtered.total()),
                  "mapping_errors": int(m.mapping_errors.total())}
        report = cls(rows, received, totals, {}, {}, {}, {}, {}, [])
        report._his(tally, peers)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            await report._einvoice(tally, peers, http)
            await report._insurance(insurance, peers, http)
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

    async def _insurance(self, desk: InsuranceDesk | None, peers: Peers,
                         http: aiohttp.ClientSession) -> None:
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
        self.insurance = {
            "requests": len(desk.requests), "requested": requested,
            "failures": list(desk.failures), "settlements": len(settled), **sums,
            "claim_responses": len(responses), "responses_submitted": answered["submitted"],
            "responses_benefit": answered["benefit"], "responses_copay": answered["copay"]}
        checks = [
            (len(settled) == len(desk.requests) == len(responses),
             f"{len(desk.requests)} settle requests, {len(settled)} settlements, "
             f"{len(responses)} ClaimResponses"),
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
                  f"duplicates {t['duplicates']}, refused {t['refused']}, filtered "
                  f"{t['filtered']}, mapping errors {t['mapping_errors']}", ""]
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
            lines.append(f"insurance: {i['requests']} settle requests ({_yuan(i['requested'])})"
                         f" → {i['settlements']} settlements → {i['claim_responses']} "
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
