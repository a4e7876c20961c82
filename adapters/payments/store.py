"""Orders, refunds, accepted events and refused callbacks, in the engine's SQLite database.

Why here and not in memory: every rule that keeps money from moving twice is a check made
inside one write transaction (the database has a single writer thread, so these checks are
serialized without locks):

- an order row (with its ``out_trade_no``) is committed before the create call leaves;
- a refund is *reserved* (committed with state ``requested``) before the refund call, and the
  reservation fails when paid − refunded − pending < amount, so concurrent refunds cannot
  exceed the payment;
- an event is stored under its idempotency key in the same transaction as the state change
  it causes, so a notification replayed any number of times changes the order once;
- a callback that names an unknown order, or an amount other than ours, is written to the
  audit table and refused.

Tables are prefixed ``pay_`` so they can live in the engine's database file.
"""

from __future__ import annotations

import enum
import sqlite3
import time
from dataclasses import dataclass, replace
from typing import Any

import orjson

from adapters.payments import states
from adapters.payments.errors import (
    InvalidOrderState,
    OrderNotFound,
    RefundExceedsPaid,
)
from adapters.payments.model import (
    EventKind,
    Order,
    OrderRequest,
    OrderState,
    PaymentEvent,
    Refund,
    RefundAnswer,
    RefundState,
    Submit,
)
from engine.database import Database, apply_schema
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


@dataclass(frozen=True, slots=True)
class AuditEntry:
    at: float
    gateway: str
    reason: str
    out_trade_no: str | None
    remote: str | None
    detail: str


@dataclass(frozen=True, slots=True)
class Transition:
    out_trade_no: str
    from_state: str
    to_state: str
    cause: str
    at: float


class PaymentStore:
    """All payment state, for one or more gateways, in one database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def start(self) -> None:
        await self.db.write(lambda conn: apply_schema(conn, SCHEMA))

    # -- orders ----------------------------------------------------------------------------

    async def create_order(self, gateway: str, request: OrderRequest) -> Order:
        """Store an order before its create call; the same request again returns it as is.

        Raises:
            PermanentError: the ``out_trade_no`` is already used for another amount.
        """

        def op(conn: sqlite3.Connection) -> Order:
            existing = _order(conn, gateway, request.out_trade_no)
            if existing is not None:
                if existing.amount_fen != request.amount_fen:
                    raise PermanentError(
                        f"out_trade_no {request.out_trade_no} is already used for "
                        f"another amount"
                    )
                return existing
            now = time.time()
            conn.execute(
                "INSERT INTO pay_orders (gateway, out_trade_no, amount_fen, description, kind,"
                " state, submit, extra, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (gateway, request.out_trade_no, request.amount_fen, request.description,
                 request.kind, OrderState.CREATED.value, Submit.PENDING.value,
                 orjson.dumps(dict(request.extra)), request.created_at, now),
            )
            return _require_order(conn, gateway, request.out_trade_no)

        return await self.db.write(op)

    async def mark_submit(
        self,
        gateway: str,
        out_trade_no: str,
        submit: Submit,
        *,
        extra: dict[str, str] | None = None,
        gateway_trade_no: str = "",
    ) -> Order:
        """Record what we know about the create call; merge gateway data into ``extra``."""

        def op(conn: sqlite3.Connection) -> Order:
            order = _require_order(conn, gateway, out_trade_no)
            merged = dict(order.extra)
            merged.update(extra or {})
            conn.execute(
                "UPDATE pay_orders SET submit = ?, extra = ?, updated_at = ?,"
                " gateway_trade_no = CASE WHEN ? = '' THEN gateway_trade_no ELSE ? END"
                " WHERE gateway = ? AND out_trade_no = ?",
                (submit.value, orjson.dumps(merged), time.time(), gateway_trade_no,
                 gateway_trade_no, gateway, out_trade_no),
            )
            if submit is Submit.REJECTED:
                _move(conn, order, states.after_close(order.state), "create rejected")
            return _require_order(conn, gateway, out_trade_no)

        return await self.db.write(op)

    async def mark_closed(self, gateway: str, out_trade_no: str, cause: str) -> Order:
        def op(conn: sqlite3.Connection) -> Order:
            order = _require_order(conn, gateway, out_trade_no)
            _move(conn, order, states.after_close(order.state), cause)
            return _require_order(conn, gateway, out_trade_no)

        return await self.db.write(op)

    # -- events ----------------------------------------------------------------------------

    async def apply_event(self, event: PaymentEvent, *, remote: str | None = None) -> ApplyResult:
        """Check an event against our order (and refund), then store it and apply it.

        One transaction: the audit of a refusal, or the event row together with the state
        change, is committed before this returns. The caller answers the gateway after.
        """
        return await self.db.write(lambda conn: _apply(conn, event, remote))

    async def mark_forwarded(self, gateway: str, event_key: str) -> None:
        await self.db.write(lambda conn: conn.execute(
            "UPDATE pay_events SET forwarded = 1 WHERE gateway = ? AND event_key = ?",
            (gateway, event_key)))

    async def audit(
        self,
        gateway: str,
        reason: str,
        detail: str,
        *,
        out_trade_no: str | None = None,
        remote: str | None = None,
    ) -> None:
        await self.db.write(lambda conn: _audit(conn, gateway, reason, detail,
                                                 out_trade_no, remote))

    # -- refunds ---------------------------------------------------------------------------

    async def reserve_refund(
        self,
        gateway: str,
        out_trade_no: str,
        out_refund_no: str,
        amount_fen: int,
        reason: str = "",
    ) -> tuple[Refund, Order]:
        """Reserve a refund before calling the gateway (idempotent on ``out_refund_no``).

        Raises:
            OrderNotFound, InvalidOrderState, RefundExceedsPaid, PermanentError (the
            ``out_refund_no`` is already used for another order or amount).
        """
        if amount_fen <= 0:
            raise PermanentError("a refund amount must be positive")

        def op(conn: sqlite3.Connection) -> tuple[Refund, Order]:
            order = _order(conn, gateway, out_trade_no)
            if order is None:
                raise OrderNotFound(f"no order {out_trade_no}")
            existing = _refund(conn, gateway, out_refund_no)
            if existing is not None:
                if existing.out_trade_no != out_trade_no or existing.amount_fen != amount_fen:
                    raise PermanentError(f"out_refund_no {out_refund_no} is already used")
                return existing, order
            if not states.can_refund(order.state):
                raise InvalidOrderState(f"order {out_trade_no} is {order.state}, not paid")
            if amount_fen > order.refundable_fen:
                raise RefundExceedsPaid(
                    f"refund of {amount_fen} fen exceeds what remains refundable on "
                    f"{out_trade_no} ({order.refundable_fen} fen)"
                )
            now = time.time()
            conn.execute(
                "INSERT INTO pay_refunds (gateway, out_refund_no, out_trade_no, amount_fen,"
                " state, reason, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (gateway, out_refund_no, out_trade_no, amount_fen,
                 RefundState.REQUESTED.value, reason, now, now),
            )
            _recompute(conn, _require_order(conn, gateway, out_trade_no),
                       f"refund {out_refund_no} requested")
            return (_require_refund(conn, gateway, out_refund_no),
                    _require_order(conn, gateway, out_trade_no))

        return await self.db.write(op)

    async def settle_refund(
        self, gateway: str, out_refund_no: str, answer: RefundAnswer | RefundState, cause: str
    ) -> Refund:
        """Record a refund's state from a call, a query or our own decision."""
        if isinstance(answer, RefundState):
            answer = RefundAnswer(answer, 0)

        def op(conn: sqlite3.Connection) -> Refund:
            refund = _require_refund(conn, gateway, out_refund_no)
            _set_refund(conn, refund, answer.state, answer.gateway_refund_no, cause)
            return _require_refund(conn, gateway, out_refund_no)

        return await self.db.write(op)

    # -- reads -----------------------------------------------------------------------------

    async def order(self, gateway: str, out_trade_no: str) -> Order | None:
        return await self.db.read(lambda conn: _order(conn, gateway, out_trade_no))

    async def refund(self, gateway: str, out_refund_no: str) -> Refund | None:
        return await self.db.read(lambda conn: _refund(conn, gateway, out_refund_no))

    async def refunds(self, gateway: str, out_trade_no: str) -> list[Refund]:
        def q(conn: sqlite3.Connection) -> list[Refund]:
            rows = conn.execute(
                f"SELECT {_REFUND_COLUMNS} FROM pay_refunds WHERE gateway = ? AND"  # noqa: S608
                " out_trade_no = ? ORDER BY created_at, out_refund_no",
                (gateway, out_trade_no),
            ).fetchall()
            return [_refund_row(r) for r in rows]

        return await self.db.read(q)

    async def transitions(self, gateway: str, out_trade_no: str) -> list[Transition]:
        def q(conn: sqlite3.Connection) -> list[Transition]:
            rows = conn.execute(
                "SELECT out_trade_no, from_state, to_state, cause, at FROM pay_transitions"
                " WHERE gateway = ? AND out_trade_no = ? ORDER BY id",
                (gateway, out_trade_no),
            ).fetchall()
            return [Transition(*r) for r in rows]

        return await self.db.read(q)

    async def audits(self, gateway: str | None = None) -> list[AuditEntry]:
        def q(conn: sqlite3.Connection) -> list[AuditEntry]:
            sql = "SELECT at, gateway, reason, out_trade_no, remote, detail FROM pay_audit"
            args: tuple[Any, ...] = ()
            if gateway is not None:
                sql += " WHERE gateway = ?"
                args = (gateway,)
            return [AuditEntry(*r) for r in conn.execute(sql + " ORDER BY id", args)]

        return await self.db.read(q)

    async def events(self, gateway: str, out_trade_no: str) -> list[dict[str, Any]]:
        def q(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                "SELECT event_key, source, changed, forwarded, body FROM pay_events"
                " WHERE gateway = ? AND out_trade_no = ? ORDER BY received_at",
                (gateway, out_trade_no),
            ).fetchall()
            return [
                {"key": k, "source": s, "changed": bool(c), "forwarded": bool(f),
                 "body": orjson.loads(b)}
                for k, s, c, f, b in rows
            ]

        return await self.db.read(q)


# -- the operations, run in the writer thread -----------------------------------------------

_ORDER_COLUMNS = (
    "gateway, out_trade_no, amount_fen, description, kind, state, submit, gateway_trade_no,"
    " paid_at, extra, created_at"
)
_REFUND_COLUMNS = (
    "gateway, out_refund_no, out_trade_no, amount_fen, state, gateway_refund_no, reason,"
    " created_at"
)


def _order(conn: sqlite3.Connection, gateway: str, out_trade_no: str) -> Order | None:
    row = conn.execute(
        f"SELECT {_ORDER_COLUMNS} FROM pay_orders WHERE gateway = ? AND out_trade_no = ?",  # noqa: S608
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


def _require_order(conn: sqlite3.Connection, gateway: str, out_trade_no: str) -> Order:
    order = _order(conn, gateway, out_trade_no)
    if order is None:
        raise OrderNotFound(f"no order {out_trade_no}")
    return order


def _refund_row(row: tuple[Any, ...]) -> Refund:
    gw, no, trade_no, amount, state, gw_no, reason, created_at = row
    return Refund(gw, no, trade_no, amount, RefundState(state), gw_no, reason, created_at)


def _refund(conn: sqlite3.Connection, gateway: str, out_refund_no: str) -> Refund | None:
    row = conn.execute(
        f"SELECT {_REFUND_COLUMNS} FROM pay_refunds WHERE gateway = ? AND out_refund_no = ?",  # noqa: S608
        (gateway, out_refund_no),
    ).fetchone()
    return None if row is None else _refund_row(row)


def _require_refund(conn: sqlite3.Connection, gateway: str, out_refund_no: str) -> Refund:
    refund = _refund(conn, gateway, out_refund_no)
    if refund is None:
        raise PermanentError(f"no refund {out_refund_no}")
    return refund


def _move(conn: sqlite3.Connection, order: Order, new: OrderState | None, cause: str,
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


def _recompute(conn: sqlite3.Connection, order: Order, cause: str) -> bool:
    new = states.after_refunds(order.state, amount_fen=order.amount_fen,
                               refunded_fen=order.refunded_fen,
                               pending_fen=order.pending_refund_fen)
    return _move(conn, order, new, cause)


def _set_refund(conn: sqlite3.Connection, refund: Refund, new: RefundState,
                gateway_refund_no: str, cause: str) -> bool:
    """Move a refund; final states (success, failed) never move again."""
    if new is refund.state or not refund.state.pending:
        if gateway_refund_no and not refund.gateway_refund_no:
            conn.execute("UPDATE pay_refunds SET gateway_refund_no = ? WHERE gateway = ? AND"
                         " out_refund_no = ?", (gateway_refund_no, refund.gateway,
                                                refund.out_refund_no))
        if not refund.state.pending and not new.pending and new is not refund.state:
            _audit(conn, refund.gateway, "refund_conflict",
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
    order = _require_order(conn, refund.gateway, refund.out_trade_no)
    _recompute(conn, order, cause)
    return True


def _audit(conn: sqlite3.Connection, gateway: str, reason: str, detail: str,
           out_trade_no: str | None, remote: str | None) -> None:
    conn.execute(
        "INSERT INTO pay_audit (at, gateway, reason, out_trade_no, remote, detail)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (time.time(), gateway, reason, out_trade_no, remote, detail[:500]),
    )


def _reject(conn: sqlite3.Connection, event: PaymentEvent, remote: str | None, reason: str,
            detail: str) -> ApplyResult:
    _audit(conn, event.gateway, reason, detail, event.out_trade_no, remote)
    return ApplyResult(Applied.REJECTED, event.key, reason)


def _apply(conn: sqlite3.Connection, event: PaymentEvent, remote: str | None) -> ApplyResult:
    refund: Refund | None = None
    if event.kind is EventKind.REFUND:
        refund = _refund(conn, event.gateway, event.out_refund_no)
        if refund is None or event.out_trade_no not in ("", refund.out_trade_no):
            return _reject(conn, event, remote, "unknown_refund",
                           f"refund {event.source} for a refund we did not request")
        # UnionPay names only the refund: its order is the one we reserved it on.
        event = replace(event, out_trade_no=refund.out_trade_no)
    order = _order(conn, event.gateway, event.out_trade_no)
    if order is None:
        return _reject(conn, event, remote, "unknown_order",
                       f"{event.kind} {event.source} for an order we did not create")
    # A refund event may leave the order total unstated (0); a payment event may not.
    allowed = (order.amount_fen,) if refund is None else (0, order.amount_fen)
    if event.amount_fen not in allowed:
        return _reject(conn, event, remote, "amount_mismatch",
                       f"{event.kind} {event.source} states {event.amount_fen} fen, "
                       f"the order is {order.amount_fen} fen")
    if (event.gateway_trade_no and order.gateway_trade_no
            and event.gateway_trade_no != order.gateway_trade_no):
        return _reject(conn, event, remote, "trade_mismatch",
                       f"{event.kind} {event.source} names another gateway trade")
    if refund is not None:
        if event.refund_fen and event.refund_fen != refund.amount_fen:
            return _reject(conn, event, remote, "amount_mismatch",
                           f"refund {event.source} states {event.refund_fen} fen, "
                           f"the refund is {refund.amount_fen} fen")
        total = event.refunded_total_fen
        if not event.refund_fen and (total is None
                                     or not refund.amount_fen <= total <= order.amount_fen):
            return _reject(conn, event, remote, "amount_mismatch",
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
        changed = _set_refund(conn, refund, new, event.gateway_refund_no,
                              f"refund {event.out_refund_no} {new} ({event.source})")
    else:
        target = states.after_payment(order.state, succeeded=event.succeeded)
        columns = {}
        if event.succeeded:
            columns = {"paid_at": event.occurred_at, "gateway_trade_no":
                       event.gateway_trade_no or order.gateway_trade_no}
        word = "paid" if event.succeeded else "payment failed"
        changed = _move(conn, order, target, f"{word} ({event.source})", **columns)
        if changed and order.state is OrderState.CLOSED:
            _audit(conn, event.gateway, "paid_after_close",
                   "money arrived for a closed order: refund it", order.out_trade_no, remote)
    conn.execute(
        "INSERT INTO pay_events (gateway, event_key, out_trade_no, source, changed, body,"
        " received_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (event.gateway, event.key, event.out_trade_no, event.source, int(changed),
         orjson.dumps(event.as_json()), time.time()),
    )
    return ApplyResult(Applied.CHANGED if changed else Applied.UNCHANGED, event.key,
                       order=_require_order(conn, event.gateway, event.out_trade_no),
                       event=event)
