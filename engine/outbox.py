"""The outbox: "stored" and "enqueued" kept together when the queue is not in the database.

With the embedded queue, storing a message and enqueueing it are one SQLite transaction.
With a broker they cannot be, so ingest does this instead:

1. one transaction stores the message and one ``outbox`` row per queue it goes to (the
   channel's queue, or its destinations' queues when ingest fans out directly);
2. the message is published to each queue and the broker confirms it;
3. the rows are deleted (in the background, many per transaction).

The peer is answered after step 2. A process that dies between 1 and 3 leaves rows behind,
and the next start publishes them again (``Outbox.start``); a row whose publish failed while
the process lives is retried by a periodic sweep. A message may so be published twice
(at-least-once), never zero times once the peer has been told "accepted".

A duplicate (same dedup key) of a message that still has pending rows is not simply
acknowledged: those rows are published first, since the peer is about to hear "accepted"
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
from engine.logsetup import log_failure
from engine.message import Message
from engine.store import RECEIVED, KeyPolicy, MessageStore
from queues.contract import Envelope, QueueBackend, QueueFull, QueueUnavailable

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    message_id TEXT NOT NULL,
    queue      TEXT NOT NULL,
    created_at REAL NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    PRIMARY KEY (message_id, queue)
);
CREATE INDEX IF NOT EXISTS outbox_created ON outbox (created_at);
"""

Key = tuple[str, str]  # (message id, queue)


class _AllRefused(Exception):
    """Every queue refused the message: it was published nowhere."""


@dataclass(frozen=True, slots=True)
class Pending:
    """An outbox row with what is needed to publish it."""

    queue: str
    envelope: Envelope


@dataclass(frozen=True, slots=True)
class Stored:
    """A message for ``store_and_publish_many``: what to store and where to publish it."""

    message: Message
    queues: list[str]
    envelope: Envelope
    message_type: str | None = None
    control_id: str | None = None
    status: str = RECEIVED
    detail: str | None = None
    keys: KeyPolicy | None = None


def _store(conn: sqlite3.Connection, item: Stored, now: float
           ) -> tuple[str | None, list[Pending]]:
    """Store one message with its outbox rows; for a duplicate, the earlier message's id
    and its rows still pending."""
    dup = MessageStore.insert(conn, item.message, message_type=item.message_type,
                              control_id=item.control_id, status=item.status,
                              detail=item.detail, keys=item.keys)
    if dup is not None:
        return dup, _pending(conn, dup)
    conn.executemany(
        "INSERT INTO outbox (message_id, queue, created_at) VALUES (?, ?, ?)",
        [(item.message.id, q, now) for q in item.queues],
    )
    return None, []


def _pending(conn: sqlite3.Connection, message_id: str, queue: str | None = None
             ) -> list[Pending]:
    sql = ("SELECT o.queue, m.body, m.headers, m.content_type FROM outbox o"
           " JOIN messages m ON m.id = o.message_id WHERE o.message_id = ?")
    args: tuple[str, ...] = (message_id,)
    if queue is not None:
        sql += " AND o.queue = ?"
        args = (message_id, queue)
    out = []
    for q, body, headers, content_type in conn.execute(sql, args).fetchall():
        envelope = Envelope(message_id, body, orjson.loads(headers) if headers else {},
                            content_type)
        out.append(Pending(q, envelope))
    return out


def _due(older_than: float, after: Key, limit: int, conn: sqlite3.Connection) -> list[Key]:
    rows = conn.execute(
        "SELECT message_id, queue FROM outbox WHERE created_at <= ?"
        " AND (message_id, queue) > (?, ?) ORDER BY message_id, queue LIMIT ?",
        (older_than, after[0], after[1], limit),
    ).fetchall()
    return [(str(m), str(q)) for m, q in rows]


def _pending_of(keys: list[Key], conn: sqlite3.Connection) -> list[tuple[Key, Pending]]:
    out: list[tuple[Key, Pending]] = []
    for message_id, queue in keys:
        out.extend(((message_id, queue), p) for p in _pending(conn, message_id, queue))
    return out


class Outbox:
    """The outbox of one database publishing to one backend.

    Args:
        db: the engine's database (the message store lives there).
        backend: the queue backend messages are published to.
        sweep_interval: seconds between looks for rows whose publish failed.
        grace: a row younger than this is left to the ingest call that wrote it.
        flush_delay: seconds the rows of confirmed publishes wait to be deleted together
            (one small transaction for many messages instead of one for a few; a crash
            meanwhile only republishes them).
    """

    def __init__(self, db: Database, backend: QueueBackend, *, sweep_interval: float = 2.0,
                 grace: float = 1.0, flush_delay: float = 0.05) -> None:
        self.db = db
        self.backend = backend
        self.sweep_interval = sweep_interval
        self.grace = grace
        self.flush_delay = flush_delay
        self._schema_ready = False
        self._inflight: dict[Key, asyncio.Future[None]] = {}
        self._confirmed: set[Key] = set()  # published, deletion not yet committed
        self._done: list[Key] = []
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
        if self._flusher is not None:
            # Its wait is cut short; a deletion it already handed to the database still
            # commits (the writer runs what it was given).
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        await self._flush()

    async def _ensure_schema(self) -> None:
        if not self._schema_ready:
            await self.db.write(lambda conn: apply_schema(conn, SCHEMA))
            self._schema_ready = True

    # -- ingest ----------------------------------------------------------------------------

    async def store_and_publish(
        self, message: Message, queues: str | Sequence[str], envelope: Envelope, *,
        message_type: str | None = None, control_id: str | None = None,
        status: str = RECEIVED, detail: str | None = None,
        keys: KeyPolicy | None = None,
    ) -> str | None:
        """Store ``message``, publish it to ``queues``, and return once both are durable.

        Args:
            queues: one queue, or several (a direct fan-out to destinations; none when no
                destination wants the message: it is only stored).
            status, detail: the stored message's status and its first event's detail.

        Returns:
            None for a new message; the id of the earlier message for a duplicate.

        Raises:
            QueueUnavailable, QueueFull: the broker cannot take it now; the peer must be
                told to send again. A message every queue refused (not merely left
                unconfirmed) is removed from the store, so the resend is not a duplicate.
            StoreUnavailable: the database cannot commit.
        """
        item = Stored(message, [queues] if isinstance(queues, str) else list(queues),
                      envelope, message_type, control_id, status, detail, keys)
        return (await self.store_and_publish_many([item]))[0]

    async def store_and_publish_many(self, items: Sequence[Stored]) -> list[str | None]:
        """``store_and_publish`` for several messages, in order: one transaction stores them
        all (a KeyReused or a failed commit stores none), then they are published together
        and this returns once the broker has confirmed every one.

        Raises:
            QueueUnavailable, QueueFull, StoreUnavailable: as ``store_and_publish``; what was
                stored and not published stays in the outbox, and a resend of the batch
                finds those messages as duplicates and publishes their rows first.
        """
        await self._ensure_schema()
        await self.backend.ping()  # refuse before storing while the broker is known away
        now = time.time()

        def op(conn: sqlite3.Connection) -> list[tuple[str | None, list[Pending]]]:
            return [_store(conn, item, now) for item in items]

        # Publishing only after the commit (rather than beside it, once the transaction has
        # decided the message is new) was measured to be as fast and cheaper: see the
        # "Queue backends" section of docs/performance.md.
        stored = await self.db.write(op)
        if len(items) == 1:
            outcomes: list[BaseException | None] = [None]
            try:
                await self._publish_stored(items[0], *stored[0])
            except (QueueFull, QueueUnavailable, _AllRefused) as exc:
                outcomes = [exc]
        else:
            # Started in order, so each queue receives the messages in the batch's order.
            outcomes = await asyncio.gather(
                *(self._publish_stored(item, dup, pending)
                  for item, (dup, pending) in zip(items, stored, strict=True)),
                return_exceptions=True,
            )
        refusals = [(item, o) for item, o in zip(items, outcomes, strict=True)
                    if isinstance(o, _AllRefused)]
        for item, _ in refusals:  # in no queue: removed, so a resend is not a duplicate
            await self._withdraw(item.message.id)
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, _AllRefused):
                raise outcome
        if refusals:
            raise QueueFull(str(refusals[0][1]))
        return [dup for dup, _ in stored]

    async def _publish_stored(self, item: Stored, duplicate_of: str | None,
                              pending: list[Pending]) -> None:
        """Publish what storing ``item`` left to publish."""
        if duplicate_of is not None:
            # Rows of publishes already confirmed (their deletion is pending) are done.
            pending = [p for p in pending if (duplicate_of, p.queue) not in self._confirmed]
            if pending:
                await self._publish_all(duplicate_of, pending)
            return
        await self._publish_all(item.message.id, [Pending(q, item.envelope)
                                                  for q in item.queues])

    async def _publish_all(self, message_id: str, pending: list[Pending]) -> None:
        """Publish every row of one message.

        Raises:
            _AllRefused: the broker refused it on every queue (it is in none of them).
            QueueFull, QueueUnavailable: some publish failed (it may be in some queues).
        """
        if len(pending) == 1:
            results: list[BaseException | None] = [None]
            try:
                await self._publish(message_id, pending[0].queue, pending[0].envelope)
            except (QueueFull, QueueUnavailable) as exc:
                results = [exc]
        else:
            results = await asyncio.gather(
                *(self._publish(message_id, p.queue, p.envelope) for p in pending),
                return_exceptions=True,
            )
        errors = [r for r in results if isinstance(r, BaseException)]
        if not errors:
            return
        if len(errors) == len(results) and all(isinstance(e, QueueFull) for e in errors):
            raise _AllRefused(str(errors[0]))
        raise errors[0]

    async def _withdraw(self, message_id: str) -> None:
        """Undo the store of a message the broker definitely refused (never published)."""
        def op(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM outbox WHERE message_id = ?", (message_id,))
            conn.execute("DELETE FROM events WHERE message_id = ?", (message_id,))
            conn.execute("DELETE FROM messages WHERE id = ?", (message_id,))

        try:
            await self.db.write(op)
        except StoreUnavailable as exc:  # the rows stay; the sweep publishes them later
            log.warning("outbox: could not withdraw refused message %s: %s", message_id, exc)

    # -- publishing ------------------------------------------------------------------------

    async def _publish(self, message_id: str, queue: str, envelope: Envelope, *,
                       republish: bool = False) -> None:
        """Publish one row's message; a concurrent call for the same row shares its outcome.

        The publish runs in the caller's task (no task of its own: this is the hot path). A
        caller cancelled mid-publish leaves its row, and the sweep publishes it again, marked
        as a possible repeat: a row whose publish was confirmed just before a crash is still
        there, and its message may have been delivered already.
        """
        key = (message_id, queue)
        shared = self._inflight.get(key)
        if shared is not None:
            await asyncio.shield(shared)
            return
        shared = asyncio.get_running_loop().create_future()
        self._inflight[key] = shared
        try:
            await self.backend.publish(queue, [envelope], republish=republish)
        except BaseException as exc:
            # A caller sharing this publish gets a plain failure, even when it was the
            # owner that was cancelled.
            shared.set_exception(exc if isinstance(exc, Exception) else QueueUnavailable(
                "the publish was interrupted"))
            shared.exception()  # retrieved: nobody else may be waiting for it
            raise
        else:
            shared.set_result(None)
            self._confirmed.add(key)
            self._done.append(key)
            if self._flusher is None or self._flusher.done():
                self._flusher = asyncio.create_task(self._flush_later(), name="outbox flush")
        finally:
            del self._inflight[key]

    async def _flush_later(self) -> None:
        await asyncio.sleep(self.flush_delay)
        await self._flush()

    async def _flush(self) -> None:
        """Delete the rows of confirmed publishes, many per transaction."""
        while self._done:
            batch, self._done = self._done, []

            def op(conn: sqlite3.Connection, keys: Sequence[Key] = batch) -> None:
                conn.executemany("DELETE FROM outbox WHERE message_id = ? AND queue = ?", keys)

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
        after: Key = ("", "")
        while True:
            keys = await self.db.read(functools.partial(_due, older_than, after, limit))
            if not keys:
                return sent, failed
            after = keys[-1]
            keys = [k for k in keys if k not in self._inflight and k not in self._confirmed]
            pending = await self.db.read(functools.partial(_pending_of, keys))
            results = await asyncio.gather(
                *(self._publish(k[0], p.queue, p.envelope, republish=True)
                  for k, p in pending),
                return_exceptions=True,
            )
            errors = [(k, r) for (k, _), r in zip(pending, results, strict=True)
                      if isinstance(r, BaseException)]
            sent += len(pending) - len(errors)
            failed += len(errors)
            self.republished += len(pending) - len(errors)
            if errors:
                await self._note_failures(errors)

    async def _note_failures(self, errors: list[tuple[Key, BaseException]]) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?"
                " WHERE message_id = ? AND queue = ?",
                [(str(error)[:500], m, q) for (m, q), error in errors],
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
            except Exception as exc:
                log_failure(log, exc, "outbox: sweep failed")
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
