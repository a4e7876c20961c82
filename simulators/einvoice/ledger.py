"""The simulated platform's books: invoices, red notes and number sequences, in SQLite.

Numbers are allocated in the same transaction that records the invoice (one writer
thread), so concurrent issues get consecutive numbers and a crash never skips or repeats
one. Batch codes look like the real ones: region (4) + kind (2) + year (2), e.g.
``37020126`` for an outpatient invoice in 2026; red notes have their own kind ``09``.
"""

from __future__ import annotations

import secrets
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from engine.database import Database, apply_schema

KIND_CODES = {"outpatient": "01", "inpatient": "02", "registration": "03", "red": "09"}

SCHEMA = """
CREATE TABLE IF NOT EXISTS einv_bill (
    id INTEGER PRIMARY KEY,
    bus_no TEXT NOT NULL,
    kind TEXT NOT NULL,
    bill_batch_code TEXT NOT NULL,
    bill_no TEXT NOT NULL,
    random TEXT NOT NULL,
    total_amt TEXT NOT NULL,
    bus_date_time TEXT NOT NULL,
    create_time TEXT NOT NULL,
    state INTEGER NOT NULL DEFAULT 1,
    red_batch_code TEXT,
    red_no TEXT,
    red_random TEXT,
    red_create_time TEXT,
    red_reason TEXT,
    token TEXT NOT NULL UNIQUE,
    request TEXT NOT NULL,
    UNIQUE (bill_batch_code, bill_no)
);
CREATE INDEX IF NOT EXISTS einv_bill_bus_no ON einv_bill (bus_no);
CREATE TABLE IF NOT EXISTS einv_sequence (
    batch_code TEXT PRIMARY KEY,
    last_no INTEGER NOT NULL
)
"""

_COLUMNS = (
    "bus_no, kind, bill_batch_code, bill_no, random, total_amt, bus_date_time, create_time, "
    "state, red_batch_code, red_no, red_random, red_create_time, red_reason, token"
)


@dataclass(frozen=True, slots=True)
class Bill:
    bus_no: str
    kind: str
    bill_batch_code: str
    bill_no: str
    random: str
    total_amt: str
    bus_date_time: str
    create_time: str
    state: int
    red_batch_code: str | None
    red_no: str | None
    red_random: str | None
    red_create_time: str | None
    red_reason: str | None
    token: str

    @property
    def written_off(self) -> bool:
        return self.state == 2


def _now() -> str:
    return datetime.now().strftime("%Y%m%d%H%M%S%f")[:17]


def _next_number(conn: sqlite3.Connection, batch_code: str) -> str:
    row = conn.execute(
        "SELECT last_no FROM einv_sequence WHERE batch_code = ?", (batch_code,)
    ).fetchone()
    number = (row[0] if row else 0) + 1
    conn.execute(
        "INSERT INTO einv_sequence (batch_code, last_no) VALUES (?, ?) "
        "ON CONFLICT (batch_code) DO UPDATE SET last_no = excluded.last_no",
        (batch_code, number),
    )
    return f"{number:010d}"


def _select(conn: sqlite3.Connection, where: str, args: tuple[object, ...]) -> Bill | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM einv_bill WHERE {where} ORDER BY id DESC LIMIT 1",  # noqa: S608
        args,
    ).fetchone()
    return Bill(*row) if row else None


WriteOffOutcome = Literal["done", "already", "missing"]


class Ledger:
    def __init__(self, path: str | Path, *, region: str = "3702") -> None:
        self.db = Database(path, synchronous="NORMAL")
        self.region = region

    async def open(self) -> None:
        await self.db.open()
        await self.db.write(lambda conn: apply_schema(conn, SCHEMA))

    async def close(self) -> None:
        await self.db.close()

    def _batch_code(self, kind: str) -> str:
        return f"{self.region}{KIND_CODES[kind]}{datetime.now():%y}"

    async def issue(
        self, kind: str, *, bus_no: str, total_amt: str, bus_date_time: str, request: str,
        allow_duplicate: bool,
    ) -> tuple[Bill, bool]:
        """Record a new invoice; returns it and False, or (refusing a duplicate busNo) the
        existing one and True."""
        batch_code = self._batch_code(kind)

        def op(conn: sqlite3.Connection) -> tuple[Bill, bool]:
            if not allow_duplicate:
                existing = _select(conn, "bus_no = ?", (bus_no,))
                if existing is not None:
                    return existing, True
            number = _next_number(conn, batch_code)
            token = secrets.token_urlsafe(16)
            conn.execute(
                "INSERT INTO einv_bill (bus_no, kind, bill_batch_code, bill_no, random, "
                "total_amt, bus_date_time, create_time, token, request) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (bus_no, kind, batch_code, number, secrets.token_hex(3).upper(), total_amt,
                 bus_date_time, _now(), token, request),
            )
            bill = _select(conn, "token = ?", (token,))
            assert bill is not None
            return bill, False

        return await self.db.write(op)

    async def write_off(
        self, bill_batch_code: str, bill_no: str, *, reason: str
    ) -> tuple[Bill | None, WriteOffOutcome]:
        red_batch = self._batch_code("red")

        def op(conn: sqlite3.Connection) -> tuple[Bill | None, WriteOffOutcome]:
            where = "bill_batch_code = ? AND bill_no = ?"
            bill = _select(conn, where, (bill_batch_code, bill_no))
            if bill is None:
                return None, "missing"
            if bill.written_off:
                return bill, "already"
            conn.execute(
                "UPDATE einv_bill SET state = 2, red_batch_code = ?, red_no = ?, "
                "red_random = ?, red_create_time = ?, red_reason = ? "
                "WHERE bill_batch_code = ? AND bill_no = ?",
                (red_batch, _next_number(conn, red_batch), secrets.token_hex(3).upper(),
                 _now(), reason, bill_batch_code, bill_no),
            )
            return _select(conn, where, (bill_batch_code, bill_no)), "done"

        return await self.db.write(op)

    async def get(self, bill_batch_code: str, bill_no: str) -> Bill | None:
        return await self.db.read(
            lambda conn: _select(
                conn, "bill_batch_code = ? AND bill_no = ?", (bill_batch_code, bill_no)
            )
        )

    async def by_bus_no(self, bus_no: str) -> Bill | None:
        """The latest invoice issued for ``bus_no``."""
        return await self.db.read(lambda conn: _select(conn, "bus_no = ?", (bus_no,)))

    async def by_token(self, token: str) -> Bill | None:
        return await self.db.read(lambda conn: _select(conn, "token = ?", (token,)))

    async def bills_for(self, bus_no: str) -> list[Bill]:
        def op(conn: sqlite3.Connection) -> list[Bill]:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM einv_bill WHERE bus_no = ? ORDER BY id",  # noqa: S608
                (bus_no,),
            ).fetchall()
            return [Bill(*row) for row in rows]

        return await self.db.read(op)

    async def totals(self) -> dict[str, int]:
        def op(conn: sqlite3.Connection) -> dict[str, int]:
            bills, voided = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(state = 2), 0) FROM einv_bill"
            ).fetchone()
            return {"bills": int(bills), "written_off": int(voided)}

        return await self.db.read(op)
