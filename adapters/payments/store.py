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

import sqlite3
import time
from dataclasses import dataclass
from typing import Any

import orjson

from adapters.payments import ledger, states
from adapters.payments.errors import (
    InvalidOrderState,
    OrderNotFound,
    RefundExceedsPaid,
)
from adapters.payments.ledger import SCHEMA, Applied, ApplyResult
from adapters.payments.model import (
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

__all__ = ["Applied", "ApplyResult", "AuditEntry", "PaymentStore", "Transition"]


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
            existing = ledger.get_order(conn, gateway, request.out_trade_no)
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
            return ledger.require_order(conn, gateway, request.out_trade_no)

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
            order = ledger.require_order(conn, gateway, out_trade_no)
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
                ledger.move(conn, order, states.after_close(order.state), "create rejected")
            return ledger.require_order(conn, gateway, out_trade_no)

        return await self.db.write(op)

    async def mark_closed(self, gateway: str, out_trade_no: str, cause: str) -> Order:
        def op(conn: sqlite3.Connection) -> Order:
            order = ledger.require_order(conn, gateway, out_trade_no)
            ledger.move(conn, order, states.after_close(order.state), cause)
            return ledger.require_order(conn, gateway, out_trade_no)

        return await self.db.write(op)

    # -- events ----------------------------------------------------------------------------

    async def apply_event(self, event: PaymentEvent, *, remote: str | None = None) -> ApplyResult:
        """Check an event against our order (and refund), then store it and apply it.

        One transaction: the audit of a refusal, or the event row together with the state
        change, is committed before this returns. The caller answers the gateway after.
        """
        return await self.db.write(lambda conn: ledger.apply_event(conn, event, remote))

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
        await self.db.write(lambda conn: ledger.audit(conn, gateway, reason, detail,
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
            order = ledger.get_order(conn, gateway, out_trade_no)
            if order is None:
                raise OrderNotFound(f"no order {out_trade_no}")
            existing = ledger.get_refund(conn, gateway, out_refund_no)
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
            ledger.recompute(conn, ledger.require_order(conn, gateway, out_trade_no),
                       f"refund {out_refund_no} requested")
            return (ledger.require_refund(conn, gateway, out_refund_no),
                    ledger.require_order(conn, gateway, out_trade_no))

        return await self.db.write(op)

    async def settle_refund(
        self, gateway: str, out_refund_no: str, answer: RefundAnswer | RefundState, cause: str
    ) -> Refund:
        """Record a refund's state from a call, a query or our own decision."""
        if isinstance(answer, RefundState):
            answer = RefundAnswer(answer, 0)

        def op(conn: sqlite3.Connection) -> Refund:
            refund = ledger.require_refund(conn, gateway, out_refund_no)
            ledger.set_refund(conn, refund, answer.state, answer.gateway_refund_no, cause)
            return ledger.require_refund(conn, gateway, out_refund_no)

        return await self.db.write(op)

    # -- reads -----------------------------------------------------------------------------

    async def order(self, gateway: str, out_trade_no: str) -> Order | None:
        return await self.db.read(lambda conn: ledger.get_order(conn, gateway, out_trade_no))

    async def refund(self, gateway: str, out_refund_no: str) -> Refund | None:
        return await self.db.read(lambda conn: ledger.get_refund(conn, gateway, out_refund_no))

    async def refunds(self, gateway: str, out_trade_no: str) -> list[Refund]:
        return await self.db.read(lambda conn: ledger.refunds_of(conn, gateway, out_trade_no))

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
