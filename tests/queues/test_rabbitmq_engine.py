"""The core's end-to-end scenarios with the engine on the RabbitMQ backend, over real sockets.

MLLP in from a test client, MLLP out to the HIS receiver simulator, RabbitMQ in between.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters.mllp import END, START
from engine.hl7 import parse
from engine.hl7_batch import answer_acks
from engine.ingest import DedupKey
from engine.message import Message
from engine.runtime import Engine
from engine.store import MessageStore
from simulators.his import HisReceiver
from simulators.hl7_messages import adt
from simulators.patients import PatientFactory
from tests.conftest import engine_config, wait_for
from tests.mllp_client import MllpClient
from tests.queues.queue_support import Broker, TcpProxy, delete_topology

pytestmark = pytest.mark.rabbitmq

factory = PatientFactory(seed=11)


def message(cid: str) -> str:
    return adt("A04", factory.patient(), factory.visit("O"), cid=cid)


def channels(receiver_port: int, *, ordered: bool = True, attempts: int = 50,
             staged: bool = False) -> str:
    """One MLLP channel to the receiver. ``staged``: a channel filter, so messages go
    through the channel queue and its worker (without one, ingest fans out directly)."""
    return f"""
        [[channels]]
        name = "his"
        source = {{ type = "mllp", listen = "127.0.0.1:0" }}
        {'filter = { message_types = ["ADT"] }' if staged else ''}
        [[channels.destinations]]
        name = "cdr"
        type = "mllp"
        host = "127.0.0.1"
        port = {receiver_port}
        ordered = {'true' if ordered else 'false'}
        ack_timeout = 2.0
        retry = {{ max_attempts = {attempts}, initial_delay = 0.05, max_delay = 0.2 }}
    """


@pytest.fixture
async def cleanup(broker: Broker, prefix: str) -> AsyncIterator[None]:
    yield
    await delete_topology(broker, prefix, ["channel:his", "dest:his/cdr"])


async def start(tmp_path: Path, engines: list[Engine], broker: Broker, prefix: str,
                receiver: HisReceiver, *, host: str | None = None, **kw: object) -> Engine:
    queue = broker.toml(prefix, **({"host": host} if host else {}))
    engine = Engine(engine_config(tmp_path, queue + channels(receiver.port, **kw)))  # type: ignore[arg-type]
    await engine.start()
    engines.append(engine)
    return engine


def outbox_rows(tmp_path: Path) -> int:
    with sqlite3.connect(tmp_path / "hisbridge.db") as conn:
        return int(conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])


@pytest.mark.usefixtures("cleanup")
async def test_message_is_acked_after_store_and_broker_confirm_then_delivered(
    tmp_path: Path, engines: list[Engine], broker: Broker, prefix: str, receiver: HisReceiver,
) -> None:
    engine = await start(tmp_path, engines, broker, prefix, receiver)
    client = await MllpClient.connect(engine.source_port("his"))
    ack = await client.send(message("RMQ-1"))
    assert (ack.get("MSA", 1), ack.get("MSA", 2)) == ("AA", "RMQ-1")
    # At the ACK the message is committed: another connection sees it at once.
    with sqlite3.connect(tmp_path / "hisbridge.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM messages WHERE control_id = 'RMQ-1'"
                            ).fetchone()[0] == 1
    await wait_for(lambda: receiver.received == ["RMQ-1"])
    await wait_for(lambda: engine.metrics.sent.total() == 1)
    [stored] = await engine.store.search(control_id="RMQ-1")
    # The channel has no filter or mapping: ingest queued it for the destination directly.
    assert [e.status for e in await engine.store.events(stored.id)] == ["received", "sent"]
    assert stored.status == "sent"
    await wait_for(lambda: outbox_rows(tmp_path) == 0)
    await client.close()


@pytest.mark.usefixtures("cleanup")
async def test_the_ack_waits_for_the_broker_confirm(
    tmp_path: Path, engines: list[Engine], broker: Broker, prefix: str, receiver: HisReceiver,
    proxy: TcpProxy,
) -> None:
    engine = await start(tmp_path, engines, broker, prefix, receiver, host=proxy.address)
    client = await MllpClient.connect(engine.source_port("his"))
    proxy.hold_replies()  # the broker stalls: it gets the publish, its confirm does not come
    await client.send_raw(START + message("CONFIRM-1").encode() + END)
    with pytest.raises(TimeoutError):
        await client.read_ack(timeout=0.8)
    # Stored already (the outbox row says: not yet confirmed), but not acknowledged.
    assert len(await engine.store.search(control_id="CONFIRM-1")) == 1
    assert outbox_rows(tmp_path) == 1
    proxy.release_replies()
    ack = await client.read_ack(timeout=10)
    assert (ack.get("MSA", 1), ack.get("MSA", 2)) == ("AA", "CONFIRM-1")
    await wait_for(lambda: receiver.received == ["CONFIRM-1"])
    await wait_for(lambda: outbox_rows(tmp_path) == 0)
    await client.close()


@pytest.mark.usefixtures("cleanup")
async def test_duplicates_are_acknowledged_and_processed_once(
    tmp_path: Path, engines: list[Engine], broker: Broker, prefix: str, receiver: HisReceiver,
) -> None:
    engine = await start(tmp_path, engines, broker, prefix, receiver)
    client = await MllpClient.connect(engine.source_port("his"))
    msg = message("RMQ-DUP")
    for _ in range(3):
        assert (await client.send(msg)).get("MSA", 1) == "AA"
    await wait_for(lambda: engine.metrics.sent.total() == 1)
    await asyncio.sleep(0.3)
    assert receiver.received == ["RMQ-DUP"]
    assert engine.metrics.duplicates.total() == 2
    # A different message under the same control id is refused, not taken for a resend.
    ack = await client.send(message("RMQ-DUP"))
    assert ack.get("MSA", 1) == "AR" and ack.get("ERR", 3, 1) == "205"
    assert engine.metrics.key_reused.total() == 1
    assert len(await engine.store.search(control_id="RMQ-DUP")) == 1
    await client.close()


@pytest.mark.usefixtures("cleanup")
async def test_a_batch_is_stored_in_order_and_its_resend_is_recognised(
    tmp_path: Path, engines: list[Engine], broker: Broker, prefix: str, receiver: HisReceiver,
) -> None:
    engine = await start(tmp_path, engines, broker, prefix, receiver)
    client = await MllpClient.connect(engine.source_port("his"))
    frame = b"BHS|^~\\&|HIS|H1\r" + b"".join(
        message(f"RB-{i}").encode() for i in range(4)) + b"BTS|4\r"
    for _ in range(2):  # the second time, every message is a recognised duplicate
        acks = answer_acks(await client.exchange(frame))
        assert [(a.get("MSA", 1), a.get("MSA", 2)) for a in acks] == [
            ("AA", f"RB-{i}") for i in range(4)]
    await wait_for(lambda: receiver.received == [f"RB-{i}" for i in range(4)])
    assert engine.metrics.duplicates.total() == 4
    # A batch stored message by message is checked for reused control ids first: refused,
    # it leaves nothing behind (RB-NEW would otherwise be stored, and sent, under an AR).
    reused = b"BHS|^~\\&|HIS|H1\r" + message("RB-NEW").encode() + message("RB-1").encode()
    acks = answer_acks(await client.exchange(reused))
    assert [a.get("MSA", 1) for a in acks] == ["AR", "AR"]
    assert await engine.store.search(control_id="RB-NEW") == []
    await wait_for(lambda: outbox_rows(tmp_path) == 0)
    await client.close()


@pytest.mark.usefixtures("cleanup")
async def test_destination_down_then_back_gets_everything_in_order(
    tmp_path: Path, engines: list[Engine], broker: Broker, prefix: str, receiver: HisReceiver,
) -> None:
    port = receiver.port
    engine = await start(tmp_path, engines, broker, prefix, receiver, ordered=True)
    await receiver.stop()
    client = await MllpClient.connect(engine.source_port("his"))
    ids = [f"ORD-{i:03d}" for i in range(40)]
    for cid in ids:
        assert (await client.send(message(cid))).get("MSA", 1) == "AA"
    await wait_for(lambda: engine.metrics.retried.total() >= 2)
    back = HisReceiver(port=port)
    await back.start()
    try:
        await wait_for(lambda: len(back.received) == len(ids), timeout=20)
        assert back.received == ids  # nothing lost, nothing reordered by the retries
        dest = engine.channels["his"].destinations[0]
        await wait_for(lambda: dest.health.state == "ok")
    finally:
        await back.stop()
    await client.close()


@pytest.mark.usefixtures("cleanup")
async def test_poison_goes_to_dead_letters_with_reason_and_can_be_requeued(
    tmp_path: Path, engines: list[Engine], broker: Broker, prefix: str, receiver: HisReceiver,
) -> None:
    engine = await start(tmp_path, engines, broker, prefix, receiver, ordered=False,
                         attempts=3, staged=True)
    client = await MllpClient.connect(engine.source_port("his"))
    receiver.mode = "AR"
    await client.send(message("POISON-AR"))
    queue = engine.channels["his"].destinations[0].queue
    await wait_for(lambda: engine.metrics.dead_lettered.total() == 1)
    receiver.mode = "AE"
    await client.send(message("POISON-AE"))
    await wait_for(lambda: engine.metrics.dead_lettered.total() == 2, timeout=15)
    dead = {d.envelope.message_id: d for d in await engine.backend.dead_letters(queue)}
    [ar] = await engine.store.search(control_id="POISON-AR")
    [ae] = await engine.store.search(control_id="POISON-AE")
    assert set(dead) == {ar.id, ae.id}
    assert "peer answered AR" in dead[ar.id].reason and dead[ar.id].failures == 1
    assert dead[ae.id].reason.startswith("gave up after 3 attempts: peer answered AE")
    assert dead[ae.id].failures == 3 and dead[ae.id].first_failed_at is not None
    statuses = [e.status for e in await engine.store.events(ae.id)]
    assert statuses == ["received", "mapped", "retrying", "retrying", "dead_lettered"]
    assert receiver.received == []
    receiver.mode = "AA"
    assert await engine.backend.requeue(queue, [dead[ar.id].id]) == 1
    await wait_for(lambda: receiver.received == ["POISON-AR"])
    assert [d.envelope.message_id for d in await engine.backend.dead_letters(queue)] == [ae.id]
    await client.close()


@pytest.mark.usefixtures("cleanup")
async def test_broker_away_makes_the_source_push_back_and_the_engine_recovers(
    tmp_path: Path, engines: list[Engine], broker: Broker, prefix: str, receiver: HisReceiver,
    proxy: TcpProxy,
) -> None:
    engine = await start(tmp_path, engines, broker, prefix, receiver, host=proxy.address,
                         ordered=False)
    client = await MllpClient.connect(engine.source_port("his"))
    assert (await client.send(message("AWAY-1"))).get("MSA", 1) == "AA"
    await wait_for(lambda: receiver.received == ["AWAY-1"])
    await proxy.cut()
    await wait_for(lambda: not engine.backend.available, timeout=10)  # type: ignore[attr-defined]
    started = time.monotonic()
    ack = await client.send(message("AWAY-2"))
    assert ack.get("MSA", 1) == "AE"
    assert "cannot accept" in ack.unescape(ack.get("MSA", 3))
    assert time.monotonic() - started < 2  # refused at once, not after a timeout
    assert await engine.store.search(control_id="AWAY-2") == []  # refused before storing
    ready = await engine.readiness()
    assert ready["status"] == "unavailable" and ready["checks"]["queue"].startswith("error")
    await proxy.restore()
    await wait_for(lambda: engine.backend.available, timeout=15)  # type: ignore[attr-defined]
    ids = [f"AWAY-{i}" for i in range(2, 12)]
    for cid in ids:
        assert (await client.send(message(cid))).get("MSA", 1) == "AA", cid
    await wait_for(lambda: set(receiver.received) == {"AWAY-1", *ids}, timeout=20)
    await client.close()


def store_pending(conn: sqlite3.Connection, body: bytes, control_id: str) -> None:
    """What ingest commits before publishing: the message and its outbox row."""
    hl7 = parse(body)
    message = Message("his", "hl7v2", body)
    message = dataclasses.replace(message, dedup_key=DedupKey(None)(message, hl7))
    MessageStore.insert(conn, message, message_type="ADT^A04", control_id=control_id)
    conn.execute("INSERT INTO outbox (message_id, queue, created_at) VALUES (?, ?, ?)",
                 (message.id, "channel:his", time.time()))
    conn.commit()


@pytest.mark.usefixtures("cleanup")
async def test_pending_outbox_rows_are_published_on_start_and_for_duplicates(
    tmp_path: Path, engines: list[Engine], broker: Broker, prefix: str, receiver: HisReceiver,
) -> None:
    # A run that stored two messages and died before the broker confirmed them.
    engine = await start(tmp_path, engines, broker, prefix, receiver, ordered=False)
    await engine.stop()
    db_path = tmp_path / "hisbridge.db"
    with sqlite3.connect(db_path) as conn:
        for cid in ("LOST-1", "LOST-2"):
            store_pending(conn, message(cid).encode(), cid)
    engines.clear()
    engine = await start(tmp_path, engines, broker, prefix, receiver, ordered=False)
    await wait_for(lambda: set(receiver.received) == {"LOST-1", "LOST-2"}, timeout=15)
    await wait_for(lambda: outbox_rows(tmp_path) == 0)
    assert engine.outbox is not None and engine.outbox.republished == 2

    # A message stored while its publish failed (pending row), then sent again by the peer:
    # the duplicate is acknowledged only after the original has been published.
    assert engine.outbox is not None
    await engine.outbox.close()  # no sweep: only the duplicate can publish it
    body = message("PENDING-1").encode()
    with sqlite3.connect(db_path) as conn:
        store_pending(conn, body, "PENDING-1")
    client = await MllpClient.connect(engine.source_port("his"))
    ack = await client.send(body)
    assert ack.get("MSA", 1) == "AA"
    await wait_for(lambda: "PENDING-1" in receiver.received, timeout=10)
    await wait_for(lambda: outbox_rows(tmp_path) == 0)
    assert receiver.received.count("PENDING-1") == 1
    await client.close()


@pytest.mark.usefixtures("cleanup")
async def test_a_republished_message_the_destination_took_is_not_sent_again(
    tmp_path: Path, engines: list[Engine], broker: Broker, prefix: str, receiver: HisReceiver,
) -> None:
    """An outbox row whose publish was confirmed just before a crash is published again on
    restart; the destination asks the store and does not send what it already took, while a
    republished message it never took is sent once."""
    engine = await start(tmp_path, engines, broker, prefix, receiver, ordered=False)
    assert engine.outbox is not None
    client = await MllpClient.connect(engine.source_port("his"))
    assert (await client.send(message("TOOK-1"))).get("MSA", 1) == "AA"
    await wait_for(lambda: receiver.received == ["TOOK-1"])
    await wait_for(lambda: outbox_rows(tmp_path) == 0)
    [took] = await engine.store.search(control_id="TOOK-1")
    db_path = tmp_path / "hisbridge.db"
    with sqlite3.connect(db_path) as conn:
        # The row as a crash between the broker's confirm and the row's deletion leaves it.
        conn.execute("INSERT INTO outbox (message_id, queue, created_at) VALUES (?, ?, ?)",
                     (took.id, "dest:his/cdr", time.time()))
        store_pending(conn, message("NEVER-1").encode(), "NEVER-1")
        conn.execute("UPDATE outbox SET queue = 'dest:his/cdr' WHERE message_id != ?",
                     (took.id,))
        conn.commit()
    assert await engine.outbox.sweep(grace=0) == (2, 0)
    await wait_for(lambda: "NEVER-1" in receiver.received, timeout=10)
    await wait_for(lambda: engine.metrics.resends_skipped.total() == 1, timeout=10)
    await asyncio.sleep(0.3)
    assert sorted(receiver.received) == ["NEVER-1", "TOOK-1"]
    assert [e.status for e in await engine.store.events(took.id)] == ["received", "sent"]
    [never] = await engine.store.search(control_id="NEVER-1")
    assert [e.status for e in await engine.store.events(never.id)][-1] == "sent"
    await client.close()
