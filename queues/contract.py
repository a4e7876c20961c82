"""The contract every queue backend keeps.

Names: a *queue* is named per stage, ``channel:<channel>`` for messages waiting for the
channel worker, ``dest:<channel>/<destination>`` for deliveries waiting for one destination.

Semantics every backend promises:

- ``publish`` returns only once the envelope is durable (committed to disk, or confirmed by
  the broker). A delay makes the envelope invisible until then.
- ``consumer(queue, prefetch)`` hands out at most ``prefetch`` unsettled deliveries at once.
  A delivery that is never settled (the process dies) is delivered again: at-least-once.
- Each delivery is settled exactly once: ``ack``; ``retry`` at an absolute time (survives a
  restart, counts an attempt); ``dead_letter`` with a reason (kept, listable, requeueable).
- ``forward`` acks one delivery and publishes its successors; the embedded backend does both
  in one transaction, others publish first and ack second (at-least-once, never lost).
- Ordered consumers (``ordered=True``) receive deliveries in publish order, one at a time, and
  a retried delivery stays at the head: nothing behind it is handed out until it is settled
  by ack or dead-letter. Its ``not_before`` says when it may be attempted again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Envelope:
    """What a queue carries: the message id, the bytes to deliver, and their headers."""

    message_id: str
    body: bytes = field(repr=False)  # patient data: never in a log line or a traceback
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str = "hl7v2"


@dataclass(slots=True)
class Delivery:
    """One envelope handed to a consumer, to be settled exactly once.

    Attributes:
        queue: the queue it came from.
        tag: backend-specific handle (row id, AMQP delivery tag).
        failures: failed attempts before this one.
        first_failed_at: epoch seconds of the first failure, None before any.
        not_before: earliest epoch second to attempt (ordered consumers only; 0 = now).
        last_error: the reason of the previous failure, if any.
        redelivered: an earlier delivery of this envelope may have been handled to the end
            without its settlement reaching the queue (a broker redelivery after a consumer
            died, or an outbox republish after a restart), so a destination checks the
            store before sending it again. Backends that settle in the store's own
            transaction leave it False: there the store and the queue cannot disagree.
    """

    queue: str
    tag: object
    envelope: Envelope
    failures: int = 0
    first_failed_at: float | None = None
    not_before: float = 0.0
    last_error: str = ""
    redelivered: bool = False
    backend_state: object = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead-lettered envelope with its reason and attempt history."""

    queue: str
    id: str
    envelope: Envelope
    reason: str
    failures: int
    first_failed_at: float | None
    dead_at: float


class QueueFull(Exception):
    """Raised by publish when the backend refuses more work (sources answer AE / 503)."""


class QueueUnavailable(Exception):
    """Raised when the backend cannot be reached (broker down, database unwritable)."""


@runtime_checkable
class Consumer(Protocol):
    async def get(self) -> Delivery:
        """Wait for the next delivery (bounded by the consumer's prefetch)."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class QueueBackend(Protocol):
    """The interface the engine uses; `tests/test_queue_contract.py` checks every backend."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def declare(self, queue: str, *, ordered: bool = False) -> None:
        """Make sure a queue exists (idempotent).

        ``ordered`` says the queue will be consumed with ``ordered=True``; a backend that
        fixes this when the queue is created (RabbitMQ: single active consumer) needs it.
        """
        ...

    async def publish(
        self, queue: str, envelopes: Sequence[Envelope], *, delay: float = 0.0,
        republish: bool = False,
    ) -> None:
        """Durably enqueue envelopes; raises QueueFull or QueueUnavailable.

        ``republish`` says the envelopes may have been published before (the outbox after a
        restart): their deliveries come ``redelivered`` where the backend can tell.
        """
        ...

    def consumer(self, queue: str, *, prefetch: int = 100, ordered: bool = False) -> Consumer: ...

    async def ack(self, delivery: Delivery) -> None: ...

    async def retry(self, delivery: Delivery, *, at: float, reason: str) -> None: ...

    async def dead_letter(self, delivery: Delivery, *, reason: str) -> None: ...

    async def forward(
        self, delivery: Delivery, outputs: Sequence[tuple[str, Envelope]]
    ) -> None:
        """Ack ``delivery`` and publish ``outputs`` (queue, envelope) as one step."""
        ...

    async def depth(self, queue: str) -> int:
        """Envelopes waiting (ready or scheduled for retry), not counting dead letters."""
        ...

    async def dead_letters(self, queue: str, *, limit: int = 100) -> list[DeadLetter]: ...

    async def requeue(self, queue: str, ids: Sequence[str] | None = None) -> int:
        """Move dead letters (all, or those ids) back to the queue; returns how many."""
        ...

    async def ping(self) -> None:
        """Raise QueueUnavailable if the backend cannot take work now."""
        ...
