"""The embedded queue: rows in the same SQLite database as the message store.

Each envelope is a row of ``queue_items`` in one of three states: ``ready`` (deliverable now),
``delayed`` (deliverable at ``next_attempt_at``: a retry or a delayed publish) and ``dead``.
Acked rows are deleted; the message store keeps the history.

Consumers do not lock rows in the database. Each consumer keeps a cursor (the highest ready
row id it has handed out) and the set of row ids in flight. Row ids come from AUTOINCREMENT in
commit order through the single writer, so every ready row above the cursor is new, and a
crash simply restarts the cursor at zero: whatever was not acked is delivered again.

Because the queue shares the store's database, the engine can store a message and enqueue it
in one transaction (``transaction``), which is the embedded answer to "ACK only after
commit".
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import orjson

from engine.database import Database, StoreUnavailable, apply_schema
from queues.contract import (
    Consumer,
    DeadLetter,
    Delivery,
    Envelope,
    QueueFull,
    QueueUnavailable,
)

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS queue_items (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    queue           TEXT NOT NULL,
    state           TEXT NOT NULL,            -- ready | delayed | dead
    next_attempt_at REAL NOT NULL DEFAULT 0,  -- 0 for ready rows
    message_id      TEXT NOT NULL,
    content_type    TEXT NOT NULL,
    headers         BLOB,
    body            BLOB NOT NULL,
    failures        INTEGER NOT NULL DEFAULT 0,
    first_failed_at REAL,
    last_error      TEXT,
    enqueued_at     REAL NOT NULL,
    dead_at         REAL
);
CREATE INDEX IF NOT EXISTS queue_items_due ON queue_items (queue, state, next_attempt_at, id);
"""

_COLUMNS = "id, message_id, content_type, headers, body, failures, first_failed_at, " \
    "next_attempt_at, last_error"


class Staging:
    """SQL for queue changes inside a caller's transaction, plus what to do after commit.

    Obtained from ``SqliteQueue.transaction``; methods run on the writer connection.
    """

    def __init__(self, backend: SqliteQueue, conn: sqlite3.Connection, now: float) -> None:
        self._backend = backend
        self.conn = conn
        self.now = now
        self.published: dict[str, int] = defaultdict(int)
        self.settled: list[tuple[Delivery, bool]] = []  # (delivery, still counted in depth)

    def publish(self, queue: str, envelopes: Sequence[Envelope], *, delay: float = 0.0) -> None:
        state, due = ("delayed", self.now + delay) if delay > 0 else ("ready", 0.0)
        self.conn.executemany(
            "INSERT INTO queue_items (queue, state, next_attempt_at, message_id, content_type,"
            " headers, body, enqueued_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (queue, state, due, e.message_id, e.content_type,
                 orjson.dumps(dict(e.headers)) if e.headers else None, e.body, self.now)
                for e in envelopes
            ],
        )
        self.published[queue] += len(envelopes)

    def ack(self, delivery: Delivery) -> None:
        self.conn.execute("DELETE FROM queue_items WHERE id = ?", (delivery.tag,))
        self.settled.append((delivery, False))

    def retry(self, delivery: Delivery, *, at: float, reason: str) -> None:
        self.conn.execute(
            "UPDATE queue_items SET state = 'delayed', next_attempt_at = ?, failures = failures + 1,"
            " first_failed_at = COALESCE(first_failed_at, ?), last_error = ? WHERE id = ?",
            (at, self.now, reason, delivery.tag),
        )
        self.settled.append((delivery, True))

    def dead_letter(self, delivery: Delivery, *, reason: str) -> None:
        self.conn.execute(
            "UPDATE queue_items SET state = 'dead', failures = failures + 1,"
            " first_failed_at = COALESCE(first_failed_at, ?), last_error = ?, dead_at = ?"
            " WHERE id = ?",
            (self.now, reason, self.now, delivery.tag),
        )
        self.settled.append((delivery, False))


class SqliteQueue:
    """QueueBackend on the shared SQLite database.

    Args:
        db: the engine's database (shared with the message store).
        max_depth: envelopes waiting across all queues beyond which publish raises QueueFull,
            so sources push back instead of filling the disk.
    """

    shares_store = True

    def __init__(self, db: Database, *, max_depth: int = 1_000_000) -> None:
        self.db = db
        self.max_depth = max_depth
        self._depth: dict[str, int] = defaultdict(int)
        self._consumers: dict[str, SqliteConsumer] = {}

    async def start(self) -> None:
        def init(conn: sqlite3.Connection) -> list[tuple[str, int]]:
            apply_schema(conn, SCHEMA)
            return conn.execute(
                "SELECT queue, COUNT(*) FROM queue_items WHERE state != 'dead' GROUP BY queue"
            ).fetchall()

        for queue, count in await self.db.write(init):
            self._depth[queue] = count

    async def close(self) -> None:
        for consumer in list(self._consumers.values()):
            await consumer.close()

    async def declare(self, queue: str) -> None:
        self._depth.setdefault(queue, 0)

    @property
    def total_depth(self) -> int:
        return sum(self._depth.values())

    def check_capacity(self, incoming: int = 1) -> None:
        """Raise QueueFull when ``incoming`` more envelopes would exceed ``max_depth``."""
        if self.total_depth + incoming > self.max_depth:
            raise QueueFull(f"queue depth {self.total_depth} reached the limit {self.max_depth}")

    # -- transactions shared with the store ------------------------------------------------

    async def transaction(self, op: Callable[[Staging], T]) -> T:
        """Run ``op`` (store writes and queue changes) in one committed transaction."""
        holder: list[Staging] = []

        def run(conn: sqlite3.Connection) -> T:
            staging = Staging(self, conn, time.time())
            holder.append(staging)
            return op(staging)

        try:
            result = await self.db.write(run)
        except StoreUnavailable as exc:
            raise QueueUnavailable(str(exc)) from exc
        self._after_commit(holder[0])
        return result

    def _after_commit(self, staging: Staging) -> None:
        for queue, count in staging.published.items():
            self._depth[queue] += count
            consumer = self._consumers.get(queue)
            if consumer is not None:
                consumer.wake()
        for delivery, still_waiting in staging.settled:
            if not still_waiting:
                self._depth[delivery.queue] -= 1
            consumer = self._consumers.get(delivery.queue)
            if consumer is not None:
                consumer.settled(delivery)

    # -- QueueBackend ----------------------------------------------------------------------

    async def publish(self, queue: str, envelopes: Sequence[Envelope], *, delay: float = 0.0) -> None:
        self.check_capacity(len(envelopes))
        await self.transaction(lambda s: s.publish(queue, envelopes, delay=delay))

    def consumer(self, queue: str, *, prefetch: int = 100, ordered: bool = False) -> Consumer:
        if queue in self._consumers:
            raise RuntimeError(f"queue {queue} already has a consumer in this process")
        consumer = SqliteConsumer(self, queue, prefetch=1 if ordered else prefetch, ordered=ordered)
        self._consumers[queue] = consumer
        return consumer

    async def ack(self, delivery: Delivery) -> None:
        await self.transaction(lambda s: s.ack(delivery))

    async def retry(self, delivery: Delivery, *, at: float, reason: str) -> None:
        await self.transaction(lambda s: s.retry(delivery, at=at, reason=reason))

    async def dead_letter(self, delivery: Delivery, *, reason: str) -> None:
        await self.transaction(lambda s: s.dead_letter(delivery, reason=reason))

    async def forward(self, delivery: Delivery, outputs: Sequence[tuple[str, Envelope]]) -> None:
        def op(s: Staging) -> None:
            for queue, envelope in outputs:
                s.publish(queue, [envelope])
            s.ack(delivery)

        await self.transaction(op)

    async def depth(self, queue: str) -> int:
        return self._depth.get(queue, 0)

    async def dead_letters(self, queue: str, *, limit: int = 100) -> list[DeadLetter]:
        def q(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(
                "SELECT id, message_id, content_type, headers, body, failures, first_failed_at,"
                " last_error, dead_at FROM queue_items WHERE queue = ? AND state = 'dead'"
                " ORDER BY id LIMIT ?",
                (queue, limit),
            ).fetchall()

        return [
            DeadLetter(
                queue=queue,
                id=str(r[0]),
                envelope=Envelope(r[1], r[4], _headers(r[3]), r[2]),
                reason=r[7] or "",
                failures=r[5],
                first_failed_at=r[6],
                dead_at=r[8],
            )
            for r in await self.db.read(q)
        ]

    async def requeue(self, queue: str, ids: Sequence[str] | None = None) -> int:
        now = time.time()

        def op(conn: sqlite3.Connection) -> int:
            sql = (
                "UPDATE queue_items SET state = 'delayed', next_attempt_at = ?, failures = 0,"
                " first_failed_at = NULL, dead_at = NULL WHERE queue = ? AND state = 'dead'"
            )
            if ids is None:
                return conn.execute(sql, (now, queue)).rowcount
            count = 0
            for chunk_start in range(0, len(ids), 500):
                chunk = [int(i) for i in ids[chunk_start : chunk_start + 500]]
                marks = ",".join("?" * len(chunk))
                count += conn.execute(f"{sql} AND id IN ({marks})", (now, queue, *chunk)).rowcount  # noqa: S608 - placeholders only
            return count

        try:
            count: int = await self.db.write(op)
        except StoreUnavailable as exc:
            raise QueueUnavailable(str(exc)) from exc
        self._depth[queue] += count
        consumer = self._consumers.get(queue)
        if consumer is not None:
            consumer.wake()
        return count

    async def ping(self) -> None:
        try:
            await self.db.write(lambda conn: conn.execute("SELECT 1").fetchone())
        except StoreUnavailable as exc:
            raise QueueUnavailable(str(exc)) from exc

    def forget_consumer(self, queue: str) -> None:
        self._consumers.pop(queue, None)


def _headers(raw: bytes | None) -> dict[str, str]:
    return orjson.loads(raw) if raw else {}


class SqliteConsumer:
    """Hands out deliveries of one queue, at most ``prefetch`` unsettled at a time."""

    # How often to look for due retries when nothing else wakes us (clock-skew safety net).
    POLL_CEILING = 5.0

    def __init__(self, backend: SqliteQueue, queue: str, *, prefetch: int, ordered: bool) -> None:
        self.backend = backend
        self.queue = queue
        self.prefetch = max(1, prefetch)
        self.ordered = ordered
        self._cursor = 0
        self._inflight: set[int] = set()
        self._out: asyncio.Queue[Delivery] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def wake(self) -> None:
        self._wake.set()

    def settled(self, delivery: Delivery) -> None:
        tag = delivery.tag
        if isinstance(tag, int):
            self._inflight.discard(tag)
        self._wake.set()

    async def get(self) -> Delivery:
        if self._task is None:
            self._task = asyncio.create_task(self._fetch_loop(), name=f"consume {self.queue}")
        getter = asyncio.ensure_future(self._out.get())
        done, _ = await asyncio.wait({getter, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            return getter.result()
        getter.cancel()
        self._task.result()  # re-raise the fetch loop's failure
        raise RuntimeError("consumer stopped")

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.backend.forget_consumer(self.queue)

    async def _fetch_loop(self) -> None:
        db = self.backend.db
        while not self._closed:
            credits = self.prefetch - len(self._inflight)
            if credits <= 0:
                self._wake.clear()
                await self._wake.wait()
                continue
            self._wake.clear()
            now = time.time()
            inflight = frozenset(self._inflight)
            try:
                rows, next_due = await db.read(
                    lambda conn: self._fetch(conn, credits, now, inflight)
                )
            except StoreUnavailable:
                return
            for row in rows:
                self._inflight.add(row[0])
                self._out.put_nowait(_delivery(self.queue, row))
            if len(rows) >= credits:
                continue
            timeout = self.POLL_CEILING
            if next_due is not None:
                timeout = min(timeout, max(0.0, next_due - time.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _fetch(
        self, conn: sqlite3.Connection, credits: int, now: float, inflight: frozenset[int]
    ) -> tuple[list[Any], float | None]:
        if self.ordered:
            if inflight:
                return [], None
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM queue_items WHERE queue = ?"  # noqa: S608 - constant
                " AND state IN ('ready', 'delayed') ORDER BY id LIMIT 1",
                (self.queue,),
            ).fetchone()
            return ([row] if row else []), None
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM queue_items WHERE queue = ? AND state = 'delayed'"  # noqa: S608
            " AND next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?",
            (self.queue, now, credits + len(inflight)),
        ).fetchall()
        rows = [r for r in rows if r[0] not in inflight][:credits]
        if len(rows) < credits:
            fresh = conn.execute(
                f"SELECT {_COLUMNS} FROM queue_items WHERE queue = ? AND state = 'ready'"  # noqa: S608
                " AND next_attempt_at = 0 AND id > ? ORDER BY id LIMIT ?",
                (self.queue, self._cursor, credits - len(rows)),
            ).fetchall()
            if fresh:
                self._cursor = fresh[-1][0]
            rows.extend(fresh)
        due = conn.execute(
            "SELECT MIN(next_attempt_at) FROM queue_items WHERE queue = ? AND state = 'delayed'"
            " AND next_attempt_at > ?",
            (self.queue, now),
        ).fetchone()
        return rows, due[0] if due else None


def _delivery(queue: str, row: Any) -> Delivery:
    rid, message_id, content_type, headers, body, failures, first_failed_at, due, err = row
    return Delivery(
        queue=queue,
        tag=rid,
        envelope=Envelope(message_id, body, _headers(headers), content_type),
        failures=failures,
        first_failed_at=first_failed_at,
        not_before=due or 0.0,
        last_error=err or "",
    )
