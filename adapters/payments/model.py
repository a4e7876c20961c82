"""The records every gateway is translated into: requests, answers and verified events.

Amounts are integer fen everywhere in this module. A gateway client converts its wire format
(yuan text, fen text, fen integers) at its boundary with ``adapters.payments.money``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from adapters.payments.money import format_yuan


class OrderState(enum.StrEnum):
    """Where an order is. See ``adapters.payments.states`` for the allowed moves."""

    CREATED = "created"
    PAID = "paid"
    REFUNDING = "refunding"
    REFUNDED = "refunded"
    CLOSED = "closed"


class Submit(enum.StrEnum):
    """What we know about the create call itself (independent of payment)."""

    PENDING = "pending"  # stored, not (known to be) sent yet
    ACCEPTED = "accepted"  # the gateway has the order
    IN_DOUBT = "in_doubt"  # sent, no answer: query before any retry
    REJECTED = "rejected"  # the gateway refused it


class RefundState(enum.StrEnum):
    REQUESTED = "requested"  # reserved and stored before the call
    IN_DOUBT = "in_doubt"  # sent, no answer: query before any retry
    PROCESSING = "processing"  # accepted by the gateway, result to come
    SUCCESS = "success"
    FAILED = "failed"  # refused or failed: the amount is available again

    @property
    def pending(self) -> bool:
        return self in (RefundState.REQUESTED, RefundState.IN_DOUBT, RefundState.PROCESSING)


class TradeStatus(enum.StrEnum):
    """A gateway's answer to "what happened to this order", normalized."""

    UNPAID = "unpaid"  # exists, waiting for the payer (NOTPAY, WAIT_BUYER_PAY, processing)
    PAID = "paid"  # money received (SUCCESS, TRADE_SUCCESS, REFUND: it was paid)
    CLOSED = "closed"  # closed or failed without payment


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """What to ask the gateway for. ``out_trade_no`` is the idempotency key.

    Attributes:
        kind: the gateway's order type (``native``, ``jsapi``, ``precreate``, ``barcode``,
            ``qrcode``, ``mobile``).
        extra: gateway-specific inputs (``openid``, ``auth_code``, ``pay_auth_no`` ...).
        created_at: epoch seconds when the order was first stored; gateways that key their
            queries on the request time (UnionPay ``txnTime``) derive it from this, so a retry
            after a restart sends the same value.
    """

    out_trade_no: str
    amount_fen: int
    description: str
    kind: str
    created_at: float
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Order:
    gateway: str
    out_trade_no: str
    amount_fen: int
    description: str
    kind: str
    state: OrderState
    submit: Submit
    gateway_trade_no: str
    refunded_fen: int
    pending_refund_fen: int
    created_at: float
    paid_at: str
    extra: Mapping[str, str]

    def request(self) -> OrderRequest:
        return OrderRequest(self.out_trade_no, self.amount_fen, self.description, self.kind,
                            self.created_at, self.extra)

    @property
    def refundable_fen(self) -> int:
        if self.state not in (OrderState.PAID, OrderState.REFUNDING):
            return 0
        return self.amount_fen - self.refunded_fen - self.pending_refund_fen


@dataclass(frozen=True, slots=True)
class Refund:
    gateway: str
    out_refund_no: str
    out_trade_no: str
    amount_fen: int
    state: RefundState
    gateway_refund_no: str
    reason: str
    created_at: float


@dataclass(frozen=True, slots=True)
class RefundRequest:
    """A refund to send: the order it belongs to (with its gateway data) and the amount."""

    order: Order
    out_refund_no: str
    amount_fen: int
    reason: str
    created_at: float


@dataclass(frozen=True, slots=True)
class Created:
    """The gateway accepted an order.

    Attributes:
        extra: what to keep for later calls and for the payer (``code_url``, ``prepay_id``,
            ``qr_code``, ``payOrdId`` ...); merged into the order's ``extra``.
        paid: the payment, when the create call itself moved the money (barcode pay).
    """

    extra: Mapping[str, str] = field(default_factory=dict)
    gateway_trade_no: str = ""
    paid: PaymentEvent | None = None


@dataclass(frozen=True, slots=True)
class TradeAnswer:
    """A query's answer about one order."""

    status: TradeStatus
    amount_fen: int
    gateway_trade_no: str = ""
    paid_at: str = ""


@dataclass(frozen=True, slots=True)
class RefundAnswer:
    """A refund call's or refund query's answer."""

    state: RefundState
    amount_fen: int
    gateway_refund_no: str = ""


class EventKind(enum.StrEnum):
    PAYMENT = "payment"
    REFUND = "refund"


@dataclass(frozen=True, slots=True)
class PaymentEvent:
    """A verified fact from a gateway: an order was paid (or failed), a refund settled.

    Built by a gateway's callback verifier (after signature and decryption) or from a query
    answer; the store checks it against the order we created before believing it.

    Attributes:
        amount_fen: the order total as the gateway states it (checked against ours).
        succeeded: False for a failed payment or a failed / closed refund.
        refund_fen: the refund amount (refund events), 0 when the gateway states only the
            cumulative amount refunded on the order (``refunded_total_fen``, Alipay).
        card: a masked card number, when the gateway names one.
        source: ``notify`` (callback), ``query`` or ``response`` (a synchronous answer).
    """

    gateway: str
    kind: EventKind
    out_trade_no: str
    amount_fen: int
    succeeded: bool = True
    gateway_trade_no: str = ""
    out_refund_no: str = ""
    refund_fen: int = 0
    refunded_total_fen: int | None = None
    gateway_refund_no: str = ""
    occurred_at: str = ""
    notify_id: str = ""
    card: str = ""
    source: str = "notify"

    @property
    def key(self) -> str:
        """The idempotency key of the fact: a duplicate has the same key and changes nothing."""
        outcome = "ok" if self.succeeded else "fail"
        if self.kind is EventKind.REFUND:
            return f"refund:{self.out_refund_no}:{outcome}"
        return f"payment:{self.out_trade_no}:{outcome}"

    def as_json(self) -> dict[str, Any]:
        """The event as the engine channel receives it (no payer data; card masked)."""
        data: dict[str, Any] = {
            "gateway": self.gateway,
            "event": self.kind.value,
            "succeeded": self.succeeded,
            "out_trade_no": self.out_trade_no,
            "gateway_trade_no": self.gateway_trade_no,
            "amount_fen": self.amount_fen,
            "amount": format_yuan(self.amount_fen),
            "occurred_at": self.occurred_at,
        }
        if self.kind is EventKind.REFUND:
            data.update(
                out_refund_no=self.out_refund_no,
                gateway_refund_no=self.gateway_refund_no,
                refund_fen=self.refund_fen,
                refund=format_yuan(self.refund_fen),
            )
        if self.card:
            data["card"] = self.card
        return data


class PaymentGateway(Protocol):
    """One gateway's client, as ``adapters.payments.service`` drives it.

    Money-moving calls (``create``, ``pay``, ``refund``) raise ``InDoubtError`` when the
    request may have reached the gateway but no answer came back; ``TransientError`` when it
    surely did not (connection refused) or for read-only calls; ``GatewayRejected`` for a
    business refusal.
    """

    name: str
    repeatable_kinds: frozenset[str]
    """Order kinds whose create moves no money (QR codes, prepay ids): once the gateway is
    known to have the order, the create may be sent again to get the payer's data back."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def create(self, request: OrderRequest) -> Created: ...

    async def query(self, order: Order) -> TradeAnswer | None:
        """The gateway's view of the order; None when the gateway has no such order."""
        ...

    async def close_order(self, order: Order) -> None: ...

    async def refund(self, request: RefundRequest) -> RefundAnswer: ...

    async def query_refund(self, request: RefundRequest) -> RefundAnswer | None:
        """The gateway's view of the refund; None when it has no such refund."""
        ...
