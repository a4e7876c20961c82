"""Retention deletes finished messages and their history, never pending or dead ones."""

from __future__ import annotations

import time
from pathlib import Path

from engine.retention import purge
from engine.runtime import Engine
from simulators.his import HisReceiver
from simulators.hl7_messages import adt
from simulators.patients import PatientFactory
from tests.conftest import engine_config, wait_for
from tests.mllp_client import MllpClient


async def test_purge_keeps_dead_letters_and_pending_deliveries(
    tmp_path: Path, engines: list[Engine]
) -> None:
    receiver = HisReceiver()
    await receiver.start()
    engine = Engine(engine_config(tmp_path, f"""
        [[channels]]
        name = "his"
        source = {{ type = "mllp", listen = "127.0.0.1:0" }}
        [[channels.destinations]]
        name = "cdr"
        type = "mllp"
        host = "127.0.0.1"
        port = {receiver.port}
        retry = {{ max_attempts = 1 }}
    """))
    await engine.start()
    engines.append(engine)
    factory = PatientFactory(seed=2)
    client = await MllpClient.connect(engine.source_port("his"))
    for n in range(3):
        await client.send(adt("A04", factory.patient(), factory.visit("O"), cid=f"OLD-{n}"))
    await wait_for(lambda: engine.metrics.sent.total() == 3)
    receiver.mode = "AR"
    await client.send(adt("A04", factory.patient(), factory.visit("O"), cid="DEAD-1"))
    await wait_for(lambda: engine.metrics.dead_lettered.total() == 1)
    await receiver.stop()  # the next one stays queued, retrying
    dest = engine.channels["his"].destinations[0]
    dest.policy = dest.policy.merged(max_attempts=100, initial_delay=60.0, max_delay=60.0)
    await client.send(adt("A04", factory.patient(), factory.visit("O"), cid="PENDING-1"))
    await wait_for(lambda: engine.metrics.retried.total() == 1)

    assert await purge(engine.db, days=30) == 0  # nothing is old yet
    deleted = await purge(engine.db, days=30, now=time.time() + 31 * 86_400)
    assert deleted == 3
    left = {m.control_id for m in await engine.store.search(limit=100)}
    assert left == {"DEAD-1", "PENDING-1"}
    events = await engine.db.read(lambda c: c.execute(
        "SELECT COUNT(*) FROM events e LEFT JOIN messages m ON m.id = e.message_id"
        " WHERE m.id IS NULL").fetchone()[0])
    assert events == 0  # no history left behind without its message
    await client.close()


async def test_retention_task_runs_when_configured(tmp_path: Path, engines: list[Engine]) -> None:
    config = engine_config(tmp_path, "")
    config = config.model_copy(update={
        "store": config.store.model_copy(update={"retention_days": 7})})
    engine = Engine(config)
    await engine.start()
    engines.append(engine)
    assert engine._retention is not None and not engine._retention.done()
    await engine.stop()
    assert engine._retention is None
