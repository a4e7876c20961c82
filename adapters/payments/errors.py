"""Payment errors, in the engine's tree (``engine.errors``)::

    PermanentError
    ├── GatewayRejected        the gateway answered with a business error (code kept): the
    │                          request will never succeed as it is (ORDERPAID, NOT_ENOUGH ...)
    ├── RefundExceedsPaid      a refund (with those already requested) would exceed what was
    │                          paid; refused before any call leaves hisbridge
    ├── OrderNotFound          no order with that out_trade_no, here or at the gateway
    └── InvalidOrderState      the order cannot do that now (refund an unpaid order ...)
    TransientError
    └── InDoubtError           (engine) a money call timed out: query before any retry
    CallbackRejected           a callback refused at the door (forged, stale, unknown order,
                               wrong amount); audited and answered with failure. Not an
                               engine error: nothing is stored or retried on our side.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from engine.errors import InDoubtError, PermanentError


class GatewayRejected(PermanentError):
    """A business error from the gateway.

    Attributes:
        code: the gateway's error code (``ORDER_NOT_EXIST``, ``ACQ.TRADE_NOT_EXIST``, ``34``).
    """

    def __init__(self, message: str, *, code: str = "") -> None:
        super().__init__(f"{code}: {message}" if code else message)
        self.code = code


class RefundExceedsPaid(PermanentError):
    """The refund would take the order's refunds beyond the amount paid."""


class OrderNotFound(PermanentError):
    """The order is unknown (to hisbridge or to the gateway, as the message says)."""


class InvalidOrderState(PermanentError):
    """The order is not in a state that allows the operation."""


class CallbackRejected(Exception):
    """A callback that must not be believed.

    Attributes:
        reason: a short machine word stored in the audit (``bad_signature``, ``stale``,
            ``unknown_order``, ``amount_mismatch``, ``malformed``, ``wrong_merchant`` ...).
        detail: a sentence for the audit; never contains key material or card numbers.
        out_trade_no: the order the callback named, when it could be read.
    """

    def __init__(self, reason: str, detail: str = "", *, out_trade_no: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.out_trade_no = out_trade_no


@contextlib.contextmanager
def in_doubt(why: str) -> Iterator[None]:
    """Read the figures of a money call's success: one that cannot be read is in doubt.

    The gateway said it acted (the payment was taken, the refund made) but its answer does
    not say with what: a ``PermanentError`` reading it becomes an ``InDoubtError`` saying
    ``why``, so the service queries the gateway instead of recording a refusal.
    """
    try:
        yield
    except PermanentError as exc:
        raise InDoubtError(f"{exc}; {why}, query before any retry") from None
