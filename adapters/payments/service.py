"""Idempotent payment operations over one gateway: create, pay, sync, close, refund.

The rules (DESIGN.md "no money moves twice"), applied the same way for every gateway:

1. The idempotency key (``out_trade_no``, ``out_refund_no``) comes from the caller's business
   key and is committed with the request *before* the call leaves.
2. A money call that went unanswered (``InDoubtError``) is resolved by a query; only when the
   gateway says it has no such order or refund is the call sent again, with the same key.
3. Anything found stored but not known to be answered (we crashed, or the caller retries) is
   resolved the same way before it is sent: a record alone never proves the call was not made.
4. A refund is reserved against ``paid − refunded − pending`` in one transaction first, so no
   combination of concurrent or repeated refunds exceeds the payment.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol, runtime_checkable

from adapters.payments.errors import GatewayRejected, OrderNotFound
from adapters.payments.model import (
    EventKind,
    Order,
    OrderRequest,
    OrderState,
    PaymentEvent,
    PaymentGateway,
    Refund,
    RefundAnswer,
    RefundRequest,
    RefundState,
    Submit,
    TradeAnswer,
    TradeStatus,
)
from adapters.payments.store import Applied, PaymentStore
from engine.errors import InDoubtError, PermanentError

log = logging.getLogger(__name__)


@runtime_checkable
class PayingGateway(Protocol):
    """A gateway where the merchant side triggers the payment of an accepted order
    (insurance mobile payment 6202)."""

    async def pay(self, order: Order) -> TradeAnswer: ...


class PaymentService:
    """Create, pay, close and refund through one gateway, never moving money twice."""

    def __init__(self, gateway: PaymentGateway, store: PaymentStore) -> None:
        self.gateway = gateway
        self.store = store
        self.name = gateway.name

    # -- orders ----------------------------------------------------------------------------

    async def create_order(
        self,
        out_trade_no: str,
        amount_fen: int,
        description: str,
        kind: str,
        extra: dict[str, str] | None = None,
    ) -> Order:
        """Create (or resume creating) an order; returns it once the gateway has it.

        Raises:
            InDoubtError: still unanswered after one query-and-resend; the order stays
                ``in_doubt`` and the next call resolves it by query first.
            TransientError: not sent, or the query could not be made; call again.
            GatewayRejected: refused by the gateway (the order is closed).
        """
        if amount_fen <= 0:
            raise PermanentError("an order amount must be positive")
        request = OrderRequest(out_trade_no, amount_fen, description, kind, time.time(),
                               dict(extra or {}))
        order = await self.store.create_order(self.name, request)
        fresh = order.created_at == request.created_at
        if order.state is not OrderState.CREATED:
            return order
        if order.submit is Submit.REJECTED:
            raise GatewayRejected(f"order {out_trade_no} was refused by {self.name}")
        if order.submit is Submit.ACCEPTED:
            if order.kind in self.gateway.repeatable_kinds:
                # Moves no money: ask again for what the payer needs (the QR code).
                return await self._send_create(order, resend_allowed=False)
            return order
        if not fresh:
            resolved = await self._resolve_create(order, refetch=True)
            if resolved is not None:
                return resolved
        return await self._send_create(order, resend_allowed=True)

    async def _send_create(self, order: Order, *, resend_allowed: bool) -> Order:
        try:
            created = await self.gateway.create(order.request())
        except InDoubtError:
            await self.store.mark_submit(self.name, order.out_trade_no, Submit.IN_DOUBT)
            # In-doubt warnings name the gateway and our own order or refund number (the
            # merchant number the hospital gave it), what an operator needs to find it;
            # never the payer, the amount's owner or the gateway's text.
            log.warning("create order in doubt, querying: gateway=%s order=%s", self.name,
                        order.out_trade_no)
            resolved = await self._resolve_create(order, refetch=resend_allowed)
            if resolved is not None:
                return resolved
            if not resend_allowed:
                raise
            return await self._send_create(order, resend_allowed=False)
        except GatewayRejected:
            await self.store.mark_submit(self.name, order.out_trade_no, Submit.REJECTED)
            raise
        order = await self.store.mark_submit(
            self.name, order.out_trade_no, Submit.ACCEPTED, extra=dict(created.extra),
            gateway_trade_no=created.gateway_trade_no,
        )
        if created.paid is not None:
            await self._apply(created.paid)
            order = await self._order(order.out_trade_no)
        return order

    async def _resolve_create(self, order: Order, *, refetch: bool) -> Order | None:
        """Query an order whose create may or may not have arrived; None = send it (again,
        with the same ``out_trade_no``, which the gateway treats as the same order).

        With ``refetch``, when the gateway has the order unpaid and its create moves no money,
        the create is repeated once to get back what the payer needs (the QR code).
        """
        answer = await self.gateway.query(order)
        if answer is None:
            return None
        await self.store.mark_submit(self.name, order.out_trade_no, Submit.ACCEPTED,
                                     gateway_trade_no=answer.gateway_trade_no)
        order = await self._apply_answer(order, answer)
        if (refetch and answer.status is TradeStatus.UNPAID
                and order.kind in self.gateway.repeatable_kinds):
            return await self._send_create(order, resend_allowed=False)
        return order

    async def pay(self, out_trade_no: str) -> Order:
        """Ask the gateway to take the payment of an accepted order (mobile pay 6202)."""
        if not isinstance(self.gateway, PayingGateway):
            raise PermanentError(f"{self.name} has no merchant-initiated pay")
        order = await self._order(out_trade_no)
        if order.state is not OrderState.CREATED:
            return order
        for attempt in (1, 2):
            try:
                answer = await self.gateway.pay(order)
            except InDoubtError:
                log.warning("pay in doubt, querying: gateway=%s order=%s", self.name,
                            out_trade_no)
                queried = await self.gateway.query(order)
                if queried is not None and queried.status is not TradeStatus.UNPAID:
                    return await self._apply_answer(order, queried)
                if attempt == 2:
                    raise
                continue
            return await self._apply_answer(order, answer, source="response")
        raise AssertionError("unreachable")  # pragma: no cover

    async def sync(self, out_trade_no: str) -> Order:
        """Bring our order up to date with the gateway's (a lost notification, a restart)."""
        order = await self._order(out_trade_no)
        answer = await self.gateway.query(order)
        if answer is None:
            return order
        if order.submit is not Submit.ACCEPTED:
            await self.store.mark_submit(self.name, out_trade_no, Submit.ACCEPTED,
                                         gateway_trade_no=answer.gateway_trade_no)
        return await self._apply_answer(order, answer)

    async def close(self, out_trade_no: str) -> Order:
        """Close an unpaid order. If the gateway says it was paid meanwhile, record that."""
        order = await self._order(out_trade_no)
        if order.state is not OrderState.CREATED:
            return order
        try:
            await self.gateway.close_order(order)
        except GatewayRejected:
            synced = await self.sync(out_trade_no)
            if synced.state is OrderState.CREATED:
                raise
            return synced
        return await self.store.mark_closed(self.name, out_trade_no, "closed by us")

    # -- refunds ---------------------------------------------------------------------------

    async def refund(
        self, out_trade_no: str, out_refund_no: str, amount_fen: int, reason: str = ""
    ) -> Refund:
        """Refund part or all of a paid order; idempotent on ``out_refund_no``.

        Returns the refund as the gateway left it: ``success``, or ``processing`` when the
        result comes by notification.

        Raises:
            RefundExceedsPaid: refused before any call.
            InDoubtError: still unanswered after one query-and-resend (stays ``in_doubt``).
            GatewayRejected: refused by the gateway (the refund is ``failed``, the amount
                free again).
        """
        order = await self._order(out_trade_no)
        if order.state is OrderState.CREATED:
            order = await self.sync(out_trade_no)  # paid, with the notification still on its way
        started = time.time()
        refund, order = await self.store.reserve_refund(self.name, out_trade_no, out_refund_no,
                                                        amount_fen, reason)
        if not refund.state.pending or refund.state is RefundState.PROCESSING:
            return refund
        request = RefundRequest(order, out_refund_no, refund.amount_fen, refund.reason,
                                refund.created_at)
        if refund.created_at < started:  # not reserved by this call: may have been sent
            resolved = await self._resolve_refund(request)
            if resolved is not None:
                return resolved
        return await self._send_refund(request, resend_allowed=True)

    async def _send_refund(self, request: RefundRequest, *, resend_allowed: bool) -> Refund:
        try:
            answer = await self.gateway.refund(request)
        except InDoubtError:
            await self.store.settle_refund(self.name, request.out_refund_no, RefundState.IN_DOUBT,
                                           "refund call unanswered")
            log.warning("refund in doubt, querying: gateway=%s refund=%s", self.name,
                        request.out_refund_no)
            resolved = await self._resolve_refund(request)
            if resolved is not None:
                return resolved
            if not resend_allowed:
                raise
            return await self._send_refund(request, resend_allowed=False)
        except GatewayRejected as exc:
            await self.store.settle_refund(self.name, request.out_refund_no, RefundState.FAILED,
                                           f"refused: {exc.code}")
            raise
        return await self._settle(request, answer, "refund answered")

    async def _resolve_refund(self, request: RefundRequest) -> Refund | None:
        answer = await self.gateway.query_refund(request)
        if answer is None:
            return None
        return await self._settle(request, answer, "refund queried")

    async def resolve_refund(self, out_refund_no: str) -> Refund:
        """Query a refund that is in doubt or processing and record the answer.

        A refund the gateway does not know stays as it is, its amount still reserved: the
        request may yet be in flight. ``refund()`` with the same ``out_refund_no`` sends it
        again (the gateway treats the same key as the same refund).
        """
        refund = await self.store.refund(self.name, out_refund_no)
        if refund is None:
            raise OrderNotFound(f"no refund {out_refund_no}")
        if not refund.state.pending:
            return refund
        order = await self._order(refund.out_trade_no)
        request = RefundRequest(order, out_refund_no, refund.amount_fen, refund.reason,
                                refund.created_at)
        resolved = await self._resolve_refund(request)
        return resolved or refund

    async def _settle(self, request: RefundRequest, answer: RefundAnswer, cause: str) -> Refund:
        if answer.amount_fen and answer.amount_fen != request.amount_fen:
            await self.store.audit(self.name, "amount_mismatch",
                                   f"refund answer states {answer.amount_fen} fen, we asked "
                                   f"{request.amount_fen}", out_trade_no=request.order.out_trade_no)
            raise PermanentError(f"refund {request.out_refund_no}: amount differs at gateway")
        return await self.store.settle_refund(self.name, request.out_refund_no, answer, cause)

    # -- shared ----------------------------------------------------------------------------

    async def _order(self, out_trade_no: str) -> Order:
        order = await self.store.order(self.name, out_trade_no)
        if order is None:
            raise OrderNotFound(f"no order {out_trade_no}")
        return order

    async def _apply_answer(self, order: Order, answer: TradeAnswer,
                            source: str = "query") -> Order:
        if answer.status is TradeStatus.PAID:
            await self._apply(PaymentEvent(
                self.name, EventKind.PAYMENT, order.out_trade_no, answer.amount_fen,
                gateway_trade_no=answer.gateway_trade_no, occurred_at=answer.paid_at,
                source=source,
            ))
        elif answer.status is TradeStatus.CLOSED:
            await self.store.mark_closed(self.name, order.out_trade_no, f"closed ({source})")
        return await self._order(order.out_trade_no)

    async def _apply(self, event: PaymentEvent) -> None:
        result = await self.store.apply_event(event)
        if result.outcome is Applied.REJECTED:
            raise PermanentError(
                f"{self.name} {event.source} for {event.out_trade_no} refused: {result.reason}"
            )
