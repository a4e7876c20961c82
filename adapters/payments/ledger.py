"""The payment rows and the rules applied to them, inside one write transaction.

Every function here takes the writer's connection and runs in the database's writer thread
(``PaymentStore`` posts them with ``Database.write``), so each check-then-change is atomic:
the single writer serializes them without locks. Tables are prefixed ``pay_`` so that they
can live in the engine's database file.
"""

from __future__ import annotations

import enum
import sqlite3
import time
from dataclasses import dataclass, replace
from typing import Any

import orjson

from adapters.payments import states
from adapters.payments.errors import OrderNotFound
from adapters.payments.model import (
    EventKind,
    Order,
    OrderState,
    PaymentEvent,
    Refund,
    RefundState,
    Submit,
)
from engine.errors import PermanentError

SCHEMA = """
CREATE TABLE IF NOT EXISTS pay_orders (
    gateway          TEXT NOT NULL,
    out_trade_no     TEXT NOT NULL,
    amount_fen       INTEGER NOT NULL CHECK (amount_fen > 0),
    description      TEXT NOT NULL,
    kind             TEXT NOT NULL,
    state            TEXT NOT NULL,
    submit           TEXT NOT NULL,
    gateway_trade_no TEXT NOT NULL DEFAULT '',
    paid_at          TEXT NOT NULL DEFAULT '',
    extra            BLOB NOT NULL,
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL,
    PRIMARY KEY (gateway, out_trade_no)
);
CREATE TABLE IF NOT EXISTS pay_refunds (
    gateway           TEXT NOT NULL,
    out_refund_no     TEXT NOT NULL,
    out_trade_no      TEXT NOT NULL,
    amount_fen        INTEGER NOT NULL CHECK (amount_fen > 0),
    state             TEXT NOT NULL,
    gateway_refund_no TEXT NOT NULL DEFAULT '',
    reason            TEXT NOT NULL DEFAULT '',
    created_at        REAL NOT NULL,
    updated_at        REAL NOT NULL,
    PRIMARY KEY (gateway, out_refund_no)
);
CREATE INDEX IF NOT EXISTS pay_refunds_order ON pay_refunds (gateway, out_trade_no);
CREATE TABLE IF NOT EXISTS pay_events (
    gateway      TEXT NOT NULL,
    event_key    TEXT NOT NULL,
    out_trade_no TEXT NOT NULL,
    source       TEXT NOT NULL,
    changed      INTEGER NOT NULL,
    forwarded    INTEGER NOT NULL DEFAULT 0,
    body         BLOB NOT NULL,
    received_at  REAL NOT NULL,
    PRIMARY KEY (gateway, event_key)
);
CREATE TABLE IF NOT EXISTS pay_transitions (
    id           INTEGER PRIMARY KEY,
    gateway      TEXT NOT NULL,
    out_trade_no TEXT NOT NULL,
    from_state   TEXT NOT NULL,
    to_state     TEXT NOT NULL,
    cause        TEXT NOT NULL,
    at           REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS pay_transitions_order ON pay_transitions (gateway, out_trade_no);
CREATE TABLE IF NOT EXISTS pay_audit (
    id           INTEGER PRIMARY KEY,
    at           REAL NOT NULL,
    gateway      TEXT NOT NULL,
    reason       TEXT NOT NULL,
    out_trade_no TEXT,
    remote       TEXT,
    detail       TEXT NOT NULL
)
"""


class Applied(enum.StrEnum):
    CHANGED = "changed"  # a new fact that moved the order or a refund
    UNCHANGED = "unchanged"  # a new fact that confirmed what we knew (paid by query first)
    DUPLICATE = "duplicate"  # this fact was already stored: changes nothing
    REJECTED = "rejected"  # unknown order/refund or wrong amount: audited, refused


@dataclass(frozen=True, slots=True)
class ApplyResult:
    outcome: Applied
    event_key: str
    reason: str = ""
    order: Order | None = None
    forwarded: bool = False
    event: PaymentEvent | None = None
    """The event as stored (a refund's own amount filled in when the gateway gave only the
    cumulative refunded amount)."""


ORDER_COLUMNS = (
    "gateway, out_trade_no, amount_fen, description, kind, state, submit, gateway_trade_no,"
    " paid_at, extra, created_at"
)
REFUND_COLUMNS = (
    "gateway, out_refund_no, out_trade_no, amount_fen, state, gateway_refund_no, reason,"
    " created_at"
)


def get_order(conn: sqlite3.Connection, gateway: str, out_trade_no: str) -> Order | None:
    row = conn.execute(
        f"SELECT {ORDER_COLUMNS} FROM pay_orders WHERE gateway = ? AND out_trade_no = ?",  # noqa: S608
        (gateway, out_trade_no),
    ).fetchone()
    if row is None:
        return None
    sums = conn.execute(
        "SELECT COALESCE(SUM(CASE WHEN state = 'success' THEN amount_fen END), 0),"
        " COALESCE(SUM(CASE WHEN state IN ('requested', 'in_doubt', 'processing')"
        " THEN amount_fen END), 0) FROM pay_refunds WHERE gateway = ? AND out_trade_no = ?",
        (gateway, out_trade_no),
    ).fetchone()
    (gw, no, amount, description, kind, state, submit, trade_no, paid_at, extra,
     created_at) = row
    return Order(gw, no, amount, description, kind, OrderState(state), Submit(submit),
                 trade_no, int(sums[0]), int(sums[1]), created_at, paid_at,
                 orjson.loads(extra))


def require_order(conn: sqlite3.Connection, gateway: str, out_trade_no: str) -> Order:
    order = get_order(conn, gateway, out_trade_no)
    if order is None:
        raise OrderNotFound(f"no order {out_trade_no}")
    return order


def refund_from_row(row: tuple[Any, ...]) -> Refund:
    gw, no, trade_no, amount, state, gw_no, reason, created_at = row
    return Refund(gw, no, trade_no, amount, RefundState(state), gw_no, reason, created_at)


def get_refund(conn: sqlite3.Connection, gateway: str, out_refund_no: str) -> Refund | None:
    row = conn.execute(
        f"SELECT {REFUND_COLUMNS} FROM pay_refunds WHERE gateway = ? AND out_refund_no = ?",  # noqa: S608
        (gateway, out_refund_no),
    ).fetchone()
    return None if row is None else refund_from_row(row)


def require_refund(conn: sqlite3.Connection, gateway: str, out_refund_no: str) -> Refund:
    refund = get_refund(conn, gateway, out_refund_no)
    if refund is None:
        raise PermanentError(f"no refund {out_refund_no}")
    return refund


def move(conn: sqlite3.Connection, order: Order, new: OrderState | None, cause: str,
          **columns: str) -> bool:
    if new is None or new is order.state:
        return False
    sets = "".join(f", {name} = ?" for name in columns)
    conn.execute(
        f"UPDATE pay_orders SET state = ?, updated_at = ?{sets}"  # noqa: S608 - fixed names
        " WHERE gateway = ? AND out_trade_no = ?",
        (new.value, time.time(), *columns.values(), order.gateway, order.out_trade_no),
    )
    conn.execute(
        "INSERT INTO pay_transitions (gateway, out_trade_no, from_state, to_state, cause, at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (order.gateway, order.out_trade_no, order.state.value, new.value, cause, time.time()),
    )
    return True


def recompute(conn: sqlite3.Connection, order: Order, cause: str) -> bool:
    new = states.after_refunds(order.state, amount_fen=order.amount_fen,
                               refunded_fen=order.refunded_fen,
                               pending_fen=order.pending_refund_fen)
    return move(conn, order, new, cause)


def set_refund(conn: sqlite3.Connection, refund: Refund, new: RefundState,
                gateway_refund_no: str, cause: str) -> bool:
    """Move a refund; final states (success, failed) never move again."""
    if new is refund.state or not refund.state.pending:
        if gateway_refund_no and not refund.gateway_refund_no:
            conn.execute("UPDATE pay_refunds SET gateway_refund_no = ? WHERE gateway = ? AND"
                         " out_refund_no = ?", (gateway_refund_no, refund.gateway,
                                                refund.out_refund_no))
        if not refund.state.pending and not new.pending and new is not refund.state:
            audit(conn, refund.gateway, "refund_conflict",
                   f"refund {refund.out_refund_no} is {refund.state}; ignored {new}",
                   refund.out_trade_no, None)
        return False
    conn.execute(
        "UPDATE pay_refunds SET state = ?, updated_at = ?, gateway_refund_no ="
        " CASE WHEN ? = '' THEN gateway_refund_no ELSE ? END"
        " WHERE gateway = ? AND out_refund_no = ?",
        (new.value, time.time(), gateway_refund_no, gateway_refund_no, refund.gateway,
         refund.out_refund_no),
    )
    order = require_order(conn, refund.gateway, refund.out_trade_no)
    recompute(conn, order, cause)
    return True


def audit(conn: sqlite3.Connection, gateway: str, reason: str, detail: str,
           out_trade_no: str | None, remote: str | None) -> None:
    conn.execute(
        "INSERT INTO pay_audit (at, gateway, reason, out_trade_no, remote, detail)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (time.time(), gateway, reason, out_trade_no, remote, detail[:500]),
    )


def reject(conn: sqlite3.Connection, event: PaymentEvent, remote: str | None, reason: str,
            detail: str) -> ApplyResult:
    audit(conn, event.gateway, reason, detail, event.out_trade_no, remote)
    return ApplyResult(Applied.REJECTED, event.key, reason)


def apply_event(conn: sqlite3.Connection, event: PaymentEvent, remote: str | None) -> ApplyResult:
    refund: Refund | None = None
    if event.kind is EventKind.REFUND:
        refund = get_refund(conn, event.gateway, event.out_refund_no)
        if refund is None or event.out_trade_no not in ("", refund.out_trade_no):
            return reject(conn, event, remote, "unknown_refund",
                           f"refund {event.source} for a refund we did not request")
        # UnionPay names only the refund: its order is the one we reserved it on.
        event = replace(event, out_trade_no=refund.out_trade_no)
    order = get_order(conn, event.gateway, event.out_trade_no)
    if order is None:
        return reject(conn, event, remote, "unknown_order",
                       f"{event.kind} {event.source} for an order we did not create")
    # A refund event may leave the order total unstated (0); a payment event may not.
    allowed = (order.amount_fen,) if refund is None else (0, order.amount_fen)
    if event.amount_fen not in allowed:
        return reject(conn, event, remote, "amount_mismatch",
                       f"{event.kind} {event.source} states {event.amount_fen} fen, "
                       f"the order is {order.amount_fen} fen")
    if (event.gateway_trade_no and order.gateway_trade_no
            and event.gateway_trade_no != order.gateway_trade_no):
        return reject(conn, event, remote, "trade_mismatch",
                       f"{event.kind} {event.source} names another gateway trade")
    if refund is not None:
        if event.refund_fen and event.refund_fen != refund.amount_fen:
            return reject(conn, event, remote, "amount_mismatch",
                           f"refund {event.source} states {event.refund_fen} fen, "
                           f"the refund is {refund.amount_fen} fen")
        total = event.refunded_total_fen
        if not event.refund_fen and (total is None
                                     or not refund.amount_fen <= total <= order.amount_fen):
            return reject(conn, event, remote, "amount_mismatch",
                           f"refund {event.source} states {total} fen refunded in all, "
                           f"the refund is {refund.amount_fen} of {order.amount_fen} fen")
        event = replace(event, refund_fen=refund.amount_fen)
    seen = conn.execute(
        "SELECT forwarded FROM pay_events WHERE gateway = ? AND event_key = ?",
        (event.gateway, event.key),
    ).fetchone()
    if seen is not None:
        return ApplyResult(Applied.DUPLICATE, event.key, order=order, forwarded=bool(seen[0]),
                           event=event)

    changed = False
    if refund is not None:
        new = RefundState.SUCCESS if event.succeeded else RefundState.FAILED
        changed = set_refund(conn, refund, new, event.gateway_refund_no,
                              f"refund {event.out_refund_no} {new} ({event.source})")
    else:
        target = states.after_payment(order.state, succeeded=event.succeeded)
        columns = {}
        if event.succeeded:
            columns = {"paid_at": event.occurred_at, "gateway_trade_no":
                       event.gateway_trade_no or order.gateway_trade_no}
        word = "paid" if event.succeeded else "payment failed"
        changed = move(conn, order, target, f"{word} ({event.source})", **columns)
        if changed and order.state is OrderState.CLOSED:
            audit(conn, event.gateway, "paid_after_close",
                   "money arrived for a closed order: refund it", order.out_trade_no, remote)
    conn.execute(
        "INSERT INTO pay_events (gateway, event_key, out_trade_no, source, changed, body,"
        " received_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (event.gateway, event.key, event.out_trade_no, event.source, int(changed),
         orjson.dumps(event.as_json()), time.time()),
    )
    return ApplyResult(Applied.CHANGED if changed else Applied.UNCHANGED, event.key,
                       order=require_order(conn, event.gateway, event.out_trade_no),
                       event=event)


def refunds_of(conn: sqlite3.Connection, gateway: str, out_trade_no: str) -> list[Refund]:
    rows = conn.execute(
        f"SELECT {REFUND_COLUMNS} FROM pay_refunds WHERE gateway = ? AND"  # noqa: S608
        " out_trade_no = ? ORDER BY created_at, out_refund_no",
        (gateway, out_trade_no),
    ).fetchall()
    return [refund_from_row(r) for r in rows]
