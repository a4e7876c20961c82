"""The in-doubt ledger: settlement-type calls written down before they are sent.

Before a 2207 / 2304 / 2208 / 2305 goes out, the adapter records the envelope's message id
with the ``msgid`` it is about to use and the keys needed to query for it afterwards. The
record is removed once the outcome is known. If the outcome stays unknown (the answer was lost
and the platform could not be asked), the record stays, and the next delivery of the same
message resolves the old call first instead of sending a second settlement.

``MemoryLedger`` survives redeliveries within a process; ``SqliteLedger`` (a small file of its
own, WAL, ``synchronous=FULL``) also survives a crash or restart.
"""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Pending:
    """A settlement-type call whose outcome is not known yet."""

    key: str
    msgid: str
    infno: str
    kind: str
    psn_no: str
    mdtrt_id: str
    setl_id: str
    medfee_sumamt: str
    insuplc_admdvs: str
    sent_at: float


class Ledger(Protocol):
    async def get(self, key: str) -> Pending | None: ...

    async def put(self, pending: Pending) -> None: ...

    async def remove(self, key: str) -> None: ...

    async def close(self) -> None: ...


class MemoryLedger:
    def __init__(self) -> None:
        self._rows: dict[str, Pending] = {}

    async def get(self, key: str) -> Pending | None:
        return self._rows.get(key)

    async def put(self, pending: Pending) -> None:
        self._rows[pending.key] = pending

    async def remove(self, key: str) -> None:
        self._rows.pop(key, None)

    async def close(self) -> None:
        return None

    def __len__(self) -> int:
        return len(self._rows)


_FIELDS = tuple(Pending.__dataclass_fields__)
# Column names are the dataclass's own field names, never input.
_SELECT = f"SELECT {', '.join(_FIELDS)} FROM pending WHERE key = ?"  # noqa: S608
_INSERT = (
    f"INSERT OR REPLACE INTO pending ({', '.join(_FIELDS)})"  # noqa: S608
    f" VALUES ({', '.join('?' for _ in _FIELDS)})"
)
_DDL = f"""CREATE TABLE IF NOT EXISTS pending (
    {", ".join(f + (" TEXT PRIMARY KEY" if f == "key" else "") for f in _FIELDS)}
)"""


class SqliteLedger:
    """A durable ledger in its own SQLite file; every write is committed before returning."""

    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    def _open(self) -> sqlite3.Connection:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(_DDL)
        return conn

    async def _run(self, sql: str, args: tuple[object, ...]) -> list[tuple[object, ...]]:
        async with self._lock:
            if self._conn is None:
                self._conn = await asyncio.to_thread(self._open)
            conn = self._conn
            return await asyncio.to_thread(lambda: conn.execute(sql, args).fetchall())

    async def get(self, key: str) -> Pending | None:
        rows = await self._run(_SELECT, (key,))
        if not rows:
            return None
        values = dict(zip(_FIELDS, rows[0], strict=True))
        values["sent_at"] = float(str(values["sent_at"]))
        return Pending(**values)  # type: ignore[arg-type]

    async def put(self, pending: Pending) -> None:
        row = asdict(pending)
        await self._run(_INSERT, tuple(row[f] for f in _FIELDS))

    async def remove(self, key: str) -> None:
        await self._run("DELETE FROM pending WHERE key = ?", (key,))

    async def close(self) -> None:
        async with self._lock:
            if self._conn is not None:
                conn, self._conn = self._conn, None
                await asyncio.to_thread(conn.close)
