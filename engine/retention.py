"""Retention: delete finished messages and their history after ``store.retention_days``.

A hospital interface engine keeps every message for a while (to search, replay and prove
what was sent) but not forever. A message is finished when no queue holds it any more
(delivered, filtered or moved on) and no outbox row waits to publish it; dead letters stay
until someone requeues or deletes them. Deletion runs in small batches through the writer,
so it never holds the database for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time

from engine.database import Database, StoreUnavailable

log = logging.getLogger(__name__)

BATCH = 500


def _delete_batch(cutoff: float, conn: sqlite3.Connection) -> int:
    ids = [r[0] for r in conn.execute(
        "SELECT id FROM messages WHERE received_at < ? ORDER BY received_at LIMIT ?",
        (cutoff, BATCH * 4),
    )]
    if not ids:
        return 0
    marks = ",".join("?" * len(ids))
    busy = {r[0] for r in conn.execute(
        f"SELECT message_id FROM queue_items WHERE message_id IN ({marks})", ids  # noqa: S608
    )}
    has_outbox = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'outbox'"
    ).fetchone()
    if has_outbox:
        busy |= {r[0] for r in conn.execute(
            f"SELECT message_id FROM outbox WHERE message_id IN ({marks})", ids  # noqa: S608
        )}
    done = [i for i in ids if i not in busy][:BATCH]
    if not done:
        return 0
    marks = ",".join("?" * len(done))
    conn.execute(f"DELETE FROM events WHERE message_id IN ({marks})", done)  # noqa: S608
    conn.execute(f"DELETE FROM messages WHERE id IN ({marks})", done)  # noqa: S608
    return len(done)


async def purge(db: Database, days: float, *, now: float | None = None) -> int:
    """Delete finished messages older than ``days``; returns how many."""
    cutoff = (now if now is not None else time.time()) - days * 86_400
    total = 0
    while True:
        deleted = await db.write(lambda conn: _delete_batch(cutoff, conn))
        total += deleted
        if deleted < BATCH:
            return total
        await asyncio.sleep(0)  # let the hot path's commits in between batches


async def run_retention(db: Database, days: float, interval: float = 3600.0) -> None:
    """Purge now and then every ``interval`` seconds until cancelled."""
    while True:
        with contextlib.suppress(StoreUnavailable):
            deleted = await purge(db, days)
            if deleted:
                log.info("retention: deleted %d finished message(s) older than %g days",
                         deleted, days)
        await asyncio.sleep(interval)
