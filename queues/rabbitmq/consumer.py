"""One consumer of one work queue: a channel with a prefetch, manual acks, and a local buffer.

Each message the broker pushes becomes a ``Delivery`` at once; ``get`` hands them out. Before
that, three things may happen to a message here rather than in a worker:

- it came back too early from a delay queue (delay queues have fixed tiers): if the rest of
  the wait is longer than the shortest tier it goes round a delay queue again, otherwise this
  consumer holds it until its time (ordered queues hand it out at once; the worker waits);
- it is a redelivery on a classic queue, which has no broker-side delivery limit: the count
  travels in a header, and past ``delivery_limit`` the message is dead-lettered;
- it was buffered here when the connection dropped: the broker has already put it back, so
  ``get`` skips it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING

from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustChannel
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError

from queues.contract import Delivery, QueueUnavailable
from queues.rabbitmq.codec import History, decode, encode
from queues.rabbitmq.topology import QueueTopology

if TYPE_CHECKING:
    from queues.rabbitmq.backend import RabbitQueue

log = logging.getLogger(__name__)

_GONE = (AMQPError, ConnectionError, OSError, ChannelInvalidStateError)


class Inbound:
    """A delivery's link back to its AMQP message (``Delivery.backend_state``)."""

    __slots__ = ("consumer", "message", "settled")

    def __init__(self, consumer: RabbitConsumer, message: AbstractIncomingMessage) -> None:
        self.consumer = consumer
        self.message = message
        self.settled = False

    def stale(self) -> bool:
        """The channel it came on has closed: the broker has already requeued it."""
        try:
            self.message.channel  # noqa: B018 - the property raises when the channel closed
        except ChannelInvalidStateError:
            return True
        return False

    def drop(self) -> None:
        if not self.settled:
            self.settled = True
            self.consumer.inbound.discard(self)

    async def ack(self) -> None:
        if self.settled:
            return
        self.drop()
        try:
            await self.message.ack()
        except _GONE as exc:
            # The broker requeued it with the channel; it will be delivered again.
            log.debug("ack of %s lost with its channel (%s)", self.message.message_id, exc)


class RabbitConsumer:
    """Hands out deliveries of one queue, at most ``prefetch`` unsettled at a time."""

    def __init__(self, backend: RabbitQueue, topology: QueueTopology, *, prefetch: int) -> None:
        self.backend = backend
        self.topology = topology
        self.queue = topology.logical
        self.prefetch = prefetch
        self.inbound: set[Inbound] = set()
        self._out: asyncio.Queue[Delivery] = asyncio.Queue()
        self._held: dict[Inbound, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._channel: AbstractRobustChannel | None = None
        self._amqp_queue: AbstractQueue | None = None
        self._tag: str | None = None
        self._start_lock = asyncio.Lock()
        self._closed = False

    @property
    def unsettled(self) -> int:
        return len(self.inbound)

    async def get(self) -> Delivery:
        if self._tag is None:
            await self._start()
        while True:
            delivery = await self._out.get()
            state = delivery.backend_state
            assert isinstance(state, Inbound)
            if state.settled:
                continue
            if state.stale():
                state.drop()
                continue
            return delivery

    async def _start(self) -> None:
        async with self._start_lock:
            if self._tag is not None:
                return
            if self._closed:
                raise RuntimeError("consumer closed")
            topo = self.topology
            try:
                async with asyncio.timeout(self.backend.config.publish_timeout):
                    channel = await self.backend.subscriber.channel(publisher_confirms=False)
                    self._channel = channel
                    await channel.set_qos(prefetch_count=self.prefetch)
                    # Declared (not just looked up) so the robust channel restores the queue
                    # and this consumer after a reconnection.
                    self._amqp_queue = await channel.declare_queue(
                        topo.work, durable=True, arguments=topo.work_arguments()
                    )
                    self._tag = await self._amqp_queue.consume(self._on_message)
            except (*_GONE, TimeoutError) as exc:
                raise QueueUnavailable(f"cannot consume {self.queue}: {exc}") from None

    async def close(self) -> None:
        self._closed = True
        for handle in self._held.values():
            handle.cancel()
        self._held.clear()
        for task in list(self._tasks):
            task.cancel()
        if self._channel is not None:
            with contextlib.suppress(*_GONE, TimeoutError, asyncio.CancelledError):
                if self._amqp_queue is not None and self._tag is not None and (
                    self.backend.available
                ):
                    await asyncio.wait_for(self._amqp_queue.cancel(self._tag), 5)
                # Closing the channel returns every unacked message to the queue.
                await asyncio.wait_for(self._channel.close(), 5)
        for inbound in list(self.inbound):
            inbound.drop()
        self.backend.forget_consumer(self.queue)

    # -- arrival ---------------------------------------------------------------------------

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if self._closed:
            return
        envelope, history = decode(message)
        inbound = Inbound(self, message)
        self.inbound.add(inbound)
        delivery = Delivery(
            queue=self.queue,
            tag=message.delivery_tag,
            envelope=envelope,
            failures=history.failures,
            first_failed_at=history.first_failed_at,
            not_before=history.not_before,
            last_error=history.last_error,
            backend_state=inbound,
        )
        topo = self.topology
        if topo.counts_redeliveries and message.redelivered:
            self._spawn(self._count_redelivery(delivery, history))
            return
        wait = history.not_before - time.time()
        if wait > 0 and not topo.ordered:
            route = topo.route_delay(wait) if wait > topo.hold_limit else None
            if route is not None:
                self._spawn(self._resend(delivery, route, history))
                return
            loop = asyncio.get_running_loop()
            self._held[inbound] = loop.call_later(wait, self._release, delivery, inbound)
            return
        self._out.put_nowait(delivery)

    def _release(self, delivery: Delivery, inbound: Inbound) -> None:
        self._held.pop(inbound, None)
        if not self._closed:
            self._out.put_nowait(delivery)

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resend(self, delivery: Delivery, target: str, history: History,
                      priority: int | None = None) -> None:
        """Publish a copy (confirmed) and ack the original; on failure the broker redelivers."""
        inbound = delivery.backend_state
        assert isinstance(inbound, Inbound)
        try:
            await self.backend.send([("", target, encode(delivery.envelope, history,
                                                         priority=priority))])
        except Exception as exc:
            log.warning("%s: could not move message %s to %s (%s); it stays unacked",
                        self.queue, delivery.envelope.message_id, target, exc)
            return
        await inbound.ack()

    async def _count_redelivery(self, delivery: Delivery, history: History) -> None:
        count = history.redeliveries + 1
        limit = self.topology.delivery_limit
        if count > limit:
            reason = (
                f"delivery limit reached: handed out {count} times without being settled "
                "(a consumer crashed or lost its connection)"
            )
            log.warning("%s: message %s dead-lettered: %s", self.queue,
                        delivery.envelope.message_id, reason)
            inbound = delivery.backend_state
            assert isinstance(inbound, Inbound)
            try:
                await self.backend.send([self.backend.dead_letter_publish(delivery, reason)])
            except Exception as exc:
                log.warning("%s: could not dead-letter message %s (%s)", self.queue,
                            delivery.envelope.message_id, exc)
                return
            await inbound.ack()
            return
        again = History(
            failures=history.failures, first_failed_at=history.first_failed_at,
            last_error=history.last_error, not_before=history.not_before, redeliveries=count,
        )
        # An ordered queue's head goes back to the head (priority 1), others to the tail.
        await self._resend(delivery, self.topology.work, again,
                           priority=1 if self.topology.ordered else None)
