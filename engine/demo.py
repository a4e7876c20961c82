"""``hisbridge demo``: the repository's deployment against simulated peers, end to end.

It starts a simulator for every peer the config points at (``simulators.peers``), then the
engine, then plays the hospital:

- the HIS streams ADT and DFT^P03 traffic into the first MLLP source (patients and visits go
  to the FHIR server, charge lines become ChargeItems, paid batches get an e-invoice, and the
  clinical data repository receives a copy of everything);
- insured outpatients (``InsuredOutpatients``): the front desk registers each visit with the
  insurance platform (``simulators.front_desk.InsuranceDesk``: 9001, 1101, 2201), the HIS
  sends the visit's registration and charges over MLLP with the insurance visit in PV1-50
  and the insured person in PID-3, the engine uploads the fees (2204, the ``nhsa``
  destination on the HIS channel); once the platform holds them the desk posts a FHIR Claim
  for exactly those fees, which the engine runs through 2206 → 2207 → a ClaimResponse to
  the HIS;
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
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from adapters.fhir import FhirDestinationConfig
from adapters.http import HttpSourceConfig
from adapters.mllp import MllpSourceConfig
from adapters.nhsa import NhsaDestinationConfig
from adapters.payments.model import OrderState
from adapters.payments.source import PaymentNotifyConfig
from adapters.payments.store import PaymentStore
from engine.config import ChannelConfig, Config
from engine.demo_report import HisTally, Report
from engine.runtime import Engine
from simulators.front_desk import InsuranceDesk, InsuredVisit, PaymentDesk
from simulators.his import HisSender, outpatient_visit, traffic
from simulators.peers import Peers, start_peers

# -- progress ------------------------------------------------------------------------------


class Progress:
    """One status line (HIS messages sent and acknowledged, the engine's counters), redrawn
    in place on a terminal and every five seconds otherwise."""

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


@dataclass
class InsuredOutpatients:
    """Insured outpatients, end to end through the engine, one visit per ``visit()``:

    1. the front desk registers the visit with the insurance platform (1101, 2201);
    2. the HIS sends the registration (ADT^A04) and the charges (DFT^P03) over MLLP, with the
       insurance visit in PV1-50 and the insured person in PID-3 (``SN``);
    3. the engine uploads the fees (2204) through the HIS channel's ``nhsa`` destination;
    4. once the platform holds every line of the batch, the desk posts the settle request
       for exactly those fees (Claim → 2206 → 2207 → ClaimResponse).

    Waiting for step 3 by reading the platform's fee lines is the demo's shortcut for what a
    cashier sees as "fees uploaded" on the HIS screen.
    """

    desk: InsuranceDesk
    his: HisSender
    peers: Peers
    tally: HisTally
    on_ack: Callable[[str, str, float], None] | None = None
    facility: str = "SYFYY"
    fee_wait: float = 30.0

    async def visit(self) -> InsuredVisit:
        insured = await self.desk.register()
        messages = outpatient_visit(insured.patient, insured.visit, insured.charges,
                                    batch=insured.batch, facility=self.facility)
        for text in messages:
            self.tally.add(text)
        sent = await self.his.send(messages, on_ack=self.on_ack)
        if sent.count("AA") != len(messages):
            raise RuntimeError(f"batch {insured.batch}: the engine did not accept the HIS "
                               f"messages ({sent.acks}, {sent.errors[:2]})")
        await self.desk.settle(insured, await self.uploaded(insured))
        return insured

    async def uploaded(self, insured: InsuredVisit) -> Decimal:
        """The batch's total once the platform holds all its lines."""
        deadline = time.monotonic() + self.fee_wait
        while True:
            held = [f for f in self.peers.insurance_fees(insured.coverage.mdtrt_id)
                    if f.chrg_bchno == insured.batch]
            if len(held) >= len(insured.charges):
                return sum((f.amount for f in held), Decimal("0.00"))
            if time.monotonic() > deadline:
                raise TimeoutError(f"batch {insured.batch}: {len(held)} of "
                                   f"{len(insured.charges)} fee lines at the platform after "
                                   f"{self.fee_wait:g} s")
            await asyncio.sleep(0.05)


async def run_insurance(flow: InsuredOutpatients, plan: Plan) -> None:
    await _paced(plan.settlements, plan, flow.visit, flow.desk.failures, 2.0)


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
        try:
            peers = await start_peers(config, Path(workdir))
        except OSError as exc:
            print(f"cannot start the simulators: {exc} (is another demo or engine running?)",
                  file=sys.stderr)
            return 2
        engine = Engine(config)
        try:
            await engine.start()
        except OSError as exc:
            await peers.stop()
            print(f"cannot start the engine: {exc} (is another demo or engine running?)",
                  file=sys.stderr)
            return 2
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
    startup: list[str] = []
    insurance = await _start_desk(insurance_desk(config, engine), "insurance desk", startup)
    if insurance is not None and not any(
            isinstance(d, NhsaDestinationConfig) and d.infno == "2204"
            for d in his_channel.destinations):
        startup.append(f"channel {his_channel.name} has no nhsa destination with infno 2204: "
                       "insured visits' fees cannot reach the platform; no settlements run")
        await insurance.close()
        insurance = None
    payments = await _start_desk(_payment_desk(config, engine, peers), "payment desk", startup)
    tasks: list[asyncio.Task[Any]] = [asyncio.create_task(progress.run())]
    try:
        if faults:
            after = spread * 0.3 if count else min(5.0, (duration or 10) * 0.3)
            tasks.append(asyncio.create_task(_outage(peers, after)))
        sender = HisSender(host, port, connections=2)
        messages = tally.watch(itertools.islice(traffic(), count) if count else traffic(), stop)
        work: list[asyncio.Task[Any]] = [
            asyncio.create_task(sender.send(messages, rate=rate, on_ack=progress.on_ack))]
        if insurance is not None:
            flow = InsuredOutpatients(insurance, HisSender(host, port), peers, tally,
                                      progress.on_ack)
            work.append(asyncio.create_task(run_insurance(flow, plan)))
        if payments is not None:
            work.append(asyncio.create_task(run_payments(payments, plan, peers)))
        tasks += work
        await asyncio.gather(*work)
        drained = await _drained(engine, 60.0)
        progress.show(final=True)
        report = await Report.gather(config, engine, peers, tally, insurance, payments)
        report.problems += startup
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
        for task in tasks:
            task.cancel()
        for desk in (insurance, payments):
            if desk is not None:
                await desk.close()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)


async def _start_desk(starting: Any, what: str, problems: list[str]) -> Any:
    """A started desk, or None (the problem noted) when its peer refuses to start with it."""
    try:
        return await starting
    except Exception as exc:
        problems.append(f"{what} did not start: {type(exc).__name__}: {str(exc)[:200]}")
        print(f"{what} did not start: {type(exc).__name__}", file=sys.stderr)
        return None


async def insurance_desk(config: Config, engine: Engine) -> InsuranceDesk | None:
    """A started front desk for the config's settle channel (an HTTP source with an nhsa
    destination), or None when the config has none."""
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
    try:
        await desk.start()
    except BaseException:
        await desk.close()
        raise
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
    try:
        await desk.start()
    except BaseException:
        await desk.close()
        raise
    return desk


