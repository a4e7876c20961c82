"""The HIS → engine → insurance 2204 path of the shipped config.toml (ports remapped), in
process and over real sockets: the front desk registers insured visits with the insurance
simulator (1101, 2201), the HIS sends their charges over MLLP with the insurance visit in
PV1-50 and the insured person in PID-3, and the ``nhsa-fees`` destination of the HIS channel
uploads them. Checked against the simulator's own fee rows: every line once, to the cent, sent
by the engine; self-pay batches never reach the platform; a batch for a visit the platform
does not know is dead-lettered with the platform's reason."""

from __future__ import annotations

import itertools
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest

from adapters.nhsa import NhsaDestinationConfig
from engine.config import Config, load_config
from engine.demo import InsuredOutpatients, insurance_desk
from engine.demo_report import HisTally
from engine.hl7 import parse
from engine.runtime import Engine
from queues.contract import DeadLetter
from simulators.front_desk import InsuranceDesk
from simulators.his import HisSender, traffic
from simulators.hl7_messages import dft
from simulators.insurance import Simulator
from simulators.patients import Charge, Coverage, PatientFactory
from simulators.peers import Peers, start_peers
from tests.conftest import wait_for
from tests.demo.demo_config import remapped_config

CHANNEL = "his-inbound"
FEES = "nhsa-fees"


@dataclass
class Deployment:
    config: Config
    engine: Engine
    peers: Peers
    desk: InsuranceDesk

    @property
    def platform(self) -> Simulator:
        [sim] = self.peers.insurance.values()
        return sim

    @property
    def his(self) -> HisSender:
        return HisSender("127.0.0.1", self.engine.source_port(CHANNEL))

    def fee_rows(self) -> list[dict[str, str]]:
        return [dict(r) for r in self.platform.store.all(
            "SELECT mdtrt_id, feedetl_sn, chrg_bchno, sumamt, msgid FROM fee")]

    def delivered(self, destination: str) -> int:
        return int(self.engine.metrics.sent.get(channel=CHANNEL, destination=destination))

    def dead_lettered(self, destination: str) -> int:
        return int(self.engine.metrics.dead_lettered.get(channel=CHANNEL,
                                                         destination=destination))

    async def dead_letters(self, destination: str) -> list[DeadLetter]:
        [queue] = [d.queue for d in self.engine.channels[CHANNEL].destinations
                   if d.name == destination]
        return await self.engine.backend.dead_letters(queue)

    def fees_node(self) -> int | None:
        [dest] = [d for c in self.config.channels for d in c.destinations
                  if isinstance(d, NhsaDestinationConfig) and d.infno == "2204"]
        return dest.msgid_node


@pytest.fixture
async def deployment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                     ) -> AsyncIterator[Deployment]:
    monkeypatch.setenv("HISBRIDGE_NHSA_TOKEN", secrets.token_urlsafe(24))
    path, _ = remapped_config(tmp_path)
    config = load_config(path)
    peers = await start_peers(config, tmp_path / "peers")
    engine = Engine(config)
    try:
        await engine.start()
        desk = await insurance_desk(config, engine)
        assert desk is not None
    except BaseException:
        await engine.stop(grace=1.0)
        await peers.stop()
        raise
    try:
        yield Deployment(config, engine, peers, desk)
    finally:
        await desk.close()
        await engine.stop(grace=1.0)
        await peers.stop()


async def test_insured_charges_reach_the_platform_once_each_to_the_cent_via_the_engine(
        deployment: Deployment) -> None:
    d = deployment
    flow = InsuredOutpatients(d.desk, d.his, d.peers, HisTally(), fee_wait=15.0)
    visits = [await flow.visit() for _ in range(3)]
    assert d.desk.failures == []

    rows = d.fee_rows()
    assert len(rows) == sum(len(v.charges) for v in visits) >= 6
    for v in visits:
        mine = {r["feedetl_sn"]: r for r in rows if r["mdtrt_id"] == v.coverage.mdtrt_id}
        assert {sn: Decimal(r["sumamt"]) for sn, r in mine.items()} == {
            c.transaction_id: c.amount for c in v.charges}
        assert {r["chrg_bchno"] for r in mine.values()} == {v.batch}
        assert sum((Decimal(r["sumamt"]) for r in mine.values()), Decimal("0.00")) == v.total
    # Uploaded by the engine's nhsa-fees destination (its msgid node), once per batch; the
    # desk (another node) only signed in, looked the persons up and registered the visits.
    assert {r["msgid"][26] for r in rows} == {str(d.fees_node())}
    assert len({r["msgid"] for r in rows}) == 3
    assert d.delivered(FEES) == 3 and d.dead_lettered(FEES) == 0

    # The settle requests that followed asked for, and settled, exactly those fees.
    assert [r.total for r in d.desk.requests] == [v.total for v in visits]

    def settled() -> dict[str, Decimal]:
        return {s["mdtrt_id"]: Decimal(s["medfee_sumamt"]) for s in d.platform.store.all(
            "SELECT mdtrt_id, medfee_sumamt FROM settlement WHERE vali_flag != '0'")}

    await wait_for(lambda: len(settled()) == 3, timeout=15.0)
    assert settled() == {v.coverage.mdtrt_id: v.total for v in visits}


async def test_self_pay_charge_batches_never_reach_the_insurance_platform(
        deployment: Deployment) -> None:
    d = deployment
    messages = list(itertools.islice(traffic(seed=7), 40))
    batches = [m for m in messages if parse(m.encode()).message_type.endswith("P03")]
    assert batches and not any(parse(m.encode()).get("PV1", 50) for m in batches)

    sent = await d.his.send(messages)
    assert sent.count("AA") == len(messages)
    # Every batch went to the other destinations ...
    await wait_for(lambda: d.delivered("fhir-charges") == len(batches)
                   and d.delivered("cdr") == len(messages), timeout=15.0)
    # ... and none to the platform.
    assert d.delivered(FEES) == d.dead_lettered(FEES) == 0
    [fees] = [x for x in d.engine.channels[CHANNEL].destinations if x.name == FEES]
    assert await d.engine.backend.depth(fees.queue) == 0
    assert d.fee_rows() == []


async def test_a_batch_for_a_visit_the_platform_does_not_know_is_dead_lettered_with_its_reason(
        deployment: Deployment) -> None:
    d = deployment
    factory = PatientFactory(seed=11)
    patient, visit = factory.patient(), factory.visit("O")
    # A seeded insured person, but an insurance visit that was never registered (2201).
    visit.coverage = Coverage(psn_no="44039900000001", mdtrt_id="M440300999999",
                              insutype="310", insuplc_admdvs="440300")
    charges = [Charge("110200001", "普通门诊诊查费", "001102000010000", Decimal("10.00"), 1,
                      transaction_id="BUNKNOWN-1")]
    sent = await d.his.send([dft(patient, visit, charges, batch="BUNKNOWN")])
    assert sent.count("AA") == 1  # the engine takes it; the platform refuses it later

    await wait_for(lambda: d.dead_lettered(FEES) == 1, timeout=15.0)
    [letter] = await d.dead_letters(FEES)
    assert "2204 refused (infcode -1): 就诊ID不存在 (unknown mdtrt_id M440300999999)" \
        in letter.reason
    assert letter.failures == 1  # a refusal is permanent: never retried
    assert d.delivered(FEES) == 0
    assert d.fee_rows() == []
    # The other destinations had it all the same.
    await wait_for(lambda: d.delivered("fhir-charges") == 1 and d.delivered("cdr") == 1)
