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
import functools
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

    def __init__(self, conn: sqlite3.Connection, now: float) -> None:
        self.conn = conn
        self.now = now
        self.published: dict[str, list[tuple[int, Envelope]]] = defaultdict(list)
        self.delayed_new: dict[str, int] = defaultdict(int)
        self.retried: set[str] = set()
        self.settled: list[tuple[Delivery, bool]] = []  # (delivery, still counted in depth)

    def publish(self, queue: str, envelopes: Sequence[Envelope], *, delay: float = 0.0) -> None:
        state, due = ("delayed", self.now + delay) if delay > 0 else ("ready", 0.0)
        execute = self.conn.execute
        for e in envelopes:
            cursor = execute(
                "INSERT INTO queue_items (queue, state, next_attempt_at, message_id, content_type,"
                " headers, body, enqueued_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (queue, state, due, e.message_id, e.content_type,
                 orjson.dumps(dict(e.headers)) if e.headers else None, e.body, self.now),
            )
            if delay > 0:
                self.delayed_new[queue] += 1
            else:
                assert cursor.lastrowid is not None
                self.published[queue].append((cursor.lastrowid, e))

    def ack(self, delivery: Delivery) -> None:
        self.conn.execute("DELETE FROM queue_items WHERE id = ?", (delivery.tag,))
        self.settled.append((delivery, False))

    def retry(self, delivery: Delivery, *, at: float, reason: str) -> None:
        self.conn.execute(
            "UPDATE queue_items SET state = 'delayed', next_attempt_at = ?,"
            " failures = failures + 1, first_failed_at = COALESCE(first_failed_at, ?),"
            " last_error = ? WHERE id = ?",
            (at, self.now, reason, delivery.tag),
        )
        self.retried.add(delivery.queue)
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

    async def declare(self, queue: str, *, ordered: bool = False) -> None:
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

        def run(conn: sqlite3.Connection) -> tuple[T, Staging]:
            staging = Staging(conn, time.time())
            return op(staging), staging

        try:
            result, _ = await self.db.write(run, on_commit=lambda r: self._after_commit(r[1]))
        except StoreUnavailable as exc:
            raise QueueUnavailable(str(exc)) from exc
        return result

    def _after_commit(self, staging: Staging) -> None:
        """Runs on the loop in commit order: count, then hand new rows to consumers."""
        for delivery, still_waiting in staging.settled:
            if not still_waiting:
                self._depth[delivery.queue] -= 1
            consumer = self._consumers.get(delivery.queue)
            if consumer is not None:
                consumer.settled(delivery)
        for queue, count in staging.delayed_new.items():
            self._depth[queue] += count
        for queue in staging.delayed_new.keys() | staging.retried:
            consumer = self._consumers.get(queue)
            if consumer is not None:
                consumer.delayed_added()
        for queue, rows in staging.published.items():
            self._depth[queue] += len(rows)
            consumer = self._consumers.get(queue)
            if consumer is not None:
                consumer.offer(rows)

    # -- QueueBackend ----------------------------------------------------------------------

    async def publish(
        self, queue: str, envelopes: Sequence[Envelope], *, delay: float = 0.0,
        republish: bool = False,  # the store and queue share a transaction: nothing repeats
    ) -> None:
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
            # Dead-letter ids of this backend are row numbers; anything else names nothing.
            numeric = [int(i) for i in ids if i.isdigit()]
            for chunk_start in range(0, len(numeric), 500):
                chunk = numeric[chunk_start : chunk_start + 500]
                marks = ",".join("?" * len(chunk))
                count += conn.execute(f"{sql} AND id IN ({marks})", (now, queue, *chunk)).rowcount
            return count

        try:
            count: int = await self.db.write(op)
        except StoreUnavailable as exc:
            raise QueueUnavailable(str(exc)) from exc
        self._depth[queue] += count
        consumer = self._consumers.get(queue)
        if consumer is not None:
            consumer.delayed_added()
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
    """Hands out deliveries of one queue, at most ``prefetch`` unsettled at a time.

    New rows reach an unordered consumer without a database read: the writer's commit hands
    them over (``offer``) as long as the consumer is caught up. When it is not (after a
    restart, or when its prefetch was full), it reads ready rows above its cursor until it
    has caught up again. Delayed rows (retries) are always read from the database when due.
    Ordered consumers read the head of the queue, one delivery at a time.
    """

    # How often to look for due retries when nothing else wakes us (clock-skew safety net).
    POLL_CEILING = 5.0

    def __init__(self, backend: SqliteQueue, queue: str, *, prefetch: int, ordered: bool) -> None:
        self.backend = backend
        self.queue = queue
        self.prefetch = max(1, prefetch)
        self.ordered = ordered
        self._cursor = 0
        self._inflight: set[int] = set()
        self._out: asyncio.Queue[Delivery | BaseException] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._backlog = True  # ready rows may exist in the database that we have not read
        self._missed = 0  # offers refused while behind; a read must catch up with them
        self._maybe_delayed = True  # delayed rows may exist

    # -- called from the backend after commits --------------------------------------------

    def offer(self, rows: list[tuple[int, Envelope]]) -> None:
        if self.ordered or self._backlog or len(self._inflight) + len(rows) > self.prefetch:
            self._backlog = True
            self._missed += 1
            self._wake.set()
            return
        for rid, envelope in rows:
            self._inflight.add(rid)
            self._out.put_nowait(Delivery(self.queue, rid, envelope))
        self._cursor = max(self._cursor, rows[-1][0])

    def delayed_added(self) -> None:
        self._maybe_delayed = True
        self._wake.set()

    def settled(self, delivery: Delivery) -> None:
        tag = delivery.tag
        if isinstance(tag, int):
            self._inflight.discard(tag)
        if self._backlog or self._maybe_delayed or self.ordered:
            self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    # -- Consumer ---------------------------------------------------------------------------

    async def get(self) -> Delivery:
        if self._task is None:
            self._task = asyncio.create_task(self._fetch_loop(), name=f"consume {self.queue}")
        item = await self._out.get()
        if isinstance(item, BaseException):
            self._out.put_nowait(item)  # every waiter sees the failure
            raise item
        return item

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.backend.forget_consumer(self.queue)

    async def _fetch_loop(self) -> None:
        try:
            await self._fetch_forever()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._out.put_nowait(exc)

    async def _fetch_forever(self) -> None:
        db = self.backend.db
        while not self._closed:
            self._wake.clear()
            credits = self.prefetch - len(self._inflight)
            if credits <= 0 or not (self._backlog or self._maybe_delayed or self.ordered):
                await self._wake.wait()
                continue
            now = time.time()
            inflight = frozenset(self._inflight)
            missed_before = self._missed
            backlog = self._backlog
            try:
                rows, caught_up, cursor, next_due = await db.read(
                    functools.partial(self._fetch, credits=credits, now=now, inflight=inflight,
                                      backlog=backlog)
                )
            except StoreUnavailable:
                return
            for row in rows:
                if row[0] not in self._inflight:
                    self._inflight.add(row[0])
                    self._out.put_nowait(_delivery(self.queue, row))
            self._cursor = max(self._cursor, cursor)
            if backlog and caught_up and self._missed == missed_before:
                self._backlog = False  # caught up: new rows arrive by offer from now on
            if next_due is None and not self.ordered:
                self._maybe_delayed = False
            if len(rows) >= credits or (self._backlog and self._missed != missed_before):
                continue
            timeout = self.POLL_CEILING
            if next_due is not None:
                timeout = min(timeout, max(0.0, next_due - time.time()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    def _fetch(
        self, conn: sqlite3.Connection, credits: int, now: float, inflight: frozenset[int],
        backlog: bool,
    ) -> tuple[list[Any], bool, int, float | None]:
        """Rows to hand out, whether every ready row has been read, the new cursor, and the
        next due time."""
        if self.ordered:
            if inflight:
                return [], False, 0, None
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM queue_items WHERE queue = ?"  # noqa: S608 - constant
                " AND state IN ('ready', 'delayed') ORDER BY id LIMIT 1",
                (self.queue,),
            ).fetchone()
            return ([row] if row else []), False, 0, None
        rows: list[Any] = []
        next_due = None
        if self._maybe_delayed:
            due_rows = conn.execute(
                f"SELECT {_COLUMNS} FROM queue_items WHERE queue = ? AND state = 'delayed'"  # noqa: S608
                " AND next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?",
                (self.queue, now, credits + len(inflight)),
            ).fetchall()
            rows = [r for r in due_rows if r[0] not in inflight][:credits]
            later = conn.execute(
                "SELECT MIN(next_attempt_at) FROM queue_items WHERE queue = ?"
                " AND state = 'delayed' AND next_attempt_at > ?",
                (self.queue, now),
            ).fetchone()
            next_due = later[0] if later else None
            if next_due is None and due_rows:
                next_due = now + self.POLL_CEILING  # due rows remain: keep the scan on
        cursor = self._cursor
        caught_up = False
        if backlog and len(rows) < credits:
            # Caught up only when this read came back short of what it asked for: due
            # retries may have taken part of the credits, and then a full read proves nothing.
            limit = credits - len(rows)
            ready = conn.execute(
                f"SELECT {_COLUMNS} FROM queue_items WHERE queue = ? AND state = 'ready'"  # noqa: S608
                " AND next_attempt_at = 0 AND id > ? ORDER BY id LIMIT ?",
                (self.queue, cursor, limit),
            ).fetchall()
            caught_up = len(ready) < limit
            if ready:
                cursor = ready[-1][0]
            rows.extend(ready)
        return rows, caught_up, cursor, next_due


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
