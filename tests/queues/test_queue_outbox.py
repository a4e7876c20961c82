"""The outbox's rules, on a real SQLite store and the in-memory queue twin.

What the broker does is covered with RabbitMQ in test_rabbitmq_engine.py; here the backend
is the memory twin with switchable refusals, to pin down every branch of "stored but not
yet published".
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from engine.database import Database
from engine.message import Message
from engine.outbox import Outbox, Stored
from engine.store import MessageStore
from queues.contract import Envelope, QueueFull, QueueUnavailable
from queues.memory import MemoryQueue
from tests.conftest import wait_for

A, B = "dest:his/a", "dest:his/b"


class FlakyQueue(MemoryQueue):
    """The memory twin, refusing publishes to some queues or answering "away"."""

    def __init__(self) -> None:
        super().__init__()
        self.full: set[str] = set()
        self.down: set[str] = set()
        self.away = False
        self.published: list[tuple[str, str]] = []
        self.republished: list[tuple[str, str]] = []

    async def publish(self, queue: str, envelopes: Sequence[Envelope], *, delay: float = 0.0,
                      republish: bool = False) -> None:
        if queue in self.full:
            raise QueueFull(f"{queue} is full")
        if queue in self.down or self.away:
            raise QueueUnavailable(f"{queue} unreachable")
        await super().publish(queue, envelopes, delay=delay)
        self.published.extend((queue, e.message_id) for e in envelopes)
        if republish:
            self.republished.extend((queue, e.message_id) for e in envelopes)

    async def ping(self) -> None:
        if self.away:
            raise QueueUnavailable("broker away")


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(tmp_path / "store.db")
    await database.open()
    await MessageStore(database).start()
    yield database
    await database.close()


def new(cid: str) -> tuple[Message, Envelope]:
    message = Message("his", "hl7v2", f"MSH|^~\\&|HIS|F|||1||ADT^A04|{cid}|P|2.5".encode(),
                      dedup_key=f"F|{cid}")
    return message, Envelope(message.id, message.body, {}, "hl7v2")


def rows(path: Path) -> list[tuple[str, str, int]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT message_id, queue, attempts FROM outbox ORDER BY queue"
                            ).fetchall()


def stored(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0])


async def test_a_message_goes_to_every_queue_and_its_rows_are_cleared(
    db: Database, tmp_path: Path,
) -> None:
    backend = FlakyQueue()
    outbox = Outbox(db, backend)
    message, envelope = new("C1")
    assert await outbox.store_and_publish(message, [A, B], envelope, status="queued",
                                          detail="queued for a, b") is None
    assert sorted(backend.published) == [(A, message.id), (B, message.id)]
    assert backend.republished == []  # a first publish repeats nothing
    await outbox.close()
    assert rows(db.path) == []
    with sqlite3.connect(db.path) as conn:
        assert conn.execute("SELECT status FROM messages").fetchall() == [("queued",)]
        assert conn.execute("SELECT status, detail FROM events").fetchall() == [
            ("received", "queued for a, b")]


async def test_a_message_every_queue_refused_is_withdrawn(db: Database) -> None:
    backend = FlakyQueue()
    backend.full = {A, B}
    outbox = Outbox(db, backend)
    message, envelope = new("FULL")
    with pytest.raises(QueueFull, match="is full"):
        await outbox.store_and_publish(message, [A, B], envelope)
    assert stored(db.path) == 0
    assert rows(db.path) == []
    # Sent again once there is room, it is a new message, not a duplicate of a ghost.
    backend.full.clear()
    again, envelope = new("FULL")
    assert await outbox.store_and_publish(again, [A, B], envelope) is None
    await outbox.close()


async def test_a_partly_published_message_stays_and_its_duplicate_finishes_the_job(
    db: Database,
) -> None:
    backend = FlakyQueue()
    backend.down = {B}
    outbox = Outbox(db, backend)
    message, envelope = new("HALF")
    with pytest.raises(QueueUnavailable):
        await outbox.store_and_publish(message, [A, B], envelope)
    await wait_for(lambda: rows(db.path) == [(message.id, B, 0)])
    assert stored(db.path) == 1
    # The peer was told AE and sends it again: a duplicate, acknowledged only after the
    # queue it still misses has it.
    backend.down.clear()
    resend, envelope = new("HALF")
    assert await outbox.store_and_publish(resend, [A, B], envelope) == message.id
    assert sorted(backend.published) == [(A, message.id), (B, message.id)]
    await outbox.close()
    assert rows(db.path) == []
    # A duplicate of a message with nothing pending publishes nothing.
    third, envelope = new("HALF")
    assert await outbox.store_and_publish(third, [A, B], envelope) == message.id
    assert len(backend.published) == 2


async def test_a_batch_is_stored_in_one_transaction_and_published_in_order(
    db: Database,
) -> None:
    backend = FlakyQueue()
    outbox = Outbox(db, backend)
    batch = [new(f"BATCH-{i}") for i in range(5)]
    items = [Stored(m, [A], e) for m, e in batch]
    assert await outbox.store_and_publish_many(items) == [None] * 5
    assert backend.published == [(A, m.id) for m, _ in batch]  # the batch's order
    # Sent again: every message a duplicate, nothing published twice.
    again = [Stored(new(f"BATCH-{i}")[0], [A], e) for i, (_, e) in enumerate(batch)]
    assert await outbox.store_and_publish_many(again) == [m.id for m, _ in batch]
    assert len(backend.published) == 5
    await outbox.close()
    assert rows(db.path) == []


async def test_a_batch_with_a_queue_down_stays_in_the_outbox_and_its_resend_finishes(
    db: Database,
) -> None:
    backend = FlakyQueue()
    outbox = Outbox(db, backend)
    up_message, up_envelope = new("UP-1")
    down_message, down_envelope = new("DOWN-1")
    backend.down = {B}
    with pytest.raises(QueueUnavailable):
        await outbox.store_and_publish_many([Stored(up_message, [A], up_envelope),
                                             Stored(down_message, [B], down_envelope)])
    assert stored(db.path) == 2  # both stored: the peer hears AE and sends the batch again
    await wait_for(lambda: [r[0] for r in rows(db.path)] == [down_message.id])
    backend.down.clear()
    resend = [Stored(new("UP-1")[0], [A], up_envelope),
              Stored(new("DOWN-1")[0], [B], down_envelope)]
    assert await outbox.store_and_publish_many(resend) == [up_message.id, down_message.id]
    assert sorted(backend.published) == sorted([(A, up_message.id), (B, down_message.id)])
    await outbox.close()
    assert rows(db.path) == []


async def test_a_batch_refused_by_a_full_queue_withdraws_what_went_nowhere(
    db: Database,
) -> None:
    backend = FlakyQueue()
    backend.full = {B}
    outbox = Outbox(db, backend)
    (ok, ok_env), (full, full_env) = new("ROOM-1"), new("NOROOM-1")
    with pytest.raises(QueueFull, match="is full"):
        await outbox.store_and_publish_many([Stored(ok, [A], ok_env),
                                             Stored(full, [B], full_env)])
    with sqlite3.connect(db.path) as conn:
        assert [r[0] for r in conn.execute("SELECT id FROM messages")] == [ok.id]
    await outbox.close()


async def test_broker_away_refuses_before_storing(db: Database) -> None:
    backend = FlakyQueue()
    backend.away = True
    outbox = Outbox(db, backend)
    message, envelope = new("AWAY")
    with pytest.raises(QueueUnavailable, match="broker away"):
        await outbox.store_and_publish(message, [A], envelope)
    assert stored(db.path) == 0


async def test_start_republishes_what_a_crashed_run_left_and_a_bad_row_blocks_nothing(
    db: Database,
) -> None:
    # What a run that died between commit and confirm leaves behind: messages and rows.
    ids = []
    for cid, queue in (("L1", A), ("L2", "dest:gone/x"), ("L3", B)):
        message, _ = new(cid)
        ids.append(message.id)

        def op(conn: sqlite3.Connection, m: Message = message, q: str = queue) -> None:
            MessageStore.insert(conn, m)
            conn.execute("INSERT INTO outbox (message_id, queue, created_at) VALUES (?, ?, ?)",
                         (m.id, q, time.time()))

        await Outbox(db, FlakyQueue())._ensure_schema()
        await db.write(op)
    backend = FlakyQueue()
    backend.down = {"dest:gone/x"}  # e.g. a channel removed from the config
    outbox = Outbox(db, backend, sweep_interval=0.05)
    await outbox.start()
    assert sorted(backend.published) == sorted([(A, ids[0]), (B, ids[2])])
    # Each may have been published (and delivered) before the crash: the copies say so.
    assert backend.republished == backend.published
    assert outbox.republished == 2
    await wait_for(lambda: [r[:2] for r in rows(db.path)] == [(ids[1], "dest:gone/x")])
    await wait_for(lambda: rows(db.path)[0][2] >= 2)  # the sweep keeps trying and counting
    backend.down.clear()
    await wait_for(lambda: rows(db.path) == [])
    assert (("dest:gone/x", ids[1])) in backend.published
    await outbox.close()


class HeldQueue(FlakyQueue):
    """Publishes wait until ``release`` is set, like a broker slow to confirm."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.attempts = 0

    async def publish(self, queue: str, envelopes: Sequence[Envelope], *, delay: float = 0.0,
                      republish: bool = False) -> None:
        self.attempts += 1
        await self.release.wait()
        await super().publish(queue, envelopes, delay=delay)


async def test_a_duplicate_arriving_mid_publish_shares_that_publish(db: Database) -> None:
    backend = HeldQueue()
    outbox = Outbox(db, backend)
    message, envelope = new("SHARE")
    first = asyncio.ensure_future(outbox.store_and_publish(message, [A], envelope))
    await wait_for(lambda: backend.attempts == 1)
    resend, envelope = new("SHARE")
    second = asyncio.ensure_future(outbox.store_and_publish(resend, [A], envelope))
    await asyncio.sleep(0.05)
    assert not second.done()  # "accepted" only once the queue has it
    backend.release.set()
    assert await first is None
    assert await second == message.id
    assert backend.attempts == 1
    assert backend.published == [(A, message.id)]
    await outbox.close()
    assert rows(db.path) == []


async def test_an_interrupted_publish_fails_its_sharer_and_the_sweep_finishes_it(
    db: Database,
) -> None:
    backend = HeldQueue()
    outbox = Outbox(db, backend, sweep_interval=0.05, grace=0.0)
    message, envelope = new("CUT")
    first = asyncio.ensure_future(outbox.store_and_publish(message, [A], envelope))
    await wait_for(lambda: backend.attempts == 1)
    resend, envelope = new("CUT")
    second = asyncio.ensure_future(outbox.store_and_publish(resend, [A], envelope))
    await asyncio.sleep(0.05)
    first.cancel()  # e.g. the engine stopping mid-ingest
    with pytest.raises(QueueUnavailable, match="interrupted"):
        await second
    assert rows(db.path) == [(message.id, A, 0)]
    backend.release.set()
    await outbox.start()  # starts the sweep
    await wait_for(lambda: rows(db.path) == [])
    assert backend.published == [(A, message.id)]
    await outbox.close()


async def test_a_duplicate_of_a_confirmed_message_whose_rows_wait_for_deletion_publishes_nothing(
    db: Database,
) -> None:
    backend = FlakyQueue()
    outbox = Outbox(db, backend, flush_delay=30)
    message, envelope = new("LINGER")
    assert await outbox.store_and_publish(message, [A, B], envelope) is None
    assert len(rows(db.path)) == 2  # confirmed, deleted later in one batch
    resend, envelope = new("LINGER")
    assert await outbox.store_and_publish(resend, [A, B], envelope) == message.id
    assert sorted(backend.published) == [(A, message.id), (B, message.id)]
    await outbox.close()  # deletes what waits
    assert rows(db.path) == []
