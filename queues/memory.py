"""An in-memory twin of the queue contract, for unit tests of pure logic.

It keeps the embedded backend's semantics (``queues.sqlite``) without a database: every
envelope is an item that is ready, delayed (until ``due``) or dead; acked items disappear.
Nothing survives the process, so it is never a deployment choice. It is the smallest complete
backend: start here to write a new one, and run ``tests/queues/test_queue_contract.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass

from queues.contract import Consumer, DeadLetter, Delivery, Envelope, QueueFull


@dataclass(slots=True)
class _Item:
    id: int
    envelope: Envelope
    state: str = "ready"  # ready | delayed | dead
    due: float = 0.0
    failures: int = 0
    first_failed_at: float | None = None
    last_error: str = ""
    dead_at: float = 0.0

    def delivery(self, queue: str) -> Delivery:
        return Delivery(
            queue=queue, tag=self.id, envelope=self.envelope, failures=self.failures,
            first_failed_at=self.first_failed_at, not_before=self.due,
            last_error=self.last_error,
        )


class MemoryQueue:
    """QueueBackend in a dict; ``max_depth`` bounds what waits across all queues."""

    shares_store = False

    def __init__(self, *, max_depth: int = 1_000_000) -> None:
        self.max_depth = max_depth
        self._items: dict[str, dict[int, _Item]] = {}
        self._consumers: dict[str, MemoryConsumer] = {}
        self._ids = itertools.count(1)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        for consumer in list(self._consumers.values()):
            await consumer.close()

    async def declare(self, queue: str, *, ordered: bool = False) -> None:
        self._items.setdefault(queue, {})

    async def publish(self, queue: str, envelopes: Sequence[Envelope], *, delay: float = 0.0,
                      republish: bool = False) -> None:
        waiting = sum(1 for q in self._items.values() for i in q.values() if i.state != "dead")
        if waiting + len(envelopes) > self.max_depth:
            raise QueueFull(f"queue depth {waiting} reached the limit {self.max_depth}")
        self._put(queue, envelopes, delay)

    def _put(self, queue: str, envelopes: Sequence[Envelope], delay: float = 0.0) -> None:
        items = self._items.setdefault(queue, {})
        for envelope in envelopes:
            item = _Item(next(self._ids), envelope)
            if delay > 0:
                item.state, item.due = "delayed", time.time() + delay
            items[item.id] = item
        self._wake(queue)

    def consumer(self, queue: str, *, prefetch: int = 100, ordered: bool = False) -> Consumer:
        if queue in self._consumers:
            raise RuntimeError(f"queue {queue} already has a consumer in this process")
        consumer = MemoryConsumer(self, queue, prefetch=1 if ordered else prefetch,
                                  ordered=ordered)
        self._consumers[queue] = consumer
        return consumer

    def _item(self, delivery: Delivery) -> _Item | None:
        return self._items.get(delivery.queue, {}).get(_tag(delivery))

    def _settled(self, delivery: Delivery) -> None:
        consumer = self._consumers.get(delivery.queue)
        if consumer is not None:
            consumer.inflight.discard(_tag(delivery))
        self._wake(delivery.queue)

    async def ack(self, delivery: Delivery) -> None:
        self._items.get(delivery.queue, {}).pop(_tag(delivery), None)
        self._settled(delivery)

    async def retry(self, delivery: Delivery, *, at: float, reason: str) -> None:
        item = self._item(delivery)
        if item is not None:
            item.state, item.due, item.last_error = "delayed", at, reason
            item.failures += 1
            if item.first_failed_at is None:
                item.first_failed_at = time.time()
        self._settled(delivery)

    async def dead_letter(self, delivery: Delivery, *, reason: str) -> None:
        item = self._item(delivery)
        if item is not None:
            now = time.time()
            item.state, item.last_error, item.dead_at = "dead", reason, now
            item.failures += 1
            if item.first_failed_at is None:
                item.first_failed_at = now
        self._settled(delivery)

    async def forward(self, delivery: Delivery, outputs: Sequence[tuple[str, Envelope]]) -> None:
        for queue, envelope in outputs:
            self._put(queue, [envelope])
        await self.ack(delivery)

    async def depth(self, queue: str) -> int:
        return sum(1 for i in self._items.get(queue, {}).values() if i.state != "dead")

    async def dead_letters(self, queue: str, *, limit: int = 100) -> list[DeadLetter]:
        dead = [i for i in self._items.get(queue, {}).values() if i.state == "dead"][:limit]
        return [
            DeadLetter(queue, str(i.id), i.envelope, i.last_error, i.failures,
                       i.first_failed_at, i.dead_at)
            for i in dead
        ]

    async def requeue(self, queue: str, ids: Sequence[str] | None = None) -> int:
        wanted = None if ids is None else set(ids)
        count = 0
        for item in self._items.get(queue, {}).values():
            if item.state == "dead" and (wanted is None or str(item.id) in wanted):
                item.state, item.due, item.failures, item.first_failed_at = (
                    "delayed", time.time(), 0, None)
                count += 1
        self._wake(queue)
        return count

    async def ping(self) -> None:
        return None

    def _wake(self, queue: str) -> None:
        consumer = self._consumers.get(queue)
        if consumer is not None:
            consumer.wake.set()

    def forget_consumer(self, queue: str) -> None:
        self._consumers.pop(queue, None)


def _tag(delivery: Delivery) -> int:
    if not isinstance(delivery.tag, int):
        raise TypeError("not a delivery from the memory backend")
    return delivery.tag


class MemoryConsumer:
    def __init__(self, backend: MemoryQueue, queue: str, *, prefetch: int, ordered: bool
                 ) -> None:
        self.backend = backend
        self.queue = queue
        self.prefetch = max(1, prefetch)
        self.ordered = ordered
        self.inflight: set[int] = set()
        self.wake = asyncio.Event()

    async def get(self) -> Delivery:
        while True:
            item, next_due = self._next(time.time())
            if item is not None:
                self.inflight.add(item.id)
                return item.delivery(self.queue)
            self.wake.clear()
            timeout = None if next_due is None else max(0.0, next_due - time.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout)

    def _next(self, now: float) -> tuple[_Item | None, float | None]:
        if len(self.inflight) >= self.prefetch:
            return None, None
        waiting = [i for i in self.backend._items.get(self.queue, {}).values()
                   if i.state != "dead"]
        if self.ordered:
            head = waiting[0] if waiting else None
            return (None if head is None or head.id in self.inflight else head), None
        free = [i for i in waiting if i.id not in self.inflight]
        for item in free:
            if item.state == "ready" or item.due <= now:
                return item, None
        dues = [i.due for i in free if i.state == "delayed"]
        return None, min(dues) if dues else None

    async def close(self) -> None:
        self.backend.forget_consumer(self.queue)
