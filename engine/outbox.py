"""The outbox: "stored" and "enqueued" kept together when the queue is not in the database.

With the embedded queue, storing a message and enqueueing it are one SQLite transaction.
With a broker they cannot be, so ingest does this instead:

1. one transaction stores the message and an ``outbox`` row naming its queue;
2. the message is published and the broker confirms it;
3. the row is deleted (in the background, grouped with other deletions).

The peer is answered after step 2. A process that dies between 1 and 3 leaves the row
behind, and the next start publishes it again (``Outbox.start``); a row whose publish failed
while the process lives is retried by a periodic sweep. A message may so be published twice
(at-least-once), never zero times once the peer has been told "accepted".

A duplicate (same dedup key) of a message whose row is still pending is not simply
acknowledged: its original is published first, since the peer is about to hear "accepted"
for a message the queue may never have received.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from engine.database import Database, StoreUnavailable, apply_schema
from engine.message import Message
from engine.store import MessageStore
from queues.contract import Envelope, QueueBackend, QueueFull, QueueUnavailable

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    message_id TEXT PRIMARY KEY,
    queue      TEXT NOT NULL,
    created_at REAL NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS outbox_created ON outbox (created_at);
"""


@dataclass(frozen=True, slots=True)
class Pending:
    """An outbox row with what is needed to publish it."""

    queue: str
    envelope: Envelope


def _pending_row(conn: sqlite3.Connection, message_id: str) -> Pending | None:
    row = conn.execute(
        "SELECT o.queue, m.body, m.headers, m.content_type FROM outbox o"
        " JOIN messages m ON m.id = o.message_id WHERE o.message_id = ?",
        (message_id,),
    ).fetchone()
    if row is None:
        return None
    headers = orjson.loads(row[2]) if row[2] else {}
    return Pending(row[0], Envelope(message_id, row[1], headers, row[3]))


def _due_rows(older_than: float, after: str, limit: int, conn: sqlite3.Connection
              ) -> list[str]:
    rows = conn.execute(
        "SELECT message_id FROM outbox WHERE created_at <= ? AND message_id > ?"
        " ORDER BY message_id LIMIT ?", (older_than, after, limit)).fetchall()
    return [str(r[0]) for r in rows]


def _pending_rows(ids: list[str], conn: sqlite3.Connection) -> list[tuple[str, Pending | None]]:
    return [(i, _pending_row(conn, i)) for i in ids]


class Outbox:
    """The outbox of one database publishing to one backend.

    Args:
        db: the engine's database (the message store lives there).
        backend: the queue backend messages are published to.
        sweep_interval: seconds between looks for rows whose publish failed.
        grace: a row younger than this is left to the ingest call that wrote it.
    """

    def __init__(self, db: Database, backend: QueueBackend, *, sweep_interval: float = 2.0,
                 grace: float = 1.0) -> None:
        self.db = db
        self.backend = backend
        self.sweep_interval = sweep_interval
        self.grace = grace
        self._schema_ready = False
        self._inflight: dict[str, asyncio.Future[None]] = {}
        self._confirmed: set[str] = set()  # published, deletion not yet committed
        self._done: list[str] = []
        self._flusher: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.republished = 0

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Republish what an earlier run stored but may not have published, then keep
        sweeping for rows whose publish fails from now on."""
        await self._ensure_schema()
        try:
            sent, failed = await self.sweep(grace=0.0)
        except QueueUnavailable as exc:
            log.warning("outbox: pending messages not republished yet (%s); will retry", exc)
        else:
            if sent:
                log.warning("outbox: republished %d message(s) stored before a restart", sent)
            if failed:
                log.warning("outbox: %d pending message(s) could not be republished yet", failed)
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="outbox sweep")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._inflight:
            await asyncio.gather(*self._inflight.values(), return_exceptions=True)
        await self._flush()

    async def _ensure_schema(self) -> None:
        if not self._schema_ready:
            await self.db.write(lambda conn: apply_schema(conn, SCHEMA))
            self._schema_ready = True

    # -- ingest ----------------------------------------------------------------------------

    async def store_and_publish(
        self, message: Message, queue: str, envelope: Envelope, *,
        message_type: str | None = None, control_id: str | None = None,
    ) -> str | None:
        """Store ``message``, publish it to ``queue``, and return once both are durable.

        Returns:
            None for a new message; the id of the earlier message for a duplicate.

        Raises:
            QueueUnavailable, QueueFull: the broker cannot take it now; the peer must be
                told to send again. A refused (not merely unconfirmed) message is removed
                from the store, so that the resend is not mistaken for a duplicate.
            StoreUnavailable: the database cannot commit.
        """
        await self._ensure_schema()
        await self.backend.ping()  # refuse before storing while the broker is known away

        def op(conn: sqlite3.Connection) -> tuple[str | None, Pending | None]:
            dup = MessageStore.insert(conn, message, message_type=message_type,
                                      control_id=control_id)
            if dup is not None:
                return dup, _pending_row(conn, dup)
            conn.execute(
                "INSERT INTO outbox (message_id, queue, created_at) VALUES (?, ?, ?)",
                (message.id, queue, time.time()),
            )
            return None, None

        duplicate_of, pending = await self.db.write(op)
        if duplicate_of is None:
            try:
                await self._publish(message.id, queue, envelope)
            except QueueFull:
                await self._withdraw(message.id)
                raise
            return None
        if pending is not None:
            await self._publish(duplicate_of, pending.queue, pending.envelope)
        return duplicate_of

    async def _withdraw(self, message_id: str) -> None:
        """Undo the store of a message the broker definitely refused (never published)."""
        def op(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM outbox WHERE message_id = ?", (message_id,))
            conn.execute("DELETE FROM events WHERE message_id = ?", (message_id,))
            conn.execute("DELETE FROM messages WHERE id = ?", (message_id,))

        try:
            await self.db.write(op)
        except StoreUnavailable as exc:  # the row stays; the sweep publishes it later
            log.warning("outbox: could not withdraw refused message %s: %s", message_id, exc)

    # -- publishing ------------------------------------------------------------------------

    async def _publish(self, message_id: str, queue: str, envelope: Envelope) -> None:
        """Publish one row's message; concurrent calls for one message share one publish."""
        future = self._inflight.get(message_id)
        if future is None:
            future = asyncio.ensure_future(self._publish_once(message_id, queue, envelope))
            self._inflight[message_id] = future
            future.add_done_callback(functools.partial(self._published, message_id))
        await asyncio.shield(future)

    def _published(self, message_id: str, future: asyncio.Future[None]) -> None:
        self._inflight.pop(message_id, None)
        if not future.cancelled():
            future.exception()  # retrieved: a caller that went away must not leave it unseen

    async def _publish_once(self, message_id: str, queue: str, envelope: Envelope) -> None:
        await self.backend.publish(queue, [envelope])
        self._confirmed.add(message_id)
        self._done.append(message_id)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="outbox flush")

    async def _flush(self) -> None:
        """Delete the rows of confirmed publishes, many per transaction."""
        while self._done:
            batch, self._done = self._done, []

            def op(conn: sqlite3.Connection, ids: Sequence[str] = batch) -> None:
                conn.executemany("DELETE FROM outbox WHERE message_id = ?",
                                 [(i,) for i in ids])

            try:
                await self.db.write(op)
            except StoreUnavailable as exc:
                # The rows stay and are published again later: a duplicate, not a loss.
                log.warning("outbox: could not mark %d row(s) done: %s", len(batch), exc)
            finally:
                self._confirmed.difference_update(batch)

    async def sweep(self, *, grace: float | None = None, limit: int = 500) -> tuple[int, int]:
        """Publish every pending row older than ``grace`` seconds.

        Returns (published, failed). A row that fails is counted on its row and tried again
        next time; it does not hold up the others.

        Raises:
            QueueUnavailable: the backend is away (nothing was tried).
        """
        await self.backend.ping()
        older_than = time.time() - (self.grace if grace is None else grace)
        sent = failed = 0
        after = ""
        while True:
            rows = await self.db.read(functools.partial(_due_rows, older_than, after, limit))
            if not rows:
                return sent, failed
            after = rows[-1]
            ids = [i for i in rows if i not in self._inflight and i not in self._confirmed]
            found = await self.db.read(functools.partial(_pending_rows, ids))
            pending = [(i, p) for i, p in found if p is not None]
            results = await asyncio.gather(
                *(self._publish(i, p.queue, p.envelope) for i, p in pending),
                return_exceptions=True,
            )
            errors = [(i, r) for (i, _), r in zip(pending, results, strict=True)
                      if isinstance(r, BaseException)]
            sent += len(pending) - len(errors)
            failed += len(errors)
            self.republished += len(pending) - len(errors)
            if errors:
                await self._note_failures(errors)

    async def _note_failures(self, errors: list[tuple[str, BaseException]]) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE message_id = ?",
                [(str(error)[:500], i) for i, error in errors],
            )

        with contextlib.suppress(StoreUnavailable):
            await self.db.write(op)

    async def _sweep_forever(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.sweep_interval)
            try:
                sent, failed = await self.sweep()
            except (QueueUnavailable, StoreUnavailable) as exc:
                if not failing:
                    log.warning("outbox: cannot republish pending messages yet: %s", exc)
                failing = True
                continue
            except Exception:
                log.exception("outbox: sweep failed")
                continue
            if sent:
                log.warning("outbox: published %d message(s) whose first publish failed", sent)
            if failed and not failing:
                log.warning("outbox: %d pending message(s) could not be published yet", failed)
            failing = failed > 0


_outboxes: weakref.WeakKeyDictionary[Database, Outbox] = weakref.WeakKeyDictionary()


def outbox_for(db: Database, backend: QueueBackend) -> Outbox:
    """The one outbox of ``db`` (created on first use; ``start`` it to recover a crash)."""
    outbox = _outboxes.get(db)
    if outbox is None or outbox.backend is not backend:
        outbox = Outbox(db, backend)
        _outboxes[db] = outbox
    return outbox


async def store_and_publish(
    db: Database, backend: QueueBackend, message: Message, queue: str, envelope: Envelope, *,
    message_type: str | None = None, control_id: str | None = None,
) -> str | None:
    """Ingest's entry point for backends outside the database: see ``Outbox``."""
    return await outbox_for(db, backend).store_and_publish(
        message, queue, envelope, message_type=message_type, control_id=control_id,
    )
