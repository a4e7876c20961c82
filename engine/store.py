"""The message store: every message as received, its mapped form, and its history.

Two layers per message, as integrators expect from an interface engine: the *source layer*
(``body``, exactly the bytes received) and the *standard layer* (``mapped``, the channel
mapping's output). ``events`` is the append-only history of status changes per destination,
which the admin API shows and searches.

All writes here are plain functions on a connection, so callers compose them with queue
changes in one transaction (see ``queues.sqlite.SqliteQueue.transaction``).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from engine.database import Database, apply_schema
from engine.errors import KeyReused
from engine.message import Message

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id             TEXT PRIMARY KEY,
    channel        TEXT NOT NULL,
    content_type   TEXT NOT NULL,
    dedup_key      TEXT,
    correlation_id TEXT,
    message_type   TEXT,
    control_id     TEXT,
    received_at    REAL NOT NULL,
    status         TEXT NOT NULL,
    headers        BLOB,
    body           BLOB NOT NULL,
    mapped         BLOB,
    mapped_type    TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_dedup ON messages (channel, dedup_key);
CREATE INDEX IF NOT EXISTS messages_control ON messages (control_id);
CREATE INDEX IF NOT EXISTS messages_received ON messages (received_at);
CREATE TABLE IF NOT EXISTS events (
    id          INTEGER PRIMARY KEY,
    message_id  TEXT NOT NULL,
    at          REAL NOT NULL,
    status      TEXT NOT NULL,
    destination TEXT,
    attempt     INTEGER NOT NULL DEFAULT 0,
    detail      TEXT
);
CREATE INDEX IF NOT EXISTS events_message ON events (message_id);
"""

# Status words, shared by the store, the admin API, metrics and logs.
RECEIVED = "received"
FILTERED = "filtered"
MAPPED = "mapped"
QUEUED = "queued"
SENT = "sent"
RETRYING = "retrying"
DEAD_LETTERED = "dead_lettered"
REPLAYED = "replayed"


@dataclass(frozen=True, slots=True)
class StoredMessage:
    id: str
    channel: str
    content_type: str
    dedup_key: str | None
    correlation_id: str | None
    message_type: str | None
    control_id: str | None
    received_at: float
    status: str
    headers: Mapping[str, str]
    body: bytes
    mapped: bytes | None
    mapped_type: str | None


@dataclass(frozen=True, slots=True)
class Event:
    at: float
    status: str
    destination: str | None
    attempt: int
    detail: str | None


class MessageStore:
    """Writes (as connection functions) and reads (async) of messages and their events."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def start(self) -> None:
        await self.db.write(lambda conn: apply_schema(conn, SCHEMA))

    # -- writes: call inside a write transaction ---------------------------------------------

    @staticmethod
    def insert(
        conn: sqlite3.Connection,
        message: Message,
        *,
        message_type: str | None = None,
        control_id: str | None = None,
        status: str = RECEIVED,
        detail: str | None = None,
        keys: KeyPolicy | None = None,
    ) -> str | None:
        """Store a received message; return the id of an earlier one with the same dedup key.

        Returns None when the message is new. A duplicate is not stored again: the caller
        acknowledges it and does nothing more. ``status`` is the message's status after this
        transaction (``queued`` when ingest fans out directly to destinations). ``keys``
        says how long a key is held and how a resend is told from a reused key
        (``KeyReused``); without it a key is held for good and taken as it is.
        """
        if message.dedup_key is not None:
            earlier, expired = _holder(conn, message, keys, message_type)
            if earlier is not None:
                return earlier
            if expired:
                # A key held longer than the window is free again: the earlier message keeps
                # its history and control id, and gives up the key.
                conn.execute(
                    "UPDATE messages SET dedup_key = NULL WHERE channel = ? AND dedup_key = ?",
                    (message.channel, message.dedup_key),
                )
        conn.execute(
            "INSERT INTO messages (id, channel, content_type, dedup_key, correlation_id,"
            " message_type, control_id, received_at, status, headers, body)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                message.id, message.channel, message.content_type, message.dedup_key,
                message.correlation_id, message_type, control_id, message.received_at,
                status, orjson.dumps(dict(message.headers)) if message.headers else None,
                message.body,
            ),
        )
        conn.execute(
            "INSERT INTO events (message_id, at, status, detail) VALUES (?, ?, ?, ?)",
            (message.id, message.received_at, RECEIVED, detail),
        )
        return None

    @staticmethod
    def record(
        conn: sqlite3.Connection,
        message_id: str,
        status: str,
        *,
        destination: str | None = None,
        attempt: int = 0,
        detail: str | None = None,
        at: float | None = None,
    ) -> None:
        """Append a status change and make it the message's current status."""
        conn.execute(
            "INSERT INTO events (message_id, at, status, destination, attempt, detail)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (message_id, at or time.time(), status, destination, attempt, detail),
        )
        conn.execute("UPDATE messages SET status = ? WHERE id = ?", (status, message_id))

    @staticmethod
    def set_mapped(
        conn: sqlite3.Connection, message_id: str, body: bytes, content_type: str
    ) -> None:
        conn.execute(
            "UPDATE messages SET mapped = ?, mapped_type = ? WHERE id = ?",
            (body, content_type, message_id),
        )

    # -- reads -------------------------------------------------------------------------------

    async def get(self, message_id: str) -> StoredMessage | None:
        row = await self.db.read(
            lambda conn: conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id = ?", (message_id,)  # noqa: S608
            ).fetchone()
        )
        return _stored(row) if row else None

    async def was_sent(self, message_id: str, destination: str) -> bool:
        """Whether ``destination`` already took this message (a ``sent`` event exists)."""
        row = await self.db.read(
            lambda conn: conn.execute(
                "SELECT 1 FROM events WHERE message_id = ? AND destination = ? AND status = ?"
                " LIMIT 1",
                (message_id, destination, SENT),
            ).fetchone()
        )
        return row is not None

    async def events(self, message_id: str) -> list[Event]:
        rows = await self.db.read(
            lambda conn: conn.execute(
                "SELECT at, status, destination, attempt, detail FROM events"
                " WHERE message_id = ? ORDER BY id",
                (message_id,),
            ).fetchall()
        )
        return [Event(*r) for r in rows]

    async def search(
        self,
        *,
        channel: str | None = None,
        status: str | None = None,
        control_id: str | None = None,
        message_type: str | None = None,
        text: str | None = None,
        since: float | None = None,
        until: float | None = None,
        before_id: str | None = None,
        limit: int = 50,
    ) -> list[StoredMessage]:
        """Newest first; ``before_id`` pages backwards through older messages."""
        where: list[str] = []
        args: list[Any] = []
        for column, value in (
            ("channel", channel), ("status", status), ("control_id", control_id),
            ("message_type", message_type),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if since is not None:
            where.append("received_at >= ?")
            args.append(since)
        if until is not None:
            where.append("received_at < ?")
            args.append(until)
        if before_id is not None:
            where.append("id < ?")
            args.append(before_id)
        if text:
            where.append("instr(body, ?) > 0")
            args.append(text.encode())
        sql = f"SELECT {_MESSAGE_COLUMNS} FROM messages"  # noqa: S608 - columns are constants
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(max(1, min(limit, 1000)))
        rows = await self.db.read(lambda conn: conn.execute(sql, args).fetchall())
        return [_stored(r) for r in rows]

    async def count_by_status(self) -> dict[str, int]:
        rows = await self.db.read(
            lambda conn: conn.execute("SELECT status, COUNT(*) FROM messages GROUP BY status")
            .fetchall()
        )
        return {str(s): int(n) for s, n in rows}


_MESSAGE_COLUMNS = (
    "id, channel, content_type, dedup_key, correlation_id, message_type, control_id,"
    " received_at, status, headers, body, mapped, mapped_type"
)


def _stored(row: Any) -> StoredMessage:
    headers = orjson.loads(row[9]) if row[9] else {}
    return StoredMessage(
        id=row[0], channel=row[1], content_type=row[2], dedup_key=row[3],
        correlation_id=row[4], message_type=row[5], control_id=row[6], received_at=row[7],
        status=row[8], headers=headers, body=row[10], mapped=row[11], mapped_type=row[12],
    )


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    """How a channel holds dedup keys.

    Attributes:
        window: seconds a key is held; a message whose key was first seen longer ago is new.
        same_content: for keys made from a sender's counter (HL7 control ids), whether a
            message under a held key is a resend of the holder, ``(earlier, later)``.
            ``None`` takes the key as the truth (an idempotency key).
    """

    window: float = float("inf")
    same_content: Callable[[bytes, bytes], bool] | None = None


def _holder(
    conn: sqlite3.Connection, message: Message, keys: KeyPolicy | None,
    message_type: str | None,
) -> tuple[str | None, bool]:
    """(the id of the message holding ``message``'s key, whether a holder's time is up).

    Raises:
        KeyReused: the holder is not what ``message`` says (``keys.same_content``).
    """
    row = conn.execute(
        "SELECT id, received_at, body, message_type FROM messages"
        " WHERE channel = ? AND dedup_key = ?",
        (message.channel, message.dedup_key),
    ).fetchone()
    if row is None:
        return None, False
    earlier_id, received_at, body, earlier_type = str(row[0]), row[1], row[2], row[3]
    if keys is None:
        return earlier_id, False
    if received_at < message.received_at - keys.window:
        return None, True
    if keys.same_content is None or (
        earlier_type == message_type and keys.same_content(bytes(body), message.body)
    ):
        return earlier_id, False
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(received_at))
    raise KeyReused(
        f"key {message.dedup_key} was taken on {when} by a different message ({earlier_id}):"
        " control ids must not be reused (or set the channel's dedup fields)",
        key=message.dedup_key or "", earlier_id=earlier_id,
    )
