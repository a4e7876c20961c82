"""The simulated platform's persistent state: one SQLite file (or ``:memory:``).

A restart on the same file keeps persons, balances, visits, fees, settlements, sign-ins and
every ``msgid`` seen. The simulator runs its handlers on one event loop and never awaits
inside a transaction, so one connection used from the loop is enough; WAL with
``synchronous=NORMAL`` keeps a commit in the tens of microseconds (it is a test peer; the
engine's own store is the one that pays for ``FULL``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from simulators.insurance.catalogue import PERSONS

SCHEMA = """
CREATE TABLE IF NOT EXISTS person (
    psn_no TEXT PRIMARY KEY, name TEXT, gend TEXT, brdy TEXT, certno TEXT UNIQUE,
    ss_card_no TEXT UNIQUE, evoucher TEXT UNIQUE, insutype TEXT, psn_type TEXT,
    psn_insu_stas TEXT, insuplc_admdvs TEXT, emp_name TEXT, cvlserv_flag TEXT, balc TEXT
);
CREATE TABLE IF NOT EXISTS visit (
    mdtrt_id TEXT PRIMARY KEY, psn_no TEXT, insutype TEXT, kind TEXT, med_type TEXT,
    begntime TEXT, endtime TEXT, ipt_otp_no TEXT, dept_code TEXT, dise_codg TEXT,
    status TEXT, source TEXT, mdtrt_cert_type TEXT
);
CREATE TABLE IF NOT EXISTS fee (
    mdtrt_id TEXT, feedetl_sn TEXT, chrg_bchno TEXT, med_list_codg TEXT,
    medins_list_codg TEXT, cnt TEXT, pric TEXT, sumamt TEXT, uplmt TEXT, selfpay_prop TEXT,
    fulamt TEXT, overlmt TEXT, preselfpay TEXT, inscp TEXT, chrgitm_lv TEXT,
    med_chrgitm_type TEXT, fee_ocur_time TEXT, digest TEXT, setl_id TEXT, msgid TEXT,
    PRIMARY KEY (mdtrt_id, feedetl_sn)
);
CREATE TABLE IF NOT EXISTS settlement (
    setl_id TEXT PRIMARY KEY, mdtrt_id TEXT, psn_no TEXT, insutype TEXT, kind TEXT,
    clr_type TEXT, setl_optins TEXT, record TEXT, orig_setl_id TEXT, vali_flag TEXT,
    msgid TEXT, infno TEXT, setl_time TEXT, chrg_bchno TEXT, mid_setl_flag TEXT,
    invono TEXT, med_type TEXT, mdtrt_cert_type TEXT, medfee_sumamt TEXT,
    fulamt_ownpay_amt TEXT, overlmt_selfpay TEXT, preselfpay_amt TEXT, inscp_scp_amt TEXT,
    act_pay_dedc TEXT, hifp_pay TEXT, fund_pay_sumamt TEXT, psn_part_amt TEXT,
    acct_pay TEXT, psn_cash_pay TEXT, balc TEXT, fund_ratio TEXT, source TEXT
);
CREATE INDEX IF NOT EXISTS settlement_visit ON settlement (mdtrt_id);
CREATE TABLE IF NOT EXISTS message (
    msgid TEXT PRIMARY KEY, infno TEXT, state TEXT, setl_id TEXT, received_at TEXT
);
CREATE TABLE IF NOT EXISTS signin (
    sign_no TEXT PRIMARY KEY, opter TEXT, sign_time TEXT, valid INTEGER
);
CREATE TABLE IF NOT EXISTS counter (name TEXT PRIMARY KEY, value INTEGER);
"""


class Store:
    def __init__(self, path: str | Path = ":memory:") -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.executescript(SCHEMA)
        self._seed()

    def _seed(self) -> None:
        with self.tx():
            for p in PERSONS:
                self.conn.execute(
                    "INSERT OR IGNORE INTO person VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (p.psn_no, p.name, p.gend, p.brdy, p.certno, p.ss_card_no, p.evoucher,
                     p.insutype, p.psn_type, p.psn_insu_stas, p.insuplc_admdvs, p.emp_name,
                     p.cvlserv_flag, str(p.balc)),
                )

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction: committed on success, rolled back on any exception."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def next_number(self, name: str) -> int:
        """A per-name counter (call inside a transaction)."""
        row = self.conn.execute(
            "INSERT INTO counter VALUES (?, 1) ON CONFLICT(name) DO UPDATE SET value = value + 1"
            " RETURNING value", (name,),
        ).fetchone()
        return int(row[0])

    def one(self, sql: str, *args: object) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.conn.execute(sql, args).fetchone()
        return row

    def all(self, sql: str, *args: object) -> list[sqlite3.Row]:
        return list(self.conn.execute(sql, args).fetchall())

    def counts(self) -> dict[str, int]:
        """Totals for tests and the control endpoint."""
        q = self.conn.execute
        return {
            "persons": q("SELECT COUNT(*) FROM person").fetchone()[0],
            "visits": q("SELECT COUNT(*) FROM visit").fetchone()[0],
            "fees": q("SELECT COUNT(*) FROM fee").fetchone()[0],
            "settlements": q(
                "SELECT COUNT(*) FROM settlement WHERE record = 'settle'").fetchone()[0],
            "valid_settlements": q(
                "SELECT COUNT(*) FROM settlement WHERE record = 'settle' AND vali_flag = '1'"
            ).fetchone()[0],
            "cancellations": q(
                "SELECT COUNT(*) FROM settlement WHERE record = 'cancel'").fetchone()[0],
            "messages": q("SELECT COUNT(*) FROM message").fetchone()[0],
            "sign_ins": q("SELECT COUNT(*) FROM signin").fetchone()[0],
        }

    def close(self) -> None:
        self.conn.close()
