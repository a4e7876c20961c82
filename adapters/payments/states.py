"""The order state machine, as pure functions the store applies inside its transactions.

::

    created ──paid──► paid ──refund requested──► refunding ──all refunds settled──► paid
       │                ▲                            │                                 (part)
       │ closed         └──────── refund failed ─────┤
       ▼                                             └──refunded in full──► refunded
    closed ──paid (money arrived after the close)──► paid

A payment fact for an order that is already paid, refunding or refunded changes nothing: it
is a duplicate, whatever path it came by (callback, query, synchronous answer). A payment
after a close is still money received, so it is recorded (and audited) rather than ignored:
someone must refund it.
"""

from __future__ import annotations

from adapters.payments.model import OrderState


def after_payment(state: OrderState, *, succeeded: bool) -> OrderState | None:
    """The state a payment fact moves an order to, or None when it changes nothing."""
    if succeeded:
        if state in (OrderState.CREATED, OrderState.CLOSED):
            return OrderState.PAID
        return None
    # A failed payment closes an order still waiting; it cannot undo a payment.
    return OrderState.CLOSED if state is OrderState.CREATED else None


def after_close(state: OrderState) -> OrderState | None:
    return OrderState.CLOSED if state is OrderState.CREATED else None


def after_refunds(
    state: OrderState, *, amount_fen: int, refunded_fen: int, pending_fen: int
) -> OrderState:
    """The state of a paid order given its settled and pending refunds."""
    if state not in (OrderState.PAID, OrderState.REFUNDING, OrderState.REFUNDED):
        return state
    if pending_fen > 0:
        return OrderState.REFUNDING
    if refunded_fen >= amount_fen:
        return OrderState.REFUNDED
    return OrderState.PAID


def can_refund(state: OrderState) -> bool:
    return state in (OrderState.PAID, OrderState.REFUNDING)
